"""The compile pipeline: a plain ordered list of passes over one CompileState.

Each pass reads its own config from the recipe, returns a PassResult (what changed, figures,
notes) and is timed into the pass log that goes into the bundle. Later stages (prune, distill,
QAT) are new entries in PASS_TABLE and pass_names, not edits to the others.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch

from edgekit_runtime.profile import DeviceProfile

from . import __version__
from .distill import student_passes as student
from .quant import passes as quantize
from .data import Splits, TextDataset, cap, demo_corpus_path, demo_teacher_path, load_labelled, split_dataset
from .recipe import Recipe
from .tasks import TaskAdapter, get_task

log = logging.getLogger("edgekit")


@dataclass
class PassResult:
    changed: bool = True
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class CompileState:
    recipe: Recipe
    profile: DeviceProfile
    adapter: TaskAdapter
    workdir: Path
    teacher_path: Path | None = None
    splits: Splits | None = None
    tokenizer: Any = None
    teacher: torch.nn.Module | None = None  # the (fine-tuned) teacher
    model: torch.nn.Module | None = None  # what gets exported: the teacher, or the student once one exists
    resume: bool = False
    fp32_model: torch.nn.Module | None = None  # the model before QAT (the quantized gate's reference)
    precision: str = "fp32"  # of the graph in onnx_path
    extra_files: dict[str, Any] = field(default_factory=dict)  # bundle name -> path, e.g. loss curves
    onnx_path: Path | None = None
    rules_applied: tuple[str, ...] = ()
    figures: dict[str, Any] = field(default_factory=dict)
    pass_log: list[dict[str, Any]] = field(default_factory=list)
    bundle_path: Path | None = None

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.splits.train.label_names


Pass = Callable[[CompileState], PassResult]


def _dataset_figures(ds: TextDataset) -> dict[str, Any]:
    return {"rows": len(ds), "labels": ds.label_counts()}


def pass_load_data(state: CompileState) -> PassResult:
    cfg = state.recipe.data
    path = Path(cfg.path) if cfg.path else demo_corpus_path()
    ds, report = load_labelled(path, cfg.text_column, cfg.label_column, format=cfg.format, encoding=cfg.encoding)
    splits = split_dataset(ds, cfg.split, seed=cfg.seed)
    caps = {"train": cfg.max_train, "validation": cfg.max_validation, "test": cfg.max_test}
    parts = {name: getattr(splits, name) for name in caps}
    parts = {name: cap(part, caps[name], cfg.seed) if caps[name] else part for name, part in parts.items()}
    state.splits = Splits(**parts)
    figures = {"source": str(path), "encoding": report.encoding, "rows_read": report.rows_read,
               "rows_kept": report.rows_kept, "dropped": dict(report.dropped), "repaired": report.texts_repaired, "mojibake_fixed": report.mojibake_fixed,
               **{name: _dataset_figures(part) for name, part in parts.items()}}
    return PassResult(figures=figures)


def pass_load_teacher(state: CompileState) -> PassResult:
    from transformers import AutoTokenizer

    path = Path(state.recipe.teacher) if state.recipe.teacher else demo_teacher_path()
    state.teacher_path = path
    state.tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not getattr(state.tokenizer, "is_fast", False):
        raise_missing_fast(path)
    state.model = state.teacher = state.adapter.load_model(str(path), state.label_names).eval()
    if state.recipe.student.enabled and "prune" in state.recipe.student.order:
        student.check_plan_fits(state)
    n_params = sum(p.numel() for p in state.model.parameters())
    return PassResult(figures={"path": str(path), "architecture": type(state.model).__name__, "parameters": n_params})


def raise_missing_fast(path: Path):
    from edgekit_runtime.errors import EdgekitError

    raise EdgekitError(f"{path}: no fast (Rust) tokenizer could be built; the device runtime needs tokenizer.json. "
                       f"Fix: save the tokenizer with a recent transformers (tokenizer.save_pretrained) so "
                       f"tokenizer.json exists.")


def pass_finetune(state: CompileState) -> PassResult:
    from .train.finetune import evaluate, train

    cfg = state.recipe.finetune
    if not cfg.enabled:
        return PassResult(changed=False, notes=["fine-tune disabled in the recipe: the teacher is used as loaded"])
    saved = state.workdir / "teacher-finetuned.pt"
    if state.resume and saved.is_file():
        state.teacher.load_state_dict(torch.load(saved, weights_only=True))
        return PassResult(notes=[f"resumed: fine-tuned teacher weights reloaded from {saved}"])
    val = state.splits.validation
    result = train(state.model, state.adapter, state.tokenizer, state.splits.train, cfg, state.recipe.max_length,
                   eval_fn=lambda: evaluate(state.model, state.adapter, state.tokenizer, val, state.recipe.max_length))
    tmp = saved.with_suffix(".tmp")
    torch.save(state.teacher.state_dict(), tmp)
    tmp.replace(saved)
    return PassResult(figures={"steps": result.steps, "seconds": round(result.seconds, 1),
                               "best_validation": result.best_metric, "history": result.history,
                               "loss_first": result.losses[:1], "loss_last": result.losses[-1:]})


def pass_evaluate_teacher(state: CompileState) -> PassResult:
    from .train.finetune import predict

    test = state.splits.test
    logits = predict(state.model, state.adapter, state.tokenizer, test, state.recipe.max_length)
    metrics = state.adapter.metrics(logits, np.asarray(test.labels))
    majority = int(np.bincount(state.splits.train.labels).argmax())
    baseline = state.adapter.metrics(np.eye(len(state.label_names))[[majority] * len(test)], np.asarray(test.labels))
    state.figures.setdefault("quality", {}).update(
        {"split": "test", "rows": len(test), "teacher_pytorch": metrics, "majority_baseline": baseline,
         "majority_label": state.label_names[majority]})
    return PassResult(changed=False, figures={"teacher_pytorch": metrics, "majority_baseline": baseline})


def pass_export(state: CompileState) -> PassResult:
    from .export.onnx_export import export_onnx

    path = state.workdir / "export.onnx"
    examples = list(state.splits.validation.texts[:2])
    export_onnx(state.model, state.adapter, state.tokenizer, examples, path, state.recipe.max_length,
                opset=state.profile.opset)
    state.onnx_path = path
    return PassResult(figures={"opset": state.profile.opset, "bytes": path.stat().st_size,
                               "ops": _op_counts(onnx.load(str(path)))})


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    from .export.opcheck import op_histogram

    return op_histogram(model)


def pass_rewrite(state: CompileState) -> PassResult:
    from .export.onnx_export import check_model_file
    from .export.rewrite import apply_rules, get_rule, simplify
    from .validate.graph import onnx_predict, ort_session

    cfg = state.recipe.rewrite
    names = tuple(cfg.rules) if cfg.rules is not None else state.profile.rewrite_rules
    for name in names:
        get_rule(name)  # unknown names fail before any work
    original = onnx.load(str(state.onnx_path))
    sample = cap(state.splits.validation, cfg.measure_samples, 0)
    base_session = ort_session(state.onnx_path, state.recipe.threads)
    reference = onnx_predict(base_session, state.adapter, state.tokenizer, sample, state.recipe.max_length)
    substitutions: dict[str, Any] = {}
    notes = []

    def effect(model: onnx.ModelProto, tag: str) -> dict[str, Any]:
        path = state.workdir / f"measure-{tag}.onnx"
        onnx.save(model, str(path))
        got = onnx_predict(ort_session(path, state.recipe.threads), state.adapter, state.tokenizer, sample,
                           state.recipe.max_length)
        path.unlink()
        return {"max_abs_logit_diff": float(np.abs(got - reference).max()),
                "argmax_agreement": float((got.argmax(-1) == reference.argmax(-1)).mean()),
                "samples": len(sample)}

    # Each rule alone against the plain export, so its own effect is visible.
    for name in names:
        rewritten, (report,) = apply_rules(original, [name])
        entry = {"fired": report.fired, "skipped": list(report.skipped)[:5]}
        if report.fired:
            entry.update(effect(rewritten, name))
        else:
            notes.append(f"rule {name} did not fire: {'; '.join(report.skipped[:3]) or 'no candidate nodes'}")
        substitutions[name] = entry
    model, reports = apply_rules(original, list(names))
    if cfg.simplify:
        model = simplify(model)
    final = state.workdir / "model.onnx"
    onnx.save(model, str(final))
    check_model_file(final)
    substitutions["all_rules_and_simplify"] = effect(model, "all")
    state.onnx_path = final
    state.rules_applied = tuple(r.rule for r in reports if r.fired)
    state.figures["substitutions"] = substitutions
    return PassResult(changed=bool(state.rules_applied) or cfg.simplify,
                      figures={"rules": list(names), "substitutions": substitutions,
                               "ops": _op_counts(model), "bytes": final.stat().st_size}, notes=notes)


def pass_check_ops(state: CompileState) -> PassResult:
    from .export.opcheck import check_ops

    from edgekit_runtime.errors import EdgekitError

    model = onnx.load(str(state.onnx_path))
    check_ops(model, state.profile)
    want = state.profile.token_dtype
    wrong = [(i.name, onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name)
             for i in model.graph.input]
    wrong = [(n, d) for n, d in wrong if d in ("int32", "int64") and d != want]
    if wrong:
        raise EdgekitError(f"profile {state.profile.name!r} takes {want} token inputs but the graph has "
                           + ", ".join(f"{n}: {d}" for n, d in wrong)
                           + (". Fix: add the 'int32-inputs' rule to the profile's rewrite_rules." if want == "int32"
                              else ". Fix: remove the 'int32-inputs' rule from the recipe's [rewrite] rules."))
    return PassResult(changed=False, notes=[f"every op and input dtype is supported by profile {state.profile.name}"])


def pass_validate(state: CompileState) -> PassResult:
    from .validate.graph import REFERENCE_PATCHES, reference_model, validate_graph

    precision = state.precision
    tolerance = state.profile.tolerance(precision)
    ptq = precision == "int8" and state.recipe.quantize.method.startswith("ptq")
    # A PTQ graph has no PyTorch model that computes it: shapes and finiteness are checked here and
    # its values are judged by the quantized gate (metric, not atol). A QAT graph is compared with
    # the fake-quant model it was trained as.
    reference = reference_model(state.model, state.rules_applied)
    cases = validate_graph(state.onnx_path, reference, state.adapter, state.tokenizer, state.splits.validation,
                           state.recipe.validate, tolerance, state.recipe.max_length, state.recipe.threads,
                           compare_values=not ptq)
    figures = {"precision": precision, "atol": tolerance.atol, "rtol": tolerance.rtol, "values_compared": not ptq,
               "reference_patches": [r for r in state.rules_applied if r in REFERENCE_PATCHES],
               "max_abs_diff": max(c.max_abs_diff for c in cases),
               "cases": [{"batch": c.batch_size, "length": c.length, "max_abs_diff": c.max_abs_diff} for c in cases]}
    state.figures["validation"] = figures
    return PassResult(changed=False, figures=figures)


def pass_evaluate_bundle(state: CompileState) -> PassResult:
    """Stage the bundle, load it with the device runtime, and measure it as a device would."""
    import edgekit_runtime

    from .bundle.manifest import stage_files, build_manifest
    from .evaluate.latency import latency_pair

    stage = edgekit_runtime.write_bundle(state.workdir / "stage", stage_files(state), build_manifest(state),
                                         overwrite=True)
    runtime_model = edgekit_runtime.load(stage, threads=state.recipe.threads)
    test = state.splits.test
    logits = runtime_model.logits(list(test.texts))
    metrics = state.adapter.metrics(logits, np.asarray(test.labels))
    quality = state.figures.setdefault("quality", {})
    quality["bundle_runtime"] = metrics
    quality["backend"] = runtime_model.backend_name
    latency = latency_pair(state, runtime_model)
    state.figures["latency"] = latency
    return PassResult(changed=False, figures={"bundle_runtime": metrics, "latency": latency})


TEACHER_PASSES = ["load-data", "load-teacher", "finetune", "evaluate-teacher"]
GRAPH_PASSES = ["export", "rewrite", "check-ops", "validate", "evaluate-bundle"]
PASS_TABLE: dict[str, Pass] = {
    "load-data": pass_load_data,
    "load-teacher": pass_load_teacher,
    "finetune": pass_finetune,
    "evaluate-teacher": pass_evaluate_teacher,
    "prune": student.pass_prune,
    "distill": student.pass_distill,
    "evaluate-student": student.pass_evaluate_student,
    "qat": quantize.pass_qat,
    "int8": quantize.pass_int8,
    "quant-gate": quantize.pass_quant_gate,
    "export": pass_export,
    "rewrite": pass_rewrite,
    "check-ops": pass_check_ops,
    "validate": pass_validate,
    "evaluate-bundle": pass_evaluate_bundle,
}


def pass_names(recipe: Recipe) -> list[str]:
    """The passes this recipe runs, in order (student stages in the recipe's order)."""
    middle = [*recipe.student.order, "evaluate-student"] if recipe.student.enabled else []
    method = recipe.quantize.method
    if method == "qat":
        middle.append("qat")
    graph = list(GRAPH_PASSES)
    if method != "none":
        graph.insert(graph.index("rewrite") + 1, "int8")
        graph.insert(graph.index("validate") + 1, "quant-gate")
    return TEACHER_PASSES + middle + graph


def preflight(recipe: Recipe, profile: DeviceProfile) -> None:
    """Reject what the profile does not allow before any minute is spent training."""
    from edgekit_runtime.errors import EdgekitError

    from .export.rewrite import get_rule

    for name in recipe.rewrite.rules if recipe.rewrite.rules is not None else profile.rewrite_rules:
        get_rule(name)
    precision = recipe.export.precision or "fp32"
    if precision not in profile.precisions:
        raise EdgekitError(f"precision {precision!r} is not allowed by profile {profile.name!r} "
                           f"(allowed: {list(profile.precisions)}). Fix: choose one of those in [export] precision.")
    get_task(recipe.task)
    quantize.check_quantize(recipe, profile)
    if recipe.student.enabled and "prune" in recipe.student.order:
        recipe.prune.require_something()
    if recipe.max_length > profile.max_sequence_length:
        raise EdgekitError(f"max_length {recipe.max_length} exceeds profile {profile.name!r}'s max_sequence_length "
                           f"{profile.max_sequence_length}. Fix: set max_length <= {profile.max_sequence_length} "
                           f"in the recipe.")


def work_dir(out: Path) -> Path:
    """Where a compile keeps what --resume needs; removed after a successful compile."""
    return out.parent / f".{out.name}.work"


def _check_resumable(workdir: Path, recipe: Recipe) -> None:
    import json

    from edgekit_runtime.errors import EdgekitError

    saved = workdir / "recipe.json"
    if not saved.is_file():
        raise EdgekitError(f"--resume: nothing to resume in {workdir}. Fix: run the compile without --resume.")
    before = json.loads(saved.read_text())
    now = json.loads(json.dumps(recipe.to_dict()))
    for volatile in ("bundle", "threads"):
        before.pop(volatile, None)
        now.pop(volatile, None)
    if before != now:
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        raise EdgekitError(f"--resume: the recipe changed since the interrupted run (sections {changed}). "
                           f"Fix: resume with the same recipe and flags, or run without --resume to start over.")


def start_state(recipe: Recipe, profile: DeviceProfile, resume: bool = False) -> CompileState:
    import json

    from edgekit_runtime.errors import BundleError

    from .bundle.manifest import default_out

    out = Path(recipe.bundle.out) if recipe.bundle.out else default_out(recipe, profile)
    if out.exists() and not recipe.bundle.force:
        raise BundleError(f"{out} already exists. Fix: pass --force to replace it, or choose another --out.")
    preflight(recipe, profile)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    workdir = work_dir(out)
    if resume:
        _check_resumable(workdir, recipe)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        (workdir / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
    state = CompileState(recipe=recipe, profile=profile, adapter=get_task(recipe.task), workdir=workdir, resume=resume)
    state.bundle_path = out
    return state


def run_passes(state: CompileState, names: list[str], echo: Callable[[str], None] = print) -> None:
    for i, name in enumerate(names, 1):
        echo(f"[{i}/{len(names)}] {name}")
        start = time.perf_counter()
        result = PASS_TABLE[name](state)
        seconds = time.perf_counter() - start
        state.pass_log.append({"name": name, "seconds": round(seconds, 2), "changed": result.changed,
                               "figures": result.figures, "notes": result.notes})
        for note in result.notes:
            echo(f"      {note}")
        echo(f"      done in {seconds:.1f}s")


def compile_bundle(recipe: Recipe, profile: DeviceProfile, *, echo: Callable[[str], None] = print,
                   resume: bool = False, sign_key: str | Path | None = None) -> CompileState:
    """Run every pass, then write the bundle atomically. A failure leaves no bundle, and keeps the
    work directory so that ``resume=True`` continues (the fine-tuned teacher, distillation checkpoints).
    ``sign_key``: an ed25519 private key PEM; the bundle gets manifest.sig before it is archived."""
    import edgekit_runtime
    from edgekit_runtime.signing import load_private_key

    from .bundle.manifest import build_manifest, stage_files

    signing_key = load_private_key(sign_key) if sign_key is not None else None  # preflight: before any training
    state = start_state(recipe, profile, resume)
    try:
        run_passes(state, pass_names(recipe), echo)
        state.bundle_path = edgekit_runtime.write_bundle(state.bundle_path, stage_files(state), build_manifest(state),
                                                         overwrite=recipe.bundle.force)
        if signing_key is not None:  # before the archive, so the .tar carries manifest.sig
            record = edgekit_runtime.sign_bundle(state.bundle_path, signing_key)
            echo(f"signed {state.bundle_path}: manifest.sig, ed25519 key id {record['key_id'][:16]}...")
        if recipe.bundle.archive:
            edgekit_runtime.archive_bundle(state.bundle_path)
    except BaseException:
        echo(f"compile stopped; work kept in {state.workdir} (rerun the same command with --resume to continue)")
        raise
    shutil.rmtree(state.workdir, ignore_errors=True)
    return state


def plan_only(recipe: Recipe, profile: DeviceProfile) -> str:
    """`--plan`: load the data and the teacher, and print what pruning would cut (nothing is trained)."""
    if not (recipe.student.enabled and "prune" in recipe.student.order):
        return "no pruning in this recipe ([student] enabled = false, or no 'prune' in [student] order)"
    preflight(recipe, profile)
    state = CompileState(recipe=recipe, profile=profile, adapter=get_task(recipe.task),
                         workdir=Path(tempfile.mkdtemp(prefix="edgekit-plan-")))
    try:
        pass_load_data(state)
        pass_load_teacher(state)
        return student.plan_text(state)
    finally:
        shutil.rmtree(state.workdir, ignore_errors=True)


__all__ = ["CompileState", "PassResult", "PASS_TABLE", "compile_bundle", "pass_names", "plan_only", "__version__"]
