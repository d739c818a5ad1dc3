"""check_ops: every op, domain and opset a profile cannot run is named with its fix."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgekit.export.opcheck import OpSupportError, check_ops, op_histogram
from edgekit.export.rewrite import apply_rules
from edgekit_runtime.errors import EdgekitError
from onnx_fixtures import export_tiny, minimal_profile, run_onnx, single_op_model, tiny_inputs

ERF_NODES = ["/bert/encoder/layer.0/intermediate/intermediate_act_fn/Erf",
             "/bert/encoder/layer.1/intermediate/intermediate_act_fn/Erf"]


def test_erf_on_a_board_without_it_names_node_op_profile_and_fix(tmp_path):
    model = onnx.load(export_tiny(tmp_path, "bert"))
    profile = minimal_profile(unsupported_ops=["Erf"])
    with pytest.raises(OpSupportError) as info:
        check_ops(model, profile)

    err = info.value
    assert isinstance(err, EdgekitError) and len(err.violations) == 2
    for node, line in zip(ERF_NODES, err.violations):
        assert f"node '{node}' (op Erf)" in line
        assert "profile 'test-board'" in line
        assert "Fix: add 'gelu-tanh' or 'gelu-sigmoid' to rewrite_rules in test-board.toml" in line
    assert "2 violation(s)" in str(err) and all(n in str(err) for n in ERF_NODES)


def test_passes_after_the_fixing_rule(tmp_path):
    model = onnx.load(export_tiny(tmp_path, "bert"))
    profile = minimal_profile(unsupported_ops=["Erf"], rewrite_rules=["gelu-tanh"])
    fixed, [report] = apply_rules(model, profile.rewrite_rules)
    assert report.fired == 2
    check_ops(fixed, profile)
    feeds = tiny_inputs(2, 10)
    assert np.abs(run_onnx(fixed, feeds)[0] - run_onnx(model, feeds)[0]).max() < 2e-3


def test_rule_listed_but_not_firing_points_at_its_report(tmp_path):
    model = onnx.load(export_tiny(tmp_path, "bert"))
    profile = minimal_profile(unsupported_ops=["Erf"], rewrite_rules=["gelu-tanh"])
    with pytest.raises(OpSupportError) as info:
        check_ops(model, profile)  # the rule was never applied
    assert "rule 'gelu-tanh' is in rewrite_rules of test-board.toml but did not remove this node" in str(info.value)


def test_op_no_rule_removes_says_so(tmp_path):
    model = onnx.load(export_tiny(tmp_path, "distilbert"))
    with pytest.raises(OpSupportError) as info:
        check_ops(model, minimal_profile(unsupported_ops=["Softmax"]))
    assert len(info.value.violations) == 2
    assert "(op Softmax)" in info.value.violations[0]
    assert "no edgekit rule removes it" in info.value.violations[0]
    assert run_onnx(model, tiny_inputs(1, 4))[0].shape == (1, 3)


def _contrib_gelu_model(opset: int) -> onnx.ModelProto:
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None]) for n in ("x", "y")]
    node = helper.make_node("Gelu", ["x"], ["y"], name="fused/Gelu", domain="com.microsoft")
    graph = helper.make_graph([node], "contrib", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def test_every_violation_is_listed_at_once():
    model = _contrib_gelu_model(opset=17)
    assert run_onnx(model, {"x": np.zeros(2, np.float32)})[0].tolist() == [0.0, 0.0]  # ORT runs it
    with pytest.raises(OpSupportError) as info:
        check_ops(model, minimal_profile())
    opset, domain = info.value.violations
    assert "opset 17" in opset and "runs opset 13" in opset and "opset_version=13" in opset
    assert "node 'fused/Gelu' (op com.microsoft.Gelu)" in domain and "domain 'com.microsoft'" in domain
    assert "profile 'test-board'" in domain and "no edgekit rule removes it" in domain


def test_clean_graph_passes_and_histogram_counts_every_node(tmp_path):
    model = onnx.load(export_tiny(tmp_path, "roberta"))
    check_ops(model, minimal_profile(unsupported_ops=["NonMaxSuppression"]))
    hist = op_histogram(model)
    assert sum(hist.values()) == len(model.graph.node)
    assert hist["Erf"] == 2 and hist["Softmax"] == 2
    assert list(hist.values()) == sorted(hist.values(), reverse=True)
    relu = single_op_model([helper.make_node("Relu", ["x"], ["y"])],
                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    assert op_histogram(relu) == {"Relu": 1}
    assert run_onnx(model, tiny_inputs(2, 5))[0].shape == (2, 3)
