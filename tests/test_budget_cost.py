"""The budget cost model: latency measured on this host and fitted, bytes from parameter counts,
the cache, and the teacher left as it was. Tiny models only; no wall-clock time is asserted."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from edgekit_runtime.backends.ort import ort_session
from edgekit_runtime.errors import EdgekitError
from onnx import numpy_helper
from tiny_models import make_tokenizer

from edgekit.budget import cost
from edgekit.budget.cost import CostModel, Shape, fit_cost_model
from edgekit.models.encoder import layer_shapes
from edgekit.tasks import get_task

HIDDEN, HEADS, FFN, VOCAB, LENGTH = 64, 4, 128, 1100, 32   # a vocabulary over 1000 rows gets an int8 table
ADAPTER = get_task("sequence-classification")


def tiny(arch: str = "bert"):
    from transformers import AutoModelForSequenceClassification, BertConfig, DistilBertConfig, RobertaConfig

    torch.manual_seed(0)
    if arch == "bert":
        tokenizer = make_tokenizer()
        config = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                            intermediate_size=FFN, max_position_embeddings=64)
    elif arch == "distilbert":
        tokenizer = make_tokenizer(("input_ids", "attention_mask"))
        config = DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_layers=2, n_heads=HEADS, hidden_dim=FFN,
                                  max_position_embeddings=64)
    else:
        tokenizer = make_tokenizer(("input_ids", "attention_mask"))
        config = RobertaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                               intermediate_size=FFN, max_position_embeddings=66, pad_token_id=0, type_vocab_size=1)
    config.num_labels = 3
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()
    return model, tokenizer


def snapshot(model) -> tuple:
    return ({k: v.clone() for k, v in model.state_dict().items()}, model.config.to_dict(), layer_shapes(model),
            model.training)


def assert_unchanged(model, before: tuple) -> None:
    state, config, shapes, training = before
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)
    assert model.config.to_dict() == config and layer_shapes(model) == shapes and model.training == training


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    model, tokenizer = tiny("bert")
    before, lines = snapshot(model), []
    cache_dir = tmp_path_factory.mktemp("cost-cache")
    cm = fit_cost_model(model, ADAPTER, tokenizer, length=LENGTH, threads=1, cache_dir=cache_dir, echo=lines.append)
    return {"model": model, "tokenizer": tokenizer, "before": before, "cost": cm, "lines": lines,
            "cache_dir": cache_dir}


def check_fit(cm: CostModel, precisions=("fp32", "int8")) -> None:
    """Outcomes any fit must have, however noisy the timings on a tiny model."""
    t = cm.teacher
    assert sorted(cm.coefficients) == sorted(precisions)
    for p in precisions:
        mine = [pt for pt in cm.points if pt["precision"] == p]
        assert len(mine) == len(cost.candidate_shapes(t)) and all(pt["ms"] > 0 for pt in mine)
        errors = [abs(cm.latency_ms(Shape(*pt["shape"]), p) - pt["ms"]) / pt["ms"] for pt in mine]
        assert cm.residual[p] == pytest.approx(max(errors))
        assert cm.residual[p] < 1.0                   # generous: every measured point within 2x
        assert all(c >= 0 for c in cm.coefficients[p])
        full, one = cm.latency_ms(t, p), cm.latency_ms(Shape(1, t.heads, t.ffn), p)
        assert 0 < one < full                          # fewer layers predicts less latency
        assert cm.latency_ms(Shape(t.layers, 1, 1), p) <= full
        for pt in mine:                                # bytes from parameter counts vs the timed files
            assert cm.size_bytes(Shape(*pt["shape"]), p) == pytest.approx(pt["bytes"], rel=0.10)


def test_fit_predicts_its_measured_points(fitted):
    cm = fitted["cost"]
    assert cm.teacher == Shape(2, HEADS, FFN) and (cm.batch, cm.length, cm.threads) == (1, LENGTH, 1)
    check_fit(cm)
    timing = [line for line in fitted["lines"] if "timing" in line and " ms" in line]
    assert len(timing) == len(cm.points) == 2 * len(cost.candidate_shapes(cm.teacher))
    assert timing[0].strip().startswith("timing 1/")


def test_int8_is_smaller_than_fp32(fitted):
    cm = fitted["cost"]
    for shape in cost.candidate_shapes(cm.teacher):
        assert cm.size_bytes(shape, "int8") < cm.size_bytes(shape, "int8", int8_embeddings=False)
        assert cm.size_bytes(shape, "int8", int8_embeddings=False) < cm.size_bytes(shape, "fp32")
    assert cm.size_bytes(cm.teacher, "fp32", int8_embeddings=False) == cm.size_bytes(cm.teacher, "fp32")


def test_bytes_of_a_shape_it_did_not_measure(fitted, tmp_path):
    """The parameter-count formula, not the fitted overhead, has to carry a shape off the measured ones."""
    cm, shape = fitted["cost"], Shape(2, 3, 40)
    fp32 = cost.export_student(fitted["model"], ADAPTER, fitted["tokenizer"], shape, tmp_path / "s.onnx", LENGTH)
    inputs = cost._graph_inputs(onnx.load(str(fp32)))
    rng = np.random.default_rng(1)
    feeds = [cost.random_feeds(inputs, 1, LENGTH, VOCAB, rng) for _ in range(2)]
    int8 = cost.quantize_proxy(fp32, tmp_path / "s-int8.onnx", feeds)
    for path, precision in ((fp32, "fp32"), (int8, "int8")):
        assert cm.size_bytes(shape, precision) == pytest.approx(path.stat().st_size, rel=0.10)
        session = ort_session(path, ["CPUExecutionProvider"], threads=1, quantized=precision == "int8")
        (logits,) = session.run(None, feeds[0])
        assert logits.shape == (1, 3) and np.isfinite(logits).all()
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(int8)).graph.initializer]
    int8_tables = [w for w in weights if w.dtype == np.int8 and w.ndim == 2]
    # Q, K, V, O, FFN in and out of both layers, and the vocabulary; attention's activation MatMuls stay fp32
    assert len(int8_tables) == 6 * shape.layers + 1 and any(w.shape == (VOCAB, HIDDEN) for w in int8_tables)


def test_round_trip(fitted):
    cm = fitted["cost"]
    again = CostModel.from_dict(json.loads(json.dumps(cm.to_dict())))
    assert again == cm
    shape = Shape(1, 2, 64)
    assert again.latency_ms(shape, "int8") == cm.latency_ms(shape, "int8")
    assert again.size_bytes(shape, "int8") == cm.size_bytes(shape, "int8")


def test_second_fit_reads_the_cache(fitted, monkeypatch):
    def no_export(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(cost, "export_onnx", no_export)
    lines = []
    again = fit_cost_model(fitted["model"], ADAPTER, fitted["tokenizer"], length=LENGTH, threads=1,
                           cache_dir=fitted["cache_dir"], echo=lines.append)
    assert again == fitted["cost"] and any("measured before" in line for line in lines)
    assert len(list(fitted["cache_dir"].glob("cost-*.json"))) == 1
    assert not list(fitted["cache_dir"].glob("*.tmp"))
    with pytest.raises(AssertionError, match="cache should have answered"):   # another length is another key
        fit_cost_model(fitted["model"], ADAPTER, fitted["tokenizer"], length=LENGTH + 1, threads=1,
                       cache_dir=fitted["cache_dir"], echo=lines.append)


def test_corrupt_cache_is_measured_again(tmp_path, monkeypatch):
    model, tokenizer = tiny("bert")
    first = fit_cost_model(model, ADAPTER, tokenizer, length=16, threads=1, precisions=("fp32",),
                           cache_dir=tmp_path, echo=lambda line: None)
    (path,) = tmp_path.glob("cost-*.json")
    exports = []
    real = cost.export_onnx
    monkeypatch.setattr(cost, "export_onnx", lambda *a, **k: exports.append(1) or real(*a, **k))
    for junk in ('{"version": 1, "teacher": [2, 4', json.dumps({**first.to_dict(), "coefficients": {"fp32": [1]}})):
        path.write_text(junk, encoding="utf-8")
        lines = []
        again = fit_cost_model(model, ADAPTER, tokenizer, length=16, threads=1, precisions=("fp32",),
                               cache_dir=tmp_path, echo=lines.append)
        assert any("unreadable" in line for line in lines) and exports
        assert CostModel.from_dict(json.loads(path.read_text(encoding="utf-8"))) == again
        check_fit(again, ("fp32",))
        exports.clear()
    with pytest.raises(EdgekitError, match="no int8 timings"):
        again.latency_ms(again.teacher, "int8")
    assert again.size_bytes(again.teacher, "int8") < again.size_bytes(again.teacher, "fp32")


def test_noisy_timings_are_retimed_flagged_and_never_cached(tmp_path, monkeypatch):
    model, tokenizer = tiny("bert")
    calls = []

    def noisy(graphs, feeds, threads):
        calls.append(len(graphs))
        return [4.0, 1.0, 9.0, 1.0, 3.0][:len(graphs)]

    monkeypatch.setattr(cost, "time_graphs", noisy)
    lines = []
    cm = fit_cost_model(model, ADAPTER, tokenizer, length=16, threads=1, precisions=("fp32",),
                        cache_dir=tmp_path / "cache", echo=lines.append)
    assert len(calls) == 2  # timed again once
    assert cm.residual["fp32"] > 0.25 and all(c >= 0 for c in cm.coefficients["fp32"])
    assert any("only within" in line and "Fix" in line for line in lines)
    assert not list(tmp_path.rglob("cost-*.json"))


def test_an_unwritable_cache_is_not_fatal(tmp_path, monkeypatch):
    model, tokenizer = tiny("bert")
    (tmp_path / "not-a-dir").write_text("", encoding="utf-8")
    lines = []
    fit_cost_model(model, ADAPTER, tokenizer, length=16, threads=1, precisions=("fp32",),
                   cache_dir=tmp_path / "not-a-dir" / "cache", echo=lines.append)
    assert any("not cached" in line and "Fix" in line for line in lines)


def test_teacher_is_unchanged(fitted):
    assert_unchanged(fitted["model"], fitted["before"])


@pytest.mark.parametrize("arch", ["distilbert", "roberta"])
def test_other_architectures(arch):
    model, tokenizer = tiny(arch)
    before = snapshot(model)
    cm = fit_cost_model(model, ADAPTER, tokenizer, length=LENGTH, threads=1, echo=lambda line: None)
    check_fit(cm)
    assert cm.size_bytes(cm.teacher, "int8") < cm.size_bytes(cm.teacher, "fp32")
    assert_unchanged(model, before)


@pytest.mark.parametrize("teacher", [Shape(2, 2, 64), Shape(2, 4, 128), Shape(6, 12, 1536), Shape(12, 12, 3072)])
def test_candidate_shapes_identify_the_coefficients(teacher):
    shapes = cost.candidate_shapes(teacher)
    assert len(shapes) == len(set(shapes)) >= 4 and shapes[0] == teacher
    assert all(s.layers <= teacher.layers and s.heads <= teacher.heads and s.ffn <= teacher.ffn for s in shapes)
    features = np.array([[1, s.layers, s.layers * s.heads, s.layers * s.ffn] for s in shapes], float)
    assert np.linalg.matrix_rank(features) == 4


def test_candidate_shapes_of_a_one_layer_one_head_teacher():
    assert cost.candidate_shapes(Shape(1, 1, 1)) == [Shape(1, 1, 1)]
    assert len(set(cost.candidate_shapes(Shape(1, 1, 8)))) == len(cost.candidate_shapes(Shape(1, 1, 8)))


def test_fit_latency_recovers_known_coefficients():
    truth = (0.5, 0.2, 0.05, 0.001)
    shapes = cost.candidate_shapes(Shape(6, 12, 1536))
    points = [{"shape": [s.layers, s.heads, s.ffn],
               "ms": truth[0] + s.layers * (truth[1] + s.heads * truth[2] + s.ffn * truth[3])} for s in shapes]
    coefficients, residual = cost.fit_latency(points)
    assert coefficients == pytest.approx(truth, rel=1e-6) and residual < 1e-9
    # a per-layer cost that is really zero, with noise that pulls it negative, is clipped and refit
    noisy = [{**p, "ms": p["ms"] - p["shape"][0] * 0.2 + (0.02 if p["shape"][0] == 1 else 0)} for p in points]
    coefficients, _ = cost.fit_latency(noisy)
    assert all(c >= 0 for c in coefficients)


def test_errors_name_the_value_and_the_fix(fitted):
    cm = fitted["cost"]
    with pytest.raises(EdgekitError, match="integers >= 1.*Fix"):
        Shape(0, 1, 1)
    with pytest.raises(EdgekitError, match="'fp16'.*Fix"):
        cm.latency_ms(cm.teacher, "fp16")
    with pytest.raises(EdgekitError, match="exceeds the teacher.*Fix"):
        cm.size_bytes(Shape(3, HEADS, FFN), "fp32")
    with pytest.raises(EdgekitError, match="not usable.*Fix"):
        CostModel.from_dict({"version": 1})
    with pytest.raises(EdgekitError, match="precisions.*Fix"):
        fit_cost_model(fitted["model"], ADAPTER, fitted["tokenizer"], length=8, precisions=("fp16",))
    with pytest.raises(EdgekitError, match="length = 0.*Fix"):
        fit_cost_model(fitted["model"], ADAPTER, fitted["tokenizer"], length=0)
    with pytest.raises(EdgekitError, match="pixel_values.*Fix"):
        cost.random_feeds({"pixel_values": np.float32}, 1, 8, VOCAB, np.random.default_rng(0))
