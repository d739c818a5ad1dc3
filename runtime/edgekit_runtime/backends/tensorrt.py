"""TensorRT on the device: the native backend (its engine cache is trt_cache.py, re-exported here).

The plan's pure functions (checks, ONNX Runtime's TensorRT provider options, the trtexec line) are
in ``trt_plan.py`` and re-exported here.

The native backend builds a TensorRT engine from the bundle's ONNX graph once per device and
caches it (``EngineCache``). Every call into ``tensorrt`` and CUDA sits in ``TensorRTAdapter``, so
the cache logic runs under test with a fake adapter on machines without a GPU. ``tensorrt`` is
imported only when the native backend is tried.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..bundle.format import sha256_file
from ..errors import BackendError
from .base import Backend, Skip, TensorSpec, trt_cache_dir
from .trt_cache import CACHE_FORMAT, EngineCache, engine_cache_key  # noqa: F401  (re-exported)
from .trt_plan import (  # noqa: F401
    ENGINE_FILE,
    MIN_WORKSPACE_MB,
    PLAN_FLAGS,
    SHAPE_KEYS,
    check_engine_plan,
    ort_engine_dir,
    ort_tensorrt_options,
    profile_shapes,
    trtexec_command,
    trtexec_line,
    workspace_mb,
)

log = logging.getLogger("edgekit_runtime")

# ---------------------------------------------------------------- the native backend

class TensorRTBackend(Backend):
    """The bundle's graph as a TensorRT engine built on this device from the plan, cached."""

    name = "tensorrt"

    def __init__(self, model_path: str | Path, plan: Mapping[str, Any] | None, *, model_sha256: str | None = None,
                 memory_budget_mb: int | None = None, adapter: Any = None,
                 cache_dir: str | Path | None = None):
        model_path = Path(model_path)
        if adapter is None:
            adapter = TensorRTAdapter.create()  # Skip when tensorrt or a CUDA memory API is missing
        if plan is None:
            raise Skip("the bundle has no engine_plan (compiled for a profile without TensorRT, or by an older "
                        "edgekit); recompile it for this TensorRT profile")
        plan = check_engine_plan(plan)
        workspace = plan.get("workspace_mb") or workspace_mb(memory_budget_mb or 4 * MIN_WORKSPACE_MB)
        model_sha256 = model_sha256 or sha256_file(model_path)
        self.adapter = adapter
        self.plan = plan
        self.notes = self._device_notes(adapter, plan)
        for note in self.notes:
            log.warning("%s", note)
        cache = EngineCache(cache_dir if cache_dir is not None else trt_cache_dir())
        self.runner, self.cache_status = cache.get(adapter, model_path, plan, model_sha256, workspace)
        self.inputs = tuple(self.runner.inputs)
        self.outputs = tuple(self.runner.outputs)
        self._max = {name: spec["max"] for name, spec in plan["shapes"].items()}
        self._max_batch = min(dims[0] for dims in self._max.values())

    @staticmethod
    def _device_notes(adapter: Any, plan: Mapping[str, Any]) -> list[str]:
        """Warnings when this device is not the one the profile describes (the engine is built here,
        so it runs; the compile's figures were for the profile's device)."""
        notes = []
        gpu, cc = adapter.device()
        want_trt, version = plan.get("tensorrt"), str(adapter.version)
        if want_trt and version.split(".")[:2] != str(want_trt).split(".")[:2]:
            notes.append(f"TensorRT {version} here, the bundle's profile names TensorRT {want_trt}")
        if plan.get("compute_capability") and str(plan["compute_capability"]) != str(cc):
            notes.append(f"GPU {gpu} has compute capability {cc}, the bundle's profile names "
                         f"{plan['compute_capability']}")
        return notes

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes = {k: tuple(np.shape(v)) for k, v in feeds.items()}
        for name, shape in shapes.items():
            top = self._max.get(name)
            if top is not None and len(shape) == len(top) and any(s > t for s, t in zip(shape[1:], top[1:])):
                raise BackendError(f"inference failed on backend tensorrt: input {name!r} has shape {shape}, beyond "
                                   f"the engine's maximum {tuple(top)} (the plan's max shapes). Fix: recompile the "
                                   f"bundle with a larger max_length, or use --backend ort-cpu.")
        batch = max((shape[0] for shape in shapes.values() if shape), default=0)
        if batch > self._max_batch:  # the engine's profile stops at max batch: run in slices
            parts = [self._run({k: v[i:i + self._max_batch] for k, v in feeds.items()})
                     for i in range(0, batch, self._max_batch)]
            return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}
        return self._run(feeds)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self.runner.run(feeds)
        except BackendError:
            raise
        except Exception as exc:
            shapes = {k: tuple(np.shape(v)) for k, v in feeds.items()}
            raise BackendError(f"inference failed on backend tensorrt with input shapes {shapes}: "
                               f"{type(exc).__name__}: {exc}. Fix: if memory ran out, lower --batch-size; otherwise "
                               f"try --backend ort-tensorrt or ort-cpu.") from None

    def __repr__(self) -> str:
        return f"TensorRTBackend(tensorrt {self.adapter.version}, {self.cache_status})"


# ---------------------------------------------------------------- the adapter: every tensorrt and CUDA call
# Not run on a GPU in this repository's tests (they use a fake adapter with the same members:
# version, device(), build(), load()). Written against the TensorRT 10 Python API (tensor names,
# set_input_shape, set_tensor_address, execute_async_v3), which TensorRT 8.5+ also has.

class _CudaPython:
    """Device memory through cuda-python (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""

    source = "cuda-python"

    def __init__(self, rt: Any):
        self.rt = rt

    def _call(self, what: str, result: Any) -> Any:
        err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if err != self.rt.cudaError_t.cudaSuccess:
            raise BackendError(f"CUDA {what} failed: {err}")
        return rest[0] if len(rest) == 1 else rest

    def device(self) -> tuple[str, str]:
        if self._call("cudaGetDeviceCount", self.rt.cudaGetDeviceCount()) < 1:
            raise Skip("CUDA sees no GPU here")
        prop = self._call("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(0))
        name = prop.name.decode("utf-8", "replace") if isinstance(prop.name, bytes) else str(prop.name)
        return name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}"

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", self.rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        self._call("cudaFree", self.rt.cudaFree(ptr))

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpy", self.rt.cudaMemcpy(ptr, array.ctypes.data, array.nbytes, kind))

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpy", self.rt.cudaMemcpy(array.ctypes.data, ptr, array.nbytes, kind))

    def stream(self) -> int:
        return int(self._call("cudaStreamCreate", self.rt.cudaStreamCreate()))

    def synchronize(self, stream: int) -> None:
        self._call("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(stream))


class _CudaCtypes:
    """Device memory through libcudart with ctypes (the CUDA runtime TensorRT itself needs)."""

    source = "libcudart (ctypes)"
    NAMES = ("libcudart.so", "libcudart.so.12", "libcudart.so.11.0")
    H2D, D2H = 1, 2  # cudaMemcpyKind
    CC_MAJOR, CC_MINOR = 75, 76  # cudaDeviceAttr: cudaDevAttrComputeCapabilityMajor / Minor

    def __init__(self, lib: Any):
        self.lib = lib
        vp, sz, ci = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        sigs = {"cudaMalloc": [ctypes.POINTER(vp), sz], "cudaFree": [vp], "cudaMemcpy": [vp, vp, sz, ci],
                "cudaStreamCreate": [ctypes.POINTER(vp)], "cudaStreamSynchronize": [vp],
                "cudaGetDeviceCount": [ctypes.POINTER(ci)], "cudaDeviceGetAttribute": [ctypes.POINTER(ci), ci, ci]}
        for fn, args in sigs.items():
            getattr(lib, fn).argtypes, getattr(lib, fn).restype = args, ci
        lib.cudaGetErrorString.argtypes, lib.cudaGetErrorString.restype = [ci], ctypes.c_char_p

    @classmethod
    def open(cls) -> "_CudaCtypes | None":
        for name in cls.NAMES:
            try:
                return cls(ctypes.CDLL(name))
            except (OSError, AttributeError):
                continue
        return None

    def _check(self, what: str, code: int) -> None:
        if code != 0:
            text = self.lib.cudaGetErrorString(code)
            raise BackendError(f"CUDA {what} failed: error {code} ({text.decode() if text else '?'})")

    def device(self) -> tuple[str, str]:
        count = ctypes.c_int(0)
        self._check("cudaGetDeviceCount", self.lib.cudaGetDeviceCount(ctypes.byref(count)))
        if count.value < 1:
            raise Skip("CUDA sees no GPU here")
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        self._check("cudaDeviceGetAttribute", self.lib.cudaDeviceGetAttribute(ctypes.byref(major), self.CC_MAJOR, 0))
        self._check("cudaDeviceGetAttribute", self.lib.cudaDeviceGetAttribute(ctypes.byref(minor), self.CC_MINOR, 0))
        # cudaDeviceProp starts with `char name[256]` in every CUDA version; the buffer is far larger
        # than the struct, whose size changes between versions.
        props = ctypes.create_string_buffer(1 << 16)
        get = getattr(self.lib, "cudaGetDeviceProperties_v2", None) or self.lib.cudaGetDeviceProperties
        get.argtypes, get.restype = [ctypes.c_void_p, ctypes.c_int], ctypes.c_int
        self._check("cudaGetDeviceProperties", get(props, 0))
        return props.raw[:256].split(b"\x00", 1)[0].decode("utf-8", "replace").strip(), f"{major.value}.{minor.value}"

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check("cudaMalloc", self.lib.cudaMalloc(ctypes.byref(ptr), nbytes))
        return int(ptr.value or 0)

    def free(self, ptr: int) -> None:
        self._check("cudaFree", self.lib.cudaFree(ptr))

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        self._check("cudaMemcpy", self.lib.cudaMemcpy(ptr, array.ctypes.data, array.nbytes, self.H2D))

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        self._check("cudaMemcpy", self.lib.cudaMemcpy(array.ctypes.data, ptr, array.nbytes, self.D2H))

    def stream(self) -> int:
        handle = ctypes.c_void_p()
        self._check("cudaStreamCreate", self.lib.cudaStreamCreate(ctypes.byref(handle)))
        return int(handle.value or 0)

    def synchronize(self, stream: int) -> None:
        self._check("cudaStreamSynchronize", self.lib.cudaStreamSynchronize(stream))


def _cuda_memory() -> Any:
    """cuda-python if importable, else libcudart through ctypes; Skip naming both when neither is."""
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return _CudaPython(importlib.import_module(module))
        except Exception:
            continue
    lib = _CudaCtypes.open()
    if lib is not None:
        return lib
    raise Skip("tensorrt is importable but no CUDA memory API is: neither cuda-python (`pip install cuda-python`) "
                f"nor the CUDA runtime library ({', '.join(_CudaCtypes.NAMES)}) on the library path "
                "(on a Jetson: add /usr/local/cuda/lib64 to LD_LIBRARY_PATH); using the next backend")


class _EngineRunner:
    """One deserialized engine with an execution context, a stream and device buffers that grow."""

    def __init__(self, trt: Any, cuda: Any, runtime: Any, engine: Any):
        self.trt, self.cuda, self._runtime, self.engine = trt, cuda, runtime, engine  # runtime outlives engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendError("TensorRT could not create an execution context (GPU memory exhausted?)")
        inputs, outputs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            spec = TensorSpec(name, np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name,
                              tuple(int(d) if int(d) >= 0 else None for d in engine.get_tensor_shape(name)))
            (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
        self.inputs, self.outputs = tuple(inputs), tuple(outputs)
        self._stream = cuda.stream()
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._lock = threading.Lock()

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.cuda.free(ptr)
            ptr, size = self.cuda.malloc(nbytes), nbytes
            self._buffers[name] = (ptr, size)
        return ptr

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            for spec in self.inputs:
                array = np.ascontiguousarray(feeds[spec.name], dtype=spec.dtype)
                if not self.context.set_input_shape(spec.name, array.shape):
                    raise BackendError(f"input {spec.name!r} shape {array.shape} is outside the engine's "
                                       f"optimization profile")
                ptr = self._buffer(spec.name, max(array.nbytes, 1))
                self.cuda.to_device(ptr, array)
                self.context.set_tensor_address(spec.name, ptr)
            results = {}
            for spec in self.outputs:
                out = np.empty(tuple(self.context.get_tensor_shape(spec.name)), dtype=spec.dtype)
                self.context.set_tensor_address(spec.name, self._buffer(spec.name, max(out.nbytes, 1)))
                results[spec.name] = out
            if not self.context.execute_async_v3(self._stream):
                raise BackendError("TensorRT execute_async_v3 reported failure")
            self.cuda.synchronize(self._stream)
            for name, out in results.items():
                self.cuda.to_host(out, self._buffers[name][0])
        return results

    def __del__(self):
        with contextlib.suppress(Exception):
            for ptr, _ in self._buffers.values():
                self.cuda.free(ptr)


class TensorRTAdapter:
    """Every call into ``tensorrt`` and CUDA. Members the rest of this module uses: ``version``,
    ``device() -> (gpu name, "major.minor")``, ``build(onnx_path, plan, workspace_bytes,
    timing_cache) -> (engine bytes, timing cache bytes or None)`` and ``load(engine bytes) -> runner``
    (``inputs``, ``outputs``, ``run(feeds)``)."""

    def __init__(self, trt: Any, cuda: Any):
        self.trt, self.cuda = trt, cuda
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.version = str(trt.__version__)
        self._device: tuple[str, str] | None = None

    @classmethod
    def create(cls) -> "TensorRTAdapter":
        try:
            import tensorrt as trt  # only present on TensorRT machines
        except Exception as exc:
            raise Skip(f"the 'tensorrt' Python package is not importable here ({type(exc).__name__}: {exc}); "
                        f"using the next backend") from None
        return cls(trt, _cuda_memory())

    def device(self) -> tuple[str, str]:
        if self._device is None:
            self._device = self.cuda.device()
        return self._device

    def build(self, onnx_path: Path, plan: Mapping[str, Any], workspace_bytes: int,
              timing_cache: bytes | None) -> tuple[bytes, bytes | None]:
        trt = self.trt
        builder = trt.Builder(self.logger)
        major = int(self.version.split(".")[0])
        # TensorRT 10 networks are always explicit-batch (the flag is deprecated); 8.x needs it.
        flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise BackendError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {'; '.join(errors[:5]) or '?'}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
        if "fp16" in plan["flags"]:
            config.set_flag(trt.BuilderFlag.FP16)
            self._layer_norm_fp32(network, config)
        if "int8" in plan["flags"]:
            config.set_flag(trt.BuilderFlag.INT8)  # QDQ graph: explicit quantization, no calibrator
        profile = builder.create_optimization_profile()
        for name, spec in plan["shapes"].items():
            profile.set_shape(name, spec["min"], spec["opt"], spec["max"])
        config.add_optimization_profile(profile)
        cache = None
        with contextlib.suppress(Exception):  # a corrupt timing cache only costs build time
            cache = config.create_timing_cache(timing_cache or b"")
        if cache is None:
            with contextlib.suppress(Exception):
                cache = config.create_timing_cache(b"")
        if cache is not None:
            config.set_timing_cache(cache, False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f"TensorRT could not build an engine for {onnx_path.name} (run with --verbose for "
                               f"TensorRT's log)")
        new_cache = None
        if cache is not None:
            with contextlib.suppress(Exception):
                new_cache = bytes(memoryview(cache.serialize()))
        return bytes(memoryview(serialized)), new_cache

    def _layer_norm_fp32(self, network: Any, config: Any) -> None:
        """What onnxruntime's trt_layer_norm_fp32_fallback does: a Pow followed by a Reduce (the
        variance in an opset-13 LayerNorm) computes and outputs fp32 in an fp16 engine."""
        trt = self.trt
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        forced = 0
        for layer, nxt in zip(layers, layers[1:]):
            if layer.type == trt.LayerType.ELEMENTWISE and nxt.type == trt.LayerType.REDUCE:
                layer.__class__ = trt.IElementWiseLayer  # the Python API's way to reach .op
                if layer.op == trt.ElementWiseOperation.POW:
                    for item in (layer, nxt):
                        item.precision = trt.float32
                        item.set_output_type(0, trt.float32)
                    forced += 1
        if forced:
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
            log.info("TensorRT: %d LayerNorm Pow + Reduce pairs kept in fp32", forced)

    def load(self, blob: bytes) -> _EngineRunner:
        runtime = self.trt.Runtime(self.logger)
        engine = runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise BackendError("TensorRT could not deserialize the engine (built by another TensorRT version or "
                               "for another GPU, or corrupt)")
        return _EngineRunner(self.trt, self.cuda, runtime, engine)
