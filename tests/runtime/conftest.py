"""Fixtures: a real, tiny bundle (random BERT + WordPiece tokenizer) written with write_bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgekit_runtime import read_manifest, write_bundle
from decoder_bundles import Qwen
from runtime_fixtures import build_tokenizer, cpu_profile_dict, export_model, gpu_profile, tiny_manifest


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A complete, verified-on-write bundle directory (shared: tests that change it copy it first)."""
    work = tmp_path_factory.mktemp("tiny-src")
    build_tokenizer(work / "tokenizer.json")
    export_model(work / "model.onnx")
    out = tmp_path_factory.mktemp("bundles") / "tiny-bert"
    files = {"model.onnx": work / "model.onnx", "tokenizer.json": work / "tokenizer.json"}
    return write_bundle(out, files, tiny_manifest(cpu_profile_dict()))


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle that a test may damage."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / tiny_bundle.name))


@pytest.fixture
def remake_bundle(tiny_bundle, tmp_path):
    """remake_bundle(mutate) -> a new, correctly hashed bundle whose manifest ``mutate`` changed."""
    counter = iter(range(1000))

    def remake(mutate) -> Path:
        manifest = read_manifest(tiny_bundle)
        for key in ("files", "manifest_sha256", "schema_version", "format"):
            manifest.pop(key)
        manifest = json.loads(json.dumps(manifest))
        mutate(manifest)
        files = {name: tiny_bundle / name for name in ("model.onnx", "tokenizer.json")}
        return write_bundle(tmp_path / f"remade-{next(counter)}", files, manifest)

    return remake


# ---------------------------------------------------------------- TensorRT bundles and the engine cache

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


# ---------------------------------------------------------------- tiny Qwen2 bundles (need torch)

@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> Qwen:
    """The standard-graph bundle (the Jetson profiles' operators) of a tiny random Qwen2."""
    return Qwen(tmp_path_factory.mktemp("qwen"))


@pytest.fixture(scope="module")
def qwen_model(qwen):
    import edgekit_runtime as rt

    with rt.load(qwen.bundle) as model:
        yield model


@pytest.fixture(scope="module")
def qwen_contrib(tmp_path_factory) -> Qwen:
    """The same model as an ort-contrib graph (the CPU profiles'): GroupQueryAttention, cache in place."""
    return Qwen(tmp_path_factory.mktemp("qwen-contrib"), ops="ort-contrib")
