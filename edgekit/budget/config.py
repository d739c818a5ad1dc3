"""[budget]: what the compressed bundle may cost (latency, bytes) and may lose (the quality floor).

A budget is a ratio to the teacher (``0.2``: a fifth of the teacher's latency on the same runtime,
``0.25``: a quarter of its fp32 bytes) or an absolute figure (``"15ms"``, ``"20MB"``). Left out,
the defaults hold (1/5 of the latency, 25% of the bytes) as *soft* limits: the quality floor may
back off past them, loudly. A budget the user writes is a *hard* limit: the compile stops with
the figures rather than exceed it. ``"none"`` turns a budget off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import require

DEFAULT_LATENCY = 0.2
DEFAULT_SIZE = 0.25
_ABSOLUTE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|mb|mib|kb|gb)\s*$", re.IGNORECASE)
_UNIT = {"ms": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "mib": 2 ** 20}


@dataclass(frozen=True)
class Limit:
    """One resolved budget: a ratio to the teacher, or an absolute value (ms or bytes); hard or soft."""

    ratio: float | None
    absolute: float | None
    hard: bool

    def allowed(self, teacher_value: float) -> float:
        """The largest value within this limit, given the teacher's (ms or bytes)."""
        return self.absolute if self.absolute is not None else self.ratio * teacher_value

    def describe(self, unit: str) -> str:
        kind = "" if self.hard else " (default)"
        if self.absolute is not None:
            shown = f"{self.absolute:.3g} ms" if unit == "ms" else f"{self.absolute / 1e6:.3g} MB"
            return shown + kind
        return f"{self.ratio:g} x the teacher's{kind}"


def parse_limit(key: str, value, default: float, unit: str) -> Limit | None:
    """None -> the default ratio (soft); "none" -> no limit; a number in (0, 1] -> ratio; "15ms" / "20MB"."""
    if value is None:
        return Limit(ratio=default, absolute=None, hard=False)
    if isinstance(value, str) and value.strip().lower() in ("none", "off"):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        require(0 < value <= 1, "budget", key, value, "a number is a ratio to the teacher and must be in (0, 1]",
                f'e.g. {key} = {default} (or an absolute "{"15ms" if unit == "ms" else "20MB"}")')
        return Limit(ratio=float(value), absolute=None, hard=True)
    match = _ABSOLUTE.match(str(value))
    suffix = match.group(2).lower() if match else None
    ok = match is not None and (suffix == "ms") == (unit == "ms") and float(match.group(1)) > 0
    require(ok, "budget", key, value, f"is not a ratio in (0, 1] or a positive figure in {unit}",
            f'use e.g. {default}, "{"15ms" if unit == "ms" else "20MB"}", or "none"')
    return Limit(ratio=None, absolute=float(match.group(1)) * _UNIT[suffix], hard=True)


@dataclass(frozen=True)
class BudgetConfig:
    latency: float | str | None = None    # None: 1/5 of the teacher's (soft); a ratio or "15ms" (hard); "none"
    size: float | str | None = None       # None: 25% of the teacher's fp32 bytes (soft); a ratio or "20MB"; "none"
    batch: int = 1                        # the latency is planned at batch x length (length: the recipe's max_length)
    length: int | None = None
    # The quality floor: the bundle's headline validation metric may be at most this far (absolute,
    # 0.02 = 2 points) below the fine-tuned teacher's; else back off and retry, or stop.
    quality_allowance: float = 0.02
    backoff_retries: int = 2              # retries with more of the teacher kept (each plans for 1.5x the budget)
    backoff_minutes: float = 60.0         # no retry starts after this many minutes of student work
    cache: bool = True                    # reuse this host's measured timings (~/.cache/edgekit) for the same teacher

    def __post_init__(self):
        self.latency_limit()
        self.size_limit()
        require(self.batch > 0, "budget", "batch", self.batch, "must be positive", "use 1")
        require(self.length is None or self.length > 1, "budget", "length", self.length, "must be > 1",
                "remove it to plan at the recipe's max_length")
        require(0 <= self.quality_allowance < 1, "budget", "quality_allowance", self.quality_allowance,
                "is an absolute drop of a [0, 1] metric", "use 0.02 (two points)")
        require(self.backoff_retries >= 0, "budget", "backoff_retries", self.backoff_retries, "must be >= 0",
                "use 2, or 0 to stop at the first miss")
        require(self.backoff_minutes > 0, "budget", "backoff_minutes", self.backoff_minutes, "must be positive",
                "use e.g. 60")

    def latency_limit(self) -> Limit | None:
        return parse_limit("latency", self.latency, DEFAULT_LATENCY, "ms")

    def size_limit(self) -> Limit | None:
        return parse_limit("size", self.size, DEFAULT_SIZE, "bytes")
