"""int8 passes: QAT on the model, the int8 graph pass, and the metric-based quantized gate.

QAT: fake quant on the Linear layers, calibrated, then fine-tuned with the distillation loss;
the export emits QuantizeLinear/DequantizeLinear and the ``int8`` graph pass folds the weight
quantizers into int8 initializers. PTQ: ONNX Runtime quantizes the simplified fp32 graph
(static with calibration on train texts, or dynamic). Either way the gate compares the int8
graph with the fp32 model on the validation split and fails the compile past its thresholds.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from edgekit_runtime.errors import EdgekitError

from ..compiler.state import CompileState, PassResult
from ..data import cap
from ..export.decoder import EXTERNAL_DATA_BYTES, check_decoder_file
from ..export.onnx_export import check_model_file
from ..train.causal import DECODER_QAT, qat_causal
from ..train.checkpoint import load_module, save_module
from ..train.finetune import evaluate, predict
from ..train.loop import distill_train
from ..train.scaling import scaled_qat
from ..validate.graph import ORT_DTYPES, onnx_predict, ort_session
from .fake import calibrate, enable_fake_quant, layer_sensitivity, prepare_qat, quantized_linears, restore_fp32
from .gate import quantized_gate
from .onnx_int8 import fold_weight_quantize, quantize_embeddings, unshare_activation_qdq
from .ptq import PTQConfig, quantize_dynamic_onnx, quantize_static_onnx, standard_ops_only

EMBEDDING_MIN_ROWS = 1000  # tables this large get int8 rows (the vocabulary; not positions or types)


def check_quantize(recipe, profile) -> None:
    """Preflight: what the recipe asks of int8 must be something the profile takes."""
    q = recipe.quantize
    if q.method == "none" or (q.method == "auto" and "int8" not in profile.precisions):
        return  # "auto" on a profile without int8: the budget plan picks fp32
    if "int8" not in profile.precisions:
        raise EdgekitError(f"[quantize] method = {q.method!r} but profile {profile.name!r} does not allow int8 "
                           f"(precisions {list(profile.precisions)}). Fix: set [quantize] method = \"none\".")
    fmt = q.resolved_format(profile.int8_format)
    if fmt not in profile.int8_formats:
        raise EdgekitError(f"[quantize] method = {q.method!r} makes a {fmt!r} graph, but profile {profile.name!r} "
                           f"takes {list(profile.int8_formats)}. Fix: use method = \"qat\" or \"ptq-static\" "
                           f"(qdq) for this target.")


def _batches(state: CompileState, n_batches: int, batch_size: int = 16):
    sample = cap(state.splits.train, n_batches * batch_size, 1)
    for start in range(0, len(sample), batch_size):
        batch = state.adapter.collate(state.tokenizer, sample.texts[start:start + batch_size], None,
                                      state.recipe.max_length)
        yield state.adapter.model_inputs(state.model, batch)


@torch.no_grad()
def quantize_embedding_weights(model: torch.nn.Module, min_rows: int = EMBEDDING_MIN_ROWS) -> list[str]:
    """Round the large embedding tables to what the int8 graph will hold (per-row symmetric int8)
    and freeze them, so QAT trains against, and the validation compares with, the deployed values."""
    done = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings >= min_rows:
            w = module.weight
            amax = w.abs().amax(dim=1, keepdim=True)
            scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
            w.copy_(torch.round(w / scale).clamp(-127, 127) * scale)
            w.requires_grad_(False)
            done.append(name)
    return done


def _selection_split(train, n: int, seed: int = 3):
    """(held-out selection texts, the rest for training): at most a fifth of the train split."""
    n = min(n, len(train) // 5)
    if n < 1:
        return None, train
    order = np.random.default_rng(seed).permutation(len(train))
    return train.subset(sorted(order[:n])), train.subset(sorted(order[n:]))


def pass_qat(state: CompileState) -> PassResult:
    cfg = state.recipe.quantize
    state.fp32_model = state.model
    model = prepare_qat(copy.deepcopy(state.model), cfg.qat)
    if not cfg.qat.dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if cfg.embeddings:
        frozen = quantize_embedding_weights(model)
    amax = calibrate(model, _batches(state, cfg.qat.calibration_batches))
    sensitivity, kept_fp32 = {}, []
    if cfg.qat.fp32_most_sensitive:
        # Train texts (never the validation split the gate reads), run with the model's own forward.
        sensitivity = layer_sensitivity(model, _batches(state, cfg.qat.sensitivity_batches), state.adapter.predictions)
        ranked = sorted(sensitivity, key=sensitivity.get, reverse=True)
        kept_fp32 = restore_fp32(model, ranked[:cfg.qat.fp32_most_sensitive])
    enable_fake_quant(model, on=True)
    val, max_len = state.splits.validation, state.recipe.max_length
    selection, train = _selection_split(state.splits.train, cfg.qat.selection_texts)
    if selection is not None:
        reference = predict(state.fp32_model, state.adapter, state.tokenizer, selection, max_len).argmax(-1)

        def agreement() -> float:
            return float((predict(model, state.adapter, state.tokenizer, selection, max_len).argmax(-1)
                          == reference).mean())

        def eval_fn() -> dict[str, float]:  # the first key is what picks the checkpoint
            return {"selection_agreement": agreement(),
                    **evaluate(model, state.adapter, state.tokenizer, val, max_len)}

        before = agreement()
        start_weights = copy.deepcopy(model.state_dict())
    else:
        def eval_fn() -> dict[str, float]:
            return evaluate(model, state.adapter, state.tokenizer, val, max_len)

    teacher = state.fp32_model.eval() if cfg.qat_teacher == "fp32" else state.teacher
    result = distill_train(
        model, teacher, state.adapter, state.tokenizer, train, val, state.recipe.qat_distill,
        scaled_qat(state.recipe.qat_train, len(train)), max_len, state.workdir / "qat", resume=state.resume,
        eval_fn=eval_fn)
    notes = list(result.alerts)
    kept = "qat"
    if selection is not None:
        after = agreement()
        if after < before:  # training made it worse at what it is for: keep the calibrated weights
            model.load_state_dict(start_weights)
            kept = "calibrated"
            notes.append(f"QAT lowered argmax agreement with the fp32 model on {len(selection)} held-out train "
                         f"texts ({before:.4f} -> {after:.4f}): kept the calibrated int8 model from before QAT")
    state.model = model.eval()
    state.extra_files["training/qat_loss_curve.jsonl"] = result.curve_path
    top = sorted(sensitivity.items(), key=lambda kv: kv[1], reverse=True)[:5]
    figures = {"quantized_linears": len(quantized_linears(model)), "calibrated_ranges": len(amax),
               "kept_fp32": kept_fp32, "most_sensitive": {k: round(v, 5) for k, v in top},
               "int8_embedding_tables": frozen if cfg.embeddings else [],
               "distilled_from": cfg.qat_teacher,
               "selection": None if selection is None else {
                   "texts": len(selection), "agreement_before_qat": before, "agreement_after_qat": after,
                   "kept": kept},
               "steps": result.steps, "seconds": round(result.seconds, 1), "best_checkpoint_metric": result.best_metric,
               "history": result.history, "alerts": result.alerts}
    state.figures.setdefault("compression", {})["qat"] = figures
    return PassResult(figures=figures, notes=notes)


def pass_int8(state: CompileState) -> PassResult:
    """Make the int8 graph: fold QAT weight quantizers, or quantize the fp32 graph with ORT; int8 embeddings."""

    cfg = state.recipe.quantize
    if state.fp32_model is None:  # PTQ: the model as exported is the reference
        state.fp32_model = state.model
    src = state.onnx_path
    before = src.stat().st_size
    dst = state.workdir / "model-int8.onnx"
    figures: dict = {"method": state.target.int8_method, "format": state.target.int8_format}
    if cfg.method == "qat":
        model, report = fold_weight_quantize(onnx.load(str(src)))
        figures["folded_weights"] = report.folded
    elif cfg.method == "ptq-static":
        # ONNX has no quantized Gemm: QOperator would emit com.microsoft.QGemm, so there only MatMul is
        # quantized (the 2-D pooler / classifier Gemms stay fp32); QDQ quantizes both in standard ops.
        ops = ("MatMul",) if figures["format"] == "qoperator" else ("MatMul", "Gemm")
        ptq = PTQConfig(method="static", format=figures["format"], calibration_samples=cfg.calibration_samples,
                        op_types_to_quantize=ops)
        feeds = calibration_feeds(state, cfg.calibration_samples)
        model = onnx.load(str(quantize_static_onnx(src, dst, feeds, ptq).path))
    else:
        model = onnx.load(str(quantize_dynamic_onnx(src, dst, PTQConfig(method="dynamic")).path))
    if figures["format"] == "qdq":  # one Q -> DQ pair per reader: what onnxruntime fuses into int8 MatMuls
        model, figures["qdq_pairs_unshared"] = unshare_activation_qdq(model)
    if cfg.embeddings:
        model, emb = quantize_embeddings(model, min_rows=EMBEDDING_MIN_ROWS)
        figures["embeddings"] = {"tables": emb.tables, "bytes_before": emb.bytes_before, "bytes_after": emb.bytes_after}
    onnx.save(model, str(dst))
    check_model_file(dst)
    figures["non_standard_ops"] = standard_ops_only(model)
    figures.update(bytes_fp32=before, bytes_int8=dst.stat().st_size)
    state.onnx_path = dst
    state.precision = "int8"
    return PassResult(figures=figures, notes=[f"int8 graph: {before / 1e6:.1f} MB -> {dst.stat().st_size / 1e6:.1f} MB"])


def calibration_feeds(state: CompileState, n: int):
    """Calibration feeds for static PTQ: batches of 16 train texts, typed as the ONNX graph's inputs."""
    types = {i.name: ORT_DTYPES[i.type] for i in ort_session(state.onnx_path).get_inputs()}
    sample = cap(state.splits.train, n, 2)
    for start in range(0, len(sample), 16):
        batch = state.adapter.collate(state.tokenizer, sample.texts[start:start + 16], None, state.recipe.max_length)
        yield {name: batch[name].numpy().astype(dtype) for name, dtype in types.items()}


def pass_quant_gate(state: CompileState) -> PassResult:
    """The int8 graph against the fp32 model on the validation split: argmax agreement and metric drop."""

    val = state.splits.validation
    reference = predict(state.fp32_model, state.adapter, state.tokenizer, val, state.recipe.max_length)
    quantized = onnx_predict(ort_session(state.onnx_path, state.recipe.threads), state.adapter, state.tokenizer,
                             val, state.recipe.max_length)
    figures = quantized_gate(reference, quantized, np.asarray(val.labels), state.adapter.metrics,
                             state.recipe.quantize.gate)
    state.figures["quant_gate"] = figures
    return PassResult(changed=False, figures=figures,
                      notes=[f"int8 vs fp32 on {figures['rows']} validation texts: argmax agreement "
                             f"{figures['argmax_agreement']:.4f}, {figures['metric']} drop "
                             f"{figures['metric_drop'] * 100:+.2f} points"])


def pass_qat_lm(state: CompileState) -> PassResult:
    """int8 fake-quant fine-tune of a causal LM's block Linears, distilled from the fp32 model it starts as."""
    saved = state.workdir / "student-qat.pt"
    if state.resume and saved.is_file():
        (state.model, state.fp32_model), figures = load_module(saved)
        state.precision = "int8"
        return PassResult(figures=figures, notes=[f"resumed: the QAT model reloaded from {saved}"])
    cfg = state.recipe.quantize
    state.fp32_model = copy.deepcopy(state.model)
    qat = dataclasses.replace(DECODER_QAT, fp32_most_sensitive=cfg.fp32_most_sensitive)
    model, figures = qat_causal(state.model, state.tokenizer, state.splits.train, qat=qat, reference=state.fp32_model,
                                steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.learning_rate,
                                max_length=state.recipe.max_length, progress=state.progress, seed=state.recipe.seed)
    state.model, state.precision = model, "int8"
    figures = {k: v for k, v in figures.items() if not isinstance(v, (list, dict))}
    save_module(saved, torch.nn.ModuleList([state.model, state.fp32_model]), figures)
    return PassResult(figures=figures)


def int8_decoder_graph(src: Path, dst: Path, ops: str = "standard") -> tuple[Path, dict[str, Any]]:
    """What the encoders' int8 pass does to a QAT graph: int8 weight initializers instead of fp32
    weights plus QuantizeLinear, one Q -> DQ pair per MatMul (what ONNX Runtime fuses into int8
    kernels), and the token embedding table as int8 rows with fp32 per-row scales."""
    model, report = fold_weight_quantize(onnx.load(str(src)))
    model, unshared = unshare_activation_qdq(model)
    model, emb = quantize_embeddings(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    large = report.bytes_after + emb.bytes_after > EXTERNAL_DATA_BYTES
    onnx.save(model, str(dst), save_as_external_data=large, location=dst.name + ".data" if large else None)
    check_decoder_file(dst, ops=ops)
    return dst, {"folded_weights": report.folded, "qdq_pairs_unshared": unshared, "int8_embedding_tables": len(emb.tables)}
