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


def _eval_every(rows: int, batch: int, evals_per_epoch: int) -> int:
    return max(1, math.ceil(rows / batch / evals_per_epoch))


def scaled_finetune(cfg, rows: int):
    """The teacher fine-tune config for ``rows``, with only the left-out values filled in."""
    epochs, lr, evals = row_schedule(rows)
    fill = {}
    if cfg.epochs is None:
        fill["epochs"] = epochs
    if cfg.learning_rate is None:
        fill["learning_rate"] = lr
    if cfg.eval_every is None:
        fill["eval_every"] = _eval_every(rows, cfg.batch_size * cfg.grad_accum, evals)
    return dataclasses.replace(cfg, **fill)


def scaled_student(cfg, rows: int):
    """The student's distillation config (a TrainingConfig) for ``rows``: same epochs, its own rate."""
    epochs, _, evals = row_schedule(rows)
    fill = {}
    if cfg.epochs is None:
        fill["epochs"] = epochs
    if cfg.learning_rate is None:
        fill["learning_rate"] = STUDENT_LEARNING_RATE
    if cfg.eval_every is None:
        fill["eval_every"] = _eval_every(rows, cfg.effective_batch, evals)
    return dataclasses.replace(cfg, **fill)


QAT_EPOCHS, QAT_MIN_STEPS = 0.5, 100


def scaled_qat(cfg, rows: int):
    """QAT's length: half an epoch (it only adapts to the rounding), yet at least QAT_MIN_STEPS optimizer
    steps: half an epoch of 500 rows is 8 steps, too few to move a model at QAT's learning rate."""
    if cfg.epochs is not None or cfg.max_steps is not None:
        return cfg
    epochs = max(QAT_EPOCHS, QAT_MIN_STEPS * cfg.effective_batch / max(1, rows))
    return dataclasses.replace(cfg, epochs=epochs)
