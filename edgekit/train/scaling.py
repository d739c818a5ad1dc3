"""Training lengths and learning rates scaled to the number of training rows.

Fixed epochs do not fit data that ranges from hundreds of rows to hundreds of thousands: three
epochs of 500 rows is ~100 steps (a BERT-class head barely moves), three epochs of 300k rows is
hours on a CPU host. The table: small sets get many epochs at a higher learning rate (with
early stopping on validation, patience 3, best weights kept); large sets get fewer epochs, a
lower rate and more evaluations per epoch so early stopping can act within an epoch. The
student's distillation follows the same epochs at the rate pruned students recover with.

A recipe value the user wrote is never replaced; only the ones left out (None) are filled in.
"""

from __future__ import annotations

import dataclasses
import math

# (rows below, epochs, teacher learning rate, evaluations per epoch)
TABLE = ((1_000, 10, 1e-4, 1), (5_000, 6, 1e-4, 1), (20_000, 3, 5e-5, 2), (100_000, 2, 5e-5, 4),
         (math.inf, 1, 3e-5, 8))
STUDENT_LEARNING_RATE = 1e-4


def row_schedule(rows: int) -> tuple[float, float, int]:
    """(epochs, teacher learning rate, evaluations per epoch) for ``rows`` training rows."""
    for below, epochs, lr, evals in TABLE:
        if rows < below:
            return float(epochs), lr, evals
    raise AssertionError("unreachable: the table ends at infinity")


def _fill(cfg, rows: int, learning_rate: float, batch: int):
    """``cfg`` with the epochs, learning rate and evaluation cadence it leaves out (None) filled in."""
    epochs, _, evals = row_schedule(rows)
    fill = {"epochs": epochs, "learning_rate": learning_rate,
            "eval_every": max(1, math.ceil(rows / batch / evals))}
    return dataclasses.replace(cfg, **{k: v for k, v in fill.items() if getattr(cfg, k) is None})


def scaled_finetune(cfg, rows: int):
    """The teacher fine-tune config for ``rows``, with only the left-out values filled in."""
    return _fill(cfg, rows, row_schedule(rows)[1], cfg.batch_size * cfg.grad_accum)


def scaled_student(cfg, rows: int):
    """The student's distillation config (a TrainingConfig) for ``rows``: same epochs, its own rate."""
    return _fill(cfg, rows, STUDENT_LEARNING_RATE, cfg.effective_batch)

QAT_EPOCHS, QAT_MIN_STEPS = 0.5, 100


def scaled_qat(cfg, rows: int):
    """QAT's length: half an epoch (it only adapts to the rounding), yet at least QAT_MIN_STEPS optimizer
    steps: half an epoch of 500 rows is 8 steps, too few to move a model at QAT's learning rate."""
    if cfg.epochs is not None or cfg.max_steps is not None:
        return cfg
    epochs = max(QAT_EPOCHS, QAT_MIN_STEPS * cfg.effective_batch / max(1, rows))
    return dataclasses.replace(cfg, epochs=epochs)
