"""Encoder sizes and bookkeeping for structured pruning, read through the encoder rows of the
architecture table (edgekit.models.arch): the layer list, per-layer head counts and FFN widths.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from edgekit_runtime.errors import EdgekitError

from .arch import ENCODER, ArchSpec, find_arch, get_module, model_type_of, model_types


class PruneError(EdgekitError):
    """A prune config, plan or pruned model cannot be used as given."""


def arch_for(model_or_config) -> ArchSpec:
    """The encoder row of the table for a model (or its config); PruneError for any other model_type."""
    spec = find_arch(model_or_config, ENCODER)
    if spec is None:
        raise PruneError(f"structured pruning does not support model_type {model_type_of(model_or_config)!r}; "
                         f"supported: {', '.join(sorted(model_types(ENCODER)))}. Fix: use a BERT, RoBERTa or "
                         f"DistilBERT *ForSequenceClassification model, or add a row to edgekit.models.arch.ARCHS.")
    return spec


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    return get_module(model, arch_for(model).layers)


def head_dim(model_or_config) -> int:
    """Per-head width; pruning never changes it, so the original config keeps defining it."""
    config = getattr(model_or_config, "config", model_or_config)
    spec = arch_for(config)
    return getattr(config, spec.hidden_key) // getattr(config, spec.num_heads_key)


@dataclass(frozen=True)
class LayerShape:
    heads: int
    ffn: int


def layer_shapes(model: nn.Module) -> list[LayerShape]:
    """Head count and FFN width of every layer, read from the weights (right for pruned models too)."""
    spec, dh = arch_for(model), head_dim(model)
    return [LayerShape(heads=get_module(layer, spec.query).out_features // dh,
                       ffn=get_module(layer, spec.ffn_in).out_features)
            for layer in get_module(model, spec.layers)]


def set_head_count(layer: nn.Module, spec: ArchSpec, heads: int, dh: int) -> None:
    """Make the attention module's bookkeeping agree with its sliced Q/K/V (forward reshapes with -1)."""
    attention = get_module(layer, spec.attention)
    for attr in spec.head_count_attrs:
        setattr(attention, attr, heads)
    for attr in spec.head_width_attrs:
        setattr(attention, attr, heads * dh)
