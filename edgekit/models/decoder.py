"""Decoder sizes for Qwen2- and Llama-class causal LMs, read through the decoder rows of the
architecture table (edgekit.models.arch).

Both families share one layout (``model.embed_tokens``, ``model.layers[i].self_attn.{q,k,v,o}_proj``,
``model.layers[i].mlp.{gate,up,down}_proj``, ``model.norm``, ``lm_head``); they differ in biases
(Qwen2: Q/K/V always biased; Llama: ``attention_bias`` / ``mlp_bias``) and in the RoPE variants
their configs name. Export, pruning and distillation read sizes through this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from edgekit_runtime.errors import EdgekitError

from .arch import DECODER, ARCHS, ArchSpec, find_arch, get_module, model_type_of, model_types

# fnmatch patterns over qualified module names: every Linear inside a decoder block (Q, K, V, O,
# gate, up, down). The embedding, the final norm and lm_head stay as they are.
BLOCK_LINEARS = tuple(sorted({f"{ARCHS[t].layers}.*" for t in model_types(DECODER)}))


class DecoderError(EdgekitError):
    """A decoder model, config or request edgekit cannot handle as given."""


@dataclass(frozen=True)
class DecoderShape:
    """The sizes export, pruning and the runtime's KV buffers need (uniform over layers)."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int          # query heads per layer
    num_kv_heads: int       # key/value heads per layer (GQA: num_heads is a multiple of it)
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool

    @property
    def group_size(self) -> int:
        """Query heads that share one KV head."""
        return self.num_heads // self.num_kv_heads


def check_supported(model_or_config) -> ArchSpec:
    """The decoder row of the table for a model (or its config); DecoderError for any other model_type."""
    spec = find_arch(model_or_config, DECODER)
    if spec is None:
        raise DecoderError(f"causal-LM support covers model_type {', '.join(model_types(DECODER))}; got "
                           f"{model_type_of(model_or_config)!r}. Fix: use a Qwen2 (DeepSeek-R1-Distill-Qwen) or "
                           f"Llama-architecture checkpoint.")
    return spec


def head_dim(config) -> int:
    """Per-head width: ``config.head_dim`` when set (pruned models always set it), else hidden / heads."""
    spec = check_supported(config)
    value = getattr(config, spec.head_dim_key, None)
    return int(value) if value else getattr(config, spec.hidden_key) // getattr(config, spec.num_heads_key)


def decoder_shape(model_or_config) -> DecoderShape:
    config = getattr(model_or_config, "config", model_or_config)
    spec = check_supported(config)
    heads = getattr(config, spec.num_heads_key)
    kv = getattr(config, spec.num_kv_heads_key, None) or heads
    if heads % kv:
        raise DecoderError(f"{spec.num_heads_key}={heads} is not a multiple of {spec.num_kv_heads_key}={kv}. "
                           f"Fix: the checkpoint's config.json is inconsistent; check it.")
    return DecoderShape(model_type=config.model_type, num_layers=getattr(config, spec.num_layers_key),
                        hidden_size=getattr(config, spec.hidden_key), num_heads=heads, num_kv_heads=kv,
                        head_dim=head_dim(config), intermediate_size=getattr(config, spec.intermediate_key),
                        vocab_size=config.vocab_size,
                        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The blocks of a *ForCausalLM (``model.model.layers``)."""
    return get_module(model, check_supported(model).layers)
