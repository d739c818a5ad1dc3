"""Next-token training for causal LMs: texts packed into fixed-length blocks (eos between
documents, no padding), AdamW with linear warmup and cosine decay, gradient clipping.

Used to fine-tune a teacher on the task's text before compression (and by benchmarks/decoder.py
to train its small teacher from scratch). Short documents (tweets, notes) waste most of a padded
batch; packing keeps every position a real target.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..config import require


@dataclass(frozen=True)
class LMTrainConfig:
    steps: int = 300
    batch_size: int = 16
    block_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    log_every: int = 25

    def __post_init__(self):
        for key in ("steps", "batch_size", "block_size", "log_every"):
            require(getattr(self, key) > 0, "lm_train", key, getattr(self, key), "must be positive", "e.g. 100")
        require(0 <= self.warmup_steps < self.steps, "lm_train", "warmup_steps", self.warmup_steps,
                "must be in 0..steps-1", f"use {max(0, self.steps // 10)}")
        require(self.learning_rate > 0, "lm_train", "learning_rate", self.learning_rate, "must be positive", "use 1e-3")


def pack_texts(tokenizer, texts: Sequence[str], block_size: int) -> torch.Tensor:
    """(blocks, block_size) token ids: every text followed by eos, concatenated, cut into full blocks."""
    eos = tokenizer.eos_token_id
    require(eos is not None, "lm_train", "eos_token", None, "packing separates documents with eos",
            "set tokenizer.eos_token")
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    n = len(stream) // block_size
    require(n > 0, "lm_train", "block_size", block_size, f"is longer than all the text ({len(stream)} tokens)",
            "pass more text or a smaller block_size")
    return torch.tensor(stream[:n * block_size], dtype=torch.long).view(n, block_size)


def lr_at(step: int, cfg: LMTrainConfig) -> float:
    """Linear warmup to the peak, then half a cosine down to min_lr_ratio x the peak."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps - 1)
    floor = cfg.min_lr_ratio * cfg.learning_rate
    return floor + 0.5 * (cfg.learning_rate - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def train_lm(model, blocks: torch.Tensor, cfg: LMTrainConfig,
             progress: Callable[[str], None] | None = print) -> dict[str, float | list]:
    """Train ``model`` on next-token prediction over ``blocks``; returns the loss curve and timing."""
    gen = torch.Generator().manual_seed(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.learning_rate)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    order = torch.randperm(len(blocks), generator=gen)
    cursor = 0
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(blocks), generator=gen), 0
        batch = blocks[order[cursor:cursor + cfg.batch_size]]
        cursor += cfg.batch_size
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = model(input_ids=batch, labels=batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"lm_train: the loss became {loss.item()} at step {step}. Fix: lower "
                                     f"learning_rate (now {cfg.learning_rate}).")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        losses.append(loss.detach().item())
        if progress and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
            recent = float(np.mean(losses[-cfg.log_every:]))
            rate = (step + 1) / (time.perf_counter() - start)
            progress(f"      lm step {step + 1}/{cfg.steps}  loss {recent:.3f}  ({rate:.2f} steps/s)")
    model.eval()
    return {"steps": cfg.steps, "seconds": round(time.perf_counter() - start, 1), "final_loss": float(np.mean(losses[-cfg.log_every:])),
            "losses": losses, "tokens": cfg.steps * cfg.batch_size * cfg.block_size}
