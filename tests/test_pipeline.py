"""End-to-end compiles of tiny random models: bundle written, verified, loaded, faithful."""

import json

import numpy as np
import onnx
import pytest
import torch

import edgekit_runtime
from edgekit.compiler.run import compile_bundle
from edgekit.profiles import resolve_profile
from edgekit.recipe import load_recipe
from edgekit.tasks.sequence_classification import SequenceClassification
from tests.tiny_models import make_csv, make_model_dir

pass_names = SequenceClassification().pass_names


def _recipe(tmp_path, teacher, profile, **extra):
    data = make_csv(tmp_path / "data.csv", rows=150)
    values = {"profile": profile, "teacher": str(teacher), "max_length": 32, "threads": 1,
              "data": {"path": str(data)},
              "finetune": {"max_steps": 20, "batch_size": 8, "learning_rate": 1e-3, "eval_every": 10},
              "rewrite": {"measure_samples": 16},
              "validate": {"batch_sizes": [1, 3], "lengths": [8, 32], "batches_per_shape": 1},
              "bundle": {"out": str(tmp_path / "bundle")}}
    # compression (budget plan, student, floors) only where a test asks for a student; the timings of
    # the plan are not cached in the user's home
    values["compress"] = "student" in extra
    values["budget"] = {"cache": False}
    for key, value in extra.items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    return load_recipe(None, values)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("bert"), "bert")


def _compile(tmp_path, teacher, profile_name, **extra):
    profile = resolve_profile(profile_name)
    return compile_bundle(_recipe(tmp_path, teacher, profile_name, **extra), profile, echo=lambda s: None)


def test_compile_x86_bundle_is_verified_and_faithful(tmp_path, bert_dir):
    state = _compile(tmp_path, bert_dir, "x86-64-cpu")
    manifest = edgekit_runtime.verify_bundle(state.bundle_path)
    assert [p["name"] for p in manifest["pass_log"]] == pass_names(state.recipe)
    assert "prune" not in pass_names(state.recipe)  # compress = false: the teacher as it is
    assert manifest["task"] == {"name": "sequence-classification", "labels": ["negative", "neutral", "positive"]}
    assert manifest["profile"]["name"] == "x86-64-cpu"
    assert manifest["recipe"]["finetune"]["max_steps"] == 20
    assert {i["name"] for i in manifest["model"]["inputs"]} == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(i["dtype"] == "int64" for i in manifest["model"]["inputs"])
    # The runtime's predictions equal the PyTorch model's on the test split.
    model = edgekit_runtime.load(state.bundle_path)
    texts = list(state.splits.test.texts)
    got = model.logits(texts)
    with torch.no_grad():
        batch = state.tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        want = state.model(**batch).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    q = manifest["figures"]["quality"]
    assert q["bundle_runtime"]["macro_f1"] == pytest.approx(q["teacher_pytorch"]["macro_f1"], abs=1e-9)
    assert manifest["figures"]["validation"]["max_abs_diff"] < 1e-4
    onnx.checker.check_model(onnx.load(str(state.bundle_path / "model.onnx")), full_check=True)


def test_xavier_bundle_differs_as_its_profile_says(tmp_path, bert_dir):
    state = _compile(tmp_path, bert_dir, "jetson-xavier-nx")
    manifest = edgekit_runtime.verify_bundle(state.bundle_path)
    graph = onnx.load(str(state.bundle_path / "model.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert "Erf" not in ops and "LayerNormalization" not in ops and "Sigmoid" in ops
    assert all(i["dtype"] == "int32" for i in manifest["model"]["inputs"])
    assert set(manifest["model"]["rewrite_rules"]) == {"int32-inputs", "fp16-safe-mask", "gelu-sigmoid"}
    subs = manifest["figures"]["substitutions"]
    assert subs["gelu-sigmoid"]["fired"] > 0 and 0 <= subs["gelu-sigmoid"]["argmax_agreement"] <= 1
    assert subs["int32-inputs"]["max_abs_logit_diff"] == 0.0
    # Validation compared against the model with the same GELU approximation, at fp32 tolerance.
    assert manifest["figures"]["validation"]["reference_patches"] == ["gelu-sigmoid"]
    preds = edgekit_runtime.load(state.bundle_path).predict(["good great day", "awful sad phone"])
    assert all(p["label"] in manifest["task"]["labels"] for p in preds)


@pytest.mark.parametrize("arch", ["distilbert", "roberta"])
def test_other_encoder_architectures_compile(tmp_path, arch):
    teacher = make_model_dir(tmp_path / arch, arch)
    state = _compile(tmp_path, teacher, "raspberry-pi-5")
    manifest = edgekit_runtime.verify_bundle(state.bundle_path)
    assert {i["name"] for i in manifest["model"]["inputs"]} == {"input_ids", "attention_mask"}
    assert manifest["figures"]["validation"]["max_abs_diff"] < 1e-4


def test_failed_compile_leaves_no_bundle(tmp_path, bert_dir, monkeypatch):
    pipeline = SequenceClassification

    def broken(state):
        raise edgekit_runtime.EdgekitError("validation exploded on purpose")

    monkeypatch.setitem(pipeline.PASSES, "validate", broken)
    with pytest.raises(edgekit_runtime.EdgekitError, match="on purpose"):
        _compile(tmp_path, bert_dir, "x86-64-cpu")
    assert not (tmp_path / "bundle").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    # What --resume needs stays: the fine-tuned teacher's weights.
    assert (tmp_path / ".bundle.work" / "teacher-finetuned.pt").is_file()


def test_existing_bundle_needs_force(tmp_path, bert_dir):
    (tmp_path / "bundle").mkdir()
    with pytest.raises(edgekit_runtime.BundleError, match="--force"):
        _compile(tmp_path, bert_dir, "x86-64-cpu")


def test_unknown_rule_fails_before_training(tmp_path, bert_dir):
    with pytest.raises(edgekit_runtime.EdgekitError, match="gelu-magic"):
        _compile(tmp_path, bert_dir, "x86-64-cpu", rewrite={"rules": ["gelu-magic"]})


STUDENT = {"student": {"enabled": True, "importance_batches": 2, "importance_batch_size": 8},
           "prune": {"layers_to_keep": 1, "heads_to_keep": 2, "head_score": "gradient"},
           "student_train": {"max_steps": 6, "batch_size": 8, "grad_accum": 2, "learning_rate": 1e-3,
                             "eval_every": 3}}


def test_pruned_distilled_student_is_exported_and_validated(tmp_path, bert_dir):
    state = _compile(tmp_path, bert_dir, "jetson-orin", **STUDENT)
    manifest = edgekit_runtime.verify_bundle(state.bundle_path)
    names = [p["name"] for p in manifest["pass_log"]]
    start = names.index("prune")
    assert names[start - 3:start + 4] == ["plan-budget", "finetune", "evaluate-teacher", "prune", "distill",
                                          "evaluate-student", "student-floor"]
    prune = manifest["figures"]["compression"]["prune"]
    assert [r["kept"] for r in prune["plan"]] == [False, True] or [r["kept"] for r in prune["plan"]] == [True, False]
    assert prune["reload_max_abs_diff"] <= 1e-5 and prune["non_embedding_ratio"] < 0.5
    assert manifest["recipe"]["student"]["order"] == ["prune", "distill"]
    # The bundle is the student: one layer and two heads' worth of attention weights.
    graph = onnx.load(str(state.bundle_path / "model.onnx"))
    n_params = sum(int(np.prod(t.dims)) for t in graph.graph.initializer)
    assert n_params < sum(p.numel() for p in state.teacher.parameters())
    assert manifest["figures"]["validation"]["max_abs_diff"] < 1e-4
    curve = (state.bundle_path / "training" / "student_loss_curve.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in curve]
    assert {"kd", "task", "temperature", "lr"} <= set(rows[0])
    assert rows[0]["temperature"] == pytest.approx(4.0)
    q = manifest["figures"]["quality"]
    assert 0 <= q["student_pytorch"]["macro_f1"] <= 1
    assert q["bundle_runtime"]["macro_f1"] == pytest.approx(q["student_pytorch"]["macro_f1"], abs=1e-9)


def test_student_order_is_a_recipe_choice(tmp_path, bert_dir):
    state = _compile(tmp_path, bert_dir, "x86-64-cpu", **{**STUDENT, "student": {**STUDENT["student"],
                                                                                  "order": ["distill", "prune"]}})
    names = [p["name"] for p in state.pass_log]
    assert names.index("distill") < names.index("prune")


def test_resume_continues_after_a_failure(tmp_path, bert_dir, monkeypatch):
    pipeline = SequenceClassification

    def broken(state):
        raise edgekit_runtime.EdgekitError("interrupted on purpose")

    monkeypatch.setitem(pipeline.PASSES, "evaluate-student", broken)
    with pytest.raises(edgekit_runtime.EdgekitError, match="on purpose"):
        _compile(tmp_path, bert_dir, "x86-64-cpu", **STUDENT)
    monkeypatch.undo()
    recipe = _recipe(tmp_path, bert_dir, "x86-64-cpu", **STUDENT)
    state = compile_bundle(recipe, resolve_profile("x86-64-cpu"), echo=lambda s: None, resume=True)
    log = {p["name"]: p for p in state.pass_log}
    assert "resumed" in log["finetune"]["notes"][0]
    assert log["distill"]["figures"]["resumed_from"] == 6
    assert not (tmp_path / ".bundle.work").exists()  # removed once the bundle is written


def test_resume_refuses_a_changed_recipe(tmp_path, bert_dir, monkeypatch):
    pipeline = SequenceClassification

    monkeypatch.setitem(pipeline.PASSES, "export", lambda state: (_ for _ in ()).throw(
        edgekit_runtime.EdgekitError("stop")))
    with pytest.raises(edgekit_runtime.EdgekitError):
        _compile(tmp_path, bert_dir, "x86-64-cpu")
    recipe = _recipe(tmp_path, bert_dir, "x86-64-cpu", finetune={"max_steps": 21})
    with pytest.raises(edgekit_runtime.EdgekitError, match="recipe changed.*finetune"):
        compile_bundle(recipe, resolve_profile("x86-64-cpu"), echo=lambda s: None, resume=True)


QAT = {"quantize": {"method": "qat", "qat": {"calibration_batches": 2}},
       "qat_train": {"max_steps": 4, "batch_size": 8, "grad_accum": 1, "learning_rate": 1e-4},
       # The tiny random model's logits are nearly flat: judge the plumbing, not tiny-model accuracy.
       }
LOOSE_GATE = {"gate": {"min_argmax_agreement": 0.0, "max_metric_drop": 1.0}}


def _int8_weights(path):
    graph = onnx.load(str(path))
    return [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]


def test_qat_student_bundle_stores_int8_weights(tmp_path, bert_dir):
    quant = {**QAT["quantize"], **LOOSE_GATE}
    state = _compile(tmp_path, bert_dir, "jetson-orin", **{**STUDENT, **QAT, "quantize": quant})
    manifest = edgekit_runtime.verify_bundle(state.bundle_path)
    assert manifest["model"]["precision"] == "int8"
    assert manifest["model"]["int8"] == {"method": "qat", "format": "qdq"}
    assert manifest["engine_plan"]["flags"] == ["int8", "fp16"]  # explicit quantization, the rest in fp16
    assert manifest["engine_plan"]["trtexec"].endswith(" --fp16 --int8 --memPoolSize=workspace:4096M --skipInference")
    names = [p["name"] for p in manifest["pass_log"]]
    assert names.index("qat") < names.index("export") < names.index("int8") < names.index("quant-gate")
    graph = onnx.load(str(state.bundle_path / "model.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert {op.domain for op in graph.opset_import} <= {"", "ai.onnx"}
    # Every quantized Linear's weight is int8 in the file (1 layer x 6 Linears + the pooler, less the
    # most sensitive one kept fp32), and no other fp32 matrix is left but the classifier (kept fp32)
    # and the tiny embedding tables (< 1,000 rows).
    qat = manifest["figures"]["compression"]["qat"]
    assert len(qat["kept_fp32"]) == 1 and qat["kept_fp32"][0] in qat["most_sensitive"]
    n_linear = qat["quantized_linears"]
    assert n_linear == 6 and len(_int8_weights(state.bundle_path / "model.onnx")) == n_linear
    fp32 = {t.name for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2}
    others = [name for name in fp32 if not ("embeddings" in name or "classifier" in name)]
    assert len(others) == len(qat["kept_fp32"]), fp32
    gate = manifest["figures"]["quant_gate"]
    assert 0 <= gate["argmax_agreement"] <= 1 and gate["passed"]
    assert manifest["figures"]["validation"]["values_compared"] is True
    preds = edgekit_runtime.load(state.bundle_path).predict(["good great day"])
    assert preds[0]["label"] in manifest["task"]["labels"]


@pytest.mark.parametrize("method, fmt", [("ptq-static", "qdq"), ("ptq-static", "qoperator"), ("ptq-dynamic", None)])
def test_ptq_bundles_on_a_cpu_profile(tmp_path, bert_dir, method, fmt):
    quant = {"method": method, "calibration_samples": 16, **LOOSE_GATE, **({"format": fmt} if fmt else {})}
    state = _compile(tmp_path, bert_dir, "x86-64-cpu", quantize=quant)
    manifest = edgekit_runtime.verify_bundle(state.bundle_path)
    assert manifest["model"]["precision"] == "int8"
    assert manifest["figures"]["validation"]["values_compared"] is False
    assert _int8_weights(state.bundle_path / "model.onnx")
    assert edgekit_runtime.load(state.bundle_path).logits(["good day"]).shape == (1, 3)


def test_gate_failure_fails_the_compile_and_writes_no_bundle(tmp_path, bert_dir):
    quant = {"method": "ptq-static", "calibration_samples": 16}  # the default gate: 97% agreement, 1 point
    import edgekit.quant.gate as gate

    # Unbroken, the same compile passes the default gate: the failure below is the broken scale's.
    (tmp_path / "ok").mkdir()
    ok = _compile(tmp_path / "ok", bert_dir, "x86-64-cpu", quantize=quant)
    assert ok.figures["quant_gate"]["passed"]

    with pytest.raises(gate.QuantizationGateError, match="agreement"):
        # A scale made 50x too large breaks the int8 graph; the metric gate must catch it.
        def broken_int8(state, _orig=__import__("edgekit.quant.passes", fromlist=["x"]).pass_int8):
            result = _orig(state)
            graph = onnx.load(str(state.onnx_path))
            int8 = {t.name for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8}
            scales = {n.input[1] for n in graph.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8}
            for t in graph.graph.initializer:
                if t.name in scales:
                    t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * 50, t.name))
            onnx.save(graph, str(state.onnx_path))
            return result

        pipeline = SequenceClassification
        old = pipeline.PASSES["int8"]
        pipeline.PASSES["int8"] = broken_int8
        try:
            _compile(tmp_path, bert_dir, "x86-64-cpu", quantize=quant)
        finally:
            pipeline.PASSES["int8"] = old
    assert not (tmp_path / "bundle").exists()


def test_profile_refuses_an_int8_format_it_cannot_run(tmp_path, bert_dir):
    with pytest.raises(edgekit_runtime.EdgekitError, match="takes \\['qdq'\\]"):
        _compile(tmp_path, bert_dir, "jetson-orin", quantize={"method": "ptq-dynamic"})


def test_engine_plan_for_tensorrt_targets_only(tmp_path, bert_dir):
    state = _compile(tmp_path, bert_dir, "jetson-orin")
    plan = edgekit_runtime.verify_bundle(state.bundle_path)["engine_plan"]
    assert plan["flags"] == ["fp16"] and plan["tensorrt"] == "10.3" and plan["compute_capability"] == "8.7"
    assert plan["shapes"]["input_ids"] == {"min": [1, 1], "opt": [1, 32], "max": [32, 32]}
    assert plan["workspace_mb"] == 4096  # a quarter of jetson-orin's 16384 MiB budget
    assert plan["trtexec"] == (
        "trtexec --onnx=model.onnx --saveEngine=model.engine"
        " --minShapes=input_ids:1x1,attention_mask:1x1,token_type_ids:1x1"
        " --optShapes=input_ids:1x32,attention_mask:1x32,token_type_ids:1x32"
        " --maxShapes=input_ids:32x32,attention_mask:32x32,token_type_ids:32x32"
        " --fp16 --memPoolSize=workspace:4096M --skipInference")
    (tmp_path / "cpu").mkdir()
    cpu = _compile(tmp_path / "cpu", bert_dir, "raspberry-pi-5")
    assert edgekit_runtime.verify_bundle(cpu.bundle_path)["engine_plan"] is None


def _two_input_graph(path):
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT64, ["batch", "sequence"])
              for n in ("input_ids", "attention_mask")]
    out = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.INT64, ["batch", "sequence"])
    node = onnx.helper.make_node("Add", ["input_ids", "attention_mask"], ["logits"])
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([node], "g", inputs, [out])), str(path))
    return path


@pytest.mark.parametrize("profile_name, precision, want", [
    ("jetson-orin", "int8", ["int8", "fp16"]), ("jetson-orin", "fp32", ["fp16"]),
    ("jetson-orin-nano", "int8", ["int8", "fp16"]), ("jetson-orin-nano", "fp32", ["fp16"])])
def test_engine_plan_trtexec_line_matches_the_plan(tmp_path, profile_name, precision, want):
    from types import SimpleNamespace

    from edgekit.bundle.manifest import engine_plan

    profile = resolve_profile(profile_name)
    state = SimpleNamespace(profile=profile, precision=precision, target=SimpleNamespace(max_context=64),
                            onnx_path=_two_input_graph(tmp_path / "model.onnx"))
    plan = engine_plan(state)
    assert plan["flags"] == want
    ws = max(256, profile.memory_budget_mb // 4)
    assert plan["workspace_mb"] == ws
    precision_flags = " --fp16 --int8" if "int8" in want else " --fp16"
    assert plan["trtexec"] == (
        "trtexec --onnx=model.onnx --saveEngine=model.engine"
        " --minShapes=input_ids:1x1,attention_mask:1x1 --optShapes=input_ids:1x64,attention_mask:1x64"
        f" --maxShapes=input_ids:32x64,attention_mask:32x64{precision_flags}"
        f" --memPoolSize=workspace:{ws}M --skipInference")
    # The runtime accepts the plan as written and derives the same line from it.
    from edgekit_runtime.backends.tensorrt import check_engine_plan, trtexec_line

    checked = check_engine_plan(plan, ["input_ids", "attention_mask"])
    assert trtexec_line(checked) == plan["trtexec"]


def test_a_prune_plan_the_teacher_cannot_take_fails_before_fine_tuning(tmp_path, bert_dir):
    bad = {**STUDENT, "prune": {"layers_to_keep": 5, "heads_to_keep": 2}}
    with pytest.raises(edgekit_runtime.EdgekitError, match="keep at most 2"):
        _compile(tmp_path, bert_dir, "x86-64-cpu", **bad)
    assert not (tmp_path / ".bundle.work" / "teacher-finetuned.pt").exists()  # nothing was trained
