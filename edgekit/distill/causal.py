"""Token-level distillation losses for causal LMs, over (batch, seq, vocab) logits.

Position ``t`` of the logits predicts token ``t + 1``; ``next_token_targets`` turns a left-padded
batch into those targets and the mask of *real* target positions (both tokens real). Every loss
here is averaged over the masked positions only, so padding never counts.

At temperature ``tau``, with ``p_T = softmax(teacher / tau)`` and ``p_S = softmax(student / tau)``:

    forward  tau^2 * KL(p_T || p_S)                              (mode-covering; Hinton et al.)
    reverse  tau^2 * KL(p_S || p_T)                              (mode-seeking; MiniLLM)
    js       tau^2 * [b KL(p_T || M) + (1 - b) KL(p_S || M)],  M = b p_T + (1 - b) p_S
             (the generalized Jensen-Shannon divergence of GKD, Agarwal et al. 2024; b = 0.5 is JSD)

The tau^2 factor keeps the gradient size independent of tau (Hinton et al. 2015).

From the teacher's top-k only (``topk_kd_loss``, what ``TopKCache`` stores), the teacher is
replaced by ``q_T``: its distribution restricted to its top-k tokens and renormalized there
(softmax of the k logits at ``tau``), zero elsewhere. The student stays the full ``p_S``
(log-softmax over the whole vocabulary, gathered at the k indices), so

    forward  KL(q_T || p_S) exactly: only the k terms where q_T > 0 exist. Student mass outside
             the top-k lowers log p_S at the k tokens, so it is still penalized.
    js       exactly, over k + 1 bins: the k tokens plus the student's tail mass
             r_S = 1 - sum_k p_S, where M = (1 - b) p_S and the tail contributes -(1 - b) r_S log(1 - b).
    reverse  KL(p_S || q_T) is infinite whenever the student has any tail mass, so it is taken on the
             top-k support with the student renormalized there too: KL(p_S | top-k || q_T). The
             student's tail mass is not penalized by this term (the CE term, alpha < 1, covers it).

With k = V all three equal the full losses (up to float rounding; the tests check it in float64).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..config import require
from .schedules import Schedule

KINDS = ("forward", "reverse", "js")
LR_DECAYS = ("linear", "cosine")


def _schedule(value: Any) -> Schedule:
    return Schedule(**value) if isinstance(value, Mapping) else value


@dataclass(frozen=True)
class CausalDistillConfig:
    """Token-level KD of a causal student (loss, temperature, sequence-level KD, optimizer details).

    The step loss is ``alpha * KD + (1 - alpha) * CE`` with CE the next-token cross-entropy on the
    training text (at temperature 1).
    """

    kind: str = "forward"                   # forward | reverse | js (see the module docstring)
    temperature: Schedule = field(default_factory=lambda: Schedule(2.0, 1.0, "linear"))
    alpha: float = 0.5                      # weight of KD; 1 - alpha goes to the next-token CE
    js_beta: float = 0.5                    # b of the generalized JS divergence
    top_k: int | None = None                # None: full teacher logits; k: the teacher's top-k only
    # Sequence-level KD (Kim & Rush 2016): the teacher continues every training text and the
    # continuations join the training set. Needs a live teacher (or generate, then fill a cache).
    sequence_kd: bool = False
    generations: int = 1                    # teacher continuations per text
    generation_tokens: int = 64             # max new tokens per continuation
    sample: bool = False                    # greedy (False) or sampled at temperature 1 with the run's seed
    # Optimization (steps, batch size and learning rate are arguments of distill_causal).
    warmup_fraction: float = 0.05
    lr_decay: str = "linear"                # linear | cosine, after warmup, to zero at the end
    max_grad_norm: float = 1.0
    weight_decay: float = 0.01
    dropout: bool = True                    # train mode: the student's config dropout applies
    log_every: int = 10                     # steps between progress() calls (and the last step)

    def __post_init__(self):
        where = "distill.causal"
        object.__setattr__(self, "temperature", _schedule(self.temperature))
        t = self.temperature
        require(isinstance(t, Schedule), where, "temperature", t, "must be a Schedule",
                'use Schedule(2.0, 1.0, "linear") or {"start": 2.0, "end": 1.0}')
        require(min(t.start, t.end) > 0, where, "temperature", (t.start, t.end), "temperatures must be positive",
                "use e.g. start = 2.0, end = 1.0")
        require(self.kind in KINDS, where, "kind", self.kind, f"must be one of {list(KINDS)}",
                'use "forward" (KL(teacher || student)), "reverse" (KL(student || teacher)) or "js"')
        require(0.0 <= self.alpha <= 1.0, where, "alpha", self.alpha, "must lie in [0, 1]",
                "use 0.5 (half KD, half next-token CE), 1.0 for KD only, 0.0 for CE only")
        require(0.0 < self.js_beta < 1.0, where, "js_beta", self.js_beta, "must lie in (0, 1)",
                "use 0.5 (the symmetric Jensen-Shannon divergence)")
        require(self.top_k is None or (isinstance(self.top_k, int) and self.top_k >= 1), where, "top_k",
                self.top_k, "must be a positive integer or None", "use e.g. 64, or None for full teacher logits")
        require(isinstance(self.generations, int) and self.generations >= 1, where, "generations",
                self.generations, "must be a positive integer", "use 1 (one teacher continuation per text)")
        require(isinstance(self.generation_tokens, int) and self.generation_tokens >= 1, where,
                "generation_tokens", self.generation_tokens, "must be a positive integer", "use e.g. 64")
        require(self.sample or self.generations == 1, where, "generations", self.generations,
                "greedy decoding gives the same continuation every time",
                "set sample = True for several continuations per text, or generations = 1")
        require(0.0 <= self.warmup_fraction < 1.0, where, "warmup_fraction", self.warmup_fraction,
                "must be in [0, 1)", "use 0.05 (5% of the steps)")
        require(self.lr_decay in LR_DECAYS, where, "lr_decay", self.lr_decay, f"must be one of {list(LR_DECAYS)}",
                'use "linear" or "cosine"')
        require(self.max_grad_norm > 0, where, "max_grad_norm", self.max_grad_norm, "must be positive", "use 1.0")
        require(self.weight_decay >= 0, where, "weight_decay", self.weight_decay, "must be non-negative",
                "use 0.01")
        require(isinstance(self.log_every, int) and self.log_every >= 1, where, "log_every", self.log_every,
                "must be a positive integer", "use 10")


def model_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward kwargs with position ids from the mask (``cumsum - 1``, clipped at 0; docs/decoder.md),
    so a real token's logits do not depend on how much padding its row has."""
    positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": positions}


def next_token_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, mask), both (B, T): ``targets[:, t] = input_ids[:, t + 1]``; ``mask`` is True where
    tokens t and t + 1 are both real (the last column is always False)."""
    targets = torch.zeros_like(input_ids)
    targets[:, :-1] = input_ids[:, 1:]
    real = attention_mask.bool()
    mask = torch.zeros_like(real)
    mask[:, :-1] = real[:, :-1] & real[:, 1:]
    return targets, mask


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype.itemsize < 4 else x  # fp16 / bf16 logits: softmax in float32


def _zero(logits: torch.Tensor) -> torch.Tensor:
    return logits.sum() * 0.0  # keeps the graph (and dtype) when a batch has no target


def _divergence(log_t: torch.Tensor, log_s: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """Per-row divergence between two log-distributions over the last axis."""
    if kind == "forward":
        return (log_t.exp() * (log_t - log_s)).sum(-1)
    if kind == "reverse":
        return (log_s.exp() * (log_s - log_t)).sum(-1)
    log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log(1.0 - beta))
    return beta * (log_t.exp() * (log_t - log_m)).sum(-1) + (1.0 - beta) * (log_s.exp() * (log_s - log_m)).sum(-1)


def _check(kind: str, beta: float, temperature: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"KD kind {kind!r} is not one of {KINDS}. Fix: use 'forward', 'reverse' or 'js'.")
    if not 0.0 < beta < 1.0 or temperature <= 0:
        raise ValueError(f"need 0 < beta < 1 and temperature > 0, got beta={beta}, temperature={temperature}.")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
            temperature: float = 1.0, kind: str = "forward", beta: float = 0.5) -> torch.Tensor:
    """tau^2 * D(teacher, student) per real target position (``mask`` True), averaged over them."""
    _check(kind, beta, temperature)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} and student logits "
                         f"{tuple(student_logits.shape)} differ. Fix: both models need the same vocabulary "
                         "and the same batch.")
    mask = mask.bool()
    if not mask.any():
        return _zero(student_logits)
    s = _upcast(student_logits[mask])  # (N, V): pad positions never enter the softmax
    log_s = F.log_softmax(s / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits[mask].to(s.dtype) / temperature, dim=-1)
    return _divergence(log_t, log_s, kind, beta).mean() * temperature ** 2


def topk_kd_loss(student_logits: torch.Tensor, teacher_values: torch.Tensor, teacher_indices: torch.Tensor,
                 mask: torch.Tensor, temperature: float = 1.0, kind: str = "forward", beta: float = 0.5
                 ) -> torch.Tensor:
    """``kd_loss`` from the teacher's top-k logits (``values``, ``indices``: (B, T, k)) only.

    The teacher is renormalized over its top-k; see the module docstring for each kind.
    ``values`` may be shifted by any per-position constant (the cache stores them relative to top-1).
    """
    _check(kind, beta, temperature)
    if teacher_values.shape != teacher_indices.shape or teacher_values.shape[:2] != student_logits.shape[:2]:
        raise ValueError(f"teacher top-k values {tuple(teacher_values.shape)} / indices "
                         f"{tuple(teacher_indices.shape)} do not match student logits {tuple(student_logits.shape)}. "
                         "Fix: pass (B, T, k) values and indices for the student's (B, T, V) batch.")
    mask = mask.bool()
    if not mask.any():
        return _zero(student_logits)
    s = _upcast(student_logits[mask])
    log_s = F.log_softmax(s / temperature, dim=-1).gather(-1, teacher_indices[mask].long())  # (N, k), unrenormalized
    log_t = F.log_softmax(teacher_values[mask].to(s.dtype) / temperature, dim=-1)           # teacher over its top-k
    if kind == "forward":
        per_row = _divergence(log_t, log_s, kind, beta)
    elif kind == "reverse":
        per_row = _divergence(log_t, log_s - torch.logsumexp(log_s, -1, keepdim=True), kind, beta)
    else:
        tail = (-torch.expm1(torch.logsumexp(log_s, -1))).clamp_min(0.0)  # student mass outside the top-k
        per_row = _divergence(log_t, log_s, kind, beta) - (1.0 - beta) * tail * math.log(1.0 - beta)
    return per_row.mean() * temperature ** 2


def next_token_ce(student_logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the real next tokens, averaged over them."""
    mask = mask.bool()
    if not mask.any():
        return _zero(student_logits)
    return F.cross_entropy(_upcast(student_logits[mask]), targets[mask])


def causal_distill_loss(student_logits: torch.Tensor, teacher: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                        targets: torch.Tensor, mask: torch.Tensor, step: int, total: int, cfg: CausalDistillConfig
                        ) -> tuple[torch.Tensor, dict[str, float]]:
    """(``alpha * KD + (1 - alpha) * CE``, its parts) at 0-based ``step`` of ``total``.

    ``teacher`` is full (B, T, V) logits, or a (values, indices) top-k pair. With full logits and
    ``cfg.top_k`` set, the loss uses their top-k, as a cache of that k would.
    """
    tau = cfg.temperature.value(step, total)
    if isinstance(teacher, torch.Tensor) and cfg.top_k is not None and cfg.top_k < teacher.shape[-1]:
        teacher = teacher.topk(cfg.top_k, dim=-1)
    if isinstance(teacher, torch.Tensor):
        kd = kd_loss(student_logits, teacher, mask, tau, cfg.kind, cfg.js_beta)
    else:
        values, indices = teacher
        if cfg.top_k is not None and cfg.top_k < values.shape[-1]:  # sorted descending: the first k are the top-k
            values, indices = values[..., :cfg.top_k], indices[..., :cfg.top_k]
        kd = topk_kd_loss(student_logits, values, indices, mask, tau, cfg.kind, cfg.js_beta)
    ce = next_token_ce(student_logits, targets, mask)
    loss = cfg.alpha * kd + (1.0 - cfg.alpha) * ce
    return loss, {"loss": loss.item(), "kd": kd.item(), "ce": ce.item(), "temperature": tau}
