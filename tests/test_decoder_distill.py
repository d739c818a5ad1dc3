"""Causal-LM distillation: token KD losses against hand numbers, the on-disk top-k teacher cache,
sequence-level KD, distill_causal / qat_causal on tiny Qwen2 models, and perplexity."""

import copy
import gc
import math
import re
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.config import RecipeError
from edgekit.distill import topk_cache
from edgekit.models.decoder import DecoderError
from edgekit.distill.causal import CausalDistillConfig, kd_loss, model_inputs, next_token_targets, topk_kd_loss
from edgekit.distill.topk_cache import TopKCache, estimate_bytes, index_dtype
from edgekit.models.toy import tiny_config, train_tokenizer
from edgekit.train.causal import (distill_causal, encode, perplexity, qat_causal, sequence_kd_texts,
                                   teacher_generations, text_batches)
from edgekit.distill.schedules import Schedule
from edgekit.quant.fake import QATConfig, QuantLinear

SUBJECTS = ["the cat", "a dog", "my phone", "the battery", "our robot", "the old car"]
VERBS = ["sees", "charges", "follows", "likes", "moves to", "waits for"]
OBJECTS = ["the door", "a red ball", "the garden", "its charger", "the window", "a small box"]
TEXTS = [f"{SUBJECTS[i % 6]} {VERBS[(i * 5) % 6]} {OBJECTS[(i * 7) % 6]}" + " and stops" * (i % 3)
         for i in range(24)]
CONSTANT_T1 = Schedule(1.0, 1.0, "constant")

# teacher [2 ln 3, 0] at T = 2 softens to [3/4, 1/4]; student [0, 0] gives [1/2, 1/2].
P_T, P_S = (0.75, 0.25), (0.5, 0.5)
FORWARD = sum(t * math.log(t / s) for t, s in zip(P_T, P_S))
REVERSE = sum(s * math.log(s / t) for t, s in zip(P_T, P_S))
M = tuple(0.5 * t + 0.5 * s for t, s in zip(P_T, P_S))
JS = 0.5 * sum(t * math.log(t / m) for t, m in zip(P_T, M)) + 0.5 * sum(s * math.log(s / m) for s, m in zip(P_S, M))


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS * 4, vocab_size=320)


def _model(tok, seed, **sizes):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config("qwen2", vocab_size=len(tok), **sizes)).eval()


def _teacher(tok):
    return _model(tok, 0)


@pytest.fixture(scope="module")
def trained(tok):
    """A teacher fitted to TEXTS (perplexity ~1): peaked distributions worth distilling and quantizing."""
    model = _teacher(tok)
    batch = next(text_batches(tok, TEXTS, 32, len(TEXTS)))
    inputs = model_inputs(batch["input_ids"], batch["attention_mask"])
    targets, mask = next_token_targets(batch["input_ids"], batch["attention_mask"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        F.cross_entropy(model(**inputs).logits[mask], targets[mask]).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def _student(tok):
    return _model(tok, 1, hidden_size=32, layers=1, intermediate_size=64)


def _hand_logits():
    """(1, 2, 2): a real position with the hand-computed logits and a masked one holding NaN."""
    teacher = torch.tensor([[[2 * math.log(3), 0.0], [float("nan"), 1.0]]])
    student = torch.tensor([[[0.0, 0.0], [float("nan"), 5.0]]], requires_grad=True)
    return student, teacher, torch.tensor([[True, False]])


@pytest.mark.parametrize("kind, expected", [("forward", FORWARD), ("reverse", REVERSE), ("js", JS)])
def test_kd_matches_hand_computation_and_ignores_masked_positions(kind, expected):
    student, teacher, mask = _hand_logits()
    loss = kd_loss(student, teacher, mask, temperature=2.0, kind=kind)
    assert loss.item() == pytest.approx(4.0 * expected, rel=1e-6)  # tau^2 = 4
    loss.backward()
    assert torch.isfinite(student.grad).all() and (student.grad[0, 1] == 0).all()  # NaN pad never entered


@pytest.mark.parametrize("kind", ["forward", "reverse", "js"])
def test_divergences_zero_for_identical_logits_positive_otherwise(kind):
    logits = torch.randn(2, 5, 13, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert kd_loss(logits, logits.clone(), mask, 1.5, kind).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, logits + torch.randn_like(logits), mask, 1.5, kind).item() > 1e-3


def test_mask_averages_over_real_tokens_only():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 4, 7, generator=g), torch.randn(2, 4, 7, generator=g)
    mask = torch.tensor([[False, False, True, True], [True, True, True, False]])
    per_token = [kd_loss(student[b, t][None, None], teacher[b, t][None, None], torch.ones(1, 1, dtype=torch.bool))
                 for b, t in mask.nonzero().tolist()]
    assert kd_loss(student, teacher, mask).item() == pytest.approx(torch.stack(per_token).mean().item(), rel=1e-6)
    changed = student.clone()
    changed[~mask] = 1e4  # whatever sits at pads changes nothing
    assert kd_loss(changed, teacher, mask).item() == pytest.approx(kd_loss(student, teacher, mask).item(), rel=1e-6)
    assert kd_loss(student, teacher, torch.zeros_like(mask)).item() == 0.0


@pytest.mark.parametrize("kind", ["forward", "reverse", "js"])
def test_topk_loss_with_k_equal_vocab_is_the_full_loss(kind):
    g = torch.Generator().manual_seed(2)
    student = torch.randn(3, 6, 17, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(3, 6, 17, generator=g, dtype=torch.float64) * 3
    mask = torch.rand(3, 6, generator=g) > 0.3
    full = kd_loss(student, teacher, mask, 2.0, kind)
    values, indices = teacher.topk(17, dim=-1)
    shifted = values - values[..., :1]  # as the cache stores them: relative to the top-1 logit
    assert topk_kd_loss(student, shifted, indices, mask, 2.0, kind).item() == pytest.approx(full.item(), abs=1e-12)
    # k < V: forward is KL(teacher renormalized on its top-k || student), by hand
    values, indices = teacher.topk(4, dim=-1)
    q = F.softmax(values[mask] / 2.0, -1)
    log_s = F.log_softmax(student[mask] / 2.0, -1).gather(-1, indices[mask])
    if kind == "forward":
        hand = 4.0 * (q * (q.log() - log_s)).sum(-1).mean()
        assert topk_kd_loss(student, values, indices, mask, 2.0, kind).item() == pytest.approx(hand.item(), rel=1e-12)
    assert topk_kd_loss(student, values, indices, mask, 2.0, kind).item() > 0


def test_next_token_targets_on_a_left_padded_batch():
    ids = torch.tensor([[9, 9, 5, 6, 7], [1, 2, 3, 4, 8]])
    attention = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    targets, mask = next_token_targets(ids, attention)
    assert mask.tolist() == [[False, False, True, True, False], [True, True, True, True, False]]
    assert targets[0, 2:4].tolist() == [6, 7] and targets[1, :4].tolist() == [2, 3, 4, 8]
    assert model_inputs(ids, attention)["position_ids"].tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("bad, match", [({"kind": "kl"}, "kind"), ({"alpha": 1.5}, "alpha"),
                                        ({"top_k": 0}, "top_k"), ({"generations": 2}, "greedy"),
                                        ({"temperature": Schedule(0.0, 1.0)}, "positive"),
                                        ({"lr_decay": "step"}, "lr_decay"), ({"js_beta": 1.0}, "js_beta")])
def test_config_rejects_bad_values_with_a_fix(bad, match):
    with pytest.raises(RecipeError, match=f"(?s){match}.*Fix"):
        CausalDistillConfig(**bad)
    assert CausalDistillConfig(temperature={"start": 3.0, "end": 1.0}).temperature == Schedule(3.0, 1.0)


def test_estimate_bytes_matches_the_docstring_example():
    doc = topk_cache.__doc__
    assert estimate_bytes(10_000, 512, 64, 151_936) == 1_986_600_000 and "1,986,600,000" in doc
    assert 10_000 * 512 * 151_936 * 4 == 3_111_649_280_000 and "3,111,649,280,000" in doc
    assert 64 * (2 + 4) == 384 and 151_936 * 4 == 607_744 and "607,744" in doc
    assert 1_777_088_000 * 2 == 3_554_176_000 and "3,554,176,000" in doc
    assert index_dtype(65_536).itemsize == 2 and index_dtype(65_537).itemsize == 4
    assert estimate_bytes(1, 1, 64, 65_536) == 258 + 4 and re.search(r"64 x \(2 \+ 2\) \+ 2 = 258", doc)


def test_topk_cache_round_trips_without_the_teacher(tok, tmp_path):
    texts, k = TEXTS[:10], 8
    teacher = _teacher(tok)
    cache = TopKCache(tmp_path / "cache", len(texts), 32, k, len(tok), pad_token_id=tok.pad_token_id)
    cache.fill(teacher, text_batches(tok, texts, 32, batch_size=4))
    alive = weakref.ref(teacher)
    del teacher
    gc.collect()
    assert alive() is None  # the cache keeps no reference: the teacher's memory is free
    files = [tmp_path / "cache" / name for name in topk_cache.FILES]
    assert sum(f.stat().st_size for f in files) == estimate_bytes(len(texts), 32, k, len(tok)) == cache.nbytes

    reopened = TopKCache.open(tmp_path / "cache")
    idx = [7, 0, 3]
    got = reopened.get(idx)
    ref = _teacher(tok)  # the same weights, rebuilt: recompute one example at a time, no padding
    for b, i in enumerate(idx):
        ids = encode(tok, [texts[i]], 32)[0]
        real = got["attention_mask"][b].bool()
        assert got["input_ids"][b, real].tolist() == ids
        with torch.no_grad():
            top = ref(input_ids=torch.tensor([ids])).logits[0].topk(k, dim=-1)
        assert torch.equal(got["topk_indices"][b, real], top.indices)
        torch.testing.assert_close(got["topk_values"][b, real], top.values - top.values[:, :1], atol=4e-3, rtol=1e-3)
    with pytest.raises(DecoderError, match="train mode"):
        TopKCache(tmp_path / "other", 1, 8, 4, len(tok)).fill(ref.train(), [])


def _kd_on(student, teacher, tok, texts):
    batch = next(text_batches(tok, texts, 32, len(texts)))
    inputs = model_inputs(batch["input_ids"], batch["attention_mask"])
    _, mask = next_token_targets(batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        return kd_loss(student(**inputs).logits, teacher(**inputs).logits, mask).item()


@pytest.mark.parametrize("kind", ["forward", "reverse", "js"])
def test_distill_causal_lowers_kd_toward_a_live_teacher(tok, trained, kind):
    texts = TEXTS[:8]
    cfg = CausalDistillConfig(kind=kind, alpha=1.0, temperature=CONSTANT_T1, log_every=5, warmup_fraction=0.0)
    student = _student(tok)
    before = _kd_on(student, trained, tok, texts)
    rows = []
    figures = distill_causal(student, trained, tok, texts, cfg, steps=15, batch_size=8, lr=1e-2, max_length=32,
                             progress=rows.append)
    assert _kd_on(student, trained, tok, texts) < 0.8 * before and figures["kd_last"] < figures["kd_first"]
    assert [r["step"] for r in rows] == [5, 10, 15] and not student.training and figures["examples"] == 8
    assert perplexity(student, tok, texts, 32) > perplexity(trained, tok, texts, 32)  # the teacher stays ahead


@pytest.mark.parametrize("dropout", [True, False])
def test_distill_causal_schedules_lr_and_temperature(tok, dropout):
    cfg = CausalDistillConfig(temperature=Schedule(3.0, 1.0), warmup_fraction=0.25, lr_decay="cosine", log_every=1,
                              dropout=dropout)
    teacher, student, modes = _teacher(tok), _student(tok), []
    rows = []

    def progress(row):
        rows.append(row)
        modes.append(student.training)

    distill_causal(student, teacher, tok, TEXTS[:4], cfg, steps=8, batch_size=2, lr=1e-3, max_length=32,
                   progress=progress)
    cosine = [0.5 * (1 + math.cos(math.pi * (s - 2) / 6)) for s in range(2, 8)]
    assert [r["lr"] for r in rows] == pytest.approx([1e-3 * f for f in [0.5, 1.0, *cosine]])
    assert [r["temperature"] for r in rows] == pytest.approx([3.0 - 2.0 * s / 7 for s in range(8)])
    assert modes == [dropout] * 8 and not student.training  # train mode only while training, if asked


def test_distill_causal_from_the_cache_matches_the_live_top_k(tok, trained, tmp_path):
    texts, teacher = TEXTS[:8], copy.deepcopy(trained)
    cache = TopKCache(tmp_path / "c", len(texts), 32, 16, len(tok), tok.pad_token_id)
    cache.fill(teacher, text_batches(tok, texts, 32, 4))
    cfg16 = CausalDistillConfig(alpha=1.0, temperature=CONSTANT_T1, top_k=16, warmup_fraction=0.0)
    live, cached = _student(tok), _student(tok)
    live_fig = distill_causal(live, teacher, tok, texts, cfg16, steps=6, batch_size=8, lr=1e-2, max_length=32)
    del teacher
    cached_fig = distill_causal(cached, cache, tok, texts, cfg16, steps=6, batch_size=8, lr=1e-2, max_length=32)
    assert cached_fig["kd_first"] == pytest.approx(live_fig["kd_first"], rel=1e-3)  # fp16 values, same loss
    assert cached_fig["kd_last"] == pytest.approx(live_fig["kd_last"], rel=1e-2)
    assert cached_fig["kd_last"] < 0.8 * cached_fig["kd_first"]
    with pytest.raises(DecoderError, match="tokenize differently"):
        distill_causal(_student(tok), cache, tok, TEXTS[1:9], cfg16, steps=1, batch_size=8, max_length=32)
    with pytest.raises(DecoderError, match="top-16"):
        distill_causal(_student(tok), cache, tok, texts, CausalDistillConfig(top_k=32), steps=1, max_length=32)


def test_qat_causal_quantizes_block_linears_and_tracks_fp32(tok, trained):
    texts, student, fp32 = TEXTS[:16], copy.deepcopy(trained), trained
    model, figures = qat_causal(student, tok, texts, qat=QATConfig(include=("model.layers.*",), exclude=(),
                                                                   calibration_batches=2, sensitivity_batches=1),
                                steps=20, batch_size=8, lr=1e-5, max_length=32)
    restored = figures["restored_fp32"]
    assert len(restored) == 1 and isinstance(model.get_submodule(restored[0]), nn.Linear)
    block = {n: type(m) for n, m in model.named_modules() if n.startswith("model.layers.")
             and isinstance(m, (nn.Linear, QuantLinear))}
    assert len(block) == 2 * 7 and all(t is QuantLinear for n, t in block.items() if n not in restored)
    assert all(m.mode == "quantizing" for m in model.modules() if isinstance(m, QuantLinear))
    assert type(model.lm_head) is nn.Linear and not model.training
    batch = next(text_batches(tok, texts, 32, 16))
    inputs, real = model_inputs(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"].bool()
    with torch.no_grad():
        q, f = model(**inputs).logits[real], fp32(**inputs).logits[real]
    assert not torch.equal(q, f)  # fake quant is on, and close to fp32:
    assert (q - f).abs().mean() < 0.05 * f.std() and (q.argmax(-1) == f.argmax(-1)).float().mean() > 0.9
    before, after = figures["agreement_before"], figures["agreement_after"]
    assert after["top1_agreement"] > 0.9 and after["mean_abs_logit_diff"] < before["mean_abs_logit_diff"]  # QAT helped


def test_perplexity_is_exp_of_the_token_weighted_mean_nll(tok):
    model, texts = _teacher(tok), TEXTS[:5]
    nll, count = 0.0, 0
    for ids in encode(tok, texts, 32):  # one text at a time, no padding
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        nll -= sum(logp[t, ids[t + 1]].item() for t in range(len(ids) - 1))
        count += len(ids) - 1
    assert perplexity(model, tok, texts, max_length=32, batch_size=3) == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_sequence_kd_generations_are_deterministic_for_a_seed(tok):
    teacher, prompts = _teacher(tok), TEXTS[:3]
    a = teacher_generations(teacher, tok, prompts, 6, generations=2, sample=True, seed=5, batch_size=2)
    assert a == teacher_generations(teacher, tok, prompts, 6, generations=2, sample=True, seed=5, batch_size=2)
    assert a != teacher_generations(teacher, tok, prompts, 6, generations=2, sample=True, seed=6, batch_size=2)
    assert len(a) == 6 and all(text.startswith(prompts[i // 2]) for i, text in enumerate(a))
    greedy = teacher_generations(teacher, tok, prompts, 6, batch_size=3)  # left-padded batch == one at a time
    assert greedy == [teacher_generations(teacher, tok, [p], 6)[0] for p in prompts]
    cfg = CausalDistillConfig(sequence_kd=True, generation_tokens=6)
    assert sequence_kd_texts(teacher, tok, prompts, cfg, max_length=32) == prompts + greedy
    figures = distill_causal(_student(tok), teacher, tok, prompts, cfg, steps=1, batch_size=6, max_length=32)
    assert figures["examples"] == 6 and figures["generated"] == 3
