"""What every run kind reports a figure as: a Metric (value, unit, which way is better), and the
latency statistics of a list of timings."""

from __future__ import annotations

from typing import Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99)

Metric = tuple[float | int | None, str, str | None]  # value, unit, better ("lower" | "higher" | None)


def latency_stats(prefix: str, seconds: Sequence[float]) -> dict[str, Metric]:
    """min, mean, p50, p90, p95, p99, max in ms (numpy's linear percentiles) and the sample count."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        return {f"{prefix}.n": (0, "count", None)}
    out: dict[str, Metric] = {f"{prefix}.min_ms": (float(ms.min()), "ms", "lower"),
                              f"{prefix}.mean_ms": (float(ms.mean()), "ms", "lower")}
    for q in PERCENTILES:
        out[f"{prefix}.p{q}_ms"] = (float(np.percentile(ms, q)), "ms", "lower")
    out[f"{prefix}.max_ms"] = (float(ms.max()), "ms", "lower")
    out[f"{prefix}.n"] = (int(ms.size), "count", None)
    return out
