"""The evaluation stage: quality on the held-back test split for the teacher, the student and the
exported graph itself (run as the device runs it), and the host latency pair."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import edgekit_runtime
import numpy as np
import onnx
from edgekit_runtime.backends.ort import ort_session

from ..compiler.state import CompileState, PassResult
from ..export.decoder import position_ids_from_mask
from ..models.decoder import DecoderError
from ..models.passes import param_count
from ..train.causal import next_token_targets, perplexity, text_batches
from ..train.finetune import predict
from .latency import latency_pair


def pass_evaluate_teacher(state: CompileState) -> PassResult:
    test = state.splits.test
    logits = predict(state.model, state.adapter, state.tokenizer, test, state.recipe.max_length)
    metrics = state.adapter.metrics(logits, np.asarray(test.labels))
    majority = int(np.bincount(state.splits.train.labels).argmax())
    baseline = state.adapter.metrics(np.eye(len(state.label_names))[[majority] * len(test)], np.asarray(test.labels))
    state.figures.setdefault("quality", {}).update(
        {"split": "test", "rows": len(test), "teacher_pytorch": metrics, "majority_baseline": baseline,
         "majority_label": state.label_names[majority]})
    return PassResult(changed=False, figures={"teacher_pytorch": metrics, "majority_baseline": baseline})


def pass_evaluate_bundle(state: CompileState) -> PassResult:
    """Stage the bundle, load it with the device runtime, and measure it as a device would."""


    stage = edgekit_runtime.write_bundle(state.workdir / "stage", state.adapter.bundle_files(state),
                                         state.adapter.manifest(state),
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


def _ppl(state: CompileState, model) -> float:

    return perplexity(model, state.tokenizer, state.splits.test, max_length=state.recipe.max_length, batch_size=16)


def pass_evaluate_lm_teacher(state: CompileState) -> PassResult:
    ppl = _ppl(state, state.teacher)
    state.figures["teacher"] = {"test_perplexity": ppl, "params": param_count(state.teacher)}
    return PassResult(changed=False, figures={"test_perplexity": round(ppl, 4)})


def pass_evaluate_lm_student(state: CompileState) -> PassResult:
    ppl = _ppl(state, state.model)
    teacher = state.figures["teacher"]
    state.figures["student"] = {"test_perplexity": ppl, "params": param_count(state.model),
                                "perplexity_vs_teacher": ppl / teacher["test_perplexity"],
                                "params_vs_teacher": param_count(state.model) / teacher["params"]}
    return PassResult(changed=False, figures={k: round(v, 4) for k, v in state.figures["student"].items()})


def graph_perplexity(onnx_path: Path, tokenizer, texts: Sequence[str], max_length: int, threads: int | None = None,
                     batch_size: int = 16, quantized: bool = False) -> float:
    """Token-weighted perplexity of the exported graph in ONNX Runtime (prefill only, empty past)."""


    graph = onnx.load(str(onnx_path), load_external_data=False)
    inputs = {i.name: i for i in graph.graph.input}
    token_dtype = np.int32 if inputs["input_ids"].type.tensor_type.elem_type == onnx.TensorProto.INT32 else np.int64
    past = [(name, [d.dim_value for d in v.type.tensor_type.shape.dim]) for name, v in inputs.items()
            if name.startswith("past_key_values.")]
    session = ort_session(str(onnx_path), ["CPUExecutionProvider"], threads=threads, quantized=quantized)
    total, count = 0.0, 0
    for batch in text_batches(tokenizer, texts, max_length, batch_size):
        ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
        feeds = {"input_ids": ids.astype(token_dtype), "attention_mask": mask.astype(token_dtype),
                 "position_ids": np.asarray(position_ids_from_mask(mask)).astype(token_dtype)}
        for name, dims in past:
            feeds[name] = np.zeros((len(ids), dims[1], 0, dims[3]), dtype=np.float32)
        logits = session.run(["logits"], feeds)[0].astype(np.float64)
        targets, real = next_token_targets(batch["input_ids"], batch["attention_mask"])
        targets, real = targets.numpy(), real.numpy().astype(bool)
        picked = logits[real]
        picked = picked - picked.max(-1, keepdims=True)
        logz = np.log(np.exp(picked).sum(-1))
        total += float((logz - picked[np.arange(len(picked)), targets[real]]).sum())
        count += int(real.sum())
    return math.exp(total / count)


def pass_evaluate_graph(state: CompileState) -> PassResult:
    ppl = graph_perplexity(state.onnx_path, state.tokenizer, state.splits.test, state.recipe.max_length,
                           threads=state.recipe.threads, quantized=state.precision == "int8")
    fp32 = state.figures.get("student", state.figures["teacher"])["test_perplexity"]
    state.figures["graph"] = {"test_perplexity": ppl, "precision": state.precision,
                              "perplexity_vs_fp32": ppl / fp32,
                              "perplexity_vs_teacher": ppl / state.figures["teacher"]["test_perplexity"]}
    limit = 1 + state.recipe.quantize.max_ppl_increase
    if state.precision == "int8" and ppl > limit * fp32:
        raise DecoderError(f"int8 gate: the int8 graph's test perplexity {ppl:.3f} is {ppl / fp32:.3f}x the fp32 "
                           f"model's {fp32:.3f}, over the limit {limit:.3f}x. Fix: more QAT steps "
                           f"(quantize.steps), keep more Linears fp32 (quantize.fp32_most_sensitive), or compile "
                           f"without int8 (quantize.method = \"none\").")
    return PassResult(changed=False, figures={k: (round(v, 4) if isinstance(v, float) else v)
                                              for k, v in state.figures["graph"].items()})
