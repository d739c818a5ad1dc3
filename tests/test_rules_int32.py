"""int32-inputs: int64 token inputs become int32 with a Cast back; outputs are bit-identical."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgekit.export.rewrite import get_rule
from onnx_fixtures import ARCHS, export_tiny, input_names, run_onnx, single_op_model, tiny_inputs

RULE = get_rule("int32-inputs")


def _input_types(model):
    return {v.name: v.type.tensor_type.elem_type for v in model.graph.input}


@pytest.mark.parametrize("arch", ARCHS)
def test_token_inputs_become_int32_and_logits_are_exact(tmp_path, arch):
    model = onnx.load(export_tiny(tmp_path, arch))
    out, report = RULE.apply(model)

    names = input_names(arch)
    assert report.fired == len(names) and report.skipped == ()
    assert report.changed == tuple(f"input {n}: int64 -> int32" for n in names)
    assert _input_types(out) == {n: TensorProto.INT32 for n in names}
    casts = {n.input[0]: n for n in out.graph.node if n.op_type == "Cast" and n.input[0] in names}
    assert set(casts) == set(names)
    assert all(c.attribute[0].i == TensorProto.INT64 for c in casts.values())
    # Nothing but the new Casts reads the int32 inputs directly.
    readers = [n for n in out.graph.node for i in n.input if i in names]
    assert all(n.op_type == "Cast" for n in readers)
    feeds = tiny_inputs(3, 12)
    np.testing.assert_array_equal(run_onnx(out, feeds)[0], run_onnx(model, feeds)[0])


def test_graph_without_int64_inputs_is_left_alone_with_a_reason():
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("x", "y")]
    model = single_op_model([helper.make_node("Relu", ["x"], ["y"], name="r")], io[:1], io[1:])
    out, report = RULE.apply(model)
    assert report.fired == 0 and report.skipped == ("input x: type is float, not int64",)
    assert out.SerializeToString() == model.SerializeToString()
    assert run_onnx(out, {"x": np.array([-1.0, 2.0], np.float32)})[0].tolist() == [0.0, 2.0]


def test_rule_is_idempotent(tmp_path):
    once, _ = RULE.apply(onnx.load(export_tiny(tmp_path, "distilbert")))
    twice, report = RULE.apply(once)
    assert report.fired == 0
    assert report.skipped == ("input input_ids: type is int32, not int64",
                              "input attention_mask: type is int32, not int64")
    feeds = tiny_inputs(2, 6)
    np.testing.assert_array_equal(run_onnx(twice, feeds)[0], run_onnx(once, feeds)[0])


def test_input_passed_through_as_output_is_skipped_and_unused_input_needs_no_cast():
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [None])
    unused = helper.make_tensor_value_info("unused", TensorProto.INT64, [None])
    out_ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [None])
    model = single_op_model([], [ids, unused], [out_ids])
    out, report = RULE.apply(model)
    assert report.fired == 1 and report.changed == ("input unused: int64 -> int32",)
    assert report.skipped == ("input ids: it is also a graph output, whose type would change",)
    assert len(out.graph.node) == 0 and _input_types(out)["unused"] == TensorProto.INT32
    got = run_onnx(out, {"ids": np.array([5, 7]), "unused": np.array([1])})[0]
    assert got.dtype == np.int64 and got.tolist() == [5, 7]
