"""The prune configs: what the recipe asks pruning to keep, encoder ([prune] of a classifier
recipe) and decoder (a causal LM's [prune]), checked at construction. Nothing here touches a model."""

from __future__ import annotations

from dataclasses import dataclass

from ..models.decoder import DecoderError, DecoderShape
from ..models.encoder import PruneError

LAYER_STRATEGIES = ("uniform", "importance")
HEAD_SCOPES = ("per-layer", "global")
HEAD_SCORES = ("gradient", "variance")
FFN_SCORES = ("taylor", "magnitude")


def bad_value(key: str, value, fix: str):
    """Raise the PruneError for recipe [prune] ``key`` = ``value``, saying how to fix it."""
    raise PruneError(f"[prune] {key} = {value!r}: {fix}")


@dataclass(frozen=True)
class PruneConfig:
    layers_to_keep: int | None = None      # None keeps every layer
    layer_strategy: str = "uniform"        # uniform | importance
    heads_to_keep: int | None = None       # per kept layer (on average, with head_scope="global")
    head_scope: str = "per-layer"          # per-layer | global
    head_score: str = "gradient"           # gradient | variance
    ffn_keep_ratio: float | None = None    # fraction of FFN neurons kept in every kept layer
    ffn_score: str = "taylor"              # taylor | magnitude

    def __post_init__(self):
        for key, value, allowed in (("layer_strategy", self.layer_strategy, LAYER_STRATEGIES),
                                    ("head_scope", self.head_scope, HEAD_SCOPES),
                                    ("head_score", self.head_score, HEAD_SCORES),
                                    ("ffn_score", self.ffn_score, FFN_SCORES)):
            if value not in allowed:
                bad_value(key, value, f"use one of {', '.join(repr(a) for a in allowed)}.")
        for key in ("layers_to_keep", "heads_to_keep"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                bad_value(key, value, "use a whole number >= 1 (how many to keep), or None to keep all.")
        ratio = self.ffn_keep_ratio
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))
                                  or not 0 < ratio <= 1):
            bad_value("ffn_keep_ratio", ratio, "use a fraction in (0, 1], e.g. 0.5 keeps half the neurons, "
                                               "or None to keep them all.")

    @property
    def is_noop(self) -> bool:
        return self.layers_to_keep is None and self.heads_to_keep is None and self.ffn_keep_ratio is None

    def require_something(self) -> None:
        if self.is_noop:
            raise PruneError("[prune] nothing to prune: layers_to_keep, heads_to_keep and ffn_keep_ratio are all "
                             "None. Fix: set at least one of them (e.g. layers_to_keep = 3, heads_to_keep = 8).")


# ------------------------------------------------------------------------------------------- decoder

LAYER_IMPORTANCE = ("angular", "uniform")
HEAD_IMPORTANCE = ("taylor", "magnitude")
CHANNEL_IMPORTANCE = ("taylor", "magnitude")
COUNTS = ("keep_layers", "kv_groups_keep", "heads_per_group_keep", "intermediate_keep")


def _bad_decoder_value(key: str, value, fix: str):
    raise DecoderError(f"[decoder prune] {key} = {value!r}: {fix}")


@dataclass(frozen=True)
class DecoderPruneConfig:
    keep_layers: int | None = None           # decoder layers kept; None keeps all
    kv_groups_keep: int | None = None        # whole KV groups kept per layer, each with its query heads
    heads_per_group_keep: int | None = None  # query heads kept in every kept group
    intermediate_keep: int | None = None     # SwiGLU channels kept per layer
    layer_importance: str = "angular"        # angular | uniform
    head_importance: str = "taylor"          # taylor | magnitude
    channel_importance: str = "taylor"       # taylor | magnitude

    def __post_init__(self):
        for key, allowed in (("layer_importance", LAYER_IMPORTANCE), ("head_importance", HEAD_IMPORTANCE),
                             ("channel_importance", CHANNEL_IMPORTANCE)):
            if getattr(self, key) not in allowed:
                _bad_decoder_value(key, getattr(self, key), f"use one of {', '.join(repr(a) for a in allowed)}.")
        for key in COUNTS:
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                _bad_decoder_value(key, value, "use a whole number >= 1 (how many to keep), or None to keep all.")

    def check(self, shape: DecoderShape) -> None:
        """Refuse counts the model cannot give (more than it has)."""
        if all(getattr(self, key) is None for key in COUNTS):
            raise DecoderError(f"[decoder prune] nothing to prune: {', '.join(COUNTS)} are all None. Fix: set at "
                               f"least one (e.g. keep_layers={max(1, shape.num_layers - 2)}).")
        for key, limit, what in (("keep_layers", shape.num_layers, "layers"),
                                 ("kv_groups_keep", shape.num_kv_heads, "KV groups (num_key_value_heads)"),
                                 ("heads_per_group_keep", shape.group_size, "query heads per KV group"),
                                 ("intermediate_keep", shape.intermediate_size, "SwiGLU channels per layer")):
            value = getattr(self, key)
            if value is not None and value > limit:
                _bad_decoder_value(key, value, f"the model has {limit} {what}; keep at most {limit}.")
