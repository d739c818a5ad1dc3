"""Supervised fine-tuning of a model through its task adapter (AdamW, linear warmup + decay).

The loop is generic over the loss: the distillation stage reuses ``train`` with its own loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import TextDataset
from ..recipe import FinetuneConfig
from ..compiler.adapter import TaskAdapter
from .manager import EarlyStopper
from .scaling import scaled_finetune


@dataclass
class TrainResult:
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)  # one row per evaluation
    losses: list[float] = field(default_factory=list)  # mean loss per optimizer step
    best_metric: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    config: dict[str, Any] = field(default_factory=dict)  # the epochs / rate / cadence actually used


def batches(ds: TextDataset, batch_size: int, rng: np.random.Generator | None):
    """Index batches over ``ds``: shuffled when ``rng`` is given, in order otherwise."""
    order = rng.permutation(len(ds)) if rng is not None else np.arange(len(ds))
    for start in range(0, len(ds), batch_size):
        yield order[start:start + batch_size]


@torch.no_grad()
def predict(model, adapter: TaskAdapter, tokenizer, ds: TextDataset, max_length: int,
            batch_size: int = 64) -> np.ndarray:
    """Raw predictions (e.g. logits) for every item of ``ds``, in order."""
    model.eval()
    out = []
    # Sorting by length keeps padding, and so the time, low; the order is restored after.
    order = np.argsort([len(t) for t in ds.texts], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = adapter.collate(tokenizer, [ds.texts[i] for i in idx], None, max_length)
        out.append(adapter.predictions(model(**adapter.model_inputs(model, batch))).float().numpy())
    result = np.concatenate(out)
    restored = np.empty_like(result)
    restored[order] = result
    return restored


def evaluate(model, adapter: TaskAdapter, tokenizer, ds: TextDataset, max_length: int) -> dict[str, float]:
    return adapter.metrics(predict(model, adapter, tokenizer, ds, max_length), np.asarray(ds.labels))


def linear_schedule(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def total_steps(cfg: FinetuneConfig, n_train: int) -> int:
    per_epoch = math.ceil(n_train / (cfg.batch_size * cfg.grad_accum))
    return cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(per_epoch * cfg.epochs))


def train(model, adapter: TaskAdapter, tokenizer, train_ds: TextDataset, cfg: FinetuneConfig, max_length: int,
          loss_fn: Callable[[Any, dict], torch.Tensor] | None = None,
          eval_fn: Callable[[], dict[str, float]] | None = None, desc: str = "fine-tune") -> TrainResult:
    """Train ``model`` in place; keeps the weights of the best evaluation (headline metric) and stops
    after ``early_stopping_patience`` evaluations without a better one. Values ``cfg`` leaves out
    (epochs, learning rate, evaluation cadence) follow the number of training rows."""
    cfg = scaled_finetune(cfg, len(train_ds))
    loss_fn = loss_fn or adapter.loss
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    steps = total_steps(cfg, len(train_ds))
    warmup = int(cfg.warmup_ratio * steps)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    params = [
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith(no_decay)],
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
    scheduler = linear_schedule(optimizer, warmup, steps)
    per_epoch = math.ceil(len(train_ds) / (cfg.batch_size * cfg.grad_accum))
    eval_every = cfg.eval_every or per_epoch
    result = TrainResult(steps=0, seconds=0.0, config={"epochs": cfg.epochs, "max_steps": cfg.max_steps,
                                                      "total_steps": steps, "learning_rate": cfg.learning_rate,
                                                      "warmup_steps": warmup, "eval_every": eval_every,
                                                      "early_stopping_patience": cfg.early_stopping_patience})
    stopper = EarlyStopper(cfg.early_stopping_patience)
    best_state = None
    start = time.perf_counter()
    bar = tqdm(total=steps, desc=desc, unit="step", dynamic_ncols=True)
    step = 0
    model.train()
    while step < steps and not result.stopped_early:
        # An epoch that ended mid-accumulation must not leak its gradients into the next step.
        optimizer.zero_grad(set_to_none=True)
        micro = 0
        running = 0.0
        for idx in batches(train_ds, cfg.batch_size, rng):
            batch = adapter.collate(tokenizer, [train_ds.texts[i] for i in idx],
                                    [train_ds.labels[i] for i in idx], max_length)
            outputs = model(**adapter.model_inputs(model, batch))
            loss = loss_fn(outputs, batch) / cfg.grad_accum
            loss.backward()
            running += loss.item()
            micro += 1
            if micro < cfg.grad_accum:
                continue
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            result.losses.append(running)
            bar.set_postfix(loss=f"{running:.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")
            bar.update(1)
            micro, running = 0, 0.0
            if eval_fn is not None and (step % eval_every == 0 or step == steps):
                metrics = eval_fn()
                model.train()
                headline = next(iter(metrics.values()))
                result.history.append({"step": step, **metrics})
                bar.write(f"  step {step}/{steps}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                if stopper.update(headline):
                    result.best_metric, result.best_step = headline, step
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                elif stopper.should_stop:
                    result.stopped_early = True
                    bar.write(f"  early stop at step {step}: no better validation {next(iter(metrics))} in "
                              f"{stopper.patience} evaluations (best {result.best_metric:.4f} at step "
                              f"{result.best_step}, kept)")
            if step >= steps or result.stopped_early:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.steps = step
    result.seconds = time.perf_counter() - start
    return result
