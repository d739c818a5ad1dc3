"""The distillation / hard-label training loop over the training-management parts in
``edgekit.train.manager`` (exact resume, early stopping, checkpoints, loss curves, divergence).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from edgekit_runtime.errors import EdgekitError

from ..distill.losses import DistillConfig, HiddenProjection, attention_layer_map, distill_loss, hidden_layer_map
from ..distill.teacher_cache import TeacherCache
from .finetune import evaluate, linear_schedule
from .scaling import scaled_student
from .manager import (CheckpointManager, DivergenceMonitor, EarlyStopper, LossCurveWriter, TrainingConfig,
                      restore_rng, rng_state)


@dataclass
class DistillResult:
    steps: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    losses: list[float] = field(default_factory=list)  # total loss per optimizer step
    best_metric: float | None = None
    stopped_early: bool = False
    alerts: list[str] = field(default_factory=list)
    resumed_from: int | None = None
    teacher_cache_bytes: int = 0
    curve_path: str = ""


@functools.lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of ``epoch``: a function of (seed, epoch) only, so a resumed run sees the same one."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    order.flags.writeable = False  # shared through the cache
    return order


def param_groups(modules, weight_decay: float) -> list[dict]:
    """AdamW parameter groups of ``modules``: weight decay on weights, none on biases, norms and QAT ranges."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight", "learned_amax")
    named = [(n, p) for m in modules for n, p in m.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0}]


def distill_train(student, teacher, adapter, tokenizer, train_ds, val_ds, distill_cfg: DistillConfig | None,
                  train_cfg: TrainingConfig, max_length: int, workdir: str | Path, resume: bool = False,
                  eval_fn: Callable[[], dict[str, float]] | None = None,
                  on_step: Callable[[int], None] | None = None) -> DistillResult:
    """Train ``student`` in place (distilled from ``teacher``, or on hard labels when ``distill_cfg`` is None).

    Checkpoints, ``loss_curve.jsonl`` and the teacher cache go under ``workdir``; ``resume`` continues
    from ``workdir/checkpoints/last.pt``. The best evaluation's weights are loaded at the end.
    ``on_step(step)`` runs after each optimizer step (and its checkpoint); raising there interrupts.
    The teacher is frozen: it is put in eval mode and never receives gradients.
    """
    # values the recipe left out follow the training rows (edgekit.train.scaling)
    cfg, workdir, n = scaled_student(train_cfg, len(train_ds)), Path(workdir), len(train_ds)
    steps, micro_per_epoch = cfg.total_steps(n), math.ceil(n / cfg.batch_size)
    eval_every = cfg.eval_every or max(1, micro_per_epoch // cfg.grad_accum)
    if eval_fn is None and val_ds is not None:
        eval_fn = lambda: evaluate(student, adapter, tokenizer, val_ds, max_length)  # noqa: E731
    torch.manual_seed(cfg.seed)
    projections, flags, hidden_pairs, att_pairs = None, {}, (), ()
    if distill_cfg is not None:
        if teacher is None:
            raise EdgekitError("distillation needs a teacher. Fix: pass the teacher model, or distill_cfg=None to "
                               "train on hard labels only.")
        teacher.eval()
        n_s, n_t = student.config.num_hidden_layers, teacher.config.num_hidden_layers
        if distill_cfg.hidden is not None:
            hidden_pairs = hidden_layer_map(distill_cfg.hidden, n_s, n_t)
            projections = HiddenProjection(hidden_pairs, student.config.hidden_size, teacher.config.hidden_size)
        if distill_cfg.attention is not None:
            att_pairs = attention_layer_map(distill_cfg.attention, n_s, n_t)
        flags = {"output_hidden_states": bool(hidden_pairs), "output_attentions": bool(att_pairs)}
    modules = [student] + ([projections] if projections is not None else [])
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(modules, cfg.weight_decay), lr=cfg.learning_rate)
    scheduler = linear_schedule(optimizer, cfg.warmup(steps), steps)
    stopper, monitor = EarlyStopper(cfg.early_stopping_patience), DivergenceMonitor(cfg.divergence_window)
    stateful = {"model": student, "projections": projections, "optimizer": optimizer, "scheduler": scheduler,
                "early_stop": stopper, "divergence": monitor}
    stateful = {k: v for k, v in stateful.items() if v is not None}
    ckpt, result, step = CheckpointManager(workdir / "checkpoints"), DistillResult(), 0
    config = {"train": dataclasses.asdict(cfg), "n_train": n, "max_length": max_length,
              "distill": None if distill_cfg is None else dataclasses.asdict(distill_cfg)}
    state = ckpt.load_latest() if resume else None
    if state is not None:
        if state["config"] != config:
            raise EdgekitError(f"the checkpoint in {ckpt.dir} was written with other settings than this run's. Fix: "
                               "resume with the same configs, data and max_length, or pass resume=False to start over.")
        for key, obj in stateful.items():
            obj.load_state_dict(state[key])
        step = state["step"]
        result.history, result.losses, result.alerts = state["history"], state["losses"], state["alerts"]
        result.best_metric, result.resumed_from = stopper.best, step
    else:
        ckpt.clear()
    curve = LossCurveWriter(workdir / "loss_curve.jsonl", keep_until=step if state is not None else None)
    result.curve_path = str(curve.path)
    cache = None
    if distill_cfg is not None and distill_cfg.cache_teacher:
        cache = TeacherCache(n, max_length, sorted({t for _, t in hidden_pairs}), sorted({t for _, t in att_pairs}),
                             disk_dir=workdir / "teacher_cache")
        cache.fill(teacher, adapter, tokenizer, train_ds)
        result.teacher_cache_bytes = cache.memory_bytes
    if state is not None:
        restore_rng(state["rng"])  # after every setup step that draws random numbers

    def batch_loss(idx, step):
        batch = adapter.collate(tokenizer, [train_ds.texts[i] for i in idx], [train_ds.labels[i] for i in idx],
                                max_length)
        out = student(**adapter.model_inputs(student, batch), **flags)
        if distill_cfg is None:
            loss = adapter.loss(out, batch)
            return loss, {"total": loss.item(), "task": loss.item(), "task_weight": 1.0}
        if cache is not None:
            t_out = cache.get(idx, batch.get("attention_mask", torch.ones_like(batch["input_ids"])))
        else:
            with torch.no_grad():
                t_out = teacher(**adapter.model_inputs(teacher, batch), **flags)
        return distill_loss(out, t_out, batch, step, steps, distill_cfg, projections)

    start, since = time.perf_counter(), defaultdict(float)
    bar = tqdm(total=steps, initial=step, desc="distill" if distill_cfg else "train", unit="step", dynamic_ncols=True)
    student.train()
    micro = step * cfg.grad_accum  # micro-batches are one stream across epochs: step k always sees the same ones
    try:
        while step < steps and not stopper.should_stop:
            row = defaultdict(float)
            for _ in range(cfg.grad_accum):
                epoch, pos = divmod(micro, micro_per_epoch)
                idx = epoch_order(cfg.seed, epoch, n)[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
                loss, parts = batch_loss(idx, step)
                (loss / cfg.grad_accum).backward()
                for k, v in parts.items():
                    if k in ("temperature", "task_weight"):
                        row[k] = v
                    elif v is not None:
                        row[k] += v / cfg.grad_accum  # the mean over the step's micro-batches
                micro += 1
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            row["lr"] = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            result.losses.append(row["total"])
            curve.step(step, row)
            for k in ("kd", "task"):
                since[k] += row.get(k, 0.0)
            since["n"] += 1
            bar.set_postfix(loss=f"{row['total']:.3f}", lr=f"{row['lr']:.1e}")
            bar.update(1)
            if step % eval_every == 0 or step == steps:
                record: dict[str, Any] = {"step": step}
                if eval_fn is not None:
                    metrics = eval_fn()
                    student.train()
                    if stopper.update(next(iter(metrics.values()))):  # the headline metric, higher is better
                        ckpt.save_best(student.state_dict(), step, stopper.best)
                    record.update(metrics)
                    bar.write(f"  step {step}/{steps}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                if distill_cfg is not None:  # mean training KD and CE since the previous evaluation
                    record["kd_minus_task"] = (since["kd"] - since["task"]) / since["n"]
                    alert = monitor.update(since["kd"] / since["n"], since["task"] / since["n"])
                    if alert:
                        result.alerts.append(alert)
                        bar.write("  warning: " + alert)
                since.clear()
                curve.eval(step, record)
                result.history.append(record)
                result.best_metric = stopper.best
                ckpt.save({"config": config, "step": step, **{k: v.state_dict() for k, v in stateful.items()},
                           "history": result.history, "losses": result.losses, "alerts": result.alerts,
                           "rng": rng_state()})
            if on_step is not None:
                on_step(step)
    finally:
        bar.close()
    result.stopped_early = stopper.should_stop and step < steps
    best = ckpt.load_best()
    if best is not None:
        student.load_state_dict(best["model"])
    student.eval()
    result.steps, result.seconds = step, time.perf_counter() - start
    return result
