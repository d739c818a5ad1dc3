"""edgekit-run: verify, inspect and run a bundle on the device.

A thin adapter over the Python API (argparse, not click: the runtime depends on numpy,
onnxruntime and tokenizers only). Exit codes: 0 ok, 1 verification or runtime failure,
2 usage. Errors are one line on stderr; --verbose adds the backend log and tracebacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Sequence

from ..backends.tensorrt import check_engine_plan, trtexec_line
from ..bench.command import add_arguments as add_bench_arguments, run as run_bench
from ..bench.suite import SuiteError
from ..bundle.archive import open_bundle
from ..bundle.format import read_manifest, verify_bundle
from ..bundle.signing import SIGNATURE, check_signature
from ..errors import BundleError, EdgekitError, InputError
from ..model import bundle_profile, load
from ..profile import BACKENDS
from ..serve.server import ServeConfig, serve
from ..tokenizer import check_texts
from .common import (EXIT_FAIL, EXIT_OK, EXIT_USAGE, PROG, UsageError as _UsageError, add_signature_arguments,
                     milliseconds as _milliseconds, one_line as _one_line, port as _port,
                     positive_int as _positive_int, signature_key_from_args)
from .generate import add_generate_parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints the whole usage block; one line is enough
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}. See `{self.prog} --help`.\n")


# ---------------------------------------------------------------- verify

def cmd_verify(args: argparse.Namespace) -> int:
    key = signature_key_from_args(args)
    with open_bundle(args.bundle) as bundle_dir:
        manifest = verify_bundle(bundle_dir)
        profile = bundle_profile(manifest)
        record = check_signature(bundle_dir, key, require=args.require_signature, manifest=manifest)
        signed = (bundle_dir / SIGNATURE).is_file()
    if record is not None:
        signature = f"signature OK (ed25519, key id {record['key_id'][:16]}...)"
    elif signed:
        signature = f"{SIGNATURE} present, NOT checked (pass --public-key PEM to check it)"
    elif key is not None:
        signature = "unsigned, so --public-key checked nothing (--require-signature refuses unsigned bundles)"
    else:
        signature = "unsigned"
    print(f"OK {args.bundle}: {len(manifest['files'])} files and the manifest match their sha256; "
          f"profile {profile.name} for {profile.device}; task {manifest['task'].get('name')}; {signature}")
    return EXIT_OK


# ---------------------------------------------------------------- info

def bundle_info(path: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """What `info` shows, as plain data (the --json output)."""
    prof = manifest["profile"]
    data = prof.get("data", {}) if isinstance(prof, dict) else {}
    model, tok = manifest["model"], manifest["tokenizer"]
    figures = manifest["figures"] if isinstance(manifest["figures"], dict) else {}
    return {
        "bundle": path,
        "schema_version": manifest["schema_version"],
        "edgekit_version": manifest["edgekit_version"],
        "created_utc": manifest.get("created_utc"),
        "profile": {"name": prof.get("name"), "sha256": prof.get("sha256"), "device": data.get("device"),
                    "accelerator": data.get("accelerator"), "backends": data.get("backends")},
        "task": manifest["task"].get("name"),
        "labels": manifest["task"].get("labels"),
        "model": {k: model.get(k) for k in ("file", "precision", "opset", "inputs", "outputs", "rewrite_rules")
                  if k in model},
        "tokenizer": {k: tok.get(k) for k in ("file", "max_length", "pad_token_id", "padding_side", "truncation_side")},
        "figures": figures,
        "engine_plan": _engine_plan_info(manifest.get("engine_plan")),
        "pass_log": [{"name": p.get("name"), "seconds": p.get("seconds")} if isinstance(p, dict) else {"name": str(p)}
                     for p in manifest["pass_log"] or []],
        "files": {name: entry.get("bytes") for name, entry in manifest["files"].items()},
    }


def _engine_plan_info(plan: Any) -> dict[str, Any] | None:
    """The manifest's engine_plan with its trtexec line (derived here for bundles that predate it)."""
    if not isinstance(plan, dict):
        return None
    out = dict(plan)
    if not isinstance(out.get("trtexec"), str):
        try:
            out["trtexec"] = trtexec_line(check_engine_plan(plan))
        except BundleError:
            out["trtexec"] = None
    return out


def _engine_rows(plan: dict[str, Any] | None) -> list[tuple[str, str]]:
    if plan is None:  # a profile without TensorRT backends
        return []
    shapes = plan.get("shapes") or {}
    first = next(iter(shapes.values()), {}) if isinstance(shapes, dict) else {}
    ranges = ", ".join(f"{k} {first.get(k)}" for k in ("min", "opt", "max")) if isinstance(first, dict) else "?"
    flags = plan.get("flags")
    return [("tensorrt", f"TensorRT {plan.get('tensorrt')}, sm {plan.get('compute_capability')}, flags "
                         f"{', '.join(flags) if isinstance(flags, list) and flags else '(fp32)'}, workspace "
                         f"{plan.get('workspace_mb', '(default)')} MiB, shapes {ranges} for {len(shapes)} inputs"),
            ("trtexec", plan.get("trtexec") or "(plan malformed: no command line)")]


def _compact(value: Any, depth: int = 0) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        if depth >= 2:
            return "{...}"
        inner = ", ".join(f"{k}={_compact(v, depth + 1)}" for k, v in value.items())
        return f"{{{inner}}}" if depth else inner
    if isinstance(value, list):
        if len(value) <= 6 and all(not isinstance(v, (dict, list)) for v in value):
            return "[" + ", ".join(_compact(v, depth + 1) for v in value) + "]"
        return f"[{len(value)} entries]"
    return str(value)


def _task_line(name: Any, labels: Any, task: dict[str, Any]) -> str:
    if name != "causal-lm":
        return f"{name}; labels {', '.join(map(str, labels or []))}"
    think = task.get("think") if isinstance(task.get("think"), dict) else None
    return (f"causal-lm; {task.get('num_layers')} layers, {task.get('num_key_value_heads')} KV heads x "
            f"{task.get('head_dim')}, vocab {task.get('vocab_size')}, max context {task.get('max_context')}, "
            f"eos {task.get('eos_token_ids')}, chat template {'yes' if task.get('chat_template') else 'none'}, "
            f"think {think['start'] + '...' + think['end'] if think else 'none'}")


def _io_line(specs: Any) -> str:
    return "; ".join(f"{s.get('name')} {s.get('dtype')} {s.get('shape')}" for s in specs or [] if isinstance(s, dict))


def cmd_info(args: argparse.Namespace) -> int:
    with open_bundle(args.bundle) as bundle_dir:
        manifest = read_manifest(bundle_dir)
        info = bundle_info(args.bundle, manifest)
    manifest_task = manifest["task"] if isinstance(manifest["task"], dict) else {}
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    p, m, t = info["profile"], info["model"], info["tokenizer"]
    rows = [
        ("bundle", f"{info['bundle']} (schema {info['schema_version']}, edgekit {info['edgekit_version']}"
                   + (f", created {info['created_utc']})" if info["created_utc"] else ")")),
        ("profile", f"{p['name']}, device {p['device']}, accelerator {p['accelerator']}, "
                    f"backends {', '.join(p['backends'] or [])}"),
        ("task", _task_line(info["task"], info["labels"], manifest_task)),
        ("model", f"{m.get('file')}, {m.get('precision')}, opset {m.get('opset')}, "
                  f"{info['files'].get(m.get('file'), 0) / 1e6:.2f} MB"
                  + (f", rewrites {', '.join(m['rewrite_rules'])}" if m.get("rewrite_rules") else "")),
        ("inputs", _io_line(m.get("inputs"))),
        ("outputs", _io_line(m.get("outputs"))),
        ("tokenizer", f"{t['file']}, max length {t['max_length']}, pad id {t['pad_token_id']}, "
                      f"padding {t['padding_side']}, truncation {t['truncation_side']}"),
    ]
    rows += _engine_rows(info["engine_plan"])
    for key in ("validation", "substitutions"):
        rows.append((key, _compact(info["figures"][key]) if key in info["figures"] else "(not recorded)"))
    rows += [(key, _compact(value)) for key, value in info["figures"].items() if key not in ("validation", "substitutions")]
    log_ = info["pass_log"]
    total = sum(x.get("seconds") or 0 for x in log_)
    rows.append(("passes", ", ".join(f"{x['name']} {x.get('seconds')}s" for x in log_) + f" (total {total:.1f}s)"
                 if log_ else "(none recorded)"))
    width = max(len(k) for k, _ in rows)
    for key, text in rows:
        print(f"{key:<{width}}  {text}")
    print(f"{'':<{width}}  (manifest checked; run `{PROG} verify` to check every file's sha256)")
    return EXIT_OK


# ---------------------------------------------------------------- predict

def _read_texts(args: argparse.Namespace) -> tuple[list[str], str]:
    if args.texts:
        if args.file:
            raise _UsageError("give TEXT arguments or --file, not both")
        return list(args.texts), "arguments"
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as fh:
                return fh.read().splitlines(), args.file
        except (OSError, UnicodeDecodeError) as exc:
            raise _UsageError(f"--file {args.file}: cannot read it ({exc})") from None
    if sys.stdin is None or sys.stdin.isatty():
        raise _UsageError("no texts: give TEXT arguments, --file PATH, or pipe one text per line on stdin")
    return sys.stdin.read().splitlines(), "stdin"


def cmd_predict(args: argparse.Namespace) -> int:
    key = signature_key_from_args(args)
    texts, source = _read_texts(args)
    if not texts:
        raise _UsageError(f"no texts found in {source}")
    try:
        check_texts(texts)  # before loading: a bad input should not cost a model load
    except InputError as exc:
        where = "" if source == "arguments" else f" (line {exc.index + 1} of {source})"
        raise _UsageError(f"{exc}{where}") from None
    model = load(args.bundle, backend=args.backend, threads=args.threads, public_key=key,
                 require_signature=args.require_signature)
    with model:
        results = model.predict(texts, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['label']}  {r['score']:.4f}")
    cut = [i for i, r in enumerate(results) if r["truncated"]]
    if cut:
        print(f"{PROG}: note: {len(cut)} of {len(results)} texts were longer than "
              f"{model.encoder.max_length} tokens and were truncated (text numbers {[i + 1 for i in cut[:10]]})",
              file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------- serve

def cmd_serve(args: argparse.Namespace) -> int:
    try:  # before loading: contradictory limits should not cost a model load
        config = ServeConfig(host=args.host, port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             queue_size=args.queue_size, max_texts=args.max_texts, max_body_bytes=args.max_body_bytes)
    except InputError as exc:
        raise _UsageError(str(exc)) from None
    key = signature_key_from_args(args)
    model = load(args.bundle, backend=args.backend, threads=args.threads, public_key=key,
                 require_signature=args.require_signature)
    with model:
        return serve(model, config, announce=lambda line: print(f"{PROG} serve: {line}", file=sys.stderr, flush=True))


# ---------------------------------------------------------------- bench

def cmd_bench(args: argparse.Namespace) -> int:
    try:
        return run_bench(args, _UsageError)
    except SuiteError as exc:  # a malformed suite or result file: the user's input, like a bad argument
        raise _UsageError(str(exc).rstrip(".")) from None


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog=PROG, formatter_class=fmt,
                     description="Verify, inspect and run an edgekit bundle on this device (offline, no torch).",
                     epilog=f"example:\n  {PROG} verify bundles/jetson-orin\n  {PROG} predict bundles/jetson-orin "
                            f"\"the battery lasts all day\"\n  {PROG} generate bundles/r1-1.5b \"What is 17 * 23?\" "
                            f"--stream\n\nRun `{PROG} COMMAND --help` for each command.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log backend selection; show tracebacks")
    # Also accepted after the command; SUPPRESS keeps the subparser from resetting it to False.
    verbose = _Parser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="log backend selection; show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    bundle_help = "bundle directory, or the .tar archive of one"
    p = sub.add_parser("verify", formatter_class=fmt, parents=[verbose], help="check every file's sha256 and the embedded profile",
                       description="Check the manifest and the sha256 of every file in the bundle; name every "
                                   "modified, missing or unexpected file. With --public-key, also check the "
                                   "bundle's ed25519 signature (manifest.sig); without it, only say whether one "
                                   "is present. Exit 0 if intact, 1 otherwise.",
                       epilog=f"example:\n  {PROG} verify bundles/jetson-orin\n  {PROG} verify bundles/jetson-orin.tar\n"
                              f"  {PROG} verify bundles/jetson-orin --public-key keys/public.pem --require-signature")
    p.add_argument("bundle", metavar="BUNDLE", help=bundle_help)
    add_signature_arguments(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("info", formatter_class=fmt, parents=[verbose], help="show profile, task, IO spec, figures and pass log",
                       description="Show what the bundle says about itself: device profile, task and labels, "
                                   "model inputs/outputs, precision, max length, validation and substitution "
                                   "figures, and the compiler passes with their times.",
                       epilog=f"example:\n  {PROG} info bundles/jetson-orin\n  {PROG} info bundles/jetson-orin --json")
    p.add_argument("bundle", metavar="BUNDLE", help=bundle_help)
    p.add_argument("--json", action="store_true", help="print the information as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("predict", formatter_class=fmt, parents=[verbose], help="classify texts with the bundle",
                       description="Verify the bundle, pick the first backend of its profile that works here, "
                                   "and classify texts: from the arguments, else one per line from --file, else "
                                   "one per line from stdin. Prints 'label  score' per text, in input order "
                                   "(the texts themselves are never printed or logged).",
                       epilog=f"examples:\n  {PROG} predict bundles/jetson-orin \"great screen\" \"it broke in a week\"\n"
                              f"  {PROG} predict bundles/jetson-orin --file reviews.txt --json\n"
                              f"  cat reviews.txt | {PROG} predict bundles/jetson-orin --batch-size 8\n"
                              f"  {PROG} predict bundles/jetson-orin --public-key keys/public.pem --require-signature "
                              f"\"great screen\"")
    p.add_argument("bundle", metavar="BUNDLE", help=bundle_help)
    p.add_argument("texts", metavar="TEXT", nargs="*", default=[], help="texts to classify")
    p.add_argument("--file", metavar="PATH", help="read texts from PATH, one per line (UTF-8)")
    p.add_argument("--json", action="store_true", help="print a JSON list: label, score, probabilities, truncated")
    p.add_argument("--batch-size", type=_positive_int, default=32, metavar="N", help="texts per inference (default 32)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="onnxruntime intra-op threads (default: onnxruntime's choice)")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="force one of the profile's backends (default: the first that works here)")
    add_signature_arguments(p)
    p.set_defaults(func=cmd_predict)

    add_generate_parser(sub, fmt, verbose, bundle_help, BACKENDS)

    p = sub.add_parser("serve", formatter_class=argparse.RawTextHelpFormatter, parents=[verbose],
                       help="serve the bundle over local HTTP (health, metadata, predict or generate)",
                       description="Verify and load the bundle, then answer HTTP on HOST:PORT until SIGINT or "
                                   "SIGTERM:\n"
                                   "  GET  /health    ok, backend, queue depth\n"
                                   "  GET  /metadata  task, labels, profile, precision, max length, model sha256\n"
                                   "  POST /predict   {\"texts\": [...]} -> {\"predictions\": [{label, score, "
                                   "probabilities,\n"
                                   "                  truncated}, ...], \"truncated\": N, \"max_length\": L}\n"
                                   "  POST /generate  (causal-lm bundles, instead of /predict) {\"prompt\": str} or "
                                   "{\"messages\": [...]},\n"
                                   "                  plus max_new_tokens, do_sample, temperature, top_k, top_p, "
                                   "seed, stop,\n"
                                   "                  think, think_budget, chat -> {text, token_ids, finish_reason, "
                                   "reasoning,\n"
                                   "                  prompt_tokens, completion_tokens, think_tokens, timings}\n"
                                   "Concurrent requests share inference calls: one worker takes queued texts up to "
                                   "--max-batch,\nor what has arrived --max-wait-ms after the oldest. When "
                                   "--queue-size texts are waiting,\nnew requests get HTTP 429 with Retry-After. "
                                   "On SIGINT/SIGTERM it stops accepting, answers\nevery request in flight and "
                                   "queued, and exits 0. Texts are never logged or echoed in errors.",
                       epilog=f"examples:\n  {PROG} serve bundles/jetson-orin --port 8080\n"
                              f"  curl -s 127.0.0.1:8080/predict -d '{{\"texts\": [\"great screen\"]}}'\n"
                              f"  curl -s 127.0.0.1:8080/generate -d '{{\"prompt\": \"What is 17 * 23?\", "
                              f"\"max_new_tokens\": 128}}'\n"
                              f"  {PROG} serve bundles/jetson-orin --port 0 --max-batch 32 --max-wait-ms 2")
    p.add_argument("bundle", metavar="BUNDLE", help=bundle_help)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only). Any other address,\n"
                        "e.g. 0.0.0.0, exposes the server to the network, with no authentication or TLS")
    p.add_argument("--port", type=_port, default=8080, metavar="N", help="TCP port (default 8080; 0 picks a free "
                                                                          "one and prints it)")
    p.add_argument("--max-batch", type=_positive_int, default=16, metavar="N",
                   help="most texts per inference call (default 16)")
    p.add_argument("--max-wait-ms", type=_milliseconds, default=5.0, metavar="MS",
                   help="how long the oldest queued request waits for others to fill a batch (default 5)")
    p.add_argument("--queue-size", type=_positive_int, default=256, metavar="N",
                   help="most texts waiting for inference, over all requests; beyond it: 429 (default 256)")
    add_signature_arguments(p)
    p.add_argument("--max-texts", type=_positive_int, default=256, metavar="N",
                   help="most texts in one request; more: 413 (default 256, at most --queue-size)")
    p.add_argument("--max-body-bytes", type=_positive_int, default=1 << 20, metavar="N",
                   help="largest request body; larger: 413 (default 1048576)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="onnxruntime intra-op threads (default: onnxruntime's choice)")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="force one of the profile's backends (default: the first that works here)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench", formatter_class=fmt, parents=[verbose],
                       help="run a benchmark suite (latency, throughput, memory, accuracy, stress, mix; "
                            "generation for causal-lm bundles); A/B compare",
                       description="Run the suite FILE (TOML: benchmarks/suites/*.toml) on the bundle: latency, "
                                   "throughput, memory, accuracy, stress against `serve`, custom mix for text "
                                   "classifiers; generation (time to first token, prefill and decode tokens/s; "
                                   "benchmarks/suites/generation.toml) for causal-lm bundles. Prints a "
                                   "Markdown report (progress on stderr, never input text); --json writes every "
                                   "figure with the environment (schema edgekit-bench, version 1). --compare A B "
                                   "sets two results, or two bundles run interleaved, side by side: ratio B/A, "
                                   "which is better, and whether the difference is beyond the noise of the "
                                   "repeats. Exit 0, 1 if a run failed (the others still run), 2 for a bad suite.",
                       epilog=f"examples:\n  {PROG} bench bundles/jetson-orin --suite benchmarks/suites/standard.toml "
                              f"--json orin.json\n  {PROG} bench --compare before.json after.json\n"
                              f"  {PROG} bench --compare bundles/fp32 bundles/int8 --suite "
                              f"benchmarks/suites/latency.toml --repeats 5")
    add_bench_arguments(p, _positive_int, BACKENDS)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        # argparse cannot put TEXT arguments that follow an option (`B t1 --json t2`) into
        # the TEXT list; they come back unknown and are appended, in order.
        args, extra = parser.parse_known_args(argv)
        if extra and (args.command != "predict" or any(a.startswith("-") for a in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if extra:
            args.texts = [*args.texts, *extra]
    except SystemExit as exc:  # --help (0) or a usage error (2): return the code, so main() is callable
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    logger = logging.getLogger("edgekit_runtime")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except _UsageError as exc:
        print(f"{PROG} {args.command}: error: {exc}. See `{PROG} {args.command} --help`.", file=sys.stderr)
        return EXIT_USAGE
    except EdgekitError as exc:
        print(f"{PROG} {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `| head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAIL
    except Exception as exc:
        if args.verbose:
            raise
        print(f"{PROG} {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)}. "
              f"Rerun with --verbose for the traceback and report it.", file=sys.stderr)
        return EXIT_FAIL
    finally:
        logger.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
