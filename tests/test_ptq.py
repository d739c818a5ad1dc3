"""ONNX Runtime post-training int8 (static QDQ / QOperator, dynamic) and the metric-based quantized gate."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgekit.config import RecipeError
from edgekit.quant.gate import GateConfig, QuantizationGateError, quantized_gate
from edgekit.quant.ptq import PTQConfig, PTQError, quantize_dynamic_onnx, quantize_static_onnx, standard_ops_only
from edgekit.tasks.sequence_classification import SequenceClassification
from onnx_fixtures import export_tiny, run_onnx, tiny_inputs

METRICS = SequenceClassification().metrics


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The tiny BERT in fp32 and its int8 variants, with fp32 logits on held-out random inputs."""
    tmp = tmp_path_factory.mktemp("ptq")
    src = export_tiny(tmp, "bert")
    calibration = [tiny_inputs(8, 16, seed=s) for s in range(4)]
    held_out = tiny_inputs(64, 16, seed=99)
    return {
        "src": src,
        "held_out": held_out,
        "reference": run_onnx(src, held_out)[0],
        "qdq": quantize_static_onnx(src, tmp / "qdq.onnx", calibration, PTQConfig(calibration_samples=24)),
        "qoperator": quantize_static_onnx(src, tmp / "qop.onnx", calibration, PTQConfig(format="qoperator")),
        "dynamic": quantize_dynamic_onnx(src, tmp / "dyn.onnx"),
    }


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def test_static_qdq_is_symmetric_standard_int8(graphs):
    report = graphs["qdq"]
    model = onnx.load(str(report.path))
    onnx.checker.check_model(model, full_check=True)
    assert report.ops["QuantizeLinear"] > 0 and report.ops["DequantizeLinear"] > 0
    assert report.non_standard_ops == [] and standard_ops_only(model) == []
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
    assert report.calibration_samples == 24  # capped mid-batch: 8 + 8 + 8 of 32 rows
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    # Gemm biases stay fp32 (TensorRT rejects an int32 DequantizeLinear).
    assert not any(v.dtype == np.int32 for v in inits.values())
    # Only MatMul / Gemm inputs are quantized; their outputs (into GELU, Softmax, LayerNorm) stay fp32.
    producer = {o: n for n in model.graph.node for o in n.output}
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        assert producer[q.input[0]].op_type not in ("MatMul", "Gemm")
        dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
        assert any(dq.output[0] in c.input for c in model.graph.node if c.op_type in ("MatMul", "Gemm"))
    got = run_onnx(report.path, graphs["held_out"])[0]
    assert _agreement(got, graphs["reference"]) >= 0.8  # random tiny weights: near-tied logits


def test_qoperator_names_its_contrib_ops(graphs):
    report = graphs["qoperator"]
    assert report.ops["QLinearMatMul"] > 0
    assert report.non_standard_ops == ["com.microsoft.QGemm"]
    onnx.checker.check_model(onnx.load(str(report.path)), full_check=True)


def test_dynamic_runs_with_standard_integer_ops(graphs):
    report = graphs["dynamic"]
    model = onnx.load(str(report.path))
    onnx.checker.check_model(model, full_check=True)
    assert report.ops["MatMulInteger"] > 0 and report.ops["DynamicQuantizeLinear"] > 0
    assert report.non_standard_ops == [] and report.calibration_samples == 0
    got = run_onnx(report.path, graphs["held_out"])[0]
    assert np.isfinite(got).all() and _agreement(got, graphs["reference"]) >= 0.8


def test_gate_passes_identical_logits(graphs):
    ref = graphs["reference"]
    figures = quantized_gate(ref, ref.copy(), ref.argmax(-1), METRICS)
    assert figures["passed"] and figures["argmax_agreement"] == 1.0 and figures["metric_drop"] == 0.0
    assert figures["metric"] == "macro_f1"


def test_gate_fails_a_broken_weight_scale(graphs, tmp_path):
    model = onnx.load(str(graphs["qdq"].path))
    inits = {t.name: t for t in model.graph.initializer}
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
              and any(n.output[0] in c.input and c.op_type == "MatMul" for c in model.graph.node))
    scale = inits[dq.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 50, scale.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    ref = graphs["reference"]
    got = run_onnx(broken, graphs["held_out"])[0]
    with pytest.raises(QuantizationGateError, match=r"argmax agreement .* drop .*after PTQ, try QAT.*after QAT, try") as err:
        quantized_gate(ref, got, ref.argmax(-1), METRICS)
    figures = err.value.figures
    assert not figures["passed"] and figures["argmax_agreement"] < 0.99 and figures["metric_drop"] > 0.01


def test_gate_fails_a_metric_drop_despite_high_agreement():
    # 990 common rows all kept; 5 of the 10 rare-class rows flipped: agreement 0.995, macro-F1 falls ~17 points.
    labels = np.array([0] * 990 + [1] * 10)
    reference = np.eye(2)[labels]
    flipped = labels.copy()
    flipped[990:995] = 0
    with pytest.raises(QuantizationGateError, match="macro_f1 drop") as err:
        quantized_gate(reference, np.eye(2)[flipped], labels, METRICS, GateConfig())
    figures = err.value.figures
    assert figures["argmax_agreement"] == pytest.approx(0.995) and figures["metric_drop"] > 0.1
    assert "argmax agreement 0.9950 <" not in str(err.value)  # only the metric threshold failed


def test_gate_fails_non_finite_logits():
    labels = np.array([0, 1])
    with pytest.raises(QuantizationGateError, match="non-finite"):
        quantized_gate(np.eye(2), np.full((2, 2), np.nan), labels, METRICS)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="int4"), r"\[ptq\] method .*static"),
    (dict(format="qlinear"), r"\[ptq\] format .*qdq"),
    (dict(method="dynamic", format="qoperator"), r"applies to method = \"static\" only"),
    (dict(method="dynamic", calibrate_method="entropy"), r"applies to method = \"static\" only"),
    (dict(calibrate_method="kl"), r"calibrate_method .*minmax"),
    (dict(calibration_samples=0), r"calibration_samples .*positive"),
    (dict(op_types_to_quantize=[]), r"non-empty"),
    (dict(op_types_to_quantize=["LayerNorm"]), r"cannot quantize \['LayerNorm'\]"),
])
def test_ptq_config_rejects_with_a_fix(kwargs, match):
    with pytest.raises(RecipeError, match=match) as err:
        PTQConfig(**kwargs)
    assert "Fix:" in str(err.value)


@pytest.mark.parametrize("kwargs", [dict(min_argmax_agreement=1.5), dict(max_metric_drop=-0.1)])
def test_gate_config_rejects_out_of_range(kwargs):
    with pytest.raises(RecipeError, match="Fix:"):
        GateConfig(**kwargs)


def test_quantize_calls_check_method_and_feeds(graphs, tmp_path):
    with pytest.raises(PTQError, match="quantize_dynamic_onnx"):
        quantize_static_onnx(graphs["src"], tmp_path / "x.onnx", [], PTQConfig(method="dynamic"))
    with pytest.raises(PTQError, match="quantize_static_onnx"):
        quantize_dynamic_onnx(graphs["src"], tmp_path / "x.onnx", PTQConfig())
    with pytest.raises(PTQError, match="no calibration batches"):
        quantize_static_onnx(graphs["src"], tmp_path / "x.onnx", [])
    feeds = tiny_inputs(4, 8)
    del feeds["token_type_ids"]
    with pytest.raises(PTQError, match=r"no \['token_type_ids'\]"):
        quantize_static_onnx(graphs["src"], tmp_path / "x.onnx", [feeds])


@pytest.mark.parametrize("n_batches", [8, 16])
def test_static_calibration_with_a_multiple_of_eight_batches(tmp_path, n_batches):
    # onnxruntime's CalibMaxIntermediateOutputs=8 failed ("No data is collected") at 16 batches.
    src = export_tiny(tmp_path, "bert")
    feeds = [tiny_inputs(2, 8, seed=s) for s in range(n_batches)]
    report = quantize_static_onnx(src, tmp_path / "q.onnx", feeds, PTQConfig(calibration_samples=2 * n_batches))
    assert report.calibration_samples == 2 * n_batches and report.path.is_file()
