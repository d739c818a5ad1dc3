"""The rule registry, apply_rules, simplify and the graph helpers rules are built on."""

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.export.graph import GraphIndex, remove_dead_nodes
from edgekit.export.opcheck import op_histogram
from edgekit.export.rewrite import apply_rules, get_rule, simplify
from edgekit.export.rules.base import RULES, RewriteError
from edgekit_runtime.errors import EdgekitError
from onnx_fixtures import export_tiny, run_onnx, single_op_model, tiny_inputs


def test_registry_holds_the_built_in_rules_with_their_contract():
    assert set(RULES) == {"gelu-tanh", "gelu-sigmoid", "int32-inputs", "fp16-safe-mask"}
    for name, rule in RULES.items():
        assert rule.name == name and rule.description and isinstance(rule.removes_ops, tuple)
    assert get_rule("gelu-tanh").removes_ops == ("Erf",) == get_rule("gelu-sigmoid").removes_ops


def test_unknown_rule_lists_the_valid_names():
    with pytest.raises(RewriteError) as info:
        get_rule("gelu-fast")
    assert isinstance(info.value, EdgekitError)
    assert "'gelu-fast'" in str(info.value) and all(n in str(info.value) for n in RULES)


def test_apply_rules_resolves_every_name_before_running(tmp_path, monkeypatch):
    model = onnx.load(export_tiny(tmp_path, "bert"))
    ran = []
    monkeypatch.setattr(type(get_rule("gelu-tanh")), "apply", lambda self, m: ran.append(self.name))
    with pytest.raises(RewriteError):
        apply_rules(model, ["gelu-tanh", "no-such-rule"])
    assert ran == []


def test_apply_rules_reports_each_rule_in_order_and_keeps_outputs(tmp_path):
    model = onnx.load(export_tiny(tmp_path, "bert"))
    before = model.SerializeToString()
    names = ["gelu-tanh", "gelu-sigmoid", "int32-inputs", "fp16-safe-mask"]
    out, reports = apply_rules(model, names)

    assert [r.rule for r in reports] == names
    assert [r.fired for r in reports] == [2, 0, 3, 1]  # no Erf is left for gelu-sigmoid
    assert model.SerializeToString() == before
    with pytest.raises(dataclasses.FrozenInstanceError):
        reports[0].fired = 9
    feeds = tiny_inputs(3, 9)
    assert np.abs(run_onnx(out, feeds)[0] - run_onnx(model, feeds)[0]).max() < 2e-3


def test_simplify_keeps_dynamic_batch_and_sequence(tmp_path):
    model = onnx.load(export_tiny(tmp_path, "bert"))
    simple = simplify(model)

    assert len(simple.graph.node) < len(model.graph.node)
    for value in simple.graph.input:
        assert [d.dim_param for d in value.type.tensor_type.shape.dim] == ["batch", "sequence"]
    assert simple.opset_import[0].version == 13
    for batch, seq in [(1, 5), (4, 19)]:
        feeds = tiny_inputs(batch, seq)
        got, want = run_onnx(simple, feeds)[0], run_onnx(model, feeds)[0]
        assert got.shape == (batch, 3) and np.abs(got - want).max() < 1e-5


def test_rules_work_on_a_simplified_graph_and_simplify_again(tmp_path):
    model = onnx.load(export_tiny(tmp_path, "roberta"))
    out, reports = apply_rules(simplify(model), list(RULES))
    assert [r.fired for r in reports] == [2, 0, 2, 1]
    out = simplify(out)
    assert "Erf" not in op_histogram(out)
    for batch, seq in [(2, 7), (3, 13)]:
        feeds = tiny_inputs(batch, seq)
        assert np.abs(run_onnx(out, feeds)[0] - run_onnx(model, feeds)[0]).max() < 2e-3


def test_simplify_fails_loudly_when_onnxsim_check_fails(tmp_path, monkeypatch):
    import onnxsim

    model = onnx.load(export_tiny(tmp_path, "distilbert"))
    monkeypatch.setattr(onnxsim, "simplify", lambda m: (m, False))
    with pytest.raises(RewriteError, match="onnxsim's check of the simplified graph 'main_graph' failed"):
        simplify(model)
    fixed_batch = onnx.ModelProto()
    fixed_batch.CopyFrom(model)
    fixed_batch.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    monkeypatch.setattr(onnxsim, "simplify", lambda m: (fixed_batch, True))
    with pytest.raises(RewriteError, match="changed the dynamic axes of \\['input_ids'\\]"):
        simplify(model)
    assert run_onnx(model, tiny_inputs(2, 4))[0].shape == (2, 3)


def test_graph_helpers_read_constants_and_drop_dead_nodes():
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(5.0, np.float32), "override"),
             numpy_helper.from_array(np.ones(3, np.float32), "unused")]
    nodes = [helper.make_node("Constant", [], ["half"], name="c", value_float=0.5),
             helper.make_node("Mul", ["x", "half"], ["h"], name="m"),
             helper.make_node("Add", ["h", "two"], ["y"], name="a"),
             helper.make_node("Neg", ["x"], ["dead"], name="dead")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None]),
              helper.make_tensor_value_info("override", TensorProto.FLOAT, [])]
    model = single_op_model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])], inits)

    index = GraphIndex(model.graph)
    assert index.scalar("half") == 0.5 and index.scalar("two") == 2.0
    assert index.scalar("override") is None  # an initializer that is also an input can be fed
    assert index.sole_consumer("h").name == "a" and index.sole_consumer("y") is None
    assert [n.name for n in index.users("x")] == ["m", "dead"]
    assert remove_dead_nodes(model.graph) == 1
    assert [n.name for n in model.graph.node] == ["c", "m", "a"]
    assert {t.name for t in model.graph.initializer} == {"two", "override"}
    x = np.array([1.0, 4.0], np.float32)
    assert run_onnx(model, {"x": x, "override": np.array(0, np.float32)})[0].tolist() == [2.5, 4.0]

