"""ONNX Runtime contrib ops (domain ``com.microsoft``) for the CPU profiles' decoder graph.

A decode step on a CPU is memory-bound in its MatMuls and per-node-bound in everything else: the
standard opset-13 graph spends about 29 nodes a layer on RMSNorm, RoPE, the KV concat, masking and
softmax. ONNX Runtime's CPU provider has fused kernels for all of them; a graph written with them
runs about 14 nodes a layer. They exist in ONNX Runtime only (TensorRT cannot parse them), so only
profiles that ask for them get this graph (``decoder_ops = "ort-contrib"``: the packaged CPU-only
profiles); the Jetson profiles keep the standard-domain graph.

Each op is a ``torch.autograd.Function`` whose ``forward`` computes the same result in torch (so the
wrapper module still runs, and the tracer sees the right shapes) and whose ``symbolic`` emits the
contrib op. Semantics, per ONNX Runtime's contrib operator spec (ContribOperators.md):

- ``SkipSimplifiedLayerNormalization(input, skip, gamma)``: outputs RMSNorm(input + skip) * gamma
  and (output 3) the sum input + skip, the residual stream.
- ``RotaryEmbedding(input, position_ids, cos_cache, sin_cache)``: input (B, S, N * D), non-interleaved
  (transformers' rotate_half) rotation at each row's own position (left padding stays exact).
- ``GroupQueryAttention(query, key, value, past_key, past_value, seqlens_k, total_sequence_length,
  -, -, -, attention_bias)``: causal attention of S new queries over past + new keys, grouped KV heads
  read in place; present = concat(past, new) in (B, H_kv, T, D), the contract's layout. With
  ``seqlens_k = T - 1`` for every row the causal window is the contract's (query i sees keys up to
  T - S + i) and the padding mask goes in as an additive bias. Plain fp32 layers pass packed QKV as
  the query with ``do_rotary=1`` and cos / sin tables (inputs 7-8): RoPE then happens inside, at each
  key's cache index (a left-padded row's positions all shift by its padding; attention is unchanged).
"""

from __future__ import annotations

import torch

CONTRIB_DOMAIN = "com.microsoft"
CONTRIB_OPS = frozenset((CONTRIB_DOMAIN, op) for op in
                        ("GroupQueryAttention", "RotaryEmbedding", "SkipSimplifiedLayerNormalization"))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class SkipRMSNorm(torch.autograd.Function):
    """(RMSNorm(x + skip) * weight, x + skip) as one SkipSimplifiedLayerNormalization."""

    @staticmethod
    def forward(ctx, x, skip, weight, eps):
        total = x + skip
        return rms_norm(total, weight, eps), total

    @staticmethod
    def symbolic(g, x, skip, weight, eps):
        out = g.op(f"{CONTRIB_DOMAIN}::SkipSimplifiedLayerNormalization", x, skip, weight, epsilon_f=eps, outputs=4)
        for i in (0, 3):  # the tracer cannot infer a contrib op's outputs: both are x's type and shape
            out[i].setType(x.type())
        return out[0], out[3]


def _rope_torch(x, position_ids, cos, sin, num_heads):
    """Non-interleaved RoPE of (B, S, N * D) in torch (what RotaryEmbedding computes)."""
    b, s, width = x.shape
    d = width // num_heads
    c, sn = cos[position_ids].unsqueeze(2), sin[position_ids].unsqueeze(2)    # (B, S, 1, D/2)
    x = x.view(b, s, num_heads, d)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat((x1 * c - x2 * sn, x2 * c + x1 * sn), -1).reshape(b, s, width)


class Rotary(torch.autograd.Function):
    """RoPE on (B, S, N * D) at ``position_ids`` (B, S) int64, from (P, D / 2) cos / sin tables."""

    @staticmethod
    def forward(ctx, x, position_ids, cos, sin, num_heads):
        return _rope_torch(x, position_ids, cos, sin, num_heads)

    @staticmethod
    def symbolic(g, x, position_ids, cos, sin, num_heads):
        out = g.op(f"{CONTRIB_DOMAIN}::RotaryEmbedding", x, position_ids, cos, sin, num_heads_i=num_heads,
                   interleaved_i=0)
        out.setType(x.type())
        return out


class GroupedAttention(torch.autograd.Function):
    """Causal GQA of new (B, S, H * D) queries over past + new keys / values; returns the attention
    output (B, S, H * D) and present keys / values (B, H_kv, T, D)."""

    @staticmethod
    def forward(ctx, q, k, v, past_key, past_value, seqlens_k, total, bias, num_heads, kv_heads, scale):
        b, s, _ = q.shape
        d = past_key.shape[-1]
        key = torch.cat((past_key, k.view(b, s, kv_heads, d).transpose(1, 2)), 2)
        value = torch.cat((past_value, v.view(b, s, kv_heads, d).transpose(1, 2)), 2)
        t = key.shape[2]
        group = num_heads // kv_heads
        qh = q.view(b, s, num_heads, d).transpose(1, 2)
        scores = torch.matmul(qh, key.repeat_interleave(group, 1).transpose(2, 3)) * scale + bias
        causal = torch.arange(t).unsqueeze(0) <= (torch.arange(s) + (t - s)).unsqueeze(1)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        out = torch.matmul(torch.softmax(scores, -1), value.repeat_interleave(group, 1))
        return out.transpose(1, 2).reshape(b, s, num_heads * d), key, value

    @staticmethod
    def symbolic(g, q, k, v, past_key, past_value, seqlens_k, total, bias, num_heads, kv_heads, scale):
        # The bias goes in 8th here; fix_gqa_inputs moves it to its slot (10) once the graph is written,
        # since the tracer has no way to emit the empty optional inputs in between.
        out = g.op(f"{CONTRIB_DOMAIN}::GroupQueryAttention", q, k, v, past_key, past_value, seqlens_k, total, bias,
                   num_heads_i=num_heads, kv_num_heads_i=kv_heads, scale_f=scale, do_rotary_i=0, outputs=3)
        return _typed(out, q, past_key)


class PackedAttention(torch.autograd.Function):
    """Packed QKV (B, S, (H + 2 H_kv) * D) with RoPE at ``position_ids`` inside the attention op."""

    @staticmethod
    def forward(ctx, qkv, past_key, past_value, seqlens_k, total, cos, sin, position_ids, bias, num_heads, kv_heads,
                scale):
        d = past_key.shape[-1]
        q, k, v = torch.split(qkv, [num_heads * d, kv_heads * d, kv_heads * d], -1)
        q = _rope_torch(q, position_ids, cos, sin, num_heads)
        k = _rope_torch(k, position_ids, cos, sin, kv_heads)
        return GroupedAttention.forward(ctx, q, k, v, past_key, past_value, seqlens_k, total, bias, num_heads,
                                        kv_heads, scale)

    @staticmethod
    def symbolic(g, qkv, past_key, past_value, seqlens_k, total, cos, sin, position_ids, bias, num_heads, kv_heads,
                 scale):
        out = g.op(f"{CONTRIB_DOMAIN}::GroupQueryAttention", qkv, past_key, past_value, seqlens_k, total, cos, sin,
                   bias, num_heads_i=num_heads, kv_num_heads_i=kv_heads, scale_f=scale, do_rotary_i=1,
                   rotary_interleaved_i=0, outputs=3)
        return _typed(out, None, past_key)


def _typed(out, query, past_key):
    """Declare GroupQueryAttention's output types for the tracer: the attention output is float32 of
    rank 3 (like the query), present keys / values are the past's type (rank 4, float32)."""
    if query is not None:
        out[0].setType(query.type())
    else:
        out[0].setType(past_key.type().with_sizes([None, None, None]))
    out[1].setType(past_key.type())
    out[2].setType(past_key.type())
    return out


def fix_gqa_inputs(graph) -> int:
    """Put each GroupQueryAttention's traced inputs in their slots, empty names for the optional inputs
    the tracer cannot emit (packed QKV: key and value; no position_ids; unrotated: no tables), the
    attention bias last at index 10. Returns the number of nodes fixed."""
    fixed = 0
    for node in graph.graph.node:
        if node.op_type != "GroupQueryAttention" or node.domain != CONTRIB_DOMAIN:
            continue
        rotary = any(a.name == "do_rotary" and a.i == 1 for a in node.attribute)
        *head, bias = node.input
        del node.input[:]
        if rotary:   # (qkv, past_key, past_value, seqlens_k, total, cos, sin): packed QKV, no position_ids
            node.input.extend([head[0], "", "", *head[1:], "", bias])
        else:        # (q, k, v, past_key, past_value, seqlens_k, total): no rotary tables, no position_ids
            node.input.extend([*head, "", "", "", bias])
        fixed += 1
    return fixed


def rope_tables(inv_freq: torch.Tensor, positions: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, D / 2) cos and sin, transformers' attention scaling folded in."""
    freqs = torch.arange(positions, dtype=torch.float32).unsqueeze(1) * inv_freq.unsqueeze(0)
    return freqs.cos() * scaling, freqs.sin() * scaling



def contrib_ops_for(decoder_ops: str) -> frozenset[tuple[str, str]]:
    """The (domain, op) pairs a profile's ``decoder_ops`` lets a causal-LM graph use beyond ONNX."""
    return CONTRIB_OPS if decoder_ops == "ort-contrib" else frozenset()
