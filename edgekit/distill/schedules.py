"""Scalar schedules over training steps (the KD temperature, the task-loss weight).

Convention: ``step`` is the 0-based index of the optimizer step being taken and ``total_steps``
the number of optimizer steps in the run. ``value(0, n) == start`` and ``value(n - 1, n) == end``
exactly: the last step trains at the end value; steps at or past ``n - 1`` stay at ``end``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import require

SHAPES = ("linear", "cosine", "constant")


@dataclass(frozen=True)
class Schedule:
    """``start`` -> ``end`` over a run: linear, cosine (half a cosine wave) or constant."""

    start: float
    end: float
    shape: str = "linear"

    def __post_init__(self):
        where = "distill schedule"
        for key in ("start", "end"):
            value = getattr(self, key)
            require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                    where, key, value, "must be a finite number", "e.g. start = 4.0, end = 1.0")
        require(self.shape in SHAPES, where, "shape", self.shape, f"is not one of {SHAPES}",
                'use shape = "linear" (or "cosine", "constant")')
        require(self.shape != "constant" or self.start == self.end, where, "end", self.end,
                f"a constant schedule cannot change (start = {self.start})", f"set end = {self.start} or use \"linear\"")

    def progress(self, step: int, total_steps: int) -> float:
        """Fraction of the way from start (0.0) to end (1.0) at ``step``."""
        if total_steps < 1 or step < 0:
            raise ValueError(f"schedule needs step >= 0 and total_steps >= 1, got step={step}, "
                             f"total_steps={total_steps}; pass the 0-based step and the run's step count.")
        return min(1.0, step / max(1, total_steps - 1))

    def value(self, step: int, total_steps: int) -> float:
        """The scheduled value at 0-based ``step`` of ``total_steps`` (start at 0, end at total_steps - 1)."""
        p = self.progress(step, total_steps)
        if self.shape == "constant" or p == 0.0:
            return float(self.start)
        if p == 1.0:
            return float(self.end)  # exact, not start + (end - start) * 1.0 with rounding
        if self.shape == "linear":
            return self.start + (self.end - self.start) * p
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * p))
