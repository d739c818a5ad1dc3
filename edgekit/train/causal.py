"""Distilling a causal student (live teacher or a ``TopKCache``), sequence-level KD, QAT of the decoder
Linears against an fp32 reference, and perplexity.

Batches are left-padded with position ids from the mask (``distill.model_inputs``); every loss and
figure counts real next-token targets only. Examples are tokenized once (right-truncated to
``max_length``) and visited in a per-epoch permutation that depends on the seed only.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..distill.schedules import Schedule
from ..quant.fake import (QATConfig, QuantError, calibrate, enable_fake_quant, layer_sensitivity, prepare_qat,
                          quantized_linears, restore_fp32)
from .loop import epoch_order, param_groups
from ..models.decoder import BLOCK_LINEARS, DecoderError, check_supported
from ..distill.causal import CausalDistillConfig, causal_distill_loss, model_inputs, next_token_targets
from ..distill.topk_cache import TopKCache

# Every Linear of the decoder blocks; embeddings, the final norm and lm_head stay fp32.
DECODER_QAT = QATConfig(include=BLOCK_LINEARS, exclude=())
# QAT's default loss: the int8 model reproduces its fp32 self, KD only, at temperature 1.
QAT_DISTILL = CausalDistillConfig(alpha=1.0, temperature=Schedule(1.0, 1.0, "constant"), warmup_fraction=0.0)
Progress = Callable[[dict[str, Any]], None]


def encode(tokenizer, texts: Sequence[str], max_length: int | None) -> list[list[int]]:
    """Token ids per text, right-truncated to ``max_length`` (no padding)."""
    if max_length is None:
        return tokenizer(list(texts))["input_ids"]
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def collate(ids: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-padded input_ids and attention_mask (B, longest)."""
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for b, row in enumerate(ids):
        if row:
            input_ids[b, width - len(row):] = torch.tensor(row)
            mask[b, width - len(row):] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DecoderError("the tokenizer has neither a pad nor an eos token. Fix: set tokenizer.pad_token.")
    return pad


def text_batches(tokenizer, texts: Sequence[str], max_length: int, batch_size: int):
    """Left-padded {input_ids, attention_mask} batches over ``texts`` in order (``TopKCache.fill`` takes them)."""
    ids, pad = encode(tokenizer, texts, max_length), _pad_id(tokenizer)
    for start in range(0, len(ids), batch_size):
        yield collate(ids[start:start + batch_size], pad)


def _check_targets(ids: list[list[int]]) -> None:
    if not any(len(row) > 1 for row in ids):
        raise DecoderError(f"none of the {len(ids)} texts has two tokens, so there is no next token to learn. "
                           "Fix: pass longer texts (or a larger max_length).")


def _check_vocab(student, vocab_size: int, what: str) -> None:
    check_supported(student)
    if student.config.vocab_size != vocab_size:
        raise DecoderError(f"the student's vocabulary has {student.config.vocab_size} tokens and the {what} "
                           f"{vocab_size}; token-level KD compares them token by token. Fix: give the student "
                           "the teacher's tokenizer and vocab_size.")


@torch.no_grad()
def teacher_generations(teacher, tokenizer, prompts: Sequence[str], max_new_tokens: int, generations: int = 1,
                        sample: bool = False, seed: int = 0, batch_size: int = 8,
                        max_prompt_tokens: int | None = None) -> list[str]:
    """Sequence-level KD data (Kim & Rush 2016): each prompt followed by the teacher's continuation.

    ``generations`` continuations per prompt (prompt-major order), greedy or sampled at temperature 1
    from the teacher's full distribution; sampling is a function of ``seed`` (the global RNG is left
    as it was). A continuation ends with the teacher's EOS when it emitted one, so the student
    learns where the teacher stops.
    """
    check_supported(teacher)
    if generations > 1 and not sample:
        raise DecoderError(f"generations={generations} with greedy decoding repeats one continuation. Fix: pass "
                           "sample=True, or generations=1.")
    eos, pad = tokenizer.eos_token_id, _pad_id(tokenizer)
    prefix = tokenizer("")["input_ids"]  # what encoding adds in front (a BOS); decoding must not repeat it
    sampling = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} if sample else {"do_sample": False}
    was_training, texts = teacher.training, []
    teacher.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                ids = encode(tokenizer, prompts[start:start + batch_size], max_prompt_tokens)
                batch = collate(ids, pad)
                out = teacher.generate(**batch, max_new_tokens=max_new_tokens, num_return_sequences=generations,
                                       pad_token_id=pad, eos_token_id=eos, **sampling)
                for r, row in enumerate(out[:, batch["input_ids"].shape[1]:].tolist()):
                    if eos in row:
                        row = row[:row.index(eos) + 1]
                    prompt = ids[r // generations]
                    if prefix and prompt[:len(prefix)] == prefix:
                        prompt = prompt[len(prefix):]
                    texts.append(tokenizer.decode(prompt + row, skip_special_tokens=False))
    finally:
        teacher.train(was_training)
    return texts


def sequence_kd_texts(teacher, tokenizer, texts: Sequence[str], cfg: CausalDistillConfig, max_length: int,
                      seed: int = 0) -> list[str]:
    """``texts`` plus ``cfg.generations`` teacher continuations of each (prompts truncated so that prompt and
    continuation fit ``max_length``). Call it before filling a ``TopKCache`` to use both."""
    generated = teacher_generations(teacher, tokenizer, texts, cfg.generation_tokens, cfg.generations, cfg.sample,
                                    seed, max_prompt_tokens=max(1, max_length - cfg.generation_tokens))
    return list(texts) + generated


@torch.no_grad()
def perplexity(model, tokenizer, texts: Sequence[str], max_length: int = 512, batch_size: int = 8) -> float:
    """exp(total NLL / number of real next-token targets) over ``texts`` (token-weighted, pads excluded)."""
    was_training, total, count = model.training, 0.0, 0
    model.eval()
    try:
        for batch in text_batches(tokenizer, texts, max_length, batch_size):
            logits = model(**model_inputs(batch["input_ids"], batch["attention_mask"])).logits
            targets, mask = next_token_targets(batch["input_ids"], batch["attention_mask"])
            total += F.cross_entropy(logits[mask].double(), targets[mask], reduction="sum").item()
            count += int(mask.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise DecoderError("perplexity needs at least one text of two or more tokens. Fix: pass longer texts.")
    return math.exp(total / count)


class _LiveTeacher:
    """Batches from token ids, teacher logits from a model run on each batch."""

    def __init__(self, model, ids: list[list[int]], pad: int):
        self.model, self.ids, self.pad = model, ids, pad
        self.seconds = 0.0

    def batch(self, idx) -> tuple[dict[str, torch.Tensor], Any]:
        batch = collate([self.ids[i] for i in idx], self.pad)
        start = time.perf_counter()
        with torch.no_grad():
            logits = self.model(**model_inputs(batch["input_ids"], batch["attention_mask"])).logits
        self.seconds += time.perf_counter() - start
        return batch, logits


class _CachedTeacher:
    def __init__(self, cache: TopKCache):
        self.cache, self.seconds = cache, 0.0

    def batch(self, idx) -> tuple[dict[str, torch.Tensor], Any]:
        start = time.perf_counter()
        got = self.cache.get(idx)
        self.seconds += time.perf_counter() - start
        return got, (got["topk_values"], got["topk_indices"])


def _lr_factor(cfg: CausalDistillConfig, steps: int) -> Callable[[int], float]:
    warmup = round(cfg.warmup_fraction * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, steps - warmup)
        return 1.0 - p if cfg.lr_decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))

    return factor


def _fit(student, teacher, n: int, cfg: CausalDistillConfig, steps: int, batch_size: int, lr: float,
         progress: Progress | None, seed: int, train_mode: bool) -> dict[str, Any]:
    """The optimization loop shared by distill_causal and qat_causal; returns its figures."""
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise DecoderError(f"steps={steps}, batch_size={batch_size}, lr={lr}: all must be positive. "
                           "Fix: pass e.g. steps=1000, batch_size=8, lr=5e-5.")
    torch.manual_seed(seed)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups([student], cfg.weight_decay), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg, steps))
    per_epoch = math.ceil(n / batch_size)
    student.train(train_mode)
    log, window, losses, kds, tokens = [], [], [], [], 0
    start = time.perf_counter()
    for step in range(steps):
        t0 = time.perf_counter()
        epoch, pos = divmod(step, per_epoch)
        idx = epoch_order(seed, epoch, n)[pos * batch_size:(pos + 1) * batch_size]
        batch, signal = teacher.batch(idx)
        targets, mask = next_token_targets(batch["input_ids"], batch["attention_mask"])
        logits = student(**model_inputs(batch["input_ids"], batch["attention_mask"])).logits
        loss, parts = causal_distill_loss(logits, signal, targets, mask, step, steps, cfg)
        loss.backward()
        parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        parts["lr"] = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        parts["seconds"] = time.perf_counter() - t0
        tokens += int(mask.sum())
        losses.append(parts["loss"])
        kds.append(parts["kd"])
        window.append(parts)
        if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
            row = {"step": step + 1, **{k: float(np.mean([w[k] for w in window])) for k in window[0]}}
            row["temperature"], row["lr"] = window[-1]["temperature"], window[-1]["lr"]
            log.append(row)
            window = []
            if progress is not None:
                progress(row)
    student.eval()
    seconds = time.perf_counter() - start
    return {"steps": steps, "seconds": seconds, "step_seconds": seconds / steps, "teacher_seconds": teacher.seconds,
            "target_tokens": tokens, "loss_first": losses[0], "loss_last": losses[-1], "kd_first": kds[0],
            "kd_last": kds[-1], "losses": losses, "log": log}


def distill_causal(student, teacher_or_cache, tokenizer, texts: Sequence[str], cfg: CausalDistillConfig,
                   steps: int, batch_size: int = 8, lr: float = 5e-5, max_length: int = 512,
                   progress: Progress | None = None, seed: int = 0) -> dict[str, Any]:
    """Distill ``student`` in place from a live teacher or a filled ``TopKCache`` of ``texts``; returns figures.

    AdamW, warmup then linear/cosine decay to zero, gradient clipping, and ``progress(row)`` every
    ``cfg.log_every`` steps with the window's mean loss / kd / ce, the temperature and the lr.
    With ``cfg.sequence_kd`` the live teacher first continues every text (``sequence_kd_texts``).
    The student is left in eval mode.
    """
    texts, generated = list(texts), 0
    if isinstance(teacher_or_cache, TopKCache):
        cache = teacher_or_cache
        if cfg.sequence_kd:
            raise DecoderError("sequence_kd needs the live teacher to generate, but a TopKCache was given. Fix: "
                               "texts = sequence_kd_texts(teacher, tokenizer, texts, cfg, max_length), fill the cache "
                               "over those texts, then distill from the cache with sequence_kd=False.")
        if cfg.top_k is not None and cfg.top_k > cache.k:
            raise DecoderError(f"cfg.top_k={cfg.top_k} but the cache holds the teacher's top-{cache.k}. Fix: use "
                               f"top_k <= {cache.k} (or None for all {cache.k}), or refill the cache with a larger k.")
        _check_vocab(student, cache.vocab_size, "cached teacher's")
        ids = encode(tokenizer, texts, max_length)
        _check_targets(ids)
        _check_cached_texts(cache, ids)
        teacher = _CachedTeacher(cache)
    else:
        model = teacher_or_cache
        _check_vocab(student, model.config.vocab_size, "teacher's")
        model.eval()
        if cfg.sequence_kd:
            before = len(texts)
            texts = sequence_kd_texts(model, tokenizer, texts, cfg, max_length, seed)
            generated = len(texts) - before
        ids = encode(tokenizer, texts, max_length)
        _check_targets(ids)
        teacher = _LiveTeacher(model, ids, _pad_id(tokenizer))
    figures = _fit(student, teacher, len(texts), cfg, steps, batch_size, lr, progress, seed, cfg.dropout)
    return {"examples": len(texts), "generated": generated, **figures}


def _check_cached_texts(cache: TopKCache, ids: list[list[int]]) -> None:
    if len(ids) != cache.n:
        raise DecoderError(f"{len(ids)} texts but the cache holds {cache.n} examples. Fix: pass the texts the cache "
                           "was filled from, in the same order.")
    stale = [i for i, row in enumerate(ids)
             if cache.lengths[i] != len(row) or not np.array_equal(cache.ids[i, :len(row)], row)]
    if stale:
        raise DecoderError(f"texts {stale[:5]} tokenize differently from the cached token ids (other texts, order, "
                           "tokenizer or max_length). Fix: pass the texts and max_length the cache was filled with.")


@torch.no_grad()
def logit_agreement(model, reference, batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Top-1 agreement and mean |logit difference| of ``model`` vs ``reference`` over every real token."""
    same, count, diff = 0, 0, 0.0
    for batch in batches:
        inputs, real = model_inputs(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"].bool()
        a, b = model(**inputs).logits[real], reference(**inputs).logits[real]
        same += int((a.argmax(-1) == b.argmax(-1)).sum())
        count += len(a)
        diff += float((a - b).abs().mean(-1).sum())
    return {"top1_agreement": same / count, "mean_abs_logit_diff": diff / count}


def qat_causal(student, tokenizer, texts: Sequence[str], cfg: CausalDistillConfig = QAT_DISTILL,
               qat: QATConfig = DECODER_QAT, reference=None, steps: int = 100, batch_size: int = 8,
               lr: float = 1e-5, max_length: int = 512, progress: Progress | None = None, seed: int = 0
               ) -> tuple[nn.Module, dict[str, Any]]:
    """int8 QAT of the decoder-block Linears, in place: prepare, calibrate, optionally restore the most
    sensitive Linears to fp32, then fine-tune with ``cfg``'s KD loss against ``reference`` logits.

    ``reference`` defaults to an fp32 copy of the student as given (the teacher works too). Returns
    the fake-quant model (eval mode, fake quant on: ready to export) and figures: calibrated ranges,
    sensitivities, restored Linears, agreement with the reference before and after, training figures.
    """
    if cfg.sequence_kd:
        raise DecoderError("qat_causal trains on the given texts only. Fix: pass cfg with sequence_kd=False "
                           "(generate with sequence_kd_texts first if you want teacher continuations).")
    check_supported(student)
    reference = copy.deepcopy(student) if reference is None else reference
    _check_vocab(student, reference.config.vocab_size, "reference's")
    reference.eval()
    ids, pad = encode(tokenizer, texts, max_length), _pad_id(tokenizer)
    _check_targets(ids)
    n_held = max(qat.calibration_batches, qat.sensitivity_batches) * batch_size
    held = [model_inputs(**collate(ids[s:s + batch_size], pad)) for s in range(0, min(len(ids), n_held), batch_size)]
    prepare_qat(student, qat)
    ranges = calibrate(student, held, max_batches=qat.calibration_batches)
    sensitivity, restored = {}, []
    if qat.fp32_most_sensitive:
        if qat.fp32_most_sensitive >= len(ranges):
            raise QuantError(f"fp32_most_sensitive={qat.fp32_most_sensitive} would restore all {len(ranges)} "
                             "quantized Linears. Fix: use a smaller count (1), or 0 to keep every Linear int8.")
        sensitivity = layer_sensitivity(student, held[:qat.sensitivity_batches])
        worst = sorted(sensitivity, key=sensitivity.get, reverse=True)[:qat.fp32_most_sensitive]
        restored = restore_fp32(student, worst)
    enable_fake_quant(student)
    probe = [collate(ids[s:s + batch_size], pad) for s in range(0, min(len(ids), 4 * batch_size), batch_size)]
    before = logit_agreement(student, reference, probe)
    figures = _fit(student, _LiveTeacher(reference, ids, pad), len(ids), cfg, steps, batch_size, lr, progress, seed,
                   qat.dropout)
    after = logit_agreement(student, reference, probe)
    figures.update({"quantized": list(quantized_linears(student)), "input_amax": ranges, "sensitivity": sensitivity,
                    "restored_fp32": restored, "agreement_before": before, "agreement_after": after})
    return student, figures
