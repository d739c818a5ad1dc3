"""The TensorRT engine plan off the device: ONNX Runtime's TensorRT provider options and the engine
directory from the plan, the trtexec line, the workspace rule, malformed plans refused, and what
`edgekit-run info` prints. No GPU or tensorrt package needed."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

import edgekit_runtime as rt
from edgekit_runtime.cli.main import main
from edgekit_runtime.backends.tensorrt import (check_engine_plan, ort_engine_dir, ort_tensorrt_options, profile_shapes,
                                        trtexec_command, workspace_mb)

from runtime_fixtures import INPUTS, MODEL_SHA, make_plan


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

    monkeypatch.setattr(rt.backends.select.ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(rt.backends.ort, "ort_session", fake_session)
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
