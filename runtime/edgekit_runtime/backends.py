"""Inference backends and the choice between them.

The profile lists backends in preference order. ``select_backend`` tries each: a backend whose
provider this machine lacks is skipped, one that fails to build a session or to run a smoke
inference falls back to the next, and every skip is logged with its reason. If none works the
error lists every reason. A session that onnxruntime silently moved to another provider counts
as a failure: a Jetson profile must not quietly become a CPU run.
"""

from __future__ import annotations

import abc
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from .errors import BackendError, BundleError
from .profile import DeviceProfile

log = logging.getLogger("edgekit_runtime")

ORT_PROVIDERS = {
    "ort-tensorrt": "TensorrtExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-cpu": "CPUExecutionProvider",
}
# onnxruntime type strings -> the dtype words the manifest uses.
_ORT_DTYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32",
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


class _Skip(Exception):
    """This backend does not apply on this machine (not an error in the bundle)."""


def _trt_cache_dir() -> Path:
    # Building a TensorRT engine takes minutes on a Jetson; the engine is cached per device.
    root = os.environ.get("EDGEKIT_CACHE_DIR") or Path.home() / ".cache" / "edgekit-runtime"
    return Path(root) / "tensorrt-engines"


class OrtBackend(Backend):
    """onnxruntime with one execution provider (CPU nodes for what the provider cannot run)."""

    def __init__(self, name: str, model_path: str | Path, *, threads: int | None = None,
                 available_providers: Sequence[str] | None = None, quantized: bool = False,
                 engine_plan: Mapping | None = None, model_sha256: str | None = None,
                 workspace_mb: int | None = None):
        """``engine_plan`` (the manifest's), ``model_sha256`` (default: hashed from the file) and
        ``workspace_mb`` shape the TensorRT provider's options (``trt_engine.ort_tensorrt_options``);
        the other providers ignore them."""
        if name not in ORT_PROVIDERS:
            raise BackendError(f"backend {name!r} is not an onnxruntime backend; those are {list(ORT_PROVIDERS)}.")
        self.name = name
        self.provider = ORT_PROVIDERS[name]
        self.trt_options: dict | None = None
        available = ort.get_available_providers() if available_providers is None else available_providers
        providers: list = [self.provider]
        if self.provider == "TensorrtExecutionProvider":
            from .bundle import sha256_file
            from .trt_engine import ort_engine_dir, ort_tensorrt_options

            engine_dir: Path | None = ort_engine_dir(_trt_cache_dir(), ort.__version__, engine_plan,
                                                     model_sha256 or sha256_file(model_path))
            try:
                engine_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("TensorRT engine cache disabled: cannot create %s (%s); every start rebuilds the "
                            "engine. Fix: set EDGEKIT_CACHE_DIR to a writable directory.", engine_dir, exc)
                engine_dir = None
            workspace = (engine_plan or {}).get("workspace_mb") or workspace_mb
            self.trt_options = ort_tensorrt_options(
                engine_plan, engine_dir, timing_dir=engine_dir.parent if engine_dir is not None else None,
                workspace_bytes=workspace << 20 if workspace else None)
            providers = [(self.provider, self.trt_options)]
            if "CUDAExecutionProvider" in available:
                providers.append("CUDAExecutionProvider")  # subgraphs TensorRT rejects stay on the GPU
        if self.provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        self.session = ort_session(model_path, providers, threads=threads, quantized=quantized)
        used = self.session.get_providers()
        if not used or used[0] != self.provider:
            raise BackendError(f"onnxruntime built the session on {used} instead of {self.provider} "
                               f"(the provider failed to initialise, e.g. a missing CUDA/TensorRT library)")
        self.inputs = tuple(TensorSpec(i.name, _ORT_DTYPES.get(i.type, i.type), tuple(i.shape))
                            for i in self.session.get_inputs())
        self.outputs = tuple(TensorSpec(o.name, _ORT_DTYPES.get(o.type, o.type), tuple(o.shape))
                             for o in self.session.get_outputs())
        self._output_names = [o.name for o in self.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(self._output_names, dict(feeds))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            raise BackendError(f"inference failed on backend {self.name} with input shapes {shapes}: {exc}. "
                               f"Fix: if memory ran out, lower --batch-size; otherwise try --backend ort-cpu.") from None
        return dict(zip(self._output_names, values))

    def __repr__(self) -> str:
        return f"OrtBackend({self.name!r}, providers={self.session.get_providers()})"


def ort_session(model_path: str | Path, providers: Sequence, *, threads: int | None = None,
                quantized: bool = False, optimized_path: str | Path | None = None) -> ort.InferenceSession:
    """An onnxruntime session as the runtime makes them: errors-only logging, ``threads`` intra-op
    threads, and for a ``quantized`` (QDQ int8) graph on the CPU provider the fusions that would
    keep its MatMuls off the int8 kernels switched off (see QDQ_CPU_DISABLED_OPTIMIZERS).
    ``optimized_path``: where onnxruntime writes the graph it runs, to inspect its fusions."""
    options = ort.SessionOptions()
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    options.log_severity_level = 3  # errors only; the reasons that matter are ours
    if threads is not None:
        options.intra_op_num_threads = threads
    first = providers[0] if isinstance(providers[0], str) else providers[0][0]
    disabled = list(QDQ_CPU_DISABLED_OPTIMIZERS) if quantized and first == "CPUExecutionProvider" else None
    return ort.InferenceSession(str(model_path), sess_options=options, providers=list(providers),
                                disabled_optimizers=disabled)


def smoke_feeds(inputs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """A tiny feed from the graph's own input specs: batch 1, sequence 8, ids 1, mask 1, types 0."""
    feeds = {}
    for spec in inputs:
        dims = [d if isinstance(d, int) and d > 0 else (SMOKE_BATCH if i == 0 else SMOKE_SEQUENCE)
                for i, d in enumerate(spec.shape)]
        fill = 0 if "type" in spec.name else 1
        feeds[spec.name] = np.full(dims, fill, dtype=np.dtype(spec.dtype))
    return feeds


def _create(word: str, model_path: Path, available: Sequence[str], threads: int | None, quantized: bool, *,
            engine_plan: Mapping | None = None, model_sha256: str | None = None,
            memory_budget_mb: int | None = None) -> Backend:
    if word == "tensorrt":
        from .trt_engine import TensorRTBackend  # imports tensorrt itself, lazily; _Skip when it is missing

        return TensorRTBackend(model_path, engine_plan, model_sha256=model_sha256, memory_budget_mb=memory_budget_mb)
    if word not in ORT_PROVIDERS:
        raise _Skip(f"unknown backend word; this runtime knows ['tensorrt', {', '.join(map(repr, ORT_PROVIDERS))}]")
    provider = ORT_PROVIDERS[word]
    if provider not in available:
        raise _Skip(f"{provider} is not available in this onnxruntime (available: {list(available)}); "
                    f"install the onnxruntime build that has it (onnxruntime-gpu, or the JetPack wheel on a Jetson)")
    workspace = None
    if provider == "TensorrtExecutionProvider" and memory_budget_mb:
        from .trt_engine import workspace_mb

        workspace = workspace_mb(memory_budget_mb)
    return OrtBackend(word, model_path, threads=threads, available_providers=available, quantized=quantized,
                      engine_plan=engine_plan, model_sha256=model_sha256, workspace_mb=workspace)


def select_backend(model_path: str | Path, profile: DeviceProfile, available_providers: Sequence[str] | None = None,
                   threads: int | None = None, *, backends: Sequence[str] | None = None,
                   feed_builder: Callable[[Backend], Mapping[str, np.ndarray]] | None = None,
                   quantized: bool = False, engine_plan: Mapping | None = None,
                   model_sha256: str | None = None) -> tuple[Backend, list[str]]:
    """The first of the profile's backends (or ``backends``) that builds and passes a smoke run.

    Returns the backend and the reasons the earlier ones were passed over. ``feed_builder``
    makes the smoke feed from the backend (default: ``smoke_feeds``); a BundleError it raises
    is the bundle's fault, not the backend's, and is not turned into a fallback. ``quantized``
    says the graph is QDQ int8 (the manifest's model.precision), which changes onnxruntime's CPU
    session options (see ``ort_session``). ``engine_plan`` (the manifest's, checked) drives the
    TensorRT backends: precision flags, min/opt/max shapes, workspace; ``model_sha256`` (the
    manifest's for the model file; default: hashed from the file) keys their engine caches.
    """
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads <= 0):
        raise BackendError(f"threads={threads!r}: expected a positive integer. Fix: pass e.g. threads=4, or None "
                           f"for onnxruntime's default.")
    model_path = Path(model_path)
    available = list(ort.get_available_providers() if available_providers is None else available_providers)
    order = tuple(profile.backends if backends is None else backends)
    reasons: list[str] = []
    for word in order:
        try:
            backend = _create(word, model_path, available, threads, quantized, engine_plan=engine_plan,
                              model_sha256=model_sha256, memory_budget_mb=profile.memory_budget_mb)
            feeds = feed_builder(backend) if feed_builder else smoke_feeds(backend.inputs)
            outputs = backend.run(feeds)
            for name, value in outputs.items():
                if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                    raise BackendError(f"smoke inference gave NaN or inf in output {name!r}")
        except BundleError:
            raise
        except _Skip as exc:
            reason = f"{word}: skipped: {exc}"
        except Exception as exc:  # session creation and inference errors come in many types
            reason = f"{word}: failed: {type(exc).__name__}: {exc}"
        else:
            log.info("backend %s selected for %s (profile %s)", word, model_path.name, profile.name)
            return backend, reasons
        log.warning("%s", reason)
        reasons.append(reason)
    raise BackendError(f"{model_path}: none of the backends {list(order)} of profile '{profile.name}' can run here:\n  "
                       + "\n  ".join(reasons)
                       + "\nFix: install the onnxruntime build with the needed provider, or run a bundle compiled "
                         "for a profile that matches this machine.")
