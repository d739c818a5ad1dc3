"""The KV-cache decoder graph of docs/decoder.md: a plain-torch forward, its opset-13 export, and its
validation against the transformers model with its own cache.

``ExportableDecoder`` re-implements a Qwen2 / Llama forward so the traced graph is the contract's
(one graph for prefill and decode, ``present = concat(past, new)``) and stays lean for ORT CPU:
RoPE cos/sin and the mask are computed once per forward and shared by all layers, the attention
scale is folded into the query's cos/sin, and grouped-query attention folds the query groups into
the matmul's row dimension rather than copying every KV head ``num_heads / num_kv_heads`` times
(that copy would move the whole cache several times per layer per token). Every Linear is the
model's own submodule, so QAT's QuantLinear exports as QuantizeLinear/DequantizeLinear.
``ops="ort-contrib"`` writes the same contract with ONNX Runtime's fused kernels instead
(edgekit.decoder.ort_ops); what either graph refuses is edgekit.decoder.exportable.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..compiler.adapter import ExportIO
from ..models.decoder import DecoderError, decoder_shape
from .exportable import check_exportable, rope_inverse_frequencies
from .onnx_export import ExportError
from .ort_ops import (
    GroupedAttention,
    PackedAttention,
    Rotary,
    SkipRMSNorm,
    contrib_ops_for,
    fix_gqa_inputs,
    rope_tables,
)

OPSET = 13
MASK_FILL = -65504.0                       # float16's lowest: an fp16 engine cannot overflow to -inf
EXTERNAL_DATA_BYTES = 2_000_000_000        # weights over this go to model.onnx.data (protobuf stops at 2 GiB)
TOKEN_DTYPES = {"int64": torch.int64, "int32": torch.int32}
# "standard": ONNX domain only (any backend, TensorRT included); "ort-contrib": ONNX Runtime's fused
# com.microsoft kernels for RMSNorm, RoPE and grouped-query attention (ONNX Runtime CPU only).
DECODER_OPS = ("standard", "ort-contrib")
NP_TOKEN_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


# ----------------------------------------------------------------------------------- graph I/O

def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def decoder_io(model_or_config):
    """The contract's input/output names and dynamic axes (an ``edgekit.tasks.ExportIO``)."""


    layers = decoder_shape(model_or_config).num_layers
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "sequence"},
                                       "attention_mask": {0: "batch", 1: "total_sequence"},
                                       "position_ids": {0: "batch", 1: "sequence"},
                                       "logits": {0: "batch", 1: "sequence"}}
    axes.update({name: {0: "batch", 2: "past_sequence"} for name in past_names(layers)})
    axes.update({name: {0: "batch", 2: "total_sequence"} for name in present_names(layers)})
    return ExportIO(input_names=("input_ids", "attention_mask", "position_ids", *past_names(layers)),
                    output_names=("logits", *present_names(layers)), dynamic_axes=axes)


def empty_past(model_or_config, batch: int) -> dict[str, np.ndarray]:
    """Prefill's past feeds: float32 zeros of shape (batch, H_kv, 0, D) for every layer."""
    shape = decoder_shape(model_or_config)
    zeros = np.zeros((batch, shape.num_kv_heads, 0, shape.head_dim), dtype=np.float32)
    return {name: zeros for name in past_names(shape.num_layers)}


def position_ids_from_mask(attention_mask, sequence: int | None = None):
    """Per row ``cumsum(mask) - 1`` clipped at 0, for the last ``sequence`` columns (all by default).

    Takes and returns numpy arrays or torch tensors alike (left padding: a row's first real token is 0).
    """
    if isinstance(attention_mask, torch.Tensor):
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    else:
        pos = np.maximum(np.asarray(attention_mask).astype(np.int64).cumsum(-1) - 1, 0)
    return pos if sequence is None else pos[:, pos.shape[1] - sequence:]


# ---------------------------------------------------------------------------- the graph itself

def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # Pow -> ReduceMean -> Add -> Sqrt -> Div -> Mul: the pattern ORT fuses into one SimplifiedLayerNormalization
    return (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)) * norm.weight


def rotate_half_matrix(dim: int) -> torch.Tensor:
    """R with x @ R == cat(-x[half:], x[:half]) (transformers' rotate_half): one small MatMul per RoPE
    instead of Slice, Slice, Neg and Concat. Entries are 0 and +-1, so the product is exact."""
    half = dim // 2
    r = torch.zeros(dim, dim)
    r[torch.arange(half) + half, torch.arange(half)] = -1.0
    r[torch.arange(half), torch.arange(half) + half] = 1.0
    return r


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    return x * cos + torch.matmul(x, rotation) * sin


class _TiedLogits(torch.autograd.Function):
    """``hidden @ embedding.T`` exported as Gemm(transB=1) on the embedding initializer itself: the
    exporter writes Linear as MatMul on a constant-folded transposed copy, which would store the
    vocabulary matrix twice (hundreds of MB for a 150k vocabulary)."""

    @staticmethod
    def forward(ctx, hidden, weight, width):
        return nn.functional.linear(hidden, weight)

    @staticmethod
    def symbolic(g, hidden, weight, width):
        flat = g.op("Reshape", hidden, g.op("Constant", value_t=torch.tensor([-1, width])))
        logits = g.op("Gemm", flat, weight, transB_i=1)
        rows = g.op("Slice", g.op("Shape", hidden), g.op("Constant", value_t=torch.tensor([0])),
                    g.op("Constant", value_t=torch.tensor([2])), g.op("Constant", value_t=torch.tensor([0])))
        shape = g.op("Concat", rows, g.op("Constant", value_t=torch.tensor([-1])), axis_i=0)
        return g.op("Reshape", logits, shape)


def _plain(*modules: nn.Module) -> bool:
    """Plain fp32 nn.Linear (not a QAT QuantLinear): safe to fuse into one MatMul."""
    return all(type(m) is nn.Linear for m in modules)


def _fused(linears: Sequence[nn.Linear], scales: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One (sum of outs, in) weight and bias from several Linears reading the same input."""
    weight = torch.cat([m.weight.detach() * s for m, s in zip(linears, scales)], 0)
    if all(m.bias is None or not m.bias.detach().any() for m in linears):  # none, or all zero: no Add node
        return weight, None
    bias = torch.cat([(m.bias.detach() if m.bias is not None else torch.zeros(m.out_features)) * s
                      for m, s in zip(linears, scales)], 0)
    return weight, bias


class ExportableDecoder(nn.Module):
    """forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present), per docs/decoder.md.

    ``past`` is flat (k0, v0, k1, v1, ...), each (batch, H_kv, past_sequence, D); int32 or int64 ids.

    Fewer, larger ops (a decode step's cost on a CPU is as much per-node overhead as arithmetic):
    where Q, K and V are plain Linears they run as one MatMul (the attention scale folded into the
    query rows), RoPE rotates queries and keys together, and gate / up run as one MatMul. QAT
    (QuantLinear) layers keep one MatMul per Linear, each with its own activation quantizer.
    """

    def __init__(self, model: nn.Module, *, ops: str = "standard", max_positions: int | None = None):
        super().__init__()
        check_exportable(model)
        if ops not in DECODER_OPS:
            raise DecoderError(f"ops={ops!r} is not a decoder graph kind. Fix: use one of {list(DECODER_OPS)}.")
        self.model = model
        self.ops = ops
        self.shape = decoder_shape(model)
        inv_freq, self.attention_scaling = rope_inverse_frequencies(model)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("mask_fill", torch.tensor(MASK_FILL), persistent=False)
        self.query_scale = self.shape.head_dim ** -0.5
        contrib = ops == "ort-contrib"
        if contrib:  # RotaryEmbedding's tables: one row per position the bundle may reach
            positions = max_positions or getattr(model.config, "max_position_embeddings", None)
            if not positions or positions < 1:
                raise DecoderError(f"max_positions={positions!r}: the ort-contrib graph's RoPE tables need the "
                                   f"longest context. Fix: pass max_positions (the bundle's max_context).")
            cos, sin = rope_tables(inv_freq.float(), int(positions), self.attention_scaling)
            self.register_buffer("rope_cos", cos)
            self.register_buffer("rope_sin", sin)
        else:
            self.register_buffer("rotation", rotate_half_matrix(self.shape.head_dim))
        # the standard graph folds the attention scale into fused query rows; GroupQueryAttention takes it
        q_scale = 1.0 if contrib else self.query_scale
        # query heads per KV head, per layer (pruning may leave layers with different query heads)
        self.groups = [layer.self_attn.q_proj.out_features // (self.shape.num_kv_heads * self.shape.head_dim)
                       for layer in model.model.layers]
        # Fused weights are buffers, so the exporter writes them as initializers (external data applies).
        self.qkv: set[int] = set()
        self.gate_up: set[int] = set()
        for i, layer in enumerate(model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            if _plain(attn.q_proj, attn.k_proj, attn.v_proj):
                self._add_fused(f"qkv_{i}", (attn.q_proj, attn.k_proj, attn.v_proj), (q_scale, 1.0, 1.0))
                self.qkv.add(i)
            if _plain(mlp.gate_proj, mlp.up_proj):
                self._add_fused(f"gate_up_{i}", (mlp.gate_proj, mlp.up_proj), (1.0, 1.0))
                self.gate_up.add(i)

    def _add_fused(self, name: str, linears, scales) -> None:
        weight, bias = _fused(linears, scales)
        self.register_buffer(f"{name}_weight", weight)  # persistent: the exporter makes it an initializer
        self.register_buffer(f"{name}_bias", bias)

    def _fused_linear(self, name: str, x):
        return nn.functional.linear(x, getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias"))

    def _rope(self, position_ids: torch.Tensor):
        """cos and sin, (B, 1, S, D): keys as they are, queries with the attention scale folded in
        (for layers whose query projection is not fused with the scale already)."""
        freqs = position_ids.float().unsqueeze(-1) * self.inv_freq
        cos, sin = freqs.cos(), freqs.sin()
        cos, sin = torch.cat((cos, cos), -1).unsqueeze(1), torch.cat((sin, sin), -1).unsqueeze(1)
        if self.attention_scaling != 1.0:
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        return (cos * self.query_scale, sin * self.query_scale), (cos, sin)

    @staticmethod
    def _allowed(attention_mask: torch.Tensor, sequence: int) -> torch.Tensor:
        """(B, 1, S, T) bool: key j is a real token at or before query i's absolute index T - S + i."""
        total = attention_mask.shape[1]
        query = torch.arange(sequence) + (total - sequence)
        causal = torch.arange(total).unsqueeze(0) <= query.unsqueeze(1)
        return (causal.unsqueeze(0) & attention_mask.bool().unsqueeze(1)).unsqueeze(1)

    def _qkv(self, i: int, attn: nn.Module, x, rope_q, rope_k, batch, seq):
        """Rotated, scaled queries (B, H, S, D) and rotated keys and values (B, H_kv, S, D)."""
        kv, dim, heads = self.shape.num_kv_heads, self.shape.head_dim, self.groups[i] * self.shape.num_kv_heads
        if i in self.qkv:
            qkv = self._fused_linear(f"qkv_{i}", x).view(batch, seq, heads + 2 * kv, dim).transpose(1, 2)
            qk, v = torch.split(qkv, [heads + kv, kv], dim=1)
            q, k = torch.split(_rotate(qk, *rope_k, self.rotation), [heads, kv], dim=1)  # scale is in the weights
            return q, k, v
        q = _rotate(attn.q_proj(x).view(batch, seq, heads, dim).transpose(1, 2), *rope_q, self.rotation)
        k = _rotate(attn.k_proj(x).view(batch, seq, kv, dim).transpose(1, 2), *rope_k, self.rotation)
        return q, k, attn.v_proj(x).view(batch, seq, kv, dim).transpose(1, 2)

    def _attention(self, i: int, attn: nn.Module, x, rope_q, rope_k, allowed, past_key, past_value, batch, seq):
        kv, dim, group = self.shape.num_kv_heads, self.shape.head_dim, self.groups[i]
        q, k, v = self._qkv(i, attn, x, rope_q, rope_k, batch, seq)
        key, value = torch.cat((past_key, k), 2), torch.cat((past_value, v), 2)    # (B, H_kv, T, D)
        # GQA without repeating KV: query head h = kv_head * group + g, so the rows of KV head kv_head
        # are its group's (g, s) pairs; ``allowed`` comes tiled to (B, 1, group * S, T).
        scores = torch.matmul(q.reshape(batch, kv, group * seq, dim), key.transpose(2, 3))
        probs = torch.softmax(torch.where(allowed, scores, self.mask_fill), dim=-1)
        out = torch.matmul(probs, value).view(batch, kv * group, seq, dim).transpose(1, 2)
        return attn.o_proj(out.reshape(batch, seq, kv * group * dim)), key, value

    def _mlp(self, i: int, mlp: nn.Module, x):
        if i in self.gate_up:
            gate, up = torch.split(self._fused_linear(f"gate_up_{i}", x), mlp.gate_proj.out_features, dim=-1)
        else:
            gate, up = mlp.gate_proj(x), mlp.up_proj(x)
        return mlp.down_proj(gate * torch.sigmoid(gate) * up)

    def _forward_contrib(self, input_ids, attention_mask, position_ids, past):
        """The ort-contrib graph (edgekit.decoder.ort_ops): same contract, about 14 nodes a layer."""
        inner = self.model.model
        layers = inner.layers
        kv_heads, eps = self.shape.num_kv_heads, inner.norm.variance_epsilon
        hidden = inner.embed_tokens(input_ids)
        positions = position_ids.long()
        # every row spans all T columns (padding is masked by the bias), so seqlens_k = T - 1 for each row
        bias = ((1.0 - attention_mask.float()) * self.mask_fill)[:, None, None, :]      # (B, 1, 1, T)
        bias = bias + (input_ids * 0).float()[:, None, :, None]   # GQA wants (B, 1, S, T), not a broadcast
        seqlens_k = (attention_mask[:, -1] * 0).int() + (attention_mask.shape[1] - 1)
        total = seqlens_k[0] + 1
        x = _rms_norm(layers[0].input_layernorm, hidden)
        present = []
        for i, layer in enumerate(layers):
            attn = layer.self_attn
            heads = self.groups[i] * kv_heads
            if i in self.qkv:
                out, key, value = PackedAttention.apply(self._fused_linear(f"qkv_{i}", x), past[2 * i],
                                                        past[2 * i + 1], seqlens_k, total, self.rope_cos,
                                                        self.rope_sin, positions, bias, heads, kv_heads,
                                                        self.query_scale)
            else:
                q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
                q = Rotary.apply(q, positions, self.rope_cos, self.rope_sin, heads)
                k = Rotary.apply(k, positions, self.rope_cos, self.rope_sin, kv_heads)
                out, key, value = GroupedAttention.apply(q, k, v, past[2 * i], past[2 * i + 1], seqlens_k, total,
                                                         bias, heads, kv_heads, self.query_scale)
            x, hidden = SkipRMSNorm.apply(attn.o_proj(out), hidden, layer.post_attention_layernorm.weight, eps)
            following = layers[i + 1].input_layernorm if i + 1 < len(layers) else inner.norm
            x, hidden = SkipRMSNorm.apply(self._mlp(i, layer.mlp, x), hidden, following.weight, eps)
            present += [key, value]
        return (self._logits(x), *present)

    def _logits(self, hidden):
        head, inner = self.model.lm_head, self.model.model
        if type(head) is nn.Linear and head.bias is None and head.weight is inner.embed_tokens.weight:
            return _TiedLogits.apply(hidden, head.weight, head.in_features)
        return head(hidden)  # untied, or a QuantLinear lm_head: the module itself

    def forward(self, input_ids, attention_mask, position_ids, *past):
        inner = self.model.model
        if len(past) != 2 * len(inner.layers):
            raise DecoderError(f"got {len(past)} past tensors for {len(inner.layers)} layers. Fix: pass "
                               f"(key, value) per layer, flat, as empty_past() builds them.")
        if self.ops == "ort-contrib":
            return self._forward_contrib(input_ids, attention_mask, position_ids, past)
        batch, seq = input_ids.shape[0], input_ids.shape[1]   # read once: one Shape for all layers' Reshapes
        hidden = inner.embed_tokens(input_ids)
        rope_q, rope_k = self._rope(position_ids)
        allowed = self._allowed(attention_mask, seq)           # (B, 1, S, T)
        tiled: dict[int, torch.Tensor] = {}                    # per group size: (B, 1, group * S, T), built once
        present = []
        for i, layer in enumerate(inner.layers):
            group = self.groups[i]
            if group not in tiled:
                tiled[group] = allowed if group == 1 else torch.cat([allowed] * group, dim=2)  # rows (g, s)
            x = _rms_norm(layer.input_layernorm, hidden)
            out, key, value = self._attention(i, layer.self_attn, x, rope_q, rope_k, tiled[group],
                                              past[2 * i], past[2 * i + 1], batch, seq)
            hidden = hidden + out
            hidden = hidden + self._mlp(i, layer.mlp, _rms_norm(layer.post_attention_layernorm, hidden))
            present += [key, value]
        return (self._logits(_rms_norm(inner.norm, hidden)), *present)


def _example_inputs(shape, batch: int, dtype: torch.dtype, past: int = 3, seq: int = 2) -> tuple:
    """Sizes all distinct from each other so the tracer cannot tie one dynamic axis to another."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape.vocab_size, (batch, seq), generator=gen, dtype=torch.int64)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    mask[0, :1] = 0  # one left-padded row
    pos = position_ids_from_mask(mask, seq)
    kv = [torch.randn(batch, shape.num_kv_heads, past, shape.head_dim, generator=gen)
          for _ in range(2 * shape.num_layers)]
    return (ids.to(dtype), mask.to(dtype), pos.to(dtype), *kv)


def _declare_io_shapes(graph, shape) -> None:
    """Write the contract's shapes on every graph input and output (the exporter cannot infer the
    vocabulary dim through the tied-logits Gemm)."""
    kv = ["batch", shape.num_kv_heads, None, shape.head_dim]
    dims = {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "total_sequence"],
            "position_ids": ["batch", "sequence"], "logits": ["batch", "sequence", shape.vocab_size]}
    for value in [*graph.graph.input, *graph.graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            wanted = kv[:2] + ["past_sequence" if value.name.startswith("past") else "total_sequence"] + kv[3:]
        else:
            wanted = dims[value.name]
        target = value.type.tensor_type.shape
        del target.dim[:]
        for d in wanted:
            dim = target.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d


def _keep_contract_inputs(graph, names: Sequence[str]) -> None:
    """Re-declare contract inputs the tracer dropped as unused (the ort-contrib graph's GroupQueryAttention
    rotates at each row's cache index, so it reads no position_ids), in the contract's order."""
    import onnx

    present = {v.name: v for v in graph.graph.input}
    if all(n in present for n in names):
        return
    token = present["input_ids"].type.tensor_type.elem_type
    ordered = [present.get(n) or onnx.helper.make_tensor_value_info(n, token, None) for n in names]
    del graph.graph.input[:]
    graph.graph.input.extend(ordered)


def _initializer_bytes(model) -> int:
    import onnx

    total = 0
    for t in model.graph.initializer:
        total += onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize * math.prod(t.dims)
    return total


def check_decoder_file(path: str | Path, opset: int = OPSET, ops: str = "standard"):
    """Full onnx.checker (external data included), the opset asked for, and node domains as ``ops``
    allows: the standard domain only, or (``"ort-contrib"``) that plus com.microsoft."""
    import onnx


    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: onnx.checker (full_check) failed: {exc}. Fix: report this graph; the decoder "
                          f"exporter produced an invalid model.") from None
    model = onnx.load(str(path), load_external_data=False)
    opsets = {op.domain: op.version for op in model.opset_import}
    extra = contrib_ops_for(ops)
    odd = sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node
                  if n.domain not in ("", "ai.onnx") and (n.domain, n.op_type) not in extra})
    if odd or opsets.get("", opsets.get("ai.onnx")) != opset:
        raise ExportError(f"{path}: opsets {opsets}, non-standard ops {odd}; the {ops!r} decoder graph is opset "
                          f"{opset}, standard domain{' plus ' + str(sorted(op for _, op in extra)) if extra else ''} "
                          f"only. Fix: report this graph (an exporter or QAT symbolic changed).")
    return model


def export_decoder(model: nn.Module, path: str | Path, *, opset: int = OPSET, token_dtype: str = "int64",
                   example_batch: int = 2, external_data_threshold: int = EXTERNAL_DATA_BYTES,
                   ops: str = "standard", max_positions: int | None = None) -> Path:
    """Export the KV-cache graph of docs/decoder.md to ``path`` (legacy exporter; checked).

    ``token_dtype`` types input_ids / attention_mask / position_ids; weights over
    ``external_data_threshold`` bytes go to ``<name>.data`` beside ``path``. ``ops="ort-contrib"``
    writes the ONNX Runtime CPU graph (edgekit.decoder.ort_ops), whose RoPE tables cover
    ``max_positions`` positions (default: the config's max_position_embeddings).
    """
    import onnx

    if token_dtype not in TOKEN_DTYPES:
        raise DecoderError(f"token_dtype={token_dtype!r} is not a graph id type. Fix: use one of {list(TOKEN_DTYPES)}.")
    if opset < OPSET:
        raise DecoderError(f"opset={opset}: the decoder contract is opset {OPSET} (per-channel "
                           f"QuantizeLinear for QAT Linears needs it). Fix: use opset={OPSET}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    wrapper = ExportableDecoder(model, ops=ops, max_positions=max_positions).eval()
    io = decoder_io(model)
    args = _example_inputs(wrapper.shape, example_batch, TOKEN_DTYPES[token_dtype])
    try:
        # A temporary folder: a >2 GiB export makes torch write one file per tensor beside the graph.
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
            raw = Path(tmp) / "model.onnx"
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # TracerWarnings on Python ints taken from shapes
                torch.onnx.export(wrapper, args, str(raw), dynamo=False, opset_version=opset,
                                  input_names=list(io.input_names), output_names=list(io.output_names),
                                  dynamic_axes=io.dynamic_axes, do_constant_folding=True)
            graph = onnx.load(str(raw))
    finally:
        model.train(was_training)
    fix_gqa_inputs(graph)
    _keep_contract_inputs(graph, io.input_names)
    _declare_io_shapes(graph, wrapper.shape)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    if _initializer_bytes(graph) > external_data_threshold:
        onnx.save_model(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save_model(graph, str(path))
    check_decoder_file(path, opset, ops)
    return path
