"""ONNX Runtime backends: one execution provider each (TensorRT, CUDA, CPU), and the session the
host's validation shares with the device."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnxruntime as ort

from ..bundle.format import sha256_file
from ..errors import BackendError
from .base import (ORT_DTYPES, ORT_PROVIDERS, QDQ_CPU_DISABLED_OPTIMIZERS, SMOKE_BATCH, SMOKE_SEQUENCE, Backend,
                   TensorSpec, log, trt_cache_dir)
from .tensorrt import ort_engine_dir, ort_tensorrt_options


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

            engine_dir: Path | None = ort_engine_dir(trt_cache_dir(), ort.__version__, engine_plan,
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
        self.inputs = tuple(TensorSpec(i.name, ORT_DTYPES.get(i.type, i.type), tuple(i.shape))
                            for i in self.session.get_inputs())
        self.outputs = tuple(TensorSpec(o.name, ORT_DTYPES.get(o.type, o.type), tuple(o.shape))
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


