"""Post-processing per task: graph outputs -> one result dict per text.

A task is one ``TaskHead`` entry in ``POSTPROCESSORS``: the graph outputs it reads, a check of
the manifest run at load time (so a bad bundle fails before the first text), and the function
that turns one batch's outputs into results. Token classification, extractive QA and causal
LM are one new entry each; the batch passed in carries the encodings (offsets, word ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from .bundle.format import manifest_value
from .errors import BackendError, BundleError, InputError
from .tokenizer import EncodedBatch

Outputs = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class TaskHead:
    name: str
    outputs: tuple[str, ...]  # graph outputs the post-processor reads; the first is the raw prediction
    check: Callable[[Mapping[str, Any]], None]  # manifest -> None, raises BundleError
    postprocess: Callable[[Outputs, Mapping[str, Any], EncodedBatch], list[dict[str, Any]]]


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (max subtracted, float64 accumulation)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _check_finite(name: str, values: np.ndarray) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        rows = sorted({int(i) for i in np.argwhere(bad)[:, 0]})
        raise BackendError(f"output {name!r} has NaN or inf for batch items {rows[:10]}: the result is undefined, "
                           f"so nothing is returned. Fix: run with the ort-cpu backend to tell a backend precision "
                           f"problem from a broken model.")


def _output_specs(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {o.get("name"): o for o in manifest_value(manifest, "model.outputs", list) if isinstance(o, dict)}


def _check_classification(manifest: Mapping[str, Any]) -> None:
    labels = manifest_value(manifest, "task.labels", list)
    if not labels or not all(isinstance(x, str) and x for x in labels) or len(set(labels)) != len(labels):
        raise BundleError(f"manifest.json: task.labels is {labels!r}, expected distinct non-empty label names. "
                          f"Fix: recompile the bundle with the task's label names.")
    logits = _output_specs(manifest).get("logits")
    if logits is None:
        raise BundleError(f"manifest.json: model.outputs has no 'logits' (has {list(_output_specs(manifest))}); "
                          f"sequence-classification reads 'logits'. Fix: export with output_names=['logits'].")
    shape = logits.get("shape")
    if isinstance(shape, list) and len(shape) == 2 and isinstance(shape[1], int) and shape[1] not in (0, len(labels)):
        raise BundleError(f"manifest.json: output 'logits' has {shape[1]} classes but task.labels names "
                          f"{len(labels)}. Fix: recompile the bundle with matching labels.")


def _classify(outputs: Outputs, task: Mapping[str, Any], batch: EncodedBatch) -> list[dict[str, Any]]:
    labels = task["labels"]
    logits = np.asarray(outputs["logits"])
    if logits.shape != (len(batch.truncated), len(labels)):
        raise BundleError(f"output 'logits' has shape {logits.shape}, expected ({len(batch.truncated)}, {len(labels)}) "
                          f"for {len(batch.truncated)} texts and labels {labels}. Fix: recompile the bundle.")
    _check_finite("logits", logits)
    probs = softmax(logits)
    best = probs.argmax(axis=-1)
    return [{"label": labels[b], "score": float(p[b]), "probabilities": dict(zip(labels, map(float, p)))}
            for b, p in zip(best, probs)]


def _int_field(task: Mapping[str, Any], key: str, low: int, high: int | None = None) -> int:
    value = task.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value >= high):
        bound = f">= {low}" if high is None else f"in [{low}, {high})"
        raise BundleError(f"manifest.json: task.{key} is {value!r}, expected an integer {bound}. "
                          f"Fix: recompile the bundle (docs/decoder.md lists the causal-lm task section).")
    return value


def _check_causal_lm(manifest: Mapping[str, Any]) -> None:
    """The task section of docs/decoder.md, and model IO that is the KV-cache graph for its layers."""
    task = manifest_value(manifest, "task", dict)
    layers = _int_field(task, "num_layers", 1)
    for key in ("num_key_value_heads", "head_dim", "max_context"):
        _int_field(task, key, 1)
    vocab = _int_field(task, "vocab_size", 1)
    _int_field(task, "pad_token_id", 0, vocab)
    if task.get("bos_token_id") is not None:
        _int_field(task, "bos_token_id", 0, vocab)
    eos = task.get("eos_token_ids")
    if not isinstance(eos, list) or not eos or not all(isinstance(i, int) and not isinstance(i, bool)
                                                       and 0 <= i < vocab for i in eos):
        raise BundleError(f"manifest.json: task.eos_token_ids is {eos!r}, expected a non-empty list of token ids "
                          f"below vocab_size {vocab}. Fix: recompile the bundle.")
    if task.get("chat_template") is not None and not isinstance(task["chat_template"], str):
        raise BundleError("manifest.json: task.chat_template is not a string or null. Fix: recompile the bundle.")
    think = task.get("think")
    if think is not None and not (isinstance(think, dict) and isinstance(think.get("start"), str)
                                  and isinstance(think.get("end"), str) and think["start"] and think["end"]):
        raise BundleError(f"manifest.json: task.think is {think!r}, expected null or "
                          f'{{"start": "<think>", "end": "</think>"}}. Fix: recompile the bundle.')
    kv = [f"{kind}.{i}.{part}" for i in range(layers) for kind in ("past_key_values", "present")
          for part in ("key", "value")]
    want_in = {"input_ids", "attention_mask", "position_ids", *(n for n in kv if n.startswith("past_"))}
    want_out = {"logits", *(n for n in kv if n.startswith("present."))}
    inputs = {s.get("name") for s in manifest_value(manifest, "model.inputs", list) if isinstance(s, dict)}
    outputs = set(_output_specs(manifest))
    if inputs != want_in or not want_out <= outputs:
        raise BundleError(f"manifest.json: model inputs/outputs are not the KV-cache graph for task.num_layers "
                          f"{layers} (missing inputs {sorted(want_in - inputs)[:4]}, unexpected "
                          f"{sorted(map(str, inputs - want_in))[:4]}, missing outputs "
                          f"{sorted(want_out - outputs)[:4]}). Fix: export with edgekit.decoder.export and "
                          f"recompile the bundle.")


def _not_a_pass(outputs: Outputs, task: Mapping[str, Any], batch: EncodedBatch) -> list[dict[str, Any]]:
    raise InputError("a causal-lm bundle generates text token by token; one forward pass has no result. "
                     "Fix: call model.generate(prompts) (CLI: edgekit-run generate; serve: POST /generate).")


POSTPROCESSORS: dict[str, TaskHead] = {
    "sequence-classification": TaskHead("sequence-classification", ("logits",), _check_classification, _classify),
    # Generation is a loop, not a post-processor: CausalLMModel.generate runs it (generate.py).
    "causal-lm": TaskHead("causal-lm", ("logits",), _check_causal_lm, _not_a_pass),
}


def get_task(manifest: Mapping[str, Any]) -> TaskHead:
    """The head for the manifest's task, after checking the manifest matches it."""
    name = manifest_value(manifest, "task.name", str)
    if name not in POSTPROCESSORS:
        raise BundleError(f"manifest.json: task.name {name!r} is not a task this runtime runs; it knows "
                          f"{sorted(POSTPROCESSORS)}. Fix: install the edgekit-runtime version that matches the "
                          f"compiler that wrote the bundle.")
    head = POSTPROCESSORS[name]
    head.check(manifest)
    return head
