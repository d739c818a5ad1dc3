"""Decoder pruning: cutting equals masking, angular importance, reload and cached generation."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from edgekit.models.decoder import DecoderError
from edgekit.prune.config import DecoderPruneConfig
from edgekit.prune.decoder import apply, compute_scores, group_importance, plan, prune_decoder, save_pruned_decoder
from edgekit.prune.decoder_importance import layer_importance
from edgekit.models.toy import tiny_config

VOCAB, PAD, DH = 96, 1, 16
TYPES = ("qwen2", "llama")


def tiny_decoder(model_type: str, layers: int = 4, vocab_size: int = VOCAB, **extra):
    """4 query heads over 2 KV heads (head_dim 16); weights drawn large enough that every unit matters."""
    from transformers import AutoModelForCausalLM

    if model_type == "llama":
        extra = {"attention_bias": True, "mlp_bias": True, **extra}  # Qwen2 has Q/K/V biases of its own
    config = tiny_config(model_type, vocab_size=vocab_size, layers=layers, pad_token_id=PAD, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.15)
    return model.eval()


def example_batches(n: int = 2, rows: int = 3, length: int = 10):
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (rows, length), generator=g)
        mask = torch.ones_like(ids)
        mask[0, :4] = 0  # one left-padded row
        ids = ids.masked_fill(mask == 0, PAD)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return batches


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits


def assert_same(a, b, atol=1e-5):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= atol, f"max abs diff {(a - b).abs().max().item():.3g} > {atol}"


@pytest.fixture(scope="module")
def batches():
    return example_batches()


@pytest.mark.parametrize("model_type", TYPES)
@pytest.mark.parametrize("mode,importance", [("groups", "taylor"), ("groups", "magnitude"),
                                             ("heads", "taylor"), ("heads", "magnitude")])
def test_gqa_head_pruning_equals_masking(model_type, mode, importance, batches):
    model = tiny_decoder(model_type)
    counts = {"kv_groups_keep": 1} if mode == "groups" else {"heads_per_group_keep": 1}
    pruned, report = prune_decoder(copy.deepcopy(model), DecoderPruneConfig(head_importance=importance, **counts),
                                   batches)
    kept = report.plan
    for i, (groups, heads, scores) in enumerate(zip(kept.groups, kept.heads, report.scores.head)):
        by_group = scores.reshape(2, 2)
        if mode == "groups":  # the KV group with the larger summed query-head score, with both its heads
            assert groups == (int(group_importance([scores], 2)[0].argmax()),)
            assert heads == (2 * groups[0], 2 * groups[0] + 1)
        else:                 # every group keeps its own best query head
            assert groups == (0, 1)
            assert heads == tuple(2 * g + int(by_group[g].argmax()) for g in (0, 1))

    masked = copy.deepcopy(model)
    with torch.no_grad():
        for layer, heads in zip(masked.model.layers, kept.heads):
            for h in set(range(4)) - set(heads):
                layer.self_attn.o_proj.weight[:, h * DH:(h + 1) * DH] = 0
    batch = batches[0]
    assert_same(logits(pruned, batch), logits(masked, batch))
    assert (logits(pruned, batch) - logits(model, batch)).abs().max() > 1e-2  # the cut removed something

    attn = pruned.model.layers[0].self_attn
    n_kv = 1 if mode == "groups" else 2
    config = pruned.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, n_kv, DH)
    assert attn.q_proj.weight.shape == (2 * DH, 64) and attn.k_proj.weight.shape == (n_kv * DH, 64)
    assert attn.o_proj.weight.shape == (64, 2 * DH) and attn.num_key_value_groups == 2 // n_kv
    assert attn.k_proj.bias.shape == (n_kv * DH,)


@pytest.mark.parametrize("model_type", TYPES)
@pytest.mark.parametrize("importance", ["taylor", "magnitude"])
def test_channel_pruning_equals_masking(model_type, importance, batches):
    model = tiny_decoder(model_type)
    pruned, report = prune_decoder(copy.deepcopy(model),
                                   DecoderPruneConfig(intermediate_keep=40, channel_importance=importance), batches)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for layer, channels in zip(masked.model.layers, report.plan.channels):
            assert len(channels) == 40
            layer.mlp.down_proj.weight[:, sorted(set(range(128)) - set(channels))] = 0
    assert_same(logits(pruned, batches[0]), logits(masked, batches[0]))
    assert (logits(pruned, batches[0]) - logits(model, batches[0])).abs().max() > 1e-2
    mlp = pruned.model.layers[1].mlp
    assert pruned.config.intermediate_size == 40
    assert mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape == (40, 64) and mlp.down_proj.weight.shape == (64, 40)


@pytest.mark.parametrize("model_type", TYPES)
def test_layer_dropping_equals_skipping(model_type, batches):
    model = tiny_decoder(model_type)
    pruned, report = prune_decoder(copy.deepcopy(model), DecoderPruneConfig(keep_layers=2, layer_importance="uniform"))
    assert report.plan.kept_layers == (0, 3)
    skipped = copy.deepcopy(model)
    for i in (1, 2):  # the block returns its input: the residual stream passes it by
        skipped.model.layers[i].register_forward_hook(lambda module, args, out: args[0])
    assert_same(logits(pruned, batches[0]), logits(skipped, batches[0]))
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1]
    assert pruned.config.num_hidden_layers == 2


@pytest.mark.parametrize("model_type", TYPES)
def test_angular_importance_drops_an_identity_block_first(model_type, batches):
    model = tiny_decoder(model_type)
    with torch.no_grad():  # block 2 adds nothing to the residual stream
        for lin in (model.model.layers[2].self_attn.o_proj, model.model.layers[2].mlp.down_proj):
            lin.weight.zero_()
            if lin.bias is not None:
                lin.bias.zero_()
    scores = layer_importance(model, batches)
    assert scores.shape == (4,)
    assert scores[2] < 1e-6 and min(scores[i] for i in (0, 1, 3)) > 1e-2
    pruned, report = prune_decoder(copy.deepcopy(model), DecoderPruneConfig(keep_layers=3), batches)
    assert report.plan.kept_layers == (0, 1, 3)
    assert_same(logits(pruned, batches[0]), logits(model, batches[0]))


@pytest.mark.parametrize("model_type", TYPES)
def test_reload_and_cached_generation(model_type, batches, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgekit.models.toy import train_tokenizer

    tokenizer = train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 20, vocab_size=VOCAB)
    model = tiny_decoder(model_type, vocab_size=len(tokenizer))
    cfg = DecoderPruneConfig(keep_layers=3, layer_importance="uniform", heads_per_group_keep=1, intermediate_keep=64)
    pruned, report = prune_decoder(model, cfg, batches)
    assert report.plan.kept_layers == (0, 2, 3)  # a middle layer goes: layer_idx must be renumbered
    assert report.params[1] == sum(p.numel() for p in pruned.parameters()) < report.params[0]
    assert "layers (uniform): 4 -> 3; kept [0, 2, 3]" in report.text and "all params" in report.text

    save_pruned_decoder(pruned, tokenizer, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["num_hidden_layers"], saved["num_attention_heads"], saved["num_key_value_heads"],
            saved["intermediate_size"], saved["head_dim"]) == (3, 2, 2, 64, DH)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager",
                                                          output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    reloaded.eval()
    assert torch.equal(logits(reloaded, batches[0]), logits(pruned, batches[0]))
    if model_type == "qwen2":
        assert reloaded.config.layer_types == ["full_attention"] * 3 and reloaded.config.max_window_layers == 3
    assert [layer.self_attn.layer_idx for layer in reloaded.model.layers] == [0, 1, 2]
    assert len(AutoTokenizer.from_pretrained(tmp_path)) == len(tokenizer)

    for lm in (pruned, reloaded):  # the one cut in memory runs on its renumbered layer_idx
        assert_cached_generate_matches_argmax_loop(lm)


def assert_cached_generate_matches_argmax_loop(model, steps: int = 6):
    prompt = torch.tensor([[5, 17, 42, 8, 30]])
    with torch.no_grad():
        cached = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=steps,
                                do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=PAD)
        ids = prompt
        for _ in range(steps):
            step = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, step], dim=1)
    assert torch.equal(cached, ids)


def test_qwen2_sliding_window_layers_keep_their_type(batches, tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2Config

    # layers 0-1 full attention, 2-3 a 4-token sliding window (shorter than the 10-token batches)
    model = tiny_decoder("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=2)
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    cfg = DecoderPruneConfig(keep_layers=3, layer_importance="uniform")
    pruned, report = prune_decoder(copy.deepcopy(model), cfg)
    assert report.plan.kept_layers == (0, 2, 3)
    assert pruned.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert pruned.config.max_window_layers == 1  # what a fresh config derives layer_types from agrees
    fresh = Qwen2Config(num_hidden_layers=3, use_sliding_window=True, sliding_window=4, max_window_layers=1)
    assert fresh.layer_types == pruned.config.layer_types
    skipped = copy.deepcopy(model)
    skipped.model.layers[1].register_forward_hook(lambda module, args, out: args[0])
    assert_same(logits(pruned, batches[0]), logits(skipped, batches[0]))
    assert (logits(pruned, batches[0]) - logits(model, batches[0])).abs().max() > 1e-2
    assert_cached_generate_matches_argmax_loop(pruned, steps=8)  # runs past the window
    save_pruned_decoder(pruned, None, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert torch.equal(logits(reloaded, batches[0]), logits(pruned, batches[0]))


def test_dry_run_plans_without_cutting(batches):
    model = tiny_decoder("qwen2")
    before = copy.deepcopy(model.state_dict())
    same, report = prune_decoder(model, DecoderPruneConfig(keep_layers=3, kv_groups_keep=1, intermediate_keep=64),
                                 batches, dry_run=True)
    assert same is model and model.config.num_hidden_layers == 4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    apply(model, report.plan)
    assert sum(p.numel() for p in model.parameters()) == report.params[1]


@pytest.mark.parametrize("kwargs,needle", [
    ({"kv_groups_keep": 0}, "kv_groups_keep = 0"),
    ({"keep_layers": -1}, "keep_layers = -1"),
    ({"intermediate_keep": 2.5}, "intermediate_keep = 2.5"),
    ({"heads_per_group_keep": True}, "heads_per_group_keep = True"),
    ({"layer_importance": "cosine"}, "layer_importance = 'cosine'"),
    ({"head_importance": "grad"}, "head_importance = 'grad'"),
])
def test_bad_config_values_raise_at_construction(kwargs, needle):
    with pytest.raises(DecoderError, match=needle.replace("(", r"\(")):
        DecoderPruneConfig(**kwargs)


@pytest.mark.parametrize("kwargs,needle", [
    ({"heads_per_group_keep": 3}, "heads_per_group_keep = 3: the model has 2 query heads per KV group"),
    ({"kv_groups_keep": 3}, "kv_groups_keep = 3: the model has 2 KV groups"),
    ({"keep_layers": 5}, "keep_layers = 5: the model has 4 layers"),
    ({"intermediate_keep": 129}, "intermediate_keep = 129"),
    ({}, "nothing to prune"),
    ({"keep_layers": 2}, "layer_importance='angular' needs batches"),
])
def test_bad_configs_for_the_model_raise(kwargs, needle):
    model = tiny_decoder("qwen2")
    with pytest.raises(DecoderError, match=needle):
        prune_decoder(model, DecoderPruneConfig(head_importance="magnitude", **kwargs))
    assert model.config.num_hidden_layers == 4 and model.model.layers[0].self_attn.q_proj.out_features == 64


def test_llama_head_count_must_divide_hidden_size(batches, tmp_path):
    from transformers import AutoModelForCausalLM

    # LlamaConfig validates hidden_size % num_attention_heads at save time, head_dim or not: 6 heads of 8
    model = tiny_decoder("llama", heads=8, kv_heads=2)
    cfg = DecoderPruneConfig(heads_per_group_keep=3, head_importance="magnitude")
    with pytest.raises(DecoderError, match="heads_per_group_keep = 3: 6 query heads over 2 KV heads.*hidden_size"):
        plan(model, cfg, compute_scores(model, cfg))
    qwen = tiny_decoder("qwen2", heads=8, kv_heads=2)  # Qwen2Config has no such rule: 6 heads of 8 reload fine
    pruned, _ = prune_decoder(qwen, cfg)
    assert (pruned.config.num_attention_heads, pruned.config.head_dim) == (6, 8)
    save_pruned_decoder(pruned, None, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert torch.equal(logits(reloaded, batches[0]), logits(pruned, batches[0]))


def test_plan_for_another_model_is_refused(batches):
    cfg = DecoderPruneConfig(keep_layers=2, layer_importance="uniform")
    _, report = prune_decoder(tiny_decoder("qwen2"), cfg, dry_run=True)
    with pytest.raises(DecoderError, match="plan is for 4 layers, the model has 3"):
        apply(tiny_decoder("qwen2", layers=3), report.plan)
