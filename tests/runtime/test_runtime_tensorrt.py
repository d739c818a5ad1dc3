"""TensorRT on the device: provider options and the trtexec line from the engine plan, and the
native backend's engine cache, driven by a fake adapter (no GPU or tensorrt package needed).

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
from edgekit_runtime import bundle as rt_bundle
from edgekit_runtime import trt_engine
from edgekit_runtime.backends import TensorSpec, select_backend
from edgekit_runtime.bundle import canonical_json, sha256_file
from edgekit_runtime.cli import main
from edgekit_runtime.trt_engine import (TensorRTBackend, check_engine_plan, engine_cache_key, ort_engine_dir,
                                        ort_tensorrt_options, profile_shapes, trtexec_command, trtexec_line,
                                        workspace_mb)

from runtime_fixtures import INPUTS, LABELS, MAX_LENGTH, cpu_profile_dict

MODEL_SHA = "ab" * 32
GPU_FIELDS = {"accelerator": "gpu", "tensorrt": "10.3", "cuda": "12.6", "compute_capability": "8.7",
              "int8_formats": ["qdq"], "int8_format": "qdq", "decoder_ops": "standard"}


def make_plan(flags=("fp16",), max_batch=32, length=MAX_LENGTH, workspace=4096, names=INPUTS):
    plan = {"tensorrt": "10.3", "compute_capability": "8.7", "flags": list(flags), "workspace_mb": workspace,
            "shapes": {n: {"min": [1, 1], "opt": [1, length], "max": [max_batch, length]} for n in names}}
    plan["trtexec"] = trtexec_line(plan)
    return plan


def gpu_profile(backends):
    return rt.profile_from_dict(cpu_profile_dict() | GPU_FIELDS | {"backends": list(backends)}, source="test")


@pytest.fixture
def trt_bundle(remake_bundle):
    """trt_bundle(plan, backends) -> a correctly hashed copy of the tiny bundle for a GPU profile with ``plan``."""

    def make(plan, backends=("tensorrt", "ort-tensorrt", "ort-cpu")):
        profile = gpu_profile(backends)

        def mutate(manifest):
            manifest["profile"] = {"name": profile.name, "sha256": profile.sha256, "data": profile.to_dict()}
            manifest["engine_plan"] = plan

        return remake_bundle(mutate)

    return make


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(root))
    return root / "tensorrt-engines"


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


# ---------------------------------------------------------------- the plan as provider options and trtexec

def test_ort_options_for_an_fp16_plan(tmp_path):
    options = ort_tensorrt_options(make_plan(["fp16"]), tmp_path / "engines", timing_dir=tmp_path,
                                   workspace_bytes=4096 << 20)
    assert options == {
        "trt_engine_cache_enable": True, "trt_engine_cache_path": str(tmp_path / "engines"),
        "trt_timing_cache_enable": True, "trt_timing_cache_path": str(tmp_path),
        "trt_max_workspace_size": 4096 << 20,
        "trt_fp16_enable": True, "trt_int8_enable": False, "trt_layer_norm_fp32_fallback": True,
        "trt_profile_min_shapes": "input_ids:1x1,attention_mask:1x1,token_type_ids:1x1",
        "trt_profile_opt_shapes": "input_ids:1x32,attention_mask:1x32,token_type_ids:1x32",
        "trt_profile_max_shapes": "input_ids:32x32,attention_mask:32x32,token_type_ids:32x32",
    }


def test_ort_options_for_int8_fp32_and_missing_plans(tmp_path):
    int8 = ort_tensorrt_options(make_plan(["int8", "fp16"]), tmp_path)
    assert int8["trt_int8_enable"] is True and int8["trt_fp16_enable"] is True
    assert int8["trt_layer_norm_fp32_fallback"] is True
    assert int8["trt_timing_cache_path"] == str(tmp_path)  # timing cache beside the engines by default
    fp32 = ort_tensorrt_options(make_plan([]), None)
    assert fp32["trt_fp16_enable"] is False and fp32["trt_int8_enable"] is False
    assert fp32["trt_layer_norm_fp32_fallback"] is False  # onnxruntime reads it only with fp16 on
    assert not any("cache" in key for key in fp32)  # no writable cache: no cache options
    assert ort_tensorrt_options(None, tmp_path) == {  # an older bundle without a plan: caches only
        "trt_engine_cache_enable": True, "trt_engine_cache_path": str(tmp_path),
        "trt_timing_cache_enable": True, "trt_timing_cache_path": str(tmp_path)}


def test_ort_engine_dir_separates_models_plans_and_onnxruntime_versions(tmp_path):
    plan = make_plan()
    base = ort_engine_dir(tmp_path, "1.20.1", plan, MODEL_SHA)
    assert base.parent == tmp_path / "ort-1.20.1"
    assert ort_engine_dir(tmp_path, "1.20.1", dict(plan), MODEL_SHA) == base
    assert ort_engine_dir(tmp_path, "1.20.1", plan, "cd" * 32) != base  # retrained weights, same graph
    assert ort_engine_dir(tmp_path, "1.20.1", make_plan(["int8", "fp16"]), MODEL_SHA) != base
    assert ort_engine_dir(tmp_path, "1.21.0", plan, MODEL_SHA).parent == tmp_path / "ort-1.21.0"


@pytest.mark.parametrize("flags, precision", [(["fp16"], ["--fp16"]), (["int8", "fp16"], ["--fp16", "--int8"]),
                                              ([], [])])
def test_trtexec_command_matches_the_plan(flags, precision):
    plan = make_plan(flags, workspace=512)
    assert trtexec_command(plan) == [
        "trtexec", "--onnx=model.onnx", "--saveEngine=model.engine",
        "--minShapes=input_ids:1x1,attention_mask:1x1,token_type_ids:1x1",
        "--optShapes=input_ids:1x32,attention_mask:1x32,token_type_ids:1x32",
        "--maxShapes=input_ids:32x32,attention_mask:32x32,token_type_ids:32x32",
        *precision, "--memPoolSize=workspace:512M", "--skipInference"]
    assert plan["trtexec"] == " ".join(trtexec_command(plan))  # nothing here needs shell quoting


def test_trtexec_quotes_input_names_trtexec_would_split():
    plan = make_plan(names=["input:0"])
    assert "--minShapes='input:0':1x1" in trtexec_command(plan)
    assert profile_shapes(plan, "max") == "input:0:32x32"


def test_workspace_is_a_quarter_of_the_memory_budget_at_least_256_mib():
    assert [workspace_mb(m) for m in (16384, 4096, 2048, 512)] == [4096, 1024, 512, 256]


@pytest.mark.parametrize("change, match", [
    (lambda p: p.update(flags=["fp8"]), "flags"),
    (lambda p: p.update(flags=["fp16", "fp16"]), "flags"),
    (lambda p: p["shapes"]["input_ids"].update(min=[1, 64]), "min <= opt <= max"),
    (lambda p: p["shapes"]["input_ids"].update(max=[32]), "one length"),
    (lambda p: p["shapes"].pop("token_type_ids"), "not the graph's inputs"),
    (lambda p: p.update(workspace_mb=0), "workspace_mb"),
])
def test_a_malformed_plan_is_a_bundle_error(change, match):
    plan = make_plan()
    change(plan)
    with pytest.raises(rt.BundleError, match=match):
        check_engine_plan(plan, INPUTS)
    assert check_engine_plan(None, INPUTS) is None


def test_load_refuses_a_bundle_with_a_malformed_plan(trt_bundle):
    plan = make_plan()
    plan["shapes"]["input_ids"]["max"] = [0, 32]
    with pytest.raises(rt.BundleError, match="engine_plan.shapes.input_ids"):
        rt.load(trt_bundle(plan, backends=["ort-cpu"]))


def test_the_plan_reaches_the_ort_tensorrt_provider(trt_bundle, cache_dir, monkeypatch):
    # No TensorRT provider here: the session is a CPU one that reports TensorRT, so what the
    # runtime passed to onnxruntime can be checked.
    seen = {}

    def fake_session(model_path, providers, **kwargs):
        seen["providers"] = providers
        real = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

        class Session:
            def get_providers(self):
                return ["TensorrtExecutionProvider", "CPUExecutionProvider"]

            def __getattr__(self, name):
                return getattr(real, name)

        return Session()

    monkeypatch.setattr(rt.backends.ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(rt.backends, "ort_session", fake_session)
    plan = make_plan(["int8", "fp16"], workspace=1024)
    bundle = trt_bundle(plan, backends=["ort-tensorrt", "ort-cpu"])
    model = rt.load(bundle)
    assert model.backend_name == "ort-tensorrt"
    name, options = seen["providers"][0]
    assert name == "TensorrtExecutionProvider" and seen["providers"][1:] == ["CPUExecutionProvider"]
    model_sha = rt.read_manifest(bundle)["files"]["model.onnx"]["sha256"]
    engine_dir = ort_engine_dir(cache_dir, ort.__version__, rt.read_manifest(bundle)["engine_plan"], model_sha)
    assert engine_dir.is_dir()
    assert options == ort_tensorrt_options(rt.read_manifest(bundle)["engine_plan"], engine_dir,
                                           timing_dir=engine_dir.parent, workspace_bytes=1024 << 20)
    assert options["trt_int8_enable"] and options["trt_fp16_enable"]
    assert options["trt_profile_max_shapes"] == "attention_mask:32x32,input_ids:32x32,token_type_ids:32x32"


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


# ---------------------------------------------------------------- edgekit-run info

def test_info_shows_the_trtexec_line(trt_bundle, capsys):
    plan = make_plan(["int8", "fp16"], workspace=1024)
    bundle = trt_bundle(plan)
    assert main(["info", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert plan["trtexec"] in out and "flags int8, fp16" in out and "workspace 1024 MiB" in out
    assert main(["info", str(bundle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["engine_plan"]["trtexec"] == plan["trtexec"]


def test_info_derives_the_trtexec_line_for_an_older_plan(trt_bundle, capsys):
    plan = make_plan()
    del plan["trtexec"]
    assert main(["info", str(trt_bundle(plan)), "--json"]) == 0
    line = json.loads(capsys.readouterr().out)["engine_plan"]["trtexec"]
    assert line.startswith("trtexec --onnx=model.onnx --saveEngine=model.engine --minShapes=attention_mask:1x1,")
    assert "--fp16" in line and "--int8" not in line
