"""Training management, apart from the loop: config, early stopping, checkpoints with exact resume,
the loss curve and divergence alerts. The loop that uses them is ``edgekit.train.loop.distill_train``.

Exact resume: each epoch's order comes from ``(seed, epoch)``, not a running generator, and the
micro-batches are one stream across epochs, so step ``k`` always sees the same examples; a
checkpoint holds everything else that decides the next step (weights, optimizer, scheduler, RNG
states, early-stop and divergence state, projections). A resumed run reaches the same weights.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


from ..config import require


@dataclass(frozen=True)
class TrainingConfig:
    """Field defaults for BERT-class distillation: effective batch 256 = 16 x 16 accumulated."""

    batch_size: int = 16
    grad_accum: int = 2
    learning_rate: float | None = None  # None: edgekit.train.scaling (1e-4 for a distilled student)
    warmup_steps: int = 500  # clamped to max_warmup_fraction of all steps
    max_warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    epochs: float | None = None  # None: scaled to the training rows (edgekit.train.scaling)
    max_steps: int | None = None  # optimizer steps; wins over epochs when set
    eval_every: int | None = None  # optimizer steps between evaluations (and checkpoints); 0 = about once per epoch
    early_stopping_patience: int = 3  # evaluations without improvement before stopping; 0 = never stop early
    divergence_window: int = 3  # evaluations over which a growing KD-vs-task gap raises an alert
    seed: int = 0

    def __post_init__(self):
        for key in ("batch_size", "grad_accum", "divergence_window"):
            require(getattr(self, key) > 0, "student_train", key, getattr(self, key), "must be positive", "e.g. 16")
        require(self.learning_rate is None or 0 < self.learning_rate < 1, "student_train", "learning_rate",
                self.learning_rate, "must be in (0, 1)", "1e-4, or leave it out")
        require(self.warmup_steps >= 0, "student_train", "warmup_steps", self.warmup_steps, "must be >= 0", "use 500")
        require(0 <= self.max_warmup_fraction <= 1, "student_train", "max_warmup_fraction", self.max_warmup_fraction,
                "must be in [0, 1]", "use 0.1")
        require(self.weight_decay >= 0, "student_train", "weight_decay", self.weight_decay, "must be >= 0", "use 0.01")
        require(self.epochs is None or self.epochs > 0, "student_train", "epochs", self.epochs, "must be positive",
                "e.g. 3, or leave it out to scale with the data")
        require(self.max_steps is None or self.max_steps > 0, "student_train", "max_steps", self.max_steps,
                "must be positive", "remove it to train by epochs")
        require(self.eval_every is None or self.eval_every >= 0, "student_train", "eval_every", self.eval_every,
                "must be >= 0", "0 = about once per epoch, or leave it out")
        require(self.early_stopping_patience >= 0, "student_train", "early_stopping_patience",
                self.early_stopping_patience, "must be >= 0", "0 turns it off")

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum

    def total_steps(self, n_train: int) -> int:
        micro = math.ceil(n_train / self.batch_size)
        return self.max_steps or max(1, math.ceil(self.epochs * micro / self.grad_accum))

    def warmup(self, total: int) -> int:
        """Warmup steps: ``warmup_steps``, but at most ``max_warmup_fraction`` of ``total``."""
        return min(self.warmup_steps, int(self.max_warmup_fraction * total))


class EarlyStopper:
    """Stops after ``patience`` evaluations in a row without a higher headline metric."""

    def __init__(self, patience: int):
        self.patience, self.best, self.bad_evals = patience, None, 0

    def update(self, metric: float) -> bool:
        """Record an evaluation; True when it is a new best."""
        if self.best is None or metric > self.best:
            self.best, self.bad_evals = metric, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_evals = state["best"], state["bad_evals"]


class DivergenceMonitor:
    """Alerts when |KD - task loss| grew at each of the last ``window`` evaluations (window + 1 rising gaps)."""

    def __init__(self, window: int):
        self.window, self.gaps = window, []

    def update(self, kd: float, task: float) -> str | None:
        self.gaps = (self.gaps + [abs(kd - task)])[-(self.window + 1):]
        rising = len(self.gaps) == self.window + 1 and all(a < b for a, b in zip(self.gaps, self.gaps[1:]))
        if not rising:
            return None
        seq = " -> ".join(f"{g:.4f}" for g in self.gaps)
        self.gaps = self.gaps[-1:]  # re-arm: the next alert needs another full window of growth
        return (f"distillation and task losses are drifting apart: |KD - CE| grew over {self.window} evaluations "
                f"({seq}). Fix: lower the temperature end (logits.temperature.end), raise the task weight "
                "(task_weight), or check the teacher's accuracy on this data: a teacher that is wrong here pulls "
                "the student away from the labels.")

    def state_dict(self) -> dict:
        return {"gaps": list(self.gaps)}

    def load_state_dict(self, state: dict) -> None:
        self.gaps = list(state["gaps"])


def rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "python": random.getstate()}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


class CheckpointManager:
    """``last.pt`` (everything needed to resume) and ``best.pt`` (best weights), each written atomically."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.last, self.best = self.dir / "last.pt", self.dir / "best.pt"

    def _atomic(self, obj: Any, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as fh:
                torch.save(obj, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)  # readers see the old file or the new one, never half of one
        finally:
            tmp.unlink(missing_ok=True)

    def save(self, state: dict) -> None:
        self._atomic(state, self.last)

    def save_best(self, model_state: dict, step: int, metric: float) -> None:
        self._atomic({"model": model_state, "step": step, "metric": metric}, self.best)

    def _load(self, path: Path) -> dict | None:
        return torch.load(path, weights_only=True) if path.exists() else None  # our own files: tensors + plain data

    def load_latest(self) -> dict | None:
        return self._load(self.last)

    def load_best(self) -> dict | None:
        return self._load(self.best)

    def clear(self) -> None:
        self.last.unlink(missing_ok=True)
        self.best.unlink(missing_ok=True)


class LossCurveWriter:
    """JSONL rows: ``{"kind": "step", ...losses}`` per optimizer step, ``{"kind": "eval", ...metrics}`` per evaluation."""

    STEP_KEYS = ("lr", "temperature", "task_weight", "total", "kd", "task", "hidden", "attention")

    def __init__(self, path: str | Path, keep_until: int | None = None):
        """Start a new curve, or (resume) keep the rows up to step ``keep_until`` and drop later ones."""
        self.path = Path(path)
        rows = []
        if keep_until is not None and self.path.exists():
            rows = [r for r in self.path.read_text(encoding="utf-8").splitlines() if json.loads(r)["step"] <= keep_until]
        self.path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")

    def _write(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def step(self, step: int, values: dict) -> None:
        self._write({"kind": "step", "step": step, **{k: values.get(k) for k in self.STEP_KEYS}})

    def eval(self, step: int, values: dict) -> None:
        self._write({"kind": "eval", "step": step, **values})
