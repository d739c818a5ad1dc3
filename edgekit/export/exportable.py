"""What the KV-cache graph (edgekit.decoder.export) can express, and the RoPE frequencies it bakes in.

``check_exportable`` refuses, naming value, reason and fix, what one static graph cannot follow
(an activation other than SiLU, sequence-dependent RoPE scaling, sliding windows, split Linears,
non-fp32 weights, KV heads that differ between layers); ``rope_inverse_frequencies`` reads the
model's own RoPE init so the graph rotates exactly as transformers does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.decoder import DecoderError, decoder_shape

STATIC_ROPE = ("default", "linear", "llama3", "yarn")  # inv_freq does not depend on the sequence length


def _rope_parameters(config) -> dict[str, Any]:
    params = getattr(config, "rope_parameters", None)
    if params and "full_attention" in params:  # per-layer-type RoPE: Qwen2/Llama have one kind of layer
        params = params["full_attention"]
    return dict(params or {"rope_type": "default", "rope_theta": getattr(config, "rope_theta", 10000.0)})


def check_exportable(model: nn.Module) -> None:
    """Raise a DecoderError naming value, reason and fix for what the KV-cache graph cannot express.

    The model's attention implementation is not checked here: the graph re-implements attention (eager
    semantics); validate_decoder checks that the reference it compares against runs a CPU one.
    """
    config = model.config
    shape = decoder_shape(config)
    act = getattr(config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise DecoderError(f"hidden_act={act!r}: the decoder graph implements SwiGLU with SiLU only. Fix: use a "
                           f"Qwen2/Llama checkpoint with hidden_act='silu'.")
    rope_type = _rope_parameters(config).get("rope_type", "default")
    if rope_type not in STATIC_ROPE:
        raise DecoderError(f"rope_parameters.rope_type={rope_type!r}: its frequencies change with the sequence "
                           f"length, which one static graph cannot follow; supported: {list(STATIC_ROPE)}. Fix: "
                           f"use a checkpoint with one of those, or set rope_type to 'default' if the model was "
                           f"not trained with long-context scaling.")
    window = getattr(config, "sliding_window", None)
    sliding = [i for i, kind in enumerate(getattr(config, "layer_types", None) or []) if kind == "sliding_attention"]
    limit = getattr(config, "max_position_embeddings", None)
    if sliding and window is not None and (limit is None or window < limit):
        raise DecoderError(f"sliding_window={window} is used by layers {sliding[:6]}{'...' if len(sliding) > 6 else ''}"
                           f" (use_sliding_window={getattr(config, 'use_sliding_window', None)}); the KV-cache "
                           f"graph implements full causal attention only. Fix: set config.use_sliding_window=False "
                           f"if the model was trained without it (DeepSeek-R1-Distill-Qwen ships it off).")
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        raise DecoderError(f"pretraining_tp={config.pretraining_tp}: split Linears are not exported. Fix: set "
                           f"config.pretraining_tp=1 (the weights are the same).")
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        raise DecoderError(f"model dtype {dtype}: the graph contract is float32 (past/present and logits). Fix: "
                           f"export model.float(); half precision is the device engine's choice, not the graph's.")
    for i, layer in enumerate(model.model.layers):
        kv = layer.self_attn.k_proj.out_features // shape.head_dim
        if kv != shape.num_kv_heads or layer.self_attn.q_proj.out_features % (kv * shape.head_dim):
            raise DecoderError(f"layer {i} has {kv} KV heads (config: {shape.num_kv_heads}) or a query width not "
                               f"a multiple of its KV width; the contract's past/present tensors are uniform over "
                               f"layers. Fix: prune KV heads uniformly (query heads may vary per layer).")


def rope_inverse_frequencies(model: nn.Module) -> tuple[torch.Tensor, float]:
    """``(inv_freq, attention_scaling)`` from transformers' own RoPE init, as the model's rotary embedding
    picks it (the 'default' one lives on the rotary class, the others in ROPE_INIT_FUNCTIONS)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope_type = _rope_parameters(model.config).get("rope_type", "default")
    rotary = getattr(model.model, "rotary_emb", None)
    init = ROPE_INIT_FUNCTIONS.get(rope_type)
    if rope_type == "default":
        init = getattr(rotary, "compute_default_rope_parameters", None)
    if init is None:
        raise DecoderError(f"rope_type={rope_type!r}: this transformers version has no init function for it. "
                           f"Fix: use a model whose rope_type is one of {list(STATIC_ROPE)}.")
    inv_freq, scaling = init(model.config)
    return inv_freq.float(), float(scaling)
