"""Distillation losses: logit KD (Hinton), hard-label CE, hidden-state MSE, attention-map MSE.

The total a step minimises is

    total = (1 - w_task) * KD + w_task * CE + hidden.weight * HID + attention.weight * ATT

with ``KD = T^2 * KL(softmax(teacher / T) || softmax(student / T))`` (batch mean) at the scheduled
temperature ``T``, ``CE`` the hard-label cross-entropy, HID / ATT the hidden / attention MSE
averaged over the mapped layers, and ``w_task`` from ``task_weight_at``:
0 during the first ``soft_only_fraction`` of the steps (teacher soft targets only), then the
``task_weight`` schedule run from its start to its end over the remaining steps.

Layer indices: a hidden-state index is a position in HF ``hidden_states`` (0 = embeddings,
i = output of layer i); an attention index is a 0-based layer, a position in HF ``attentions``.
Both models must be called with ``output_hidden_states`` / ``output_attentions`` (eager attention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..config import require
from .schedules import Schedule


def _schedule(value: Any) -> Schedule:
    return Schedule(**value) if isinstance(value, Mapping) else value


# forward_kl: T^2 * KL(teacher_T || student_T) (Hinton et al.). mse: squared error of the raw
# logits (no temperature), as in QAT where the int8 model must reproduce its fp32 self's logits:
# KL barely pulls on a near-tie the two already agree on, MSE pulls every logit equally.
LOGIT_KD_KINDS = ("forward_kl", "mse")


@dataclass(frozen=True)
class LogitKDConfig:
    """Soft-target KD on temperature-softened logits, scaled by T^2 so gradients keep their size."""

    temperature: Schedule = field(default_factory=lambda: Schedule(4.0, 1.0, "linear"))
    kind: str = "forward_kl"

    def __post_init__(self):
        object.__setattr__(self, "temperature", _schedule(self.temperature))
        t = self.temperature
        require(min(t.start, t.end) > 0, "distill.logits", "temperature", (t.start, t.end),
                "temperatures must be positive", "use e.g. start = 4.0, end = 1.0")
        require(self.kind in LOGIT_KD_KINDS, "distill.logits", "kind", self.kind,
                f"must be one of {list(LOGIT_KD_KINDS)}",
                'use "forward_kl" (KL(teacher || student) at the temperature), or "mse" (raw logits)')


@dataclass(frozen=True)
class HiddenStateConfig:
    """MSE between mapped hidden states on non-pad tokens; a learned projection bridges widths."""

    layer_map: tuple[tuple[int, int], ...] | None = None  # (student, teacher) hidden-state indices; None = even
    weight: float = 1.0

    def __post_init__(self):
        if self.layer_map is not None:
            pairs = tuple(tuple(p) for p in self.layer_map)
            object.__setattr__(self, "layer_map", pairs)
            require(bool(pairs) and all(len(p) == 2 and min(p) >= 0 for p in pairs), "distill.hidden", "layer_map",
                    pairs, "needs (student, teacher) pairs of non-negative hidden-state indices", "e.g. [[1, 3], [2, 6]]")
            require(len({s for s, _ in pairs}) == len(pairs), "distill.hidden", "layer_map", pairs,
                    "maps a student layer twice", "give each student layer one teacher layer")
        require(self.weight > 0, "distill.hidden", "weight", self.weight, "must be positive",
                "use 1.0, or set hidden = None to turn the loss off")


@dataclass(frozen=True)
class AttentionConfig:
    """MSE between attention probability maps of chosen student layers and their teacher layers.

    When head counts differ (a head-pruned student) both maps are averaged over heads first.
    """

    layers: tuple[int, ...] | None = (-1,)  # 0-based student layers, negative from the end; None = all
    weight: float = 0.1

    def __post_init__(self):
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
            require(bool(self.layers), "distill.attention", "layers", self.layers, "is empty",
                    "list student layers, e.g. [-1], or None for all")
        require(self.weight > 0, "distill.attention", "weight", self.weight, "must be positive",
                "use 0.1, or set attention = None to turn the loss off")


@dataclass(frozen=True)
class DistillConfig:
    """Everything the distillation loss needs; hidden / attention are off unless given."""

    logits: LogitKDConfig = field(default_factory=LogitKDConfig)
    task_weight: Schedule = field(default_factory=lambda: Schedule(0.3, 0.6, "linear"))
    soft_only_fraction: float = 0.2
    hidden: HiddenStateConfig | None = None
    attention: AttentionConfig | None = None
    cache_teacher: bool = True  # run the teacher once per example (see teacher_cache.py for when not to)

    def __post_init__(self):
        object.__setattr__(self, "task_weight", _schedule(self.task_weight))
        for name, cls in (("logits", LogitKDConfig), ("hidden", HiddenStateConfig), ("attention", AttentionConfig)):
            if isinstance(getattr(self, name), Mapping):
                object.__setattr__(self, name, cls(**getattr(self, name)))
        w = self.task_weight
        require(0 <= min(w.start, w.end) and max(w.start, w.end) <= 1, "distill", "task_weight", (w.start, w.end),
                "task weights must lie in [0, 1]", "use e.g. start = 0.3, end = 0.6")
        require(0 <= self.soft_only_fraction < 1, "distill", "soft_only_fraction", self.soft_only_fraction,
                "must be in [0, 1)", "use 0.2 (first 20% of steps on soft targets only), or 0 to mix from the start")

    def task_weight_at(self, step: int, total: int) -> float:
        """w_task at 0-based ``step``: 0 in the soft-only phase, then the schedule over the rest."""
        if step < self.soft_only_fraction * total:
            return 0.0
        soft = math.ceil(self.soft_only_fraction * total)
        return self.task_weight.value(step - soft, max(1, total - soft))


def logit_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
             kind: str = "forward_kl") -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T), summed over classes, averaged over the batch; or, for
    ``kind="mse"``, the squared logit difference summed over classes, averaged over the batch."""
    if kind == "mse":
        return (student_logits - teacher_logits.to(student_logits.dtype)).pow(2).sum(-1).mean()
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.to(student_logits.dtype) / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hidden dimension and the non-pad tokens (``mask`` 1) only."""
    per_token = (student - teacher.to(student.dtype)).pow(2).mean(-1)  # [batch, seq]
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp_min(1)


def attention_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE of [batch, heads, seq, seq] maps where query and key are both real tokens.

    Different head counts (a pruned student) are compared as head-averaged maps.
    """
    teacher = teacher.to(student.dtype)
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    m = mask.to(student.dtype)
    valid = (m[:, :, None] * m[:, None, :])[:, None].expand_as(student)
    return ((student - teacher).pow(2) * valid).sum() / valid.sum().clamp_min(1)


def hidden_layer_map(cfg: HiddenStateConfig, n_student: int, n_teacher: int) -> tuple[tuple[int, int], ...]:
    """(student, teacher) hidden-state pairs; the even map sends student layer s to s * n_teacher / n_student."""
    if cfg.layer_map is None:
        return tuple((s, math.floor(s * n_teacher / n_student + 0.5)) for s in range(1, n_student + 1))
    bad = [p for p in cfg.layer_map if p[0] > n_student or p[1] > n_teacher]
    require(not bad, "distill.hidden", "layer_map", cfg.layer_map,
            f"pairs {bad} exceed the student's {n_student} / teacher's {n_teacher} layers",
            f"use student indices 0..{n_student} and teacher indices 0..{n_teacher} (0 = embeddings)")
    return cfg.layer_map


def attention_layer_map(cfg: AttentionConfig, n_student: int, n_teacher: int) -> tuple[tuple[int, int], ...]:
    """(student, teacher) 0-based attention layers, mapped evenly (the last layer to the last layer)."""
    layers = range(n_student) if cfg.layers is None else cfg.layers
    bad = [a for a in layers if not -n_student <= a < n_student]
    require(not bad, "distill.attention", "layers", cfg.layers, f"{bad} are outside the student's {n_student} layers",
            f"use 0..{n_student - 1} or negative indices from the end")
    resolved = sorted({a % n_student for a in layers})
    return tuple((a, math.floor((a + 1) * n_teacher / n_student + 0.5) - 1) for a in resolved)


class HiddenProjection(nn.Module):
    """One learned Linear(student width -> teacher width) per mapped student layer; identity when widths match.

    Trained with the student (the trainer optimises and checkpoints it) and never exported.
    """

    def __init__(self, layer_map: tuple[tuple[int, int], ...], student_width: int, teacher_width: int):
        super().__init__()
        self.layer_map = tuple(layer_map)
        self.proj = nn.ModuleDict()
        if student_width != teacher_width:
            self.proj = nn.ModuleDict({str(s): nn.Linear(student_width, teacher_width) for s, _ in self.layer_map})

    def forward(self, student_layer: int, hidden: torch.Tensor) -> torch.Tensor:
        key = str(student_layer)
        return self.proj[key](hidden) if key in self.proj else hidden


def num_layers(outputs: Any) -> int:
    """Layer count from a model's outputs (HF ModelOutput or a cached TeacherOutputs)."""
    n = getattr(outputs, "num_layers", None)
    if n is not None:
        return n
    if getattr(outputs, "hidden_states", None) is not None:
        return len(outputs.hidden_states) - 1
    return len(outputs.attentions)


def _needs(outputs: Any, attr: str, flag: str):
    value = getattr(outputs, attr, None)
    if value is None or len(value) == 0:
        raise ValueError(f"the model outputs have no {attr}. Fix: call the model with {flag}=True "
                         "(and load it with attn_implementation='eager' for attentions).")
    return value


def distill_loss(student_out: Any, teacher_out: Any, batch: dict[str, torch.Tensor], step: int, total: int,
                 cfg: DistillConfig, projections: HiddenProjection | None = None):
    """(total loss, components) for one batch at 0-based ``step`` of ``total`` optimizer steps.

    Components (floats; None for a loss that is off): total, kd, task, hidden, attention,
    temperature, task_weight.
    """
    temperature = cfg.logits.temperature.value(step, total)
    w_task = cfg.task_weight_at(step, total)
    kd = logit_kd(student_out.logits, teacher_out.logits, temperature, cfg.logits.kind)
    ce = F.cross_entropy(student_out.logits, batch["labels"])
    loss = (1.0 - w_task) * kd + w_task * ce
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones(student_out.logits.shape[0], batch["input_ids"].shape[1], dtype=torch.long)
    parts: dict[str, torch.Tensor | None] = {"hidden": None, "attention": None}
    if cfg.hidden is not None:
        s_h = _needs(student_out, "hidden_states", "output_hidden_states")
        t_h = _needs(teacher_out, "hidden_states", "output_hidden_states")
        pairs = hidden_layer_map(cfg.hidden, len(s_h) - 1, num_layers(teacher_out))
        proj = projections if projections is not None else (lambda s, h: h)
        parts["hidden"] = sum(hidden_mse(proj(s, s_h[s]), t_h[t], mask) for s, t in pairs) / len(pairs)
        loss = loss + cfg.hidden.weight * parts["hidden"]
    if cfg.attention is not None:
        s_a = _needs(student_out, "attentions", "output_attentions")
        t_a = _needs(teacher_out, "attentions", "output_attentions")
        pairs = attention_layer_map(cfg.attention, len(s_a), num_layers(teacher_out))
        parts["attention"] = sum(attention_mse(s_a[s], t_a[t], mask) for s, t in pairs) / len(pairs)
        loss = loss + cfg.attention.weight * parts["attention"]
    components = {"total": loss.item(), "kd": kd.item(), "task": ce.item(),
                  **{k: (None if v is None else v.item()) for k, v in parts.items()},
                  "temperature": temperature, "task_weight": w_task}
    return loss, components
