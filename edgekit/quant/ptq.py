"""Post-training int8 quantization of an exported ONNX graph with ONNX Runtime's quantizer.

    static  qdq        weights and activations int8, ranges calibrated on real tokenized task
                       texts; standard QuantizeLinear/DequantizeLinear around each MatMul/Gemm
                       (TensorRT's explicit-quantization input; ORT CPU fuses it at load time).
    static  qoperator  the same ranges as integer ops: QLinearMatMul (standard), but Gemm becomes
                       com.microsoft.QGemm (ONNX has no QLinearGemm), so not for standard-only targets.
    dynamic            int8 weights, activations quantized at run time: DynamicQuantizeLinear +
                       MatMulInteger (standard); no calibration.

Static graphs are symmetric int8 with zero point 0 everywhere (TensorRT requires it); weights
are per output channel by default. Dynamic graphs have symmetric int8 weights but uint8
activations with a run-time zero point (ONNX DynamicQuantizeLinear is uint8 only): a CPU format. Only MatMul and Gemm are quantized by default: LayerNorm, Softmax and GELU
stay fp32. The opset is kept: an opset-13 graph comes out opset 13 (checked).

``quant_pre_process`` is not run: on the legacy-exported HF encoders its symbolic shape inference
fails ("Incomplete symbolic shape inference") unless ``auto_merge``; its optimizer stamps nine
extra domains (com.microsoft, ai.onnx.ml, ...) into the opset imports; and with ``auto_merge`` and
``skip_optimization`` the quantized graph has the same nodes and initializers as without it.
(ORT's CPU session may still fuse the standard int8 patterns into its contrib kernels, e.g.
DynamicQuantizeMatMul, at load time; that happens in memory, not in the file.)
"""

from __future__ import annotations

import io
import logging
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
import onnx
from edgekit_runtime.errors import EdgekitError
from onnxruntime.quantization import CalibrationDataReader

from ..config import require
from ..export.graph import STANDARD_DOMAINS, iter_nodes
from ..export.opcheck import op_histogram

METHODS = ("static", "dynamic")
FORMATS = ("qdq", "qoperator")
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_OP_TYPES = ("MatMul", "Gemm")
# Calibration batches MinMax holds before folding them into running ranges (bounds memory; the
# ranges are the same as with all batches at once). Entropy and percentile hold every batch.
_INPUT_DTYPES = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32,
                 onnx.TensorProto.FLOAT: np.float32}


class PTQError(EdgekitError):
    """A graph cannot be quantized as asked, or the quantized graph is not what was asked for."""


@dataclass(frozen=True)
class PTQConfig:
    """How to quantize: method, format and calibration (the last two are for ``static`` only)."""

    method: str = "static"                     # "static" | "dynamic"
    format: str | None = None                  # static only: "qdq" (default) | "qoperator"
    per_channel: bool = True                   # weight scales per output channel
    calibration_samples: int = 256             # static only: texts fed to the calibrator
    calibrate_method: str | None = None        # static only: "minmax" (default) | "entropy" | "percentile"
    op_types_to_quantize: tuple[str, ...] = DEFAULT_OP_TYPES

    def __post_init__(self):
        require(self.method in METHODS, "ptq", "method", self.method, f"must be one of {list(METHODS)}",
                'use "static" (calibrated int8 activations) or "dynamic" (int8 weights only)')
        for key, allowed in (("format", FORMATS), ("calibrate_method", CALIBRATE_METHODS)):
            value = getattr(self, key)
            if self.method == "dynamic":
                require(value is None, "ptq", key, value, 'applies to method = "static" only',
                        f'leave {key} out, or set method = "static"')
            else:
                require(value is None or value in allowed, "ptq", key, value, f"must be one of {list(allowed)}",
                        f"use {allowed[0]!r}, or leave it out")
        require(isinstance(self.per_channel, bool), "ptq", "per_channel", self.per_channel,
                "must be true or false", "use true (per output channel weight scales)")
        require(isinstance(self.calibration_samples, int) and self.calibration_samples >= 1, "ptq",
                "calibration_samples", self.calibration_samples, "must be a positive integer", "use 256")
        ops = self.op_types_to_quantize
        ops = (ops,) if isinstance(ops, str) else tuple(ops)
        object.__setattr__(self, "op_types_to_quantize", ops)
        require(bool(ops) and all(isinstance(o, str) and o for o in ops), "ptq", "op_types_to_quantize", ops,
                "must be a non-empty list of ONNX op types", f"use {list(DEFAULT_OP_TYPES)}")
        known = _quantizable_ops(self.method, self.quant_format)
        unknown = [o for o in ops if o not in known]
        require(not unknown, "ptq", "op_types_to_quantize", ops,
                f"onnxruntime cannot quantize {unknown} with method={self.method!r}"
                + (f", format={self.quant_format!r}" if self.method == "static" else ""),
                f"choose from {sorted(known)}")

    @property
    def quant_format(self) -> str | None:
        """The static format in effect ("qdq" unless set); None for dynamic."""
        return None if self.method == "dynamic" else self.format or "qdq"

    @property
    def calibration(self) -> str | None:
        """The calibration method in effect ("minmax" unless set); None for dynamic."""
        return None if self.method == "dynamic" else self.calibrate_method or "minmax"


def _quantizable_ops(method: str, fmt: str | None) -> set[str]:
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    if method == "dynamic":
        # The dynamic quantizer first rewrites every Gemm as MatMul + Add (then quantizes the MatMul).
        return set(IntegerOpsRegistry) | {"Gemm"}
    return set(QDQRegistry if fmt == "qdq" else QLinearOpsRegistry)


@dataclass(frozen=True)
class PTQReport:
    """What a quantization produced (figures for the pass log)."""

    path: Path
    method: str
    format: str | None
    ops: dict[str, int]                # op histogram of the quantized graph
    non_standard_ops: list[str]        # ``standard_ops_only``: empty when every op is standard ONNX
    calibration_samples: int           # texts the calibrator saw (0 for dynamic)
    bytes: int


def standard_ops_only(model: onnx.ModelProto) -> list[str]:
    """The ops outside the standard ONNX domains (e.g. "com.microsoft.QGemm"); empty if none."""
    return sorted({f"{n.domain}.{n.op_type}" for n in iter_nodes(model.graph) if n.domain not in STANDARD_DOMAINS})


class _FeedReader(CalibrationDataReader):
    """Caller batches for ORT's calibrator: cast to the graph's dtypes, capped at ``limit`` rows."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]], inputs: dict[str, type], limit: int):
        self._batches = self._take(feeds, inputs, limit)
        self.rows = 0

    def _take(self, feeds, inputs, limit) -> Iterator[dict[str, np.ndarray]]:
        for feed in feeds:
            if self.rows >= limit:
                return
            missing = [name for name in inputs if name not in feed]
            if missing:
                raise PTQError(f"calibration batch has no {missing} (it has {sorted(feed)}); the graph takes "
                               f"{sorted(inputs)}. Fix: tokenize the calibration texts with the model's "
                               f"tokenizer so every graph input is fed.")
            take = limit - self.rows
            batch = {name: np.asarray(feed[name])[:take].astype(dtype) for name, dtype in inputs.items()}
            self.rows += len(next(iter(batch.values())))
            yield batch

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@contextmanager
def _quiet_ort_quantizer():
    """Silence ORT's 'consider pre-processing' warning (the module docstring says why we don't) and
    the histogram calibrators' progress prints, which would land in the middle of a compile's output."""

    def keep(record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(keep)


def _graph_inputs(model: onnx.ModelProto) -> dict[str, type]:
    initializers = {t.name for t in model.graph.initializer}
    out = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        elem = value.type.tensor_type.elem_type
        if elem not in _INPUT_DTYPES:
            raise PTQError(f"graph input {value.name!r} has type {onnx.TensorProto.DataType.Name(elem)}; "
                           f"calibration feeds only int64, int32 or float inputs. Fix: export token inputs as "
                           f"int64 or int32.")
        out[value.name] = _INPUT_DTYPES[elem]
    return out


def _opset(model: onnx.ModelProto) -> int | None:
    return next((imp.version for imp in model.opset_import if imp.domain in STANDARD_DOMAINS), None)


def _finish(src_model: onnx.ModelProto, dst: Path, cfg: PTQConfig, rows: int) -> PTQReport:
    model = onnx.load(str(dst))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise PTQError(f"{dst}: the quantized graph fails onnx.checker: {exc}. Fix: report it with the "
                       f"onnxruntime version; try the other format or method meanwhile.") from None
    before, after = _opset(src_model), _opset(model)
    if before != after:
        raise PTQError(f"{dst}: quantization changed the opset from {before} to {after}. Fix: quantize to "
                       f"int8 (16-bit and fp8 types need newer opsets), or re-export at opset {after}.")
    return PTQReport(path=dst, method=cfg.method, format=cfg.quant_format, ops=op_histogram(model),
                     non_standard_ops=standard_ops_only(model), calibration_samples=rows,
                     bytes=dst.stat().st_size)


def quantize_static_onnx(src: str | Path, dst: str | Path, calibration_feeds: Iterable[Mapping[str, np.ndarray]],
                         cfg: PTQConfig = PTQConfig()) -> PTQReport:
    """Calibrate on ``calibration_feeds`` (tokenized task-text batches) and write the int8 graph to ``dst``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if cfg.method != "static":
        raise PTQError(f"quantize_static_onnx got PTQConfig(method={cfg.method!r}). "
                       f"Fix: call quantize_dynamic_onnx, or set method='static'.")
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    reader = _FeedReader(calibration_feeds, _graph_inputs(model), cfg.calibration_samples)
    calibration = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}[cfg.calibration]
    extra = {
        # TensorRT takes only zero point 0: symmetric int8 activations and weights.
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        # ORT would quantize Gemm biases to int32 behind a DequantizeLinear, which TensorRT's parser
        # rejects ("only activation types allowed as input"); a float bias is what it fuses.
        "QuantizeBias": False,
        # Quantize the inputs of the int8 ops only: their outputs (bias Add, GELU, Softmax, the
        # residual into LayerNorm) stay fp32 rather than taking a Q/DQ round trip.
        "OpTypesToExcludeOutputQuantization": list(cfg.op_types_to_quantize),
    }
    # Not CalibMaxIntermediateOutputs: onnxruntime 1.32 flushes its buffer every N batches and then
    # fails with "No data is collected" when the batch count is a multiple of N.
    fmt = QuantFormat.QDQ if cfg.quant_format == "qdq" else QuantFormat.QOperator
    with _quiet_ort_quantizer():
        try:
            quantize_static(str(src), str(dst), reader, quant_format=fmt,
                            op_types_to_quantize=list(cfg.op_types_to_quantize), per_channel=cfg.per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=calibration, extra_options=extra)
        except ValueError as exc:
            if reader.rows == 0:
                raise PTQError("no calibration batches were given. Fix: pass tokenized task texts "
                               f"(up to calibration_samples = {cfg.calibration_samples}).") from exc
            raise
    return _finish(model, dst, cfg, reader.rows)


def quantize_dynamic_onnx(src: str | Path, dst: str | Path, cfg: PTQConfig = PTQConfig(method="dynamic")) -> PTQReport:
    """Write ``src`` with int8 weights and run-time-quantized activations to ``dst`` (no calibration)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if cfg.method != "dynamic":
        raise PTQError(f"quantize_dynamic_onnx got PTQConfig(method={cfg.method!r}). "
                       f"Fix: call quantize_static_onnx, or set method='dynamic'.")
    src, dst = Path(src), Path(dst)
    with _quiet_ort_quantizer():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(cfg.op_types_to_quantize),
                         per_channel=cfg.per_channel, weight_type=QuantType.QInt8,
                         extra_options={"WeightSymmetric": True})
    return _finish(onnx.load(str(src)), dst, cfg, 0)
