"""int8 QAT: fake-quant numerics, the observer, prepare_qat, QDQ export, and the int8 ONNX post-passes."""

import copy
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgekit.config import RecipeError
from edgekit.distill import DistillConfig, LogitKDConfig, Schedule, distill_loss
from edgekit.export.graph import GraphIndex
from edgekit.export.onnx_export import export_onnx
from edgekit.quant.fake import (QATConfig, QuantError, QuantLinear, calibrate, enable_fake_quant, fake_quant,
                                fake_quant_learned, layer_sensitivity, per_channel_scale, prepare_qat,
                                quantized_linears, restore_fp32)
from edgekit.quant.onnx_int8 import fold_weight_quantize, quantize_embeddings, quantize_like_onnx
from edgekit.tasks import get_task
from onnx_fixtures import ARCHS, run_onnx, single_op_model, tiny_inputs, tiny_model
from tests.tiny_models import make_tokenizer

TEXTS = ["good phone", "the battery was very bad", "a day", "really not great screen", "happy car",
         "awful awful phone was sad", "the screen is fine", "quite lovely"]
# Ops of the fp32 islands: LayerNorm's decomposition, Softmax, GELU's Erf. No Q/DQ may touch them.
FP32_OPS = {"ReduceMean", "Sqrt", "Pow", "Softmax", "Erf"}
STANDARD = ("", "ai.onnx")


# --- fake quant numerics --------------------------------------------------------------------------

def test_weight_fake_quant_per_channel_matches_hand_computation():
    w = torch.tensor([[0.5, -1.0], [0.2, 0.1]])
    scale = per_channel_scale(w)
    assert torch.allclose(scale, torch.tensor([1.0 / 127, 0.2 / 127]))
    # w / scale = [[63.5, -127], [127, 63.5]]: both ties round half to even, to 64.
    expected = torch.tensor([[64 / 127, -1.0], [0.2, 64 * 0.2 / 127]])
    assert torch.allclose(fake_quant(w, scale, -127, axis=0), expected, atol=1e-7)
    assert torch.equal(per_channel_scale(torch.zeros(2, 3)), torch.ones(2))  # all-zero row: no 0/0


def test_activation_fake_quant_and_clipped_straight_through_gradient():
    scale = torch.tensor(0.5)          # amax 63.5: range [-128 * 0.5, 127 * 0.5] = [-64, 63.5]
    x = torch.tensor([0.3, 1.25, -0.75, 70.0, -70.0, -64.0], requires_grad=True)
    y = fake_quant(x, scale, -128)
    # x / s = [0.6, 2.5, -1.5, 140, -140, -128] -> [1, 2, -2, 127, -128, -128] (half to even, saturated)
    assert y.tolist() == [0.5, 1.0, -1.0, 63.5, -64.0, -64.0]
    y.sum().backward()
    # Straight through inside the representable range (boundary included), zero where it clipped.
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]


def test_quant_linear_gradient_reaches_the_weight():
    torch.manual_seed(0)
    layer = QuantLinear(nn.Linear(4, 3))
    x = torch.randn(5, 4)
    layer.observe(x)
    layer.mode = "quantizing"
    layer(x).pow(2).sum().backward()
    xq = fake_quant(x, layer.input_scale(), -128).detach()
    wq = fake_quant(layer.weight, per_channel_scale(layer.weight), -127, axis=0).detach()
    out = nn.functional.linear(xq, wq, layer.bias.detach())
    # Weights never clip (the scale comes from their max), so d/dw is the plain Linear's at (xq, wq).
    assert torch.allclose(layer.weight.grad, (2 * out).T @ xq, atol=1e-5)


def test_observer_ema_and_percentile():
    layer = QuantLinear(nn.Linear(2, 2), momentum=0.9)
    layer.observe(torch.tensor([[0.5, -1.0]]))          # first batch sets amax
    assert layer.input_amax.item() == pytest.approx(1.0)
    layer.observe(torch.tensor([[3.0, 0.0]]))           # 0.9 * 1.0 + 0.1 * 3.0
    assert layer.input_amax.item() == pytest.approx(1.2)
    pct = QuantLinear(nn.Linear(2, 2), percentile=99.0)
    pct.observe(torch.arange(1.0, 101.0).reshape(50, 2))  # the 99th of 1..100 is 99, not the max 100
    assert pct.input_amax.item() == 99.0


def test_config_and_state_errors_say_how_to_fix():
    with pytest.raises(RecipeError, match="observer_momentum.*Fix"):
        QATConfig(observer_momentum=1.0)
    with pytest.raises(RecipeError, match="activation_percentile.*Fix"):
        QATConfig(activation_percentile=10.0)
    with pytest.raises(RecipeError, match="calibration_batches.*Fix"):
        QATConfig(calibration_batches=0)
    model = prepare_qat(tiny_model("bert"), QATConfig())
    with pytest.raises(QuantError, match="calibrate"):
        enable_fake_quant(model)
    with pytest.raises(QuantError, match="selects no nn.Linear"):
        prepare_qat(tiny_model("bert"), QATConfig(include=("*nothing*",)))


def test_qat_fine_tunes_with_the_distillation_loss():
    teacher = tiny_model("bert")
    student = prepare_qat(copy.deepcopy(teacher), QATConfig())
    torch.manual_seed(1)
    student.classifier.reset_parameters()      # a fresh head, so there is something to learn
    feeds = tiny_inputs(4, 12, seed=1)
    batch = {k: torch.from_numpy(v) for k, v in feeds.items()} | {"labels": torch.tensor([0, 1, 2, 0])}
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    calibrate(student, [inputs])
    enable_fake_quant(student)
    ranges = {n: m.input_amax.clone() for n, m in quantized_linears(student).items()}
    query = student.bert.encoder.layer[0].attention.self.query
    scale_before = per_channel_scale(query.weight).clone()
    cfg = DistillConfig(logits=LogitKDConfig(temperature=Schedule(1.0, 1.0, "linear")),
                        task_weight=Schedule(0.0, 0.0, "linear"), soft_only_fraction=0.0)   # KD only, fixed T
    with torch.no_grad():
        teacher_out = teacher(**inputs)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for step in range(15):
        loss, _ = distill_loss(student(**inputs), teacher_out, batch, step, 15, cfg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]          # the fake-quant student learns through the STE
    assert all(torch.equal(m.input_amax, ranges[n]) for n, m in quantized_linears(student).items())  # frozen
    assert not torch.equal(per_channel_scale(query.weight), scale_before)   # weight scales follow the weights


def test_learned_range_forward_equals_fake_quant_and_its_gradient_is_lsq():
    x = torch.tensor([0.30, -1.26, 2.00, 0.04], requires_grad=True)
    amax = torch.tensor(1.27, requires_grad=True)          # scale 0.01 (127 steps)
    y = fake_quant_learned(x, amax, -128)
    torch.testing.assert_close(y, fake_quant(x.detach(), amax.detach() / 127, -128), rtol=0, atol=0)
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 1.0]          # clipped straight-through (2.00 is past 1.27)
    # d/d scale, per element: round(v) - v inside the range, the bound (127) when clipped; v = x / scale
    v = np.array([30.0, -126.0, 127.0, 4.0])
    per_scale = np.where(np.abs([0.30, -1.26, 2.00, 0.04]) <= 1.27, np.round(v) - v, 127.0)
    g = 1.0 / np.sqrt(4 * 127)                              # LSQ gradient scale
    assert amax.grad.item() == pytest.approx(per_scale.sum() * g / 127, abs=1e-6)


def test_learned_ranges_start_at_the_calibrated_amax_and_train():
    model = prepare_qat(tiny_model("bert"), QATConfig(learn_ranges=True))
    feeds = {k: torch.from_numpy(v) for k, v in tiny_inputs(4, 12, seed=2).items()}
    calibrate(model, [feeds])
    enable_fake_quant(model)
    q = quantized_linears(model)["bert.encoder.layer.0.intermediate.dense"]
    assert q.learned_amax.item() == q.input_amax.item() and q.learned_amax.requires_grad
    before = q.learned_amax.item()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(**feeds).logits.pow(2).sum().backward()
    opt.step()
    assert q.learned_amax.item() != before and q.input_amax.item() == before  # the observed range stays as is


def test_sensitivity_ranks_a_linear_with_an_outlier_input_first_and_restore_fp32_removes_its_qdq(tmp_path):
    model = tiny_model("bert")
    ffn_out = model.bert.encoder.layer[0].output.dense
    with torch.no_grad():   # one huge input channel: per-tensor int8 flattens every other channel to 0
        model.bert.encoder.layer[0].intermediate.dense.bias[3] = 400.0
        ffn_out.weight[:, 3] = 0.0
    model = prepare_qat(model.eval())
    feeds = {k: torch.from_numpy(v) for k, v in tiny_inputs(4, 12, seed=3).items()}
    calibrate(model, [feeds])
    scores = layer_sensitivity(model, [feeds])
    assert set(scores) == set(quantized_linears(model)) and all(v >= 0 for v in scores.values())
    assert max(scores, key=scores.get) == "bert.encoder.layer.0.output.dense"
    assert restore_fp32(model, ["bert.encoder.layer.0.output.dense"]) == ["bert.encoder.layer.0.output.dense"]
    restored = model.bert.encoder.layer[0].output.dense
    assert type(restored) is nn.Linear and restored.weight is ffn_out.weight   # the same Parameter
    enable_fake_quant(model)
    path = export_onnx(model, get_task("sequence-classification"), make_tokenizer(), TEXTS[:2],
                       tmp_path / "m.onnx", 16)
    graph = onnx.load(str(path)).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) == 2 * (len(quantized_linears(model)))
    with pytest.raises(QuantError, match="not QuantLinears"):
        restore_fp32(model, ["bert.encoder.layer.0.output.dense"])


# --- prepare_qat ------------------------------------------------------------------------------------

# 2 layers x (Q, K, V, attention out, FFN in, FFN out) + BERT's pooler; the classifier heads stay fp32.
EXPECTED_QUANTIZED = {"bert": 13, "roberta": 12, "distilbert": 12}


@pytest.mark.parametrize("arch", ARCHS)
def test_prepare_qat_replaces_exactly_the_encoder_linears(arch):
    model = tiny_model(arch)
    before = Counter(type(m).__name__ for m in model.modules())
    linears = {n for n, m in model.named_modules() if type(m) is nn.Linear}
    prepare_qat(model, QATConfig())
    after = Counter(type(m).__name__ for m in model.modules())
    names = set(quantized_linears(model))

    assert len(names) == EXPECTED_QUANTIZED[arch] and names < linears
    assert all(".layer." in n or n.endswith("pooler.dense") for n in names)
    assert all("classifier" in n for n in linears - names)
    assert after["Linear"] == before["Linear"] - len(names) and after["QuantLinear"] == len(names)
    # Everything else (LayerNorm, GELU, dropout, embeddings, attention) is the same modules.
    assert {k: v for k, v in after.items() if k not in ("Linear", "QuantLinear")} == \
           {k: v for k, v in before.items() if k != "Linear"}


# --- QDQ export of a tiny BERT ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def qat_export(tmp_path_factory):
    """The tiny BERT exported by edgekit's exporter in fp32, then prepared, calibrated, fake-quantized."""
    root = tmp_path_factory.mktemp("qat")
    adapter, tokenizer = get_task("sequence-classification"), make_tokenizer()
    model = tiny_model("bert")   # weights at std 0.2: logits around 1, so quantization error shows
    feeds = {k: v.numpy() for k, v in adapter.collate(tokenizer, TEXTS, None, 32).items()}

    def logits():
        with torch.no_grad():
            return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()

    fp32_path, fp32_logits = export_onnx(model, adapter, tokenizer, TEXTS, root / "fp32.onnx", 32), logits()
    prepare_qat(model, QATConfig())
    calibrate(model, [adapter.model_inputs(model, adapter.collate(tokenizer, TEXTS[i:i + 4], None, 32))
                      for i in (0, 4)])
    enable_fake_quant(model)
    qat_path = export_onnx(model, adapter, tokenizer, TEXTS, root / "qat.onnx", max_length=32)
    return {"path": qat_path, "feeds": feeds, "torch_logits": logits(), "fp32_path": fp32_path,
            "fp32_logits": fp32_logits}


def _dq_readers(model):
    index = GraphIndex(model.graph)
    return index, [r for n in model.graph.node if n.op_type == "DequantizeLinear" for r in index.users(n.output[0])]


def test_qdq_export_is_standard_per_axis_and_matches_fake_quant_torch(qat_export):
    path, feeds, torch_logits = qat_export["path"], qat_export["feeds"], qat_export["torch_logits"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] == ops["DequantizeLinear"] == 2 * 13   # input + weight per Linear
    assert all(n.domain in STANDARD for n in model.graph.node)

    index, readers = _dq_readers(model)
    per_axis = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and index.constant(n.input[1]).ndim == 1]
    assert len(per_axis) == 13   # the weights: 1-D scale, axis 0 of the [out, in] weight, zero point int8 0
    for dq in per_axis:
        assert [a.i for a in dq.attribute if a.name == "axis"] == [0]
        assert index.constant(dq.input[2]).dtype == np.int8 and not index.constant(dq.input[2]).any()
    # Linear = DQ(x) -> MatMul <- Transpose <- DQ(w) (+ Add), or Gemm(transB) for the 2-D pooler.
    assert {r.op_type for r in readers} == {"MatMul", "Transpose", "Gemm"}
    assert all(index.users(t.output[0])[0].op_type == "MatMul" for t in readers if t.op_type == "Transpose")
    # fp32 islands: no Q reads a LayerNorm-interior/Softmax/Erf output and no DQ feeds one.
    q_sources = {index.producer[n.input[0]].op_type for n in model.graph.node
                 if n.op_type == "QuantizeLinear" and n.input[0] in index.producer}
    assert not q_sources & FP32_OPS and not {r.op_type for r in readers} & FP32_OPS

    logits = run_onnx(model, feeds)[0]
    # Measured 1.5e-7 (logits up to 1.1): ORT and torch round alike (half to even) on the same fp32
    # quotients. 1e-3 leaves room for one activation on the other side of a tie (one step, ~0.02,
    # times the layers after it), and is still 1/50 of what int8 changes (fp32 vs QAT: ~0.1).
    assert np.abs(logits - torch_logits).max() < 1e-3
    assert np.abs(qat_export["fp32_logits"] - torch_logits).max() > 0.05


def test_fold_weight_quantize_stores_int8_weights_and_keeps_outputs(qat_export, tmp_path):
    path, feeds = qat_export["path"], qat_export["feeds"]
    model = onnx.load(str(path))
    out, report = fold_weight_quantize(model)

    assert report.folded == 13 and report.skipped == ()
    assert report.transposes_folded == 12    # all but the pooler's Gemm, which reads the DQ directly
    index = GraphIndex(out.graph)
    quantize = [n for n in out.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize) == 13 and all(index.constant(n.input[0]) is None for n in quantize)  # activations only
    int8 = [t for t in out.graph.initializer if t.data_type == TensorProto.INT8]
    assert len(int8) == 13
    _, readers = _dq_readers(out)
    assert {r.op_type for r in readers} == {"MatMul", "Gemm"}   # DQ outputs feed the matmuls directly
    for dq in (n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in index.initializers):
        weight = index.constant(dq.input[0])
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        assert weight.shape[axis] == index.constant(dq.input[1]).size   # the scale runs along out_features
    assert all(n.domain in STANDARD for n in out.graph.node)

    np.testing.assert_allclose(run_onnx(out, feeds)[0], run_onnx(model, feeds)[0], rtol=0, atol=1e-6)
    weights = sum(numpy_helper.to_array(t).size for t in int8)
    assert report.bytes_before - report.bytes_after >= 0.95 * 3 * weights   # 4 -> 1 byte per weight
    onnx.save(out, tmp_path / "folded.onnx")
    assert (tmp_path / "folded.onnx").stat().st_size < path.stat().st_size


def test_fold_rounds_half_to_even_per_axis_through_a_transpose_like_onnxruntime():
    # W^T / scale hits exact ties: 0.25 / 0.5 = 0.5 -> 0, 0.75 / 0.5 = 1.5 -> 2, -1.25 / 0.5 = -2.5 -> -2.
    w = np.array([[0.25, 100.0], [0.75, -0.5], [-1.25, 3.0]], np.float32)   # [3, 2]; Q sees [2, 3]
    scale = np.array([0.5, 0.125], np.float32)                                # per row of W^T
    zero = np.zeros(2, np.int8)
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
             helper.make_node("QuantizeLinear", ["wt", "s", "z"], ["q"], axis=0),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], axis=0),
             helper.make_node("MatMul", ["x", "dq"], ["y"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero, "z")]
    model = single_op_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    out, report = fold_weight_quantize(model)
    assert report.folded == 1 and {n.op_type for n in out.graph.node} == {"DequantizeLinear", "MatMul"}
    q = quantize_like_onnx(w.T, scale, zero, axis=0)
    assert q.tolist() == [[0, 2, -2], [127, -4, 24]]       # 100 / 0.125 = 800 saturates at 127
    feeds = {"x": np.array([[1.0, -2.0]], np.float32)}
    np.testing.assert_array_equal(run_onnx(out, feeds)[0], run_onnx(model, feeds)[0])


# --- embeddings -------------------------------------------------------------------------------------

def test_quantize_embeddings_gathers_int8_rows_within_half_a_step(qat_export):
    fp32, feeds = onnx.load(str(qat_export["fp32_path"])), qat_export["feeds"]
    untouched, none = quantize_embeddings(fp32)          # default: only tables with >= 1,000 rows
    assert none.gathers == 0 and none.tables == () and untouched.ByteSize() == fp32.ByteSize()

    tables = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer if t.name.endswith("_embeddings.weight")}
    out, report = quantize_embeddings(fp32, min_rows=50)   # word (100 rows) and position (64) tables
    assert set(report.tables) == {n for n, t in tables.items() if t.shape[0] >= 50} and report.gathers == 2
    assert report.skipped == ()
    assert 0 < report.max_abs_error <= report.error_bound * (1 + 1e-6)   # per-row int8 bound: scale / 2
    index = GraphIndex(out.graph)
    gathered = [index.initializers[n.input[0]] for n in out.graph.node
                if n.op_type == "Gather" and n.input[0] in index.initializers]
    assert sum(t.data_type == TensorProto.INT8 for t in gathered) == 2
    assert not set(report.tables) & set(index.initializers)      # the fp32 tables are gone
    assert all(n.domain in STANDARD for n in out.graph.node)
    for name in report.tables:   # each row within half its own step
        q = numpy_helper.to_array(index.initializers[f"{name}_int8"]).astype(np.float32)
        s = numpy_helper.to_array(index.initializers[f"{name}_row_scale"])
        assert np.all(np.abs(q * s - tables[name]) <= s / 2 * (1 + 1e-6))

    # Measured 0.009 on logits up to 1.1 (the embeddings move by <= 0.0026 before the LayerNorm).
    diff = np.abs(run_onnx(out, feeds)[0] - qat_export["fp32_logits"]).max()
    assert diff < 0.02, f"logit change from int8 embeddings {diff}"
    # 3/4 of each table, less the per-row scales and the new nodes' names (about 1 kB here).
    assert report.bytes_before - report.bytes_after >= 0.6 * sum(tables[n].nbytes for n in report.tables)

    folded, _ = fold_weight_quantize(onnx.load(str(qat_export["path"])))   # composes with the QDQ graph
    both, both_report = quantize_embeddings(folded, min_rows=50)
    assert both_report.gathers == 2 and all(n.domain in STANDARD for n in both.graph.node)


def test_qat_embedding_rounding_matches_the_int8_graph_exactly():
    import torch

    from edgekit.quant.onnx_int8 import quantize_rows
    from edgekit.quant.passes import quantize_embedding_weights

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(1200, 8), torch.nn.Embedding(10, 8))
    small_before = model[1].weight.detach().clone()
    assert quantize_embedding_weights(model) == ["0"]  # only the table with >= 1000 rows
    rounded = model[0].weight.detach().numpy()
    q, scale = quantize_rows(rounded)
    # The graph's requantization of the rounded table gives back exactly the same values.
    assert np.array_equal(q.astype(np.float32) * scale, rounded)
    assert not model[0].weight.requires_grad and torch.equal(model[1].weight, small_before)


def _qdq_linear_graph(path, k=64, n=96):
    """x -> Q -> DQ, int8 weight -> DQ (per output channel), MatMul, + bias: one Linear as QAT exports it."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "xs"), numpy_helper.from_array(np.array(0, np.int8), "xz"),
             numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "w"),
             numpy_helper.from_array(np.full(n, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(n, np.int8), "wz"), numpy_helper.from_array(np.ones(n, np.float32), "b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    graph = helper.make_graph(nodes, "qdq_linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, n])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return rng.standard_normal((1, 8, k)).astype(np.float32)


def test_runtime_session_runs_qdq_matmuls_on_int8_kernels(tmp_path):
    """onnxruntime's MatMul+Add -> Gemm fusion keeps QDQ Linears in fp32; the runtime's session for
    int8 graphs turns it off so DQ -> MatMul becomes the int8 MatMulIntegerToFloat, same outputs."""
    from edgekit_runtime.backends.ort import ort_session

    x = _qdq_linear_graph(tmp_path / "q.onnx")
    outputs, ops = {}, {}
    for quantized in (False, True):
        optimized = tmp_path / f"opt-{quantized}.onnx"
        session = ort_session(tmp_path / "q.onnx", ["CPUExecutionProvider"], threads=1, quantized=quantized,
                              optimized_path=optimized)
        outputs[quantized] = session.run(None, {"x": x})[0]
        ops[quantized] = {n.op_type for n in onnx.load(str(optimized)).graph.node}
    assert "MatMulIntegerToFloat" in ops[True] and "Gemm" not in ops[True]
    assert "MatMulIntegerToFloat" not in ops[False]  # what the option is for: without it, no int8 GEMM
    np.testing.assert_allclose(outputs[True], outputs[False], rtol=1e-5, atol=1e-4)


def test_shared_activation_qdq_is_unshared_so_every_matmul_gets_int8(tmp_path):
    """One Q -> DQ read by two Linears (what onnxsim's CSE leaves for Q/K/V): onnxruntime fuses only
    some of them (here: none); after unshare_activation_qdq both are int8 MatMuls, identical outputs."""
    from edgekit.quant.onnx_int8 import unshare_activation_qdq
    from edgekit_runtime.backends.ort import ort_session

    x = _qdq_linear_graph(tmp_path / "one.onnx")
    model = onnx.load(str(tmp_path / "one.onnx"))
    graph = model.graph   # a second Linear reading the same DQ output, its output a graph output
    graph.node.extend([helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd2"], axis=1),
                       helper.make_node("MatMul", ["xd", "wd2"], ["m2"]), helper.make_node("Add", ["m2", "b"], ["y2"])])
    graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 8, 96]))
    onnx.save(model, str(tmp_path / "shared.onnx"))
    unshared, added = unshare_activation_qdq(model)
    assert added == 1
    counts = Counter(n.op_type for n in unshared.graph.node)
    assert counts["QuantizeLinear"] == 2 and counts["DequantizeLinear"] == 4  # two activation pairs, two weights
    onnx.save(unshared, str(tmp_path / "unshared.onnx"))
    results = {}
    for name in ("shared", "unshared"):
        optimized = tmp_path / f"opt-{name}.onnx"
        session = ort_session(tmp_path / f"{name}.onnx", ["CPUExecutionProvider"], threads=1, quantized=True,
                              optimized_path=optimized)
        results[name] = (session.run(None, {"x": x}), Counter(n.op_type for n in onnx.load(str(optimized)).graph.node))
    assert results["shared"][1]["MatMulIntegerToFloat"] < 2 == results["unshared"][1]["MatMulIntegerToFloat"]
    for a, b in zip(results["shared"][0], results["unshared"][0]):  # int8 GEMM vs fp32 on the same values
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_gate_thresholds_never_finer_than_the_rows():
    from edgekit.quant.gate import GateConfig, QuantizationGateError, quantized_gate

    def metrics(logits, labels):
        return {"accuracy": float((np.asarray(logits).argmax(-1) == labels).mean())}

    labels = np.zeros(60, dtype=int)
    reference = np.tile([[1.0, 0.0]], (60, 1))
    one_flip = reference.copy()
    one_flip[0] = [0.0, 1.0]
    # 60 rows: one flipped row is 98.3% agreement; the gate allows two rows' worth, and says so
    figures = quantized_gate(reference, one_flip, labels, metrics, GateConfig())
    assert figures["passed"] and figures["min_argmax_agreement"] == pytest.approx(1 - 2 / 60)
    three = reference.copy()
    three[:3] = [0.0, 1.0]
    with pytest.raises(QuantizationGateError, match="agreement 0.9500"):
        quantized_gate(reference, three, labels, metrics, GateConfig())
    # on 1,000 rows the configured 97% holds as written
    big = np.tile([[1.0, 0.0]], (1000, 1))
    flipped = big.copy()
    flipped[:31] = [0.0, 1.0]
    with pytest.raises(QuantizationGateError):
        quantized_gate(big, flipped, np.zeros(1000, dtype=int), metrics, GateConfig())
