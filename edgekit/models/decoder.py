"""Where Qwen2- and Llama-class decoders keep the tensors edgekit cuts, quantizes and exports.

Both families share one layout (``model.embed_tokens``, ``model.layers[i].self_attn.{q,k,v,o}_proj``,
``model.layers[i].mlp.{gate,up,down}_proj``, ``model.norm``, ``lm_head``); they differ in biases
(Qwen2: Q/K/V always biased; Llama: ``attention_bias`` / ``mlp_bias``) and in the RoPE variants
their configs name. Everything in ``edgekit.decoder`` reads sizes through this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from edgekit_runtime.errors import EdgekitError

SUPPORTED = ("qwen2", "llama")
# fnmatch patterns over qualified module names: every Linear inside a decoder block (Q, K, V, O,
# gate, up, down). The embedding, the final norm and lm_head stay as they are.
BLOCK_LINEARS = ("model.layers.*",)
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


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


def check_supported(model_or_config) -> None:
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED:
        raise DecoderError(f"causal-LM support covers model_type {', '.join(SUPPORTED)}; got {model_type!r}. "
                           f"Fix: use a Qwen2 (DeepSeek-R1-Distill-Qwen) or Llama-architecture checkpoint.")


def head_dim(config) -> int:
    """Per-head width: ``config.head_dim`` when set (pruned models always set it), else hidden / heads."""
    value = getattr(config, "head_dim", None)
    return int(value) if value else config.hidden_size // config.num_attention_heads


def decoder_shape(model_or_config) -> DecoderShape:
    config = getattr(model_or_config, "config", model_or_config)
    check_supported(config)
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    if heads % kv:
        raise DecoderError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}. "
                           f"Fix: the checkpoint's config.json is inconsistent; check it.")
    return DecoderShape(model_type=config.model_type, num_layers=config.num_hidden_layers,
                        hidden_size=config.hidden_size, num_heads=heads, num_kv_heads=kv, head_dim=head_dim(config),
                        intermediate_size=config.intermediate_size, vocab_size=config.vocab_size,
                        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """``model.model.layers`` of a *ForCausalLM."""
    check_supported(model)
    return model.model.layers
