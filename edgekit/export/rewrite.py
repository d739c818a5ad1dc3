"""The graph rewrite engine: look rules up by name and run them in order, and onnxsim.

Profiles name rules in ``rewrite_rules``; ``apply_rules`` runs them and returns one ``RuleReport``
per rule. The rule contract and the registry are edgekit.export.rules.base; importing
edgekit.export.rules registers the built-in rules.
"""

from __future__ import annotations

from typing import Iterable

import onnx

from . import rules  # noqa: F401 - importing the package registers the built-in rules in RULES
from .rules.base import RULES, RewriteError, RewriteRule, RuleReport


def get_rule(name: str) -> RewriteRule:
    """The registered rule called ``name``."""
    if name not in RULES:
        raise RewriteError(
            f"unknown rewrite rule {name!r}. Fix: use one of {sorted(RULES)} in the profile's rewrite_rules."
        )
    return RULES[name]


def apply_rules(model: onnx.ModelProto, names: Iterable[str]) -> tuple[onnx.ModelProto, list[RuleReport]]:
    """Apply the named rules in order; every name is resolved before anything runs."""
    chosen = [get_rule(n) for n in names]
    reports = []
    for rule in chosen:
        model, report = rule.apply(model)
        reports.append(report)
    return model, reports


def _dynamic_dims(model: onnx.ModelProto) -> dict[str, list[str]]:
    dims = {}
    for value in [*model.graph.input, *model.graph.output]:
        dims[value.name] = [d.dim_param for d in value.type.tensor_type.shape.dim if d.dim_param]
    return dims


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run onnxsim (constant folding, dead code, fusions) keeping every dynamic axis."""
    import onnxsim  # heavy; only the export stage needs it

    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises bare RuntimeErrors from its C++ core
        raise RewriteError(
            f"onnxsim failed on graph '{model.graph.name}': {exc}. "
            "Fix: export without simplification (skip `simplify`) and report the model."
        ) from None
    if not ok:
        raise RewriteError(
            f"onnxsim's check of the simplified graph '{model.graph.name}' failed. "
            "Fix: export without simplification (skip `simplify`) and report the model."
        )
    before, after = _dynamic_dims(model), _dynamic_dims(simplified)
    lost = {k: v for k, v in before.items() if after.get(k) != v}
    if lost:
        raise RewriteError(
            f"onnxsim changed the dynamic axes of {sorted(lost)} (before {lost}, after "
            f"{ {k: after.get(k) for k in lost} }). Fix: export without simplification and report the model."
        )
    return simplified
