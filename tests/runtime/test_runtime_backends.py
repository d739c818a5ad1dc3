"""Backend choice: the profile's order, fallback with reasons, and a clear error when none works."""

from __future__ import annotations

import importlib.util
import logging

import pytest

import edgekit_runtime as rt
from edgekit_runtime.backends.select import select_backend

from runtime_fixtures import cpu_profile_dict, gpu_profile


def _profile(backends):
    if set(backends) != {"ort-cpu"}:  # GPU backends need a GPU profile
        return gpu_profile(backends)
    return rt.profile_from_dict(cpu_profile_dict() | {"backends": list(backends)}, source="test")


def test_cuda_then_cpu_falls_back_to_cpu_with_a_reason(tiny_bundle, caplog):
    with caplog.at_level(logging.WARNING, logger="edgekit_runtime"):
        backend, reasons = select_backend(tiny_bundle / "model.onnx", _profile(["ort-cuda", "ort-cpu"]),
                                          available_providers=["CPUExecutionProvider"])
    assert backend.name == "ort-cpu"
    assert len(reasons) == 1 and "CUDAExecutionProvider" in reasons[0]
    assert "CUDAExecutionProvider" in caplog.text  # the skip is logged, not silent


def test_only_unavailable_provider_raises_naming_it(tiny_bundle):
    with pytest.raises(rt.BackendError, match="ort-cuda.*CUDAExecutionProvider"):
        select_backend(tiny_bundle / "model.onnx", _profile(["ort-cuda"]),
                       available_providers=["CPUExecutionProvider"])


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_native_tensorrt_is_skipped_with_a_reason(tiny_bundle):
    backend, reasons = select_backend(tiny_bundle / "model.onnx", _profile(["tensorrt", "ort-cpu"]))
    assert backend.name == "ort-cpu"
    assert reasons[0].startswith("tensorrt: skipped") and "tensorrt" in reasons[0]


def test_a_failing_smoke_run_falls_back(tiny_bundle):
    calls = []

    def feeds(backend):
        calls.append(backend.name)
        if len(calls) == 1:
            return {"input_ids": None}  # the first backend gets a feed it cannot run
        return rt.backends.ort.smoke_feeds(backend.inputs)

    backend, reasons = select_backend(tiny_bundle / "model.onnx", _profile(["ort-cpu"]),
                                      backends=["ort-cpu", "ort-cpu"], feed_builder=feeds)
    assert calls == ["ort-cpu", "ort-cpu"] and backend.name == "ort-cpu"
    assert reasons and reasons[0].startswith("ort-cpu: failed")


def test_load_rejects_a_backend_the_profile_does_not_list(tiny_bundle):
    with pytest.raises(rt.BackendError, match="ort-cuda.*x86-64-cpu"):
        rt.load(tiny_bundle, backend="ort-cuda")


def test_threads_must_be_positive(tiny_bundle):
    with pytest.raises(rt.BackendError, match="threads=0"):
        select_backend(tiny_bundle / "model.onnx", _profile(["ort-cpu"]), threads=0)
    backend, _ = select_backend(tiny_bundle / "model.onnx", _profile(["ort-cpu"]), threads=1)
    assert backend.session.get_session_options().intra_op_num_threads == 1


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_a_provider_onnxruntime_quietly_drops_is_a_failure(tiny_bundle):
    # Told CUDA is available when it is not, onnxruntime builds a CPU session with a warning;
    # the runtime must notice instead of reporting a CUDA backend.
    backend, reasons = select_backend(tiny_bundle / "model.onnx", _profile(["ort-cuda", "ort-cpu"]),
                                      available_providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert backend.name == "ort-cpu"
    assert reasons[0].startswith("ort-cuda: failed") and "instead of CUDAExecutionProvider" in reasons[0]


def test_only_qdq_int8_bundles_get_the_qdq_session_options():
    """The runtime's QDQ options (no MatMul+Add fusion, no CSE) would only slow other graphs."""
    from edgekit_runtime.model import _is_qdq_int8

    assert _is_qdq_int8({"model": {"precision": "int8", "int8": {"method": "qat", "format": "qdq"}}})
    assert not _is_qdq_int8({"model": {"precision": "int8", "int8": {"method": "ptq-dynamic", "format": "qoperator"}}})
    assert not _is_qdq_int8({"model": {"precision": "fp32"}})
