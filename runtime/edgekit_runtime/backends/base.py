"""What every backend is: the tensor specs, the Backend interface, and the skip signal a backend
raises when it does not apply on this machine (a leaf: the ORT and TensorRT backends build on it)."""

from __future__ import annotations

import abc
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

log = logging.getLogger("edgekit_runtime")

ORT_PROVIDERS = {
    "ort-tensorrt": "TensorrtExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-cpu": "CPUExecutionProvider",
}
# onnxruntime type strings -> the dtype words the manifest uses.
ORT_DTYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32",
               "tensor(float16)": "float16", "tensor(double)": "float64", "tensor(bool)": "bool"}
SMOKE_BATCH, SMOKE_SEQUENCE = 1, 8

# onnxruntime fuses MatMul + Add into Gemm (MatMulAddFusion) before its QDQ selectors look at the
# graph, and DequantizeLinear -> Gemm without an output QuantizeLinear has no int8 kernel: a QDQ
# int8 graph then runs every Linear in fp32 on weights dequantized at each call, slower than the
# fp32 graph. Without that fusion, DQ -> MatMul becomes MatMulIntegerToFloat (int8 GEMM) and the
# bias Add stays a separate node. Measured with onnxruntime 1.32 on x86-64 (one 128x384 @ 384x1536
# Linear, 1 thread): fp32 0.77 ms; QDQ 1.90 ms with the fusion, 0.20 ms without it.
# The same fusion needs one Q -> DQ pair per MatMul: edgekit's int8 pass gives each reader its own
# pair, and onnxruntime's common-subexpression elimination would merge them back (Q, K and V read
# the same input), so it is off too. On the demo's 3-layer QAT student (b1 x s128, 2 threads): 17
# of 17 int8 Linears fused instead of 8, 7.05 ms instead of 10.0 ms.
QDQ_CPU_DISABLED_OPTIMIZERS = ("MatMulAddFusion", "CommonSubexpressionElimination")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype word: "int64", "float32", ...
    shape: tuple[int | str | None, ...]


class Backend(abc.ABC):
    """Runs the graph: feeds by input name in, outputs by name out."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @abc.abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ...


class Skip(Exception):
    """This backend does not apply on this machine (not an error in the bundle)."""


def trt_cache_dir() -> Path:
    # Building a TensorRT engine takes minutes on a Jetson; the engine is cached per device.
    root = os.environ.get("EDGEKIT_CACHE_DIR") or Path.home() / ".cache" / "edgekit-runtime"
    return Path(root) / "tensorrt-engines"


