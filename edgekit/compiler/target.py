"""Preflight: recipe x profile -> Target, once, before any minute is spent training.

Everything a pass would otherwise look up in the profile and the recipe separately (opset, the
rewrite rules, the int8 method and format, tolerances, token dtype, the sequence limit) is
resolved and checked here; what the profile does not allow is an error naming the value and the
fix, never a silent change.
"""

from __future__ import annotations

from edgekit_runtime.errors import EdgekitError

from ..export.rewrite import get_rule
from ..quant.passes import check_quantize
from .state import Target


def resolve_target(recipe, profile, adapter) -> Target:
    """The one preflight every task runs; the adapter adds its own checks (prune counts, ...)."""
    rules = tuple(recipe.rewrite.rules) if recipe.rewrite.rules is not None else tuple(profile.rewrite_rules)
    for name in rules:
        get_rule(name)  # unknown names fail before any work
    precision = recipe.export.precision or "fp32"
    if precision not in profile.precisions:
        raise EdgekitError(f"precision {precision!r} is not allowed by profile {profile.name!r} "
                           f"(allowed: {list(profile.precisions)}). Fix: choose one of those in [export] precision.")
    check_quantize(recipe, profile)
    method = recipe.quantize.method
    if method == "auto":  # until the budget plan decides: int8 (QAT) where the profile takes it
        method = "qat" if "int8" in profile.precisions else "none"
    int8 = method != "none"
    max_context = adapter.max_context(recipe, profile)
    if max_context > profile.max_sequence_length:
        raise EdgekitError(f"{adapter.context_name} {max_context} exceeds profile {profile.name!r}'s "
                           f"max_sequence_length {profile.max_sequence_length}. Fix: set {adapter.context_name} <= "
                           f"{profile.max_sequence_length} ({adapter.context_flag}).")
    adapter.preflight(recipe, profile)
    tolerances = {p: (profile.tolerances[p].atol, profile.tolerances[p].rtol)
                  for p in profile.precisions if p in profile.tolerances}
    return Target(profile=profile.name, task=adapter.name, opset=profile.opset, rewrite_rules=rules,
                  simplify=recipe.rewrite.simplify, precision="int8" if int8 else precision,
                  int8_method=method if int8 else None,
                  int8_format=recipe.quantize.resolved_format(profile.int8_format) if int8 else None,
                  token_dtype=profile.token_dtype, max_length=recipe.max_length, max_context=max_context,
                  decoder_ops=profile.decoder_ops, tolerances=tolerances)
