"""Structured pruning that cuts tensors: config, importance, plan, cut (apply); the model knowledge is
the architecture table (edgekit.models.arch).

    scores = compute_scores(model, cfg, batches)   # what matters
    plan = make_plan(model, cfg, scores)           # how much; print(format_plan(plan, model)) is the dry run
    apply_plan(model, plan)                        # cut; save_pruned / load_pruned round-trip it
"""

from __future__ import annotations

from ..models.arch import ARCHS, ArchSpec
from ..models.encoder import PruneError, arch_for
from .apply import (apply_plan, check_weight_loading, load_pruned, needs_custom_code, save_pruned,
                    weight_loading_report)
from .config import PruneConfig
from .importance import (PruneScores, compute_scores, ffn_importance_magnitude, ffn_importance_taylor, gates,
                         head_importance_gradient, head_importance_variance, layer_importance)
from .plan import PrunePlan, format_plan, make_plan, uniform_layers


def prune(model, cfg: PruneConfig, batches=None, dry_run: bool = False):
    """Score, plan and cut ``model`` in place; returns (model, plan). ``dry_run`` plans only."""
    plan = make_plan(model, cfg, compute_scores(model, cfg, batches))
    return (model if dry_run else apply_plan(model, plan)), plan


__all__ = ["ARCHS", "ArchSpec", "PruneConfig", "PruneError", "PrunePlan", "PruneScores", "apply_plan", "arch_for",
           "check_weight_loading", "compute_scores", "ffn_importance_magnitude", "ffn_importance_taylor",
           "format_plan", "gates", "head_importance_gradient", "head_importance_variance", "layer_importance",
           "load_pruned", "make_plan", "needs_custom_code", "prune", "save_pruned", "uniform_layers",
           "weight_loading_report"]
