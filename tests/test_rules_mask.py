"""fp16-safe-mask: finfo.min mask fills become -1e4; other constants are left alone."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.export.graph import GraphIndex
from edgekit.export.rewrite import get_rule
from onnx_fixtures import ARCHS, export_tiny, run_onnx, single_op_model, tiny_inputs

RULE = get_rule("fp16-safe-mask")
FMIN = float(np.finfo(np.float32).min)


def _mask_fills(model):
    """Every float constant below -1e4 in the graph."""
    index = GraphIndex(model.graph)
    names = [t.name for t in model.graph.initializer] + [n.output[0] for n in model.graph.node
                                                         if n.op_type == "Constant"]
    values = {n: index.constant(n) for n in names}
    return {n: float(v.min()) for n, v in values.items() if v is not None and v.dtype.kind == "f"
            and v.size and v.min() < -1e4}


@pytest.mark.parametrize("arch", ARCHS)
def test_exported_mask_fill_becomes_minus_1e4_and_logits_stay(tmp_path, arch):
    model = onnx.load(export_tiny(tmp_path, arch))
    assert list(_mask_fills(model).values()) == [FMIN]
    out, report = RULE.apply(model)

    assert report.fired == 1 and report.skipped == ()
    assert "-3.403e+38 -> -10000" in report.changed[0]
    assert _mask_fills(out) == {}
    feeds = tiny_inputs(4, 16, with_padding=True)
    assert feeds["attention_mask"].min() == 0
    diff = np.abs(run_onnx(out, feeds)[0] - run_onnx(model, feeds)[0]).max()
    assert diff < 1e-4, f"{arch}: max logit diff {diff}"


def _fp16_attention(fill: float, as_initializer: bool = False) -> onnx.ModelProto:
    """Where(keep, 0, fill) cast to fp16 and added to fp16 scores before Softmax."""
    inits, nodes = [], []
    if as_initializer:
        inits.append(numpy_helper.from_array(np.array(fill, np.float32), "fill"))
    else:
        nodes.append(helper.make_node("Constant", [], ["fill"], name="m/Constant",
                                      value=numpy_helper.from_array(np.array(fill, np.float32))))
    zero = numpy_helper.from_array(np.array(0.0, np.float32))
    nodes += [
        helper.make_node("Constant", [], ["zero"], name="m/Zero", value=zero),
        helper.make_node("Where", ["keep", "zero", "fill"], ["bias"], name="m/Where"),
        helper.make_node("Cast", ["bias"], ["bias16"], name="m/Cast", to=TensorProto.FLOAT16),
        helper.make_node("Add", ["scores", "bias16"], ["masked"], name="att/Add"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="att/Softmax", axis=-1),
    ]
    inputs = [helper.make_tensor_value_info("keep", TensorProto.BOOL, [None, None]),
              helper.make_tensor_value_info("scores", TensorProto.FLOAT16, [None, None])]
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT16, [None, None])
    return single_op_model(nodes, inputs, [probs], inits)


@pytest.mark.parametrize("as_initializer", [False, True])
def test_fp16_bias_is_minus_inf_before_and_finite_after(as_initializer):
    model = _fp16_attention(FMIN, as_initializer)
    model.graph.output.append(helper.make_tensor_value_info("bias16", TensorProto.FLOAT16, [None, None]))
    feeds = {"keep": np.array([[True, True, False]]), "scores": np.array([[1, 2, 3]], np.float16)}
    probs, bias = run_onnx(model, feeds)
    assert bias[0, 2] == -np.inf  # finfo(float32).min overflows fp16

    out, report = RULE.apply(model)
    probs_after, bias_after = run_onnx(out, feeds)
    assert report.fired == 1 and bias_after[0].tolist() == [0, 0, -1e4]
    np.testing.assert_allclose(probs_after, probs, atol=1e-3)
    assert probs_after[0, 2] == 0


def test_fp16_one_minus_mask_form_turns_nan_into_finite():
    """(1 - mask) * min in fp16 is 0 * -inf = NaN at every kept position; -1e4 fixes it."""
    fill = numpy_helper.from_array(np.array(FMIN, np.float32), "min")
    nodes = [helper.make_node("Cast", ["min"], ["min16"], name="m/Cast", to=TensorProto.FLOAT16),
             helper.make_node("Mul", ["inv", "min16"], ["bias"], name="m/Mul"),
             helper.make_node("Add", ["scores", "bias"], ["s"], name="att/Add"),
             helper.make_node("Softmax", ["s"], ["p"], name="att/Softmax", axis=-1)]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT16, [None, None]) for n in ("inv", "scores", "p")]
    model = single_op_model(nodes, io[:2], io[2:], [fill])
    feeds = {"inv": np.array([[0, 0, 1]], np.float16), "scores": np.array([[1, 2, 3]], np.float16)}
    assert np.isnan(run_onnx(model, feeds)[0]).all()

    out, report = RULE.apply(model)
    probs = run_onnx(out, feeds)[0]
    assert report.fired == 1 and np.isfinite(probs).all()
    np.testing.assert_allclose(probs[0], [0.2689, 0.7311, 0.0], atol=1e-3)


def test_one_minus_mask_times_min_form_is_rewritten():
    fill = numpy_helper.from_array(np.array(FMIN, np.float32), "min")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    nodes = [helper.make_node("Sub", ["one", "mask"], ["inv"], name="m/Sub"),
             helper.make_node("Mul", ["inv", "min"], ["bias"], name="m/Mul"),
             helper.make_node("Add", ["scores", "bias"], ["s"], name="att/Add"),
             helper.make_node("Softmax", ["s"], ["p"], name="att/Softmax", axis=-1)]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, None]) for n in ("mask", "scores", "p")]
    model = single_op_model(nodes, io[:2], io[2:], [fill, one])
    out, report = RULE.apply(model)
    assert report.fired == 1 and report.changed == ("tensor min: mask fill -3.403e+38 -> -10000",)
    feeds = {"mask": np.array([[1, 1, 0]], np.float32), "scores": np.array([[0.5, 1.0, 9.0]], np.float32)}
    np.testing.assert_allclose(run_onnx(out, feeds)[0], run_onnx(model, feeds)[0], atol=1e-6)


def test_minus_one_in_the_mask_path_is_not_a_fill():
    model = _fp16_attention(-1.0)
    out, report = RULE.apply(model)
    assert report.fired == 0 and report.skipped == ()
    assert GraphIndex(out.graph).scalar("fill") == -1.0
    feeds = {"keep": np.array([[True, False]]), "scores": np.array([[0, 0]], np.float16)}
    assert np.isfinite(run_onnx(out, feeds)[0]).all()


def test_huge_constant_outside_attention_is_skipped_with_a_reason():
    big = numpy_helper.from_array(np.array(-1e9, np.float32), "big")
    nodes = [helper.make_node("Add", ["x", "big"], ["y"], name="other/Add")]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None]) for n in ("x", "y")]
    model = single_op_model(nodes, io[:1], io[1:], [big])
    out, report = RULE.apply(model)
    assert report.fired == 0
    assert report.skipped[0].startswith(
        "initializer big: value -1e+09 feeds other/Add (Add), which does not reach a Softmax")
    assert run_onnx(out, {"x": np.zeros(2, np.float32)})[0].tolist() == [-1e9, -1e9]


def test_fill_shared_with_a_non_mask_use_is_skipped():
    model = _fp16_attention(FMIN, as_initializer=True)
    model.graph.node.append(helper.make_node("Neg", ["fill"], ["flipped"], name="other/Neg"))
    model.graph.output.append(helper.make_tensor_value_info("flipped", TensorProto.FLOAT, []))
    out, report = RULE.apply(model)
    assert report.fired == 0 and "other/Neg (Neg), not by a mask op" in report.skipped[0]
    feeds = {"keep": np.array([[True, False]]), "scores": np.array([[0, 0]], np.float16)}
    assert run_onnx(out, feeds)[1] == -FMIN


def test_constant_of_shape_fill_is_rewritten():
    """torch.full(shape, finfo.min) exports as ConstantOfShape; its value attribute is the fill."""
    fill = numpy_helper.from_array(np.array([FMIN], np.float32))
    nodes = [helper.make_node("Shape", ["scores"], ["shape"], name="m/Shape"),
             helper.make_node("ConstantOfShape", ["shape"], ["full"], name="m/ConstantOfShape", value=fill),
             helper.make_node("Constant", [], ["zero"], name="m/Zero", value_float=0.0),
             helper.make_node("Where", ["keep", "zero", "full"], ["bias"], name="m/Where"),
             helper.make_node("Add", ["scores", "bias"], ["s"], name="att/Add"),
             helper.make_node("Softmax", ["s"], ["p"], name="att/Softmax", axis=-1)]
    inputs = [helper.make_tensor_value_info("keep", TensorProto.BOOL, [None, None]),
              helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, None])]
    model = single_op_model(nodes, inputs, [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, None])])
    out, report = RULE.apply(model)
    assert report.fired == 1 and report.changed[0].startswith("tensor full: mask fill -3.403e+38")
    value = next(a.t for a in out.graph.node[1].attribute if a.name == "value")
    assert numpy_helper.to_array(value).tolist() == [-1e4]
    feeds = {"keep": np.array([[True, False, True]]), "scores": np.array([[1.0, 5.0, 2.0]], np.float32)}
    np.testing.assert_allclose(run_onnx(out, feeds)[0], run_onnx(model, feeds)[0], atol=1e-7)
