"""TensorRT on the device: the native backend's engine cache and backend selection, driven by a
fake adapter (no GPU or tensorrt package needed). The plan's provider options, trtexec line and
`edgekit-run info`: test_runtime_trt_plan.py.

What these tests cannot show: that real TensorRT builds, loads and runs the engine. The adapter
that calls TensorRT and CUDA (``trt_engine.TensorRTAdapter``) is replaced by ``FakeAdapter``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys

import numpy as np
import onnxruntime as ort
import pytest

import edgekit_runtime as rt
from edgekit_runtime.bundle import format as rt_bundle
from edgekit_runtime.backends import tensorrt as trt_engine
from edgekit_runtime.backends.base import TensorSpec
from edgekit_runtime.backends.select import select_backend
from edgekit_runtime.bundle.format import canonical_json, sha256_file
from edgekit_runtime.backends.tensorrt import (TensorRTBackend, engine_cache_key)

from runtime_fixtures import INPUTS, LABELS, MAX_LENGTH, MODEL_SHA, gpu_profile, make_plan

# ---------------------------------------------------------------- fakes for the tensorrt adapter

class FakeRunner:
    """A 'loaded engine': logits from the token ids, and a record of the batches it was given."""

    inputs = tuple(TensorSpec(n, "int64", (None, None)) for n in INPUTS)
    outputs = (TensorSpec("logits", "float32", (None, len(LABELS))),)

    def __init__(self):
        self.batches = []

    def run(self, feeds):
        ids = np.asarray(feeds["input_ids"])
        self.batches.append(ids.shape[0])
        base = ids.sum(axis=1, keepdims=True).astype(np.float32)
        return {"logits": np.concatenate([base, base + 1, base + 2], axis=1)}


class OrtRunner:
    """A 'loaded engine' that really runs the ONNX graph (onnxruntime CPU), for end-to-end loads."""

    def __init__(self, onnx_path):
        self.session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self.inputs = tuple(TensorSpec(i.name, "int64", (None, None)) for i in self.session.get_inputs())
        self.outputs = tuple(TensorSpec(o.name, "float32", (None, len(LABELS))) for o in self.session.get_outputs())

    def run(self, feeds):
        names = [o.name for o in self.outputs]
        return dict(zip(names, self.session.run(names, dict(feeds))))


class FakeAdapter:
    """Stands in for TensorRTAdapter: same members (version, device, build, load), no GPU."""

    MAGIC = b"FAKE-ENGINE|"

    def __init__(self, gpu="Orin (nvgpu)", cc="8.7", version="10.3.0.30", real_graph=False):
        self.gpu, self.cc, self.version, self.real_graph = gpu, cc, version, real_graph
        self.builds, self.loads, self.refused = [], 0, 0
        self.runner = None

    def device(self):
        return self.gpu, self.cc

    def build(self, onnx_path, plan, workspace_bytes, timing_cache):
        self.builds.append({"onnx": onnx_path, "plan": plan, "workspace_bytes": workspace_bytes,
                            "timing_cache": timing_cache})
        return self.MAGIC + str(onnx_path).encode(), b"TIMING-" + self.version.encode()

    def load(self, blob):
        self.loads += 1
        if not blob.startswith(self.MAGIC):
            self.refused += 1
            raise RuntimeError("deserialize_cuda_engine returned None")
        self.runner = OrtRunner(blob[len(self.MAGIC):].decode()) if self.real_graph else FakeRunner()
        return self.runner


def backend(cache, plan=None, adapter=None, model_sha=MODEL_SHA, model_path="model.onnx"):
    adapter = adapter or FakeAdapter()
    return TensorRTBackend(model_path, plan or make_plan(), model_sha256=model_sha, adapter=adapter,
                           cache_dir=cache), adapter


def cached(cache):
    return sorted(p.name for p in cache.iterdir() if p.suffix in (".engine", ".json"))


# ---------------------------------------------------------------- the native backend's engine cache

def test_first_load_builds_and_caches_engine_with_metadata(tmp_path):
    cache = tmp_path / "engines"
    plan = make_plan()
    b, adapter = backend(cache, plan)
    assert len(adapter.builds) == 1 and b.cache_status.startswith("built (no cached engine)")
    assert adapter.builds[0]["workspace_bytes"] == 4096 << 20 and adapter.builds[0]["timing_cache"] is None
    engines = sorted(cache.glob("*.engine"))
    assert len(engines) == 1
    key = engines[0].stem
    meta = json.loads((cache / f"{key}.json").read_text())
    assert meta["build"] == {"cache_format": 1, "gpu": "Orin (nvgpu)", "compute_capability": "8.7",
                             "tensorrt": "10.3.0.30", "model_sha256": MODEL_SHA, "plan": plan, "workspace_mb": 4096}
    assert meta["key"] == key == hashlib.sha256(canonical_json(meta["build"])).hexdigest()
    blob = engines[0].read_bytes()
    assert meta["engine_sha256"] == hashlib.sha256(blob).hexdigest() and meta["engine_bytes"] == len(blob)
    assert not [p for p in cache.iterdir() if ".partial-" in p.name]  # atomic writes leave nothing behind
    assert list(cache.glob("timing-*.cache"))  # TensorRT's timing cache is kept for the next build


def test_second_load_reuses_the_engine_without_building(tmp_path):
    cache = tmp_path / "engines"
    backend(cache)
    b, adapter = backend(cache)  # a new adapter: as in a new process
    assert adapter.builds == [] and adapter.loads == 1
    assert b.cache_status.startswith("reused")
    assert b.run({n: np.ones((2, 5), np.int64) for n in INPUTS})["logits"].shape == (2, 3)


@pytest.mark.parametrize("change", ["gpu", "compute capability", "tensorrt version", "model", "plan",
                                    "workspace"])
def test_a_changed_device_version_model_or_plan_rebuilds(tmp_path, change):
    cache = tmp_path / "engines"
    backend(cache)
    adapter, plan, model_sha = FakeAdapter(), make_plan(), MODEL_SHA
    if change == "gpu":
        adapter.gpu = "NVIDIA H100"
    elif change == "compute capability":
        adapter.cc = "9.0"
    elif change == "tensorrt version":
        adapter.version = "10.7.0"
    elif change == "model":
        model_sha = "cd" * 32
    elif change == "plan":
        plan = make_plan(["int8", "fp16"])
    else:
        plan = make_plan(workspace=1024)
    b, adapter = backend(cache, plan, adapter, model_sha)
    assert len(adapter.builds) == 1 and b.cache_status.startswith("built (no cached engine)")
    assert len(list(cache.glob("*.engine"))) == 2  # a key per device, version, model and plan
    if change == "tensorrt version":  # a timing cache is per GPU and TensorRT version
        assert adapter.builds[0]["timing_cache"] is None
    elif change == "model":  # same GPU and TensorRT: the timing cache from the first build is used
        assert adapter.builds[0]["timing_cache"] == b"TIMING-10.3.0.30"


def test_metadata_that_does_not_match_exactly_rebuilds(tmp_path):
    cache = tmp_path / "engines"
    backend(cache)
    meta_path = next(cache.glob("*.json"))
    meta = json.loads(meta_path.read_text())
    meta["build"]["tensorrt"] = "10.3.0.31"  # same file name (key), other content
    meta_path.write_text(json.dumps(meta))
    b, adapter = backend(cache)
    assert len(adapter.builds) == 1 and "differs in tensorrt" in b.cache_status
    assert json.loads(meta_path.read_text())["build"]["tensorrt"] == "10.3.0.30"  # rewritten
    assert backend(cache)[1].builds == []  # and the rebuilt engine is reused next time


@pytest.mark.parametrize("damage, why", [
    (lambda e, m: e.write_bytes(e.read_bytes()[:5]), "engine file corrupt"),
    (lambda e, m: e.write_bytes(b"\x00" * len(e.read_bytes())), "engine file corrupt"),
    (lambda e, m: m.write_text("{not json"), "metadata unreadable"),
    (lambda e, m: m.unlink(), "without metadata"),
    (lambda e, m: e.unlink(), "engine file unreadable"),
])
def test_a_corrupt_truncated_or_half_written_cache_entry_rebuilds(tmp_path, damage, why):
    cache = tmp_path / "engines"
    backend(cache)
    engine = next(cache.glob("*.engine"))
    damage(engine, engine.with_suffix(".json"))
    b, adapter = backend(cache)
    assert len(adapter.builds) == 1 and adapter.refused == 0  # the damage is caught before TensorRT sees it
    assert why in b.cache_status
    assert backend(cache)[1].builds == []


def test_an_engine_tensorrt_refuses_is_rebuilt_not_crashed_on(tmp_path):
    cache = tmp_path / "engines"
    backend(cache)
    engine = next(cache.glob("*.engine"))
    meta_path = engine.with_suffix(".json")
    garbage = b"not an engine at all"
    engine.write_bytes(garbage)  # consistent with its metadata, but TensorRT cannot load it
    meta = json.loads(meta_path.read_text())
    meta.update(engine_sha256=hashlib.sha256(garbage).hexdigest(), engine_bytes=len(garbage))
    meta_path.write_text(json.dumps(meta))
    b, adapter = backend(cache)
    assert adapter.refused == 1 and len(adapter.builds) == 1
    assert "TensorRT could not load the cached engine" in b.cache_status
    assert engine.read_bytes().startswith(FakeAdapter.MAGIC)


def test_an_unwritable_cache_builds_and_runs_anyway(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    with caplog.at_level(logging.WARNING, logger="edgekit_runtime"):
        b, adapter = backend(blocker / "engines")
    assert len(adapter.builds) == 1 and b.cache_status == "built (engine cache disabled)"
    assert "EDGEKIT_CACHE_DIR" in caplog.text
    assert b.run({n: np.ones((1, 4), np.int64) for n in INPUTS})["logits"].shape == (1, 3)


def test_a_failed_cache_write_leaves_no_partial_files(tmp_path, monkeypatch):
    cache = tmp_path / "engines"

    def replace_fails(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rt_bundle.os, "replace", replace_fails)  # where atomic_write renames
    b, adapter = backend(cache)
    assert "not cached" in b.cache_status and len(adapter.builds) == 1
    assert cached(cache) == [] and not [p for p in cache.iterdir() if ".partial-" in p.name]
    monkeypatch.undo()
    assert len(backend(cache)[1].builds) == 1  # nothing stale was left to load


def test_batches_beyond_the_profile_maximum_run_in_slices(tmp_path):
    b, adapter = backend(tmp_path / "engines", make_plan(max_batch=4))
    ids = np.arange(10 * 3, dtype=np.int64).reshape(10, 3)
    out = b.run({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    assert adapter.runner.batches == [4, 4, 2]
    np.testing.assert_array_equal(out["logits"][:, 0], ids.sum(axis=1))  # in input order


def test_a_sequence_beyond_the_plan_is_a_clear_error(tmp_path):
    b, _ = backend(tmp_path / "engines")
    with pytest.raises(rt.BackendError, match="beyond the engine's maximum"):
        b.run({n: np.ones((1, MAX_LENGTH + 1), np.int64) for n in INPUTS})


def test_device_mismatch_with_the_profile_is_noted(tmp_path):
    b, _ = backend(tmp_path / "engines", adapter=FakeAdapter(cc="9.0", version="10.7.0"))
    assert any("TensorRT 10.7.0" in n for n in b.notes) and any("compute capability 9.0" in n for n in b.notes)


def test_the_model_file_is_hashed_when_the_manifest_sha_is_not_given(tmp_path, tiny_bundle):
    backend(tmp_path / "engines", model_sha=None, model_path=tiny_bundle / "model.onnx")
    meta = json.loads(next((tmp_path / "engines").glob("*.json")).read_text())
    assert meta["build"]["model_sha256"] == sha256_file(tiny_bundle / "model.onnx")


# ---------------------------------------------------------------- selection: skips, fallback, end to end

def test_missing_tensorrt_is_skipped_with_a_reason_and_falls_back(tiny_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    chosen, reasons = select_backend(tiny_bundle / "model.onnx", gpu_profile(["tensorrt", "ort-cpu"]),
                                     engine_plan=make_plan())
    assert chosen.name == "ort-cpu"
    assert reasons[0].startswith("tensorrt: skipped: the 'tensorrt' Python package is not importable")


def test_missing_cuda_memory_api_is_skipped_naming_what_to_install(tiny_bundle, monkeypatch):
    class FakeTensorRT:
        __version__ = "10.3.0.30"

        class Logger:
            WARNING = 2

            def __init__(self, severity):
                pass

    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT)
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setattr(trt_engine._CudaCtypes, "open", classmethod(lambda cls: None))
    chosen, reasons = select_backend(tiny_bundle / "model.onnx", gpu_profile(["tensorrt", "ort-cpu"]),
                                     engine_plan=make_plan())
    assert chosen.name == "ort-cpu"
    assert reasons[0].startswith("tensorrt: skipped") and "cuda-python" in reasons[0] and "libcudart" in reasons[0]


def test_a_bundle_without_a_plan_skips_native_tensorrt(tiny_bundle, monkeypatch):
    monkeypatch.setattr(trt_engine.TensorRTAdapter, "create", classmethod(lambda cls: FakeAdapter()))
    chosen, reasons = select_backend(tiny_bundle / "model.onnx", gpu_profile(["tensorrt", "ort-cpu"]))
    assert chosen.name == "ort-cpu" and "no engine_plan" in reasons[0]


def test_a_failing_engine_build_falls_back_with_the_reason(tiny_bundle, cache_dir, monkeypatch):
    class Broken(FakeAdapter):
        def build(self, *args):
            raise rt.BackendError("TensorRT's ONNX parser rejected model.onnx: Unsupported op")

    monkeypatch.setattr(trt_engine.TensorRTAdapter, "create", classmethod(lambda cls: Broken()))
    chosen, reasons = select_backend(tiny_bundle / "model.onnx", gpu_profile(["tensorrt", "ort-cpu"]),
                                     engine_plan=make_plan())
    assert chosen.name == "ort-cpu" and reasons[0].startswith("tensorrt: failed") and "Unsupported op" in reasons[0]


def test_load_selects_native_tensorrt_and_caches_by_the_manifest_model_hash(trt_bundle, cache_dir, monkeypatch):
    adapters = []

    def create(cls):
        adapters.append(FakeAdapter(real_graph=True))
        return adapters[-1]

    monkeypatch.setattr(trt_engine.TensorRTAdapter, "create", classmethod(create))
    bundle = trt_bundle(make_plan(["fp16"], workspace=2048))
    texts = ["the movie was great", "i hate it", "boring plot , slow"]
    with rt.load(bundle) as model:
        assert model.backend_name == "tensorrt" and model.backend_reasons == []
        got = model.logits(texts)
    assert len(adapters[0].builds) == 1
    meta = json.loads(next(cache_dir.glob("*.json")).read_text())
    manifest = rt.read_manifest(bundle)
    assert meta["build"]["model_sha256"] == manifest["files"]["model.onnx"]["sha256"]
    assert meta["build"]["plan"] == manifest["engine_plan"] and meta["build"]["workspace_mb"] == 2048
    with rt.load(bundle) as again:  # a second start: the cached engine, no build
        assert again.backend_name == "tensorrt" and adapters[1].builds == []
        np.testing.assert_allclose(again.logits(texts), got)
    with rt.load(bundle, backend="ort-cpu") as cpu:  # the fake engine runs the same graph
        np.testing.assert_allclose(cpu.logits(texts), got, rtol=1e-5, atol=1e-5)


def test_key_helper_is_stable_and_covers_every_field():
    base = dict(gpu="Orin", compute_capability="8.7", tensorrt="10.3.0.30", model_sha256=MODEL_SHA,
                plan=make_plan(), workspace_mb=4096)
    key, record = engine_cache_key(**base)
    assert engine_cache_key(**base)[0] == key and record["plan"] == base["plan"]
    for field, other in [("gpu", "Xavier"), ("compute_capability", "7.2"), ("tensorrt", "8.5.2"),
                         ("model_sha256", "cd" * 32), ("plan", make_plan([])), ("workspace_mb", 512)]:
        assert engine_cache_key(**{**base, field: other})[0] != key, field


