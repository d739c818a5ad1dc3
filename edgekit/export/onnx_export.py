"""torch -> ONNX opset 13 with the legacy (TorchScript) exporter.

The dynamo exporter cannot go below opset 18 and SDPA attention fails at 13, so models are
loaded with eager attention and exported with ``dynamo=False``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from edgekit_runtime.errors import EdgekitError

from ..compiler.adapter import TaskAdapter

OPSET = 13


class ExportError(EdgekitError):
    """The model could not be exported to a valid opset-13 graph."""


def export_onnx(model: torch.nn.Module, adapter: TaskAdapter, tokenizer, example_texts: list[str],
                path: str | Path, max_length: int, opset: int = OPSET) -> Path:
    """Export ``model`` with dynamic batch and sequence axes; the file passes the full checker."""
    path = Path(path)
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "eager")
    if impl not in (None, "eager"):
        raise ExportError(f"model uses attn_implementation={impl!r}; opset {opset} export needs 'eager'. "
                          f"Fix: load it with attn_implementation='eager' (the task adapter does).")
    io = adapter.export_io(model, tokenizer)
    batch = adapter.collate(tokenizer, example_texts, None, max_length)
    args = tuple(batch[name] for name in io.input_names)
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent Python branches
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=opset,
                          input_names=list(io.input_names), output_names=list(io.output_names),
                          dynamic_axes=io.dynamic_axes, do_constant_folding=True)
    check_model_file(path)
    return path


def check_model_file(path: str | Path) -> onnx.ModelProto:
    """Load and run ``onnx.checker`` with full_check (shape inference included); raise on failure."""
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: onnx.checker (full_check) failed: {exc}. Fix: report this graph; "
                          f"the exporter or a rewrite rule produced an invalid model.") from None
    domains = {op.domain for op in model.opset_import} - {"", "ai.onnx"}
    if domains:
        raise ExportError(f"{path}: uses non-standard domains {sorted(domains)}; edgekit graphs are standard ONNX only.")
    return model
