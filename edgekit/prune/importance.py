"""What matters: importance scores for layers, attention heads and FFN neurons.

Data-driven scores run the model on task batches: each batch is a dict of model inputs plus
``labels`` (what the task adapter's ``collate`` returns). Batches are iterated once per score,
so pass a list, not a generator. Scores are indexed by the model's own layer and head numbers.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.arch import get_module
from ..models.encoder import PruneError, arch_for, encoder_layers, head_dim, layer_shapes
from .config import PruneConfig

Batches = Sequence[dict[str, Tensor]]


@dataclass(frozen=True)
class PruneScores:
    """Higher = more important. ``head`` and ``ffn`` hold one 1-D tensor per layer."""
    layer: Tensor | None = None
    head: list[Tensor] | None = None
    ffn: list[Tensor] | None = None


@contextmanager
def input_gates(head_modules: Sequence[nn.Module], head_gates: Sequence[Tensor] | None, head_width: int,
                unit_modules: Sequence[nn.Module], unit_gates: Sequence[Tensor] | None) -> Iterator[None]:
    """Scale the inputs of ``head_modules[i]`` per block of ``head_width`` columns (one gate per
    attention head) and of ``unit_modules[i]`` per column (one gate per FFN neuron / SwiGLU channel).

    Forward pre-hooks on the projections that read heads and neurons, so any architecture whose
    modules can be listed uses it (encoders here, decoders in edgekit.prune.decoder_importance); a zero
    gate masks that unit, and gradients reach the gates for Taylor importance.
    """
    def head_hook(gate: Tensor):
        return lambda module, args: ((args[0].unflatten(-1, (-1, head_width)) * gate[:, None]).flatten(-2),
                                     *args[1:])

    def unit_hook(gate: Tensor):
        return lambda module, args: (args[0] * gate, *args[1:])

    handles = []
    for modules, gate_list, hook in ((head_modules, head_gates, head_hook), (unit_modules, unit_gates, unit_hook)):
        if gate_list is not None:
            handles += [m.register_forward_pre_hook(hook(g)) for m, g in zip(modules, gate_list)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def gates(model: nn.Module, head_gates: Sequence[Tensor] | None = None,
          ffn_gates: Sequence[Tensor] | None = None):
    """``input_gates`` on an encoder: heads at the attention output projection, neurons at the
    FFN output linear, per layer."""
    spec, layers = arch_for(model), encoder_layers(model)
    return input_gates([get_module(layer, spec.out) for layer in layers], head_gates, head_dim(model),
                       [get_module(layer, spec.ffn_out) for layer in layers], ffn_gates)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode for the block; its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _normalize_per_layer(scores: list[Tensor]) -> list[Tensor]:
    # Michel et al. 2019 (and HF bertology) divide each layer's scores by their L2 norm, which
    # makes heads of different layers comparable for a global ranking.
    return [s / s.norm().clamp_min(1e-20) for s in scores]


def layer_importance(model: nn.Module, batches: Batches) -> Tensor:
    """1 - cosine(input, output) of each layer, averaged over non-pad tokens: a layer that barely
    changes its input matters little."""
    n = len(encoder_layers(model))
    total, tokens = torch.zeros(n, dtype=torch.float64), 0
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            hidden = model(**batch, output_hidden_states=True).hidden_states
            if len(hidden) != n + 1:
                raise PruneError(f"expected {n + 1} hidden states (embeddings + {n} layers), got {len(hidden)}.")
            mask = batch.get("attention_mask", torch.ones(hidden[0].shape[:2])).bool()
            for i in range(n):
                cos = F.cosine_similarity(hidden[i].double(), hidden[i + 1].double(), dim=-1)
                total[i] += (1 - cos)[mask].sum()
            tokens += int(mask.sum())
    if tokens == 0:
        raise PruneError("layer importance got no tokens. Fix: pass at least one non-empty batch.")
    return (total / tokens).float()


def _gate_gradients(model: nn.Module, batches: Batches, heads: bool, ffn: bool):
    """Per batch |d loss / d gate| at gates = 1, summed over batches (bertology's accumulation).

    For an FFN neuron that is |sum over tokens of activation * gradient|: the first-order
    Taylor estimate of the loss change when the neuron is removed (Molchanov et al. 2019).
    """
    param = next(model.parameters())
    opts = dict(dtype=param.dtype, device=param.device, requires_grad=True)
    shapes = layer_shapes(model)
    head_g = [torch.ones(s.heads, **opts) for s in shapes] if heads else None
    ffn_g = [torch.ones(s.ffn, **opts) for s in shapes] if ffn else None
    leaves = (head_g or []) + (ffn_g or [])
    totals = [torch.zeros_like(g, requires_grad=False) for g in leaves]
    seen = 0
    with eval_mode(model), gates(model, head_g, ffn_g):
        for batch in batches:
            if "labels" not in batch:
                raise PruneError("gradient importance needs a loss: every batch must hold 'labels'. "
                                   "Fix: collate the batches with their labels.")
            loss = model(**batch).loss
            for total, grad in zip(totals, torch.autograd.grad(loss, leaves)):
                total += grad.abs()
            seen += 1
    if seen == 0:
        raise PruneError("gradient importance got no batches. Fix: pass at least one batch.")
    n = len(shapes)
    return (totals[:n] if heads else None), (totals[-n:] if ffn else None)


def head_importance_gradient(model: nn.Module, batches: Batches) -> list[Tensor]:
    """Michel et al. 2019: |d loss / d head gate| summed over batches, normalized per layer."""
    return _normalize_per_layer(_gate_gradients(model, batches, heads=True, ffn=False)[0])


def head_importance_variance(model: nn.Module) -> list[Tensor]:
    """Variance of each head's Q/K/V rows and O columns (no data needed), normalized per layer."""
    spec, dh = arch_for(model), head_dim(model)
    scores = []
    with torch.no_grad():
        for layer in encoder_layers(model):
            q, k, v, o = (get_module(layer, p).weight for p in (spec.query, spec.key, spec.value, spec.out))
            per_head = [torch.cat([w[h * dh:(h + 1) * dh].flatten() for w in (q, k, v)]
                                  + [o[:, h * dh:(h + 1) * dh].flatten()]).var()
                        for h in range(q.shape[0] // dh)]
            scores.append(torch.stack(per_head).float())
    return _normalize_per_layer(scores)


def ffn_importance_taylor(model: nn.Module, batches: Batches) -> list[Tensor]:
    """|activation x gradient| of each FFN neuron, summed over the data (see _gate_gradients)."""
    return _gate_gradients(model, batches, heads=False, ffn=True)[1]


def ffn_importance_magnitude(model: nn.Module) -> list[Tensor]:
    """L1 norm of each neuron's input row plus its output column (no data needed)."""
    spec = arch_for(model)
    with torch.no_grad():
        return [(get_module(layer, spec.ffn_in).weight.abs().sum(1)
                 + get_module(layer, spec.ffn_out).weight.abs().sum(0)).float()
                for layer in encoder_layers(model)]


def compute_scores(model: nn.Module, cfg: PruneConfig, batches: Batches | None = None) -> PruneScores:
    """The scores ``cfg`` needs and nothing more; data-driven ones need ``batches``."""
    def need_data(what: str, alternative: str) -> Batches:
        if batches is None:
            raise PruneError(f"{what} needs task batches (model inputs + labels). Fix: pass batches, "
                               f"or use {alternative}, which needs none.")
        return batches

    layer = head = ffn = None
    if cfg.layers_to_keep is not None and cfg.layer_strategy == "importance":
        layer = layer_importance(model, need_data('layer_strategy="importance"', 'layer_strategy="uniform"'))
    if cfg.heads_to_keep is not None:
        head = (head_importance_gradient(model, need_data('head_score="gradient"', 'head_score="variance"'))
                if cfg.head_score == "gradient" else head_importance_variance(model))
    if cfg.ffn_keep_ratio is not None:
        ffn = (ffn_importance_taylor(model, need_data('ffn_score="taylor"', 'ffn_score="magnitude"'))
               if cfg.ffn_score == "taylor" else ffn_importance_magnitude(model))
    return PruneScores(layer=layer, head=head, ffn=ffn)
