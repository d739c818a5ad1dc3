"""Importance scores for decoder pruning (edgekit.prune.decoder): blocks by angular distance,
query heads and SwiGLU channels by first-order Taylor (|gradient x gate| on the projection that
reads them) or by weight magnitude. Higher = more important.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.arch import get_module
from ..models.decoder import DecoderError, check_supported, decoder_layers, decoder_shape
from .config import DecoderPruneConfig
from .importance import eval_mode, input_gates

Batches = Sequence[dict[str, Tensor]]


@dataclass(frozen=True)
class DecoderScores:
    """Higher = more important. ``head``: per layer, one score per query head; ``channel``: per layer."""
    layer: Tensor | None = None
    head: list[Tensor] | None = None
    channel: list[Tensor] | None = None


def _inputs(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}


def layer_importance(model: nn.Module, batches: Batches) -> Tensor:
    """Angular distance arccos(cos(x_in, x_out)) / pi of each block, averaged over non-pad tokens.

    Gromov et al. 2024 score blocks of n layers on the last token; here each layer is a block and
    every real token counts. Hooks read each block's own input and output: ``output_hidden_states``
    would not do, as its last entry is taken after the final norm.
    """
    layers = decoder_layers(model)
    distances: dict[int, Tensor] = {}  # per layer, per token, for the batch being run

    def record(i: int):
        def hook(module, args, kwargs, out):
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = out[0] if isinstance(out, tuple) else out
            cos = F.cosine_similarity(x_in.double(), x_out.double(), dim=-1).clamp(-1.0, 1.0)
            distances[i] = (torch.arccos(cos) / math.pi).cpu()
        return hook

    handles = [layer.register_forward_hook(record(i), with_kwargs=True) for i, layer in enumerate(layers)]
    total, tokens = torch.zeros(len(layers), dtype=torch.float64), 0
    try:
        with eval_mode(model), torch.no_grad():
            for batch in batches:
                model(**_inputs(batch), use_cache=False)
                mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool().cpu()
                total += torch.stack([distances[i][mask].sum() for i in range(len(layers))])
                tokens += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
    if tokens == 0:
        raise DecoderError("[decoder prune] angular layer importance got no tokens. Fix: pass at least one batch "
                           "with a non-pad token, or use layer_importance='uniform'.")
    return (total / tokens).float()


def unit_rows(units, width: int) -> Tensor:
    """Row indices of ``units`` blocks of ``width`` (heads of head_dim rows)."""
    return torch.cat([torch.arange(u * width, (u + 1) * width) for u in units])


def _gates(model: nn.Module, head_gates: Sequence[Tensor] | None, channel_gates: Sequence[Tensor] | None):
    """Scale each query head's output (o_proj input) and each SwiGLU channel (down_proj input)."""
    spec, layers = check_supported(model), decoder_layers(model)
    return input_gates([get_module(layer, spec.out) for layer in layers], head_gates, decoder_shape(model).head_dim,
                       [get_module(layer, spec.ffn_out) for layer in layers], channel_gates)


def _taylor(model: nn.Module, batches: Batches, heads: bool, channels: bool):
    """Per batch |d loss / d gate| at gates = 1, summed over batches: for a gate on a unit that is
    |sum over tokens of gradient x activation| of the unit's outputs, the first-order Taylor
    estimate of the loss change when it is removed (Molchanov et al. 2019)."""
    shape, param = decoder_shape(model), next(model.parameters())
    opts = {"dtype": param.dtype, "device": param.device, "requires_grad": True}
    head_g = [torch.ones(shape.num_heads, **opts) for _ in range(shape.num_layers)] if heads else None
    chan_g = [torch.ones(shape.intermediate_size, **opts) for _ in range(shape.num_layers)] if channels else None
    leaves = (head_g or []) + (chan_g or [])
    totals = [torch.zeros(g.shape, dtype=torch.float64) for g in leaves]
    seen = 0
    with eval_mode(model), _gates(model, head_g, chan_g):
        for batch in batches:
            if "labels" not in batch:
                raise DecoderError("[decoder prune] taylor importance needs a loss: every batch must hold 'labels' "
                                   "(input_ids with pads = -100). Fix: add labels, or use 'magnitude'.")
            loss = model(**_inputs(batch), labels=batch["labels"], use_cache=False).loss
            for total, grad in zip(totals, torch.autograd.grad(loss, leaves)):
                total += grad.detach().abs().double().cpu()
            seen += 1
    if seen == 0:
        raise DecoderError("[decoder prune] taylor importance got no batches. Fix: pass at least one batch, or "
                           "use 'magnitude', which needs none.")
    n = shape.num_layers
    totals = [t.float() for t in totals]
    return (totals[:n] if heads else None), (totals[-n:] if channels else None)


def head_importance_taylor(model: nn.Module, batches: Batches) -> list[Tensor]:
    """Per layer, per query head: |grad x activation| at o_proj's input, via a gate per head."""
    return _taylor(model, batches, heads=True, channels=False)[0]


def head_importance_magnitude(model: nn.Module) -> list[Tensor]:
    """Per layer, per query head: ||W_q rows|| * ||W_o columns||, the weights the head owns (K/V are
    shared by its group). No data needed."""
    spec, dh, scores = check_supported(model), decoder_shape(model).head_dim, []
    with torch.no_grad():
        for layer in decoder_layers(model):
            q = get_module(layer, spec.query).weight.float().unflatten(0, (-1, dh))     # heads, dh, hidden
            o = get_module(layer, spec.out).weight.float().unflatten(1, (-1, dh))       # hidden, heads, dh
            scores.append(q.norm(dim=(1, 2)) * o.norm(dim=(0, 2)))
    return scores


def group_importance(head_scores: Sequence[Tensor], num_kv_heads: int) -> list[Tensor]:
    """Per layer, per KV group: the sum of its query heads' scores (query head h is in group h // size)."""
    return [s.reshape(num_kv_heads, -1).sum(1) for s in head_scores]


def channel_importance_taylor(model: nn.Module, batches: Batches) -> list[Tensor]:
    """Per layer, per SwiGLU channel: |grad x activation| at down_proj's input, via a gate per channel."""
    return _taylor(model, batches, heads=False, channels=True)[1]


def channel_importance_magnitude(model: nn.Module) -> list[Tensor]:
    """Per layer, per SwiGLU channel: ||gate row|| * ||up row|| * ||down column||; the channel's
    output is bilinear in gate and up, linear in down, so its scale is the product. No data needed."""
    spec = check_supported(model)
    with torch.no_grad():
        return [math.prod(get_module(layer, path).weight.float().norm(dim=1) for path in spec.ffn_inputs)
                * get_module(layer, spec.ffn_out).weight.float().norm(dim=0) for layer in decoder_layers(model)]


def compute_scores(model: nn.Module, cfg: DecoderPruneConfig, batches: Batches | None = None) -> DecoderScores:
    """The scores ``cfg`` needs and nothing more; angular and taylor need ``batches``."""
    def need_data(what: str, alternative: str) -> Batches:
        if batches is None:
            raise DecoderError(f"[decoder prune] {what} needs batches (input_ids, attention_mask, labels). "
                               f"Fix: pass batches, or use {alternative}, which needs none.")
        return batches

    layer = head = channel = None
    if cfg.keep_layers is not None and cfg.layer_importance == "angular":
        layer = layer_importance(model, need_data("layer_importance='angular'", "layer_importance='uniform'"))
    want_heads = cfg.kv_groups_keep is not None or cfg.heads_per_group_keep is not None
    taylor_heads = want_heads and cfg.head_importance == "taylor"
    taylor_channels = cfg.intermediate_keep is not None and cfg.channel_importance == "taylor"
    if taylor_heads:
        need_data("head_importance='taylor'", "head_importance='magnitude'")
    if taylor_channels:
        need_data("channel_importance='taylor'", "channel_importance='magnitude'")
    if taylor_heads or taylor_channels:  # one backward pass serves both
        head, channel = _taylor(model, batches, taylor_heads, taylor_channels)
    if want_heads and not taylor_heads:
        head = head_importance_magnitude(model)
    if cfg.intermediate_keep is not None and not taylor_channels:
        channel = channel_importance_magnitude(model)
    return DecoderScores(layer=layer, head=head, channel=channel)


