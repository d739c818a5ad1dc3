"""Structured pruning cuts tensors: the cut model computes what the masked model computes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from edgekit.prune import (PruneConfig, PruneError, PrunePlan, PruneScores, apply_plan, arch_for,
                           check_weight_loading, compute_scores, ffn_importance_taylor, format_plan, gates,
                           head_importance_gradient, load_pruned, make_plan, needs_custom_code, save_pruned,
                           uniform_layers, weight_loading_report)
from edgekit.models.arch import get_module
from edgekit.models.encoder import encoder_layers, layer_shapes

HIDDEN, HEADS, FFN, DH = 32, 4, 64, 8


def tiny(arch: str, layers: int = 2):
    from transformers import AutoModelForSequenceClassification, BertConfig, DistilBertConfig, RobertaConfig

    torch.manual_seed(0)
    if arch == "bert":
        config = BertConfig(vocab_size=60, hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=HEADS,
                            intermediate_size=FFN, max_position_embeddings=64)
    elif arch == "distilbert":
        config = DistilBertConfig(vocab_size=60, dim=HIDDEN, n_layers=layers, n_heads=HEADS, hidden_dim=FFN,
                                  max_position_embeddings=64)
    else:
        config = RobertaConfig(vocab_size=60, hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=HEADS,
                               intermediate_size=FFN, max_position_embeddings=66, pad_token_id=0, type_vocab_size=1)
    config.num_labels = 3
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    return {"input_ids": torch.randint(5, 60, (3, 9), generator=g) * mask, "attention_mask": mask}


def batches() -> list[dict[str, torch.Tensor]]:
    return [{**inputs(s), "labels": torch.tensor([0, 1, 2])} for s in range(2)]


def logits(model, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs(seed)).logits


def full_plan(model, **overrides) -> PrunePlan:
    shapes = layer_shapes(model)
    fields = dict(num_layers=len(shapes), kept_layers=tuple(range(len(shapes))),
                  heads=tuple(tuple(range(s.heads)) for s in shapes), ffn=tuple(tuple(range(s.ffn)) for s in shapes))
    return PrunePlan(**{**fields, **overrides})


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_head_pruning_equals_masking_those_heads(arch):
    model = tiny(arch)
    scores = PruneScores(head=[torch.tensor([0.1, 0.9, 0.2, 0.8]), torch.tensor([0.7, 0.1, 0.6, 0.5])])
    plan = make_plan(model, PruneConfig(heads_to_keep=2, head_score="variance"), scores)
    assert plan.heads == ((1, 3), (0, 2))
    gate = [torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 1.0, 0.0])]
    with gates(model, head_gates=gate):
        masked = logits(model)
    apply_plan(model, plan)
    torch.testing.assert_close(logits(model), masked, atol=1e-5, rtol=0)
    spec = arch_for(model)
    for layer in encoder_layers(model):
        assert get_module(layer, spec.query).weight.shape == (2 * DH, HIDDEN)
        assert get_module(layer, spec.out).weight.shape == (HIDDEN, 2 * DH)
        assert getattr(get_module(layer, spec.attention), spec.head_count_attrs[0]) == 2
    assert model.config.edgekit_heads_per_layer == [2, 2]


def test_parameter_count_drops_exactly_as_planned():
    model = tiny("bert")
    before = sum(p.numel() for p in model.parameters())
    cfg = PruneConfig(heads_to_keep=2, head_score="variance", ffn_keep_ratio=0.5, ffn_score="magnitude")
    plan = make_plan(model, cfg, compute_scores(model, cfg))
    # By hand, per layer: Q, K, V rows + biases, O columns, the two LayerNorms, FFN in rows, FFN out columns.
    layer_before = 4 * (HIDDEN * HIDDEN + HIDDEN) + 2 * 2 * HIDDEN + (HIDDEN * FFN + FFN) + (FFN * HIDDEN + HIDDEN)
    w, f = 2 * DH, FFN // 2
    layer_after = (3 * (HIDDEN * w + w) + (w * HIDDEN + HIDDEN) + 2 * 2 * HIDDEN
                   + (HIDDEN * f + f) + (f * HIDDEN + HIDDEN))
    counts = plan.param_counts(model)
    assert counts["layers"] == (2 * layer_before, 2 * layer_after)
    assert counts["total"] == (before, before - 2 * (layer_before - layer_after))
    apply_plan(model, plan)
    assert sum(p.numel() for p in model.parameters()) == counts["total"][1]


def test_layer_pruning_equals_running_only_the_kept_layers():
    model = tiny("bert", layers=3)
    plan = make_plan(model, PruneConfig(layers_to_keep=2), PruneScores())
    assert plan.kept_layers == (0, 2)
    skip = encoder_layers(model)[1].register_forward_hook(lambda module, args, output: args[0])
    skipped = logits(model)
    skip.remove()
    apply_plan(model, plan)
    assert len(encoder_layers(model)) == 2 and model.config.num_hidden_layers == 2
    torch.testing.assert_close(logits(model), skipped, atol=1e-5, rtol=0)
    assert not needs_custom_code(model.config)


def test_uniform_layers_keep_both_ends_evenly_spaced():
    assert uniform_layers(6, 3) == (0, 3, 5)
    assert uniform_layers(12, 6) == (0, 2, 4, 7, 9, 11)  # DistilBERT's choice of teacher layers
    assert uniform_layers(4, 4) == (0, 1, 2, 3)
    assert uniform_layers(4, 1) == (3,)


def test_importance_layer_strategy_keeps_the_highest_scores():
    model = tiny("bert", layers=3)
    plan = make_plan(model, PruneConfig(layers_to_keep=2, layer_strategy="importance"),
                     PruneScores(layer=torch.tensor([0.3, 0.9, 0.1])))
    assert plan.kept_layers == (0, 1)


def test_ffn_pruning_equals_zeroing_those_neurons():
    model = tiny("roberta")
    scores = PruneScores(ffn=[torch.arange(FFN, dtype=torch.float), -torch.arange(FFN, dtype=torch.float)])
    plan = make_plan(model, PruneConfig(ffn_keep_ratio=0.25), scores)
    assert plan.ffn == (tuple(range(48, 64)), tuple(range(16)))
    gate = [torch.zeros(FFN), torch.zeros(FFN)]
    gate[0][48:] = 1
    gate[1][:16] = 1
    with gates(model, ffn_gates=gate):
        masked = logits(model)
    apply_plan(model, plan)
    torch.testing.assert_close(logits(model), masked, atol=1e-5, rtol=0)
    assert model.config.intermediate_size == 16 and not needs_custom_code(model.config)


def test_head_scope_per_layer_vs_global():
    model = tiny("bert")
    scores = PruneScores(head=[torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([0.5, 0.1, 0.05, 0.01])])
    per_layer = make_plan(model, PruneConfig(heads_to_keep=2, head_score="variance"), scores)
    global_ = make_plan(model, PruneConfig(heads_to_keep=2, head_scope="global", head_score="variance"), scores)
    assert per_layer.heads == ((0, 1), (0, 1))
    assert global_.heads == ((0, 1, 2), (0,))  # same total; every layer keeps at least its best head


def test_gradient_scores_are_zero_for_dead_units():
    model = tiny("distilbert")
    spec = arch_for(model)
    layer = encoder_layers(model)[0]
    with torch.no_grad():
        get_module(layer, spec.out).weight[:, DH:2 * DH] = 0      # head 1 writes nothing
        get_module(layer, spec.ffn_out).weight[:, 5] = 0          # neuron 5 writes nothing
    heads = head_importance_gradient(model, batches())
    ffn = ffn_importance_taylor(model, batches())
    assert heads[0][1] == 0 and heads[0].sum() > 0 and torch.allclose(heads[1].norm(), torch.tensor(1.0))
    assert ffn[0][5] == 0 and ffn[0].sum() > 0 and ffn[1].shape == (FFN,)


def test_round_trip_with_per_layer_head_counts(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = tiny("bert", layers=3)
    cfg = PruneConfig(layers_to_keep=2, heads_to_keep=2, head_scope="global", ffn_keep_ratio=0.5)
    scores = compute_scores(model, cfg, batches())
    head = [torch.tensor([4.0, 3, 2, 1]), torch.ones(4), torch.tensor([0.5, 0.1, 0.05, 0.01])]
    plan = make_plan(model, cfg, PruneScores(head=head, ffn=scores.ffn))
    assert plan.heads == ((0, 1, 2), (0,))
    apply_plan(model, plan)
    expected = logits(model)
    save_pruned(model, tmp_path / "p")
    assert (tmp_path / "p" / "modeling_edgekit_pruned.py").is_file()
    reloaded = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "p", trust_remote_code=True, attn_implementation="eager").eval()
    assert reloaded.config.edgekit_heads_per_layer == [3, 1]
    torch.testing.assert_close(logits(reloaded), expected, atol=0, rtol=0)
    torch.testing.assert_close(logits(load_pruned(tmp_path / "p").eval()), expected, atol=0, rtol=0)
    with pytest.raises(Exception, match="size mismatch|mismatched"):  # the plain class refuses, never misloads
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "p")


def test_teacher_loader_refuses_a_pruned_model_saved_without_its_sizes(tmp_path):
    """The task loader re-initialises a head of the wrong size (new labels), never a body weight."""
    from edgekit.tasks import get_task
    from edgekit_runtime.errors import EdgekitError

    model = apply_plan(tiny("bert"), full_plan(tiny("bert"), heads=((0,), (1, 2))))
    model.config.edgekit_heads_per_layer = None  # what a plain save_pretrained of other tools leaves
    model.save_pretrained(tmp_path / "plain")
    with pytest.raises(EdgekitError, match="wrong shape.*attention.*save_pruned"):
        get_task("sequence-classification").load_model(str(tmp_path / "plain"), ["a", "b"])


def test_load_pruned_refuses_modeling_code_it_did_not_write(tmp_path):
    model = apply_plan(tiny("distilbert"), full_plan(tiny("distilbert"), heads=((0,), (1, 2))))
    save_pruned(model, tmp_path / "p")
    path = tmp_path / "p" / "modeling_edgekit_pruned.py"
    path.write_text(path.read_text() + "\nimport os\n")
    with pytest.raises(PruneError, match="refusing"):
        load_pruned(tmp_path / "p")


def test_uniform_pruning_reloads_with_plain_from_pretrained(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = tiny("distilbert", layers=3)
    cfg = PruneConfig(layers_to_keep=2, ffn_keep_ratio=0.5, ffn_score="magnitude")
    apply_plan(model, make_plan(model, cfg, compute_scores(model, cfg)))
    expected = logits(model)
    save_pruned(model, tmp_path / "u")
    assert not (tmp_path / "u" / "modeling_edgekit_pruned.py").exists()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "u", attn_implementation="eager")
    assert type(reloaded).__name__ == "DistilBertForSequenceClassification"
    assert (reloaded.config.n_layers, reloaded.config.hidden_dim) == (2, 32)
    torch.testing.assert_close(logits(reloaded.eval()), expected, atol=0, rtol=0)


def test_pruned_model_exports_to_onnx_and_matches(tmp_path):
    import onnxruntime as ort

    model = tiny("bert")
    apply_plan(model, full_plan(model, heads=((1, 3), (0,)), ffn=(tuple(range(0, 64, 2)), tuple(range(40)))))
    sample = inputs(0)
    names = ["input_ids", "attention_mask"]
    path = tmp_path / "pruned.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent Python branches
        torch.onnx.export(model, tuple(sample[n] for n in names), str(path), dynamo=False, opset_version=13,
                          input_names=names, output_names=["logits"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed in (0, 1):
        feed = {n: v.numpy() for n, v in inputs(seed).items()}
        feed = {n: feed[n][:, :7] for n in names} if seed else feed   # another shape through the dynamic axes
        (got,) = session.run(["logits"], feed)
        with torch.no_grad():
            want = model(**{n: torch.from_numpy(v) for n, v in feed.items()}).logits.numpy()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_weight_loading_report_flags_unexpected_and_mismatched():
    teacher = tiny("bert")
    state = dict(teacher.state_dict())
    state["bert.encoder.layer.0.extra.weight"] = torch.zeros(1)
    student = apply_plan(tiny("bert"), full_plan(teacher, heads=((0, 1), (0, 1, 2, 3))))
    missing, unexpected, mismatched = weight_loading_report(student, state)
    assert missing == [] and unexpected == ["bert.encoder.layer.0.extra.weight"]
    assert ("bert.encoder.layer.0.attention.self.query.weight", (32, 32), (16, 32)) in mismatched
    assert all(k.startswith("bert.encoder.layer.0.attention") for k, _, _ in mismatched)
    with pytest.raises(PruneError, match="unexpected: bert.encoder.layer.0.extra.weight") as err:
        check_weight_loading(student, state)
    assert "mismatched: bert.encoder.layer.0.attention.output.dense.weight" in str(err.value)
    assert check_weight_loading(student, student.state_dict()) == []


def test_format_plan_has_a_row_per_layer_and_totals():
    model = tiny("bert", layers=3)
    plan = make_plan(model, PruneConfig(layers_to_keep=2), PruneScores())
    text = format_plan(plan, model, seq_len=32)
    lines = text.splitlines()
    rows = [line.split() for line in lines if line.split() and line.split()[0] in {"0", "1", "2"}]
    assert [r[:2] for r in rows] == [["0", "yes"], ["1", "no"], ["2", "yes"]]
    assert rows[1][2:5] == ["4", "->", "0"]
    assert any(line.startswith("total") and "2/3" in line for line in lines)
    ne0, ne1 = plan.param_counts(model)["non_embedding"]
    assert f"non-embedding params: {ne0:,} -> {ne1:,} (ratio {ne1 / ne0:.3f})" in text
    assert "MFLOPs @32" in text


@pytest.mark.parametrize("kwargs, match", [
    ({"layers_to_keep": 0}, "whole number >= 1"),
    ({"heads_to_keep": 2.5}, "whole number >= 1"),
    ({"ffn_keep_ratio": 1.5}, r"fraction in \(0, 1\]"),
    ({"ffn_keep_ratio": 0.0}, r"fraction in \(0, 1\]"),
    ({"layers_to_keep": 1, "layer_strategy": "random"}, "use one of 'uniform', 'importance'"),
    ({"heads_to_keep": 1, "head_scope": "layer"}, "use one of 'per-layer', 'global'"),
    ({"heads_to_keep": 1, "head_score": "taylor"}, "use one of 'gradient', 'variance'"),
    ({"ffn_keep_ratio": 0.5, "ffn_score": "l1"}, "use one of 'taylor', 'magnitude'"),
])
def test_prune_config_errors_say_how_to_fix(kwargs, match):
    with pytest.raises(PruneError, match=match):
        PruneConfig(**kwargs)


def test_an_empty_prune_config_is_refused_when_planning():
    assert PruneConfig().is_noop
    with pytest.raises(PruneError, match="nothing to prune.*Fix"):
        make_plan(tiny("bert"), PruneConfig(), PruneScores())


def test_plans_and_scores_that_cannot_fit_the_model_are_refused():
    model = tiny("bert")
    with pytest.raises(PruneError, match="the model has 2 layers; keep at most 2"):
        make_plan(model, PruneConfig(layers_to_keep=3), PruneScores())
    with pytest.raises(PruneError, match="keep at most 4"):
        make_plan(model, PruneConfig(heads_to_keep=5), PruneScores())
    with pytest.raises(PruneError, match="needs task batches.*head_score=\"variance\""):
        compute_scores(model, PruneConfig(heads_to_keep=2))
    with pytest.raises(PruneError, match="plan is for 3 layers"):
        apply_plan(model, full_plan(tiny("bert", layers=3)))


def test_unknown_model_type_names_the_supported_ones():
    from transformers import GPT2Config

    with pytest.raises(PruneError, match="'gpt2'.*bert, distilbert, roberta"):
        arch_for(GPT2Config())


@pytest.mark.slow
def test_packaged_minilm_three_layers_eight_heads(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from edgekit.data import demo_teacher_path

    model = AutoModelForSequenceClassification.from_pretrained(
        demo_teacher_path(), num_labels=3, attn_implementation="eager").eval()
    cfg = PruneConfig(layers_to_keep=3, heads_to_keep=8, head_score="variance")
    plan = make_plan(model, cfg, compute_scores(model, cfg))
    assert plan.kept_layers == (0, 3, 5)
    # 6 layers x 1,774,464 -> 3 x (1,774,464 - 4 heads x (3 x 32 x 385 + 32 x 384)), plus pooler and classifier
    assert plan.param_counts(model)["non_embedding"] == (10_795_779, 4_881_411)
    assert "(ratio 0.452)" in format_plan(plan, model)
    apply_plan(model, plan)
    assert sum(p.numel() for p in model.parameters()) == 16_800_003
    save_pruned(model, tmp_path / "m")
    with torch.no_grad():
        sample = {"input_ids": torch.tensor([[101, 2023, 2003, 2204, 102]]),
                  "attention_mask": torch.ones(1, 5, dtype=torch.long)}
        torch.testing.assert_close(load_pruned(tmp_path / "m").eval()(**sample).logits, model(**sample).logits,
                                   atol=0, rtol=0)
