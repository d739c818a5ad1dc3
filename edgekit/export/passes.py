"""The export stage's passes: torch -> ONNX at the target's opset, the target's rewrite rules, and the
op check against the profile (every task; the causal LM's graph carries its KV cache)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from edgekit_runtime.errors import EdgekitError

from ..compiler.state import CompileState, PassResult
from ..data import cap
from ..quant.passes import int8_decoder_graph
from ..validate.graph import onnx_predict, ort_session
from .decoder import check_decoder_file, export_decoder
from .onnx_export import check_model_file, export_onnx
from .opcheck import check_ops, op_histogram
from .rewrite import apply_rules, simplify


def pass_export(state: CompileState) -> PassResult:
    path = state.workdir / "export.onnx"
    examples = list(state.splits.validation.texts[:2])
    export_onnx(state.model, state.adapter, state.tokenizer, examples, path, state.recipe.max_length,
                opset=state.target.opset)
    state.onnx_path = path
    return PassResult(figures={"opset": state.target.opset, "bytes": path.stat().st_size,
                               "ops": _op_counts(onnx.load(str(path)))})


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:

    return op_histogram(model)


def pass_rewrite(state: CompileState) -> PassResult:
    cfg = state.recipe.rewrite
    names = state.target.rewrite_rules
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
    if state.target.simplify:
        model = simplify(model)
    final = state.workdir / "model.onnx"
    onnx.save(model, str(final))
    check_model_file(final)
    substitutions["all_rules_and_simplify"] = effect(model, "all")
    state.onnx_path = final
    state.rules_applied = tuple(r.rule for r in reports if r.fired)
    state.figures["substitutions"] = substitutions
    return PassResult(changed=bool(state.rules_applied) or state.target.simplify,
                      figures={"rules": list(names), "substitutions": substitutions,
                               "ops": _op_counts(model), "bytes": final.stat().st_size}, notes=notes)


def pass_check_ops(state: CompileState) -> PassResult:
    """Every node's op, domain and opset, and the token inputs' dtype, against the profile (every task;
    a causal LM on an ort-contrib profile may also use the fused ops contrib_ops_for names)."""
    model = onnx.load(str(state.onnx_path), load_external_data=False)
    check_ops(model, state.profile, extra_ops=state.adapter.extra_ops(state.target))
    want = state.target.token_dtype
    wrong = [(i.name, onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name)
             for i in model.graph.input]
    wrong = [(n, d) for n, d in wrong if d in ("int32", "int64") and d != want]
    if wrong:
        raise EdgekitError(f"profile {state.profile.name!r} takes {want} token inputs but the graph has "
                           + ", ".join(f"{n}: {d}" for n, d in wrong)
                           + (". Fix: add the 'int32-inputs' rule to the profile's rewrite_rules." if want == "int32"
                              else ". Fix: remove the 'int32-inputs' rule from the recipe's [rewrite] rules."))
    return PassResult(changed=False, figures={"ops": op_histogram(model)},
                      notes=[f"every op and input dtype is supported by profile {state.profile.name}"])


def pass_export_lm(state: CompileState) -> PassResult:
    """The KV-cache graph (the profile's decoder_ops), folded to int8 after QAT, then the target's
    rewrite rules (the same named rules as the encoders'; each one that fires is recorded)."""
    target = state.target
    ops = target.decoder_ops
    limit = getattr(state.model.config, "max_position_embeddings", None) or target.max_context
    path = export_decoder(state.model, state.workdir / "model.onnx", opset=target.opset,
                          token_dtype=target.token_dtype, ops=ops, max_positions=min(target.max_context, limit))
    figures: dict[str, Any] = {"graph_ops": ops, "bytes_exported": _graph_bytes(path)}
    if state.precision == "int8":
        path, int8 = int8_decoder_graph(path, state.workdir / "int8" / "model.onnx", ops)
        figures.update(int8)
    notes = []
    if target.rewrite_rules:
        path, fired, notes = rewrite_decoder(path, target.rewrite_rules, ops)
        state.rules_applied = fired
        figures["rules"] = list(target.rewrite_rules)
        figures["rules_fired"] = list(fired)
    state.onnx_path = path
    figures["bytes"] = _graph_bytes(path)
    return PassResult(figures=figures, notes=notes)


def rewrite_decoder(path: Path, names: tuple[str, ...], ops: str) -> tuple[Path, tuple[str, ...], list[str]]:
    """Apply the named rules to a decoder graph in place (external data kept beside it); returns the
    rules that fired and a note for each that did not."""
    model, reports = apply_rules(onnx.load(str(path)), list(names))
    notes = [f"rule {r.rule} did not fire: {'; '.join(r.skipped[:3]) or 'no candidate nodes'}"
             for r in reports if not r.fired]
    fired = tuple(r.rule for r in reports if r.fired)
    if fired:
        large = path.with_name(path.name + ".data").exists()
        for stale in path.parent.glob(path.name + "*"):
            stale.unlink()
        onnx.save(model, str(path), save_as_external_data=large, location=path.name + ".data" if large else None)
        check_decoder_file(path, ops=ops)
    return path, fired, notes


def _graph_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
