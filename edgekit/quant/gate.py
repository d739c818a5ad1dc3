"""The quantized-model gate: judged on the task metric and argmax agreement, not on atol.

An int8 graph never matches fp32 logits to an fp32 tolerance, and it need not: what matters is
that it predicts the same labels and scores the same on held-out texts. The gate compares the
quantized logits with the reference (fp32) logits on the same rows and fails closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
from edgekit_runtime.errors import EdgekitError

from ..config import require

FIX = ("Fix: after PTQ, try QAT or more calibration samples (or calibrate_method = \"percentile\"); after "
       "QAT, try [quantize.qat] activation_percentile = 99.99 or more [qat_train] steps; or keep the failing "
       "layers in fp32 (fewer op_types_to_quantize / a narrower [quantize.qat] include).")


MIN_FLIPS = 2  # rows the gate's thresholds always allow to flip, however few rows it judges on


class QuantizationGateError(EdgekitError):
    """The quantized graph loses too much against its fp32 reference."""

    def __init__(self, message: str, figures: dict[str, Any]):
        super().__init__(message)
        self.figures = figures


@dataclass(frozen=True)
class GateConfig:
    """Thresholds: argmax agreement with the reference, and headline-metric drop (absolute, 0.01 = 1 point)."""

    # Agreement catches a broken graph (a wrong scale collapses it); the metric drop is the quality
    # check. At 0.99 a 3-layer student's QAT graph was refused for flipping 1.4% of borderline rows
    # while its macro-F1 moved 0.2 points; the bundle's quality floor judges the rest.
    min_argmax_agreement: float = 0.97
    max_metric_drop: float = 0.01

    def __post_init__(self):
        require(0.0 <= self.min_argmax_agreement <= 1.0, "quant_gate", "min_argmax_agreement",
                self.min_argmax_agreement, "is a fraction of rows and must be in [0, 1]", "use 0.97")
        require(0.0 <= self.max_metric_drop <= 1.0, "quant_gate", "max_metric_drop", self.max_metric_drop,
                "is an absolute drop of a [0, 1] metric and must be in [0, 1]", "use 0.01 (one point)")


def quantized_gate(reference_logits: np.ndarray, quantized_logits: np.ndarray, labels: np.ndarray,
                   metrics_fn: Callable[[np.ndarray, np.ndarray], Mapping[str, float]],
                   cfg: GateConfig = GateConfig()) -> dict[str, Any]:
    """Figures (agreement, reference and quantized headline metric, drop, passed); raise if a threshold fails.

    ``metrics_fn`` is the task adapter's ``metrics(outputs, labels)``; its first key is the headline
    metric, higher is better.
    """
    reference, quantized = np.asarray(reference_logits), np.asarray(quantized_logits)
    labels = np.asarray(labels)
    if reference.shape != quantized.shape or len(labels) != len(reference):
        raise QuantizationGateError(
            f"quantized logits {quantized.shape}, reference logits {reference.shape} and labels {labels.shape} "
            f"do not describe the same rows. Fix: run both graphs on the same texts, in the same order.", {})
    if len(labels) == 0:
        raise QuantizationGateError("no rows to judge. Fix: give the gate held-out texts (validation split).", {})
    finite = bool(np.isfinite(quantized).all())
    agreement = float((reference.argmax(-1) == quantized.argmax(-1)).mean()) if finite else 0.0
    reference_metrics = dict(metrics_fn(reference, labels))
    metric = next(iter(reference_metrics))
    ref_value = float(reference_metrics[metric])
    q_value = float(metrics_fn(quantized, labels)[metric]) if finite else 0.0
    # A threshold finer than the rows can resolve is noise, not a gate: on 61 validation rows one
    # flipped row is 1.6% of agreement and can move macro-F1 by more than a point. The gate always
    # tolerates MIN_FLIPS flipped rows' worth (on 200+ rows the configured 99% / 1 point hold as set).
    rows = len(labels)
    min_agreement = min(cfg.min_argmax_agreement, 1 - MIN_FLIPS / rows)
    max_drop = max(cfg.max_metric_drop, MIN_FLIPS / rows)
    figures = {"rows": int(rows), "argmax_agreement": agreement, "metric": metric,
               "reference_metric": ref_value, "quantized_metric": q_value, "metric_drop": ref_value - q_value,
               "min_argmax_agreement": min_agreement, "max_metric_drop": max_drop,
               "configured": {"min_argmax_agreement": cfg.min_argmax_agreement, "max_metric_drop": cfg.max_metric_drop}}
    failures = []
    if not finite:
        failures.append("the quantized graph gives non-finite logits")
    if agreement < min_agreement:
        failures.append(f"argmax agreement {agreement:.4f} < {min_agreement:.4f}")
    if figures["metric_drop"] > max_drop:
        failures.append(f"{metric} drop {figures['metric_drop']:.4f} ({ref_value:.4f} -> {q_value:.4f}) "
                        f"> {max_drop:.4f}")
    figures["passed"] = not failures
    if failures:
        raise QuantizationGateError(
            f"quantized model fails the gate on {len(labels)} rows: {'; '.join(failures)} "
            f"(argmax agreement {agreement:.4f}, {metric} {ref_value:.4f} -> {q_value:.4f}, "
            f"drop {figures['metric_drop']:.4f}). {FIX}", figures)
    return figures
