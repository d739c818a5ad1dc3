"""Numerical validation: the exported graph against its PyTorch reference. Fails closed.

Shapes are compared first, then values against the profile's tolerance for the precision;
every failing case is listed with its max difference, and the pass raises.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from edgekit_runtime.backends.ort import ort_session as runtime_session
from edgekit_runtime.errors import EdgekitError
from edgekit_runtime.profile import Tolerance

from ..compiler.adapter import TaskAdapter
from ..data import TextDataset
from ..recipe import ValidateConfig

ORT_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}


class ValidationError(EdgekitError):
    """The exported graph does not match its reference within tolerance."""


def ort_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session made the way the device runtime makes it (QDQ graphs get its int8 options)."""

    return runtime_session(path, ["CPUExecutionProvider"], threads=threads or None, quantized=is_qdq_graph(path))


def is_qdq_graph(path: str | Path) -> bool:
    """Whether the graph holds DequantizeLinear nodes (a QDQ int8 graph); read once per file version."""
    stat = Path(path).stat()
    return _has_dequantize(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _has_dequantize(path: str, mtime_ns: int, size: int) -> bool:  # the file's version is part of the key
    return any(n.op_type == "DequantizeLinear" for n in onnx.load(path, load_external_data=False).graph.node)


def run_session(session: ort.InferenceSession, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """Feed a tokenized batch, cast to the graph's input dtypes (int32 graphs included)."""
    feeds = {}
    for inp in session.get_inputs():
        if inp.name not in batch:
            raise ValidationError(f"graph input {inp.name!r} is not produced by the tokenizer/adapter")
        feeds[inp.name] = batch[inp.name].numpy().astype(ORT_DTYPES[inp.type])
    return session.run(None, feeds)


def onnx_predict(session, adapter: TaskAdapter, tokenizer, ds: TextDataset, max_length: int,
                 batch_size: int = 32) -> np.ndarray:
    """First graph output for every item of ``ds``, in order (length-sorted batches)."""
    order = np.argsort([len(t) for t in ds.texts], kind="stable")
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = adapter.collate(tokenizer, [ds.texts[i] for i in idx], None, max_length)
        out.append(run_session(session, batch)[0])
    result = np.concatenate(out)
    restored = np.empty_like(result)
    restored[order] = result
    return restored


@dataclass(frozen=True)
class CaseResult:
    batch_size: int
    length: int
    shape_ok: bool
    max_abs_diff: float
    passed: bool
    detail: str


def _exact_gelu_modules(model: torch.nn.Module):
    from transformers.activations import GELUActivation

    for parent in model.modules():
        for name, child in parent.named_children():
            exact_nn = isinstance(child, torch.nn.GELU) and child.approximate == "none"
            if exact_nn or type(child) is GELUActivation:
                yield parent, name


class _QuickGelu(torch.nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


# Rules that change the function computed get the same change on the PyTorch side, so the
# validation checks the graph against the model it is meant to be; the size of each change
# against the original model is measured separately (the substitution figures).
REFERENCE_PATCHES = {
    "gelu-tanh": lambda: torch.nn.GELU(approximate="tanh"),
    "gelu-sigmoid": _QuickGelu,
}


def reference_model(model: torch.nn.Module, rules: Sequence[str]) -> torch.nn.Module:
    """A copy of ``model`` computing what the rewritten graph computes."""
    patches = [REFERENCE_PATCHES[r] for r in rules if r in REFERENCE_PATCHES]
    if not patches:
        return model
    ref = copy.deepcopy(model)
    for parent, name in list(_exact_gelu_modules(ref)):
        setattr(parent, name, patches[-1]())
    return ref.eval()


@torch.no_grad()
def validate_graph(path: str | Path, model: torch.nn.Module, adapter: TaskAdapter, tokenizer,
                   ds: TextDataset, cfg: ValidateConfig, tolerance: Tolerance, max_length: int,
                   threads: int | None = None, compare_values: bool = True) -> list[CaseResult]:
    """Compare graph and model on real texts padded to each length; raise listing all failures.

    ``compare_values=False`` checks shapes and finiteness only (the differences are still recorded).
    """
    session = ort_session(path, threads)
    model.eval()
    results: list[CaseResult] = []
    texts = list(ds.texts)
    if not texts:
        raise ValidationError("the validation split is empty. Fix: give more data or a larger validation fraction.")
    cursor = 0
    for length in cfg.lengths:
        length = min(length, max_length)
        for bs in cfg.batch_sizes:
            worst, shape_ok, detail = 0.0, True, ""
            for _ in range(cfg.batches_per_shape):
                chunk = [texts[(cursor + i) % len(texts)] for i in range(bs)]
                cursor += bs
                batch = tokenizer(chunk, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
                batch = dict(batch)
                want = adapter.predictions(model(**adapter.model_inputs(model, batch))).float().numpy()
                got = run_session(session, batch)[0]
                if got.shape != want.shape:
                    shape_ok, detail = False, f"shape {got.shape} != reference {want.shape}"
                    break
                if not np.all(np.isfinite(got)):
                    worst, detail = float("inf"), "non-finite values in the graph output"
                    break
                diff = np.abs(got - want)
                worst = max(worst, float(diff.max()))
                bad = diff > tolerance.atol + tolerance.rtol * np.abs(want)
                if compare_values and bad.any() and not detail:
                    detail = f"{int(bad.sum())} of {bad.size} values beyond atol {tolerance.atol} + rtol {tolerance.rtol}"
            passed = shape_ok and not detail
            results.append(CaseResult(bs, length, shape_ok, worst, passed, detail))
    failures = [r for r in results if not r.passed]
    if failures:
        lines = [f"batch {r.batch_size} x length {r.length}: max |diff| {r.max_abs_diff:.3g}: {r.detail}" for r in failures]
        raise ValidationError(
            f"{path}: {len(failures)} of {len(results)} validation cases failed:\n  " + "\n  ".join(lines)
            + "\nFix: the graph does not compute what the model computes; check the rewrite rules in the pass "
              "log (disable one with [rewrite] rules = [...]) or report the export.")
    return results


def graph_input_dtypes(path: str | Path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name for i in model.graph.input}
