"""How much: the plan a prune config (edgekit.prune.config) turns into, and its figures (the dry run).

A plan names what is kept, in the numbering of the model it was made for: the kept layers,
and per kept layer the kept heads and FFN neurons. Nothing here touches a weight.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..models.arch import get_module
from ..models.encoder import PruneError, arch_for, encoder_layers, head_dim, layer_shapes
from .config import PruneConfig, bad_value
from .importance import PruneScores


@dataclass(frozen=True)
class LayerFigures:
    layer: int
    kept: bool
    heads: tuple[int, int]     # (before, after)
    ffn: tuple[int, int]
    params: tuple[int, int]
    flops: tuple[int, int]     # at the given sequence length, batch 1


@dataclass(frozen=True)
class PrunePlan:
    num_layers: int                         # layers of the model the plan was made for
    kept_layers: tuple[int, ...]
    heads: tuple[tuple[int, ...], ...]      # per kept layer: kept head indices
    ffn: tuple[tuple[int, ...], ...]        # per kept layer: kept FFN neuron indices

    def __post_init__(self):
        k = self.kept_layers
        if not k or list(k) != sorted(set(k)) or k[0] < 0 or k[-1] >= self.num_layers:
            raise PruneError(f"plan keeps layers {k} of {self.num_layers}: need at least one, ascending, unique, "
                             f"in range. Fix: build plans with make_plan.")
        if not len(self.heads) == len(self.ffn) == len(k):
            raise PruneError(f"plan has {len(k)} kept layers but {len(self.heads)} head and {len(self.ffn)} FFN "
                             f"entries. Fix: give one of each per kept layer.")
        for layer, heads, ffn in zip(k, self.heads, self.ffn):
            for what, idx in (("heads", heads), ("FFN neurons", ffn)):
                if not idx or list(idx) != sorted(set(idx)) or idx[0] < 0:
                    raise PruneError(f"plan layer {layer} keeps {what} {idx}: need at least one, ascending, "
                                     f"unique. Fix: build plans with make_plan.")

    def layer_figures(self, model: nn.Module, seq_len: int = 128) -> list[LayerFigures]:
        """Per layer of ``model``: heads, FFN width, parameters and FLOPs before and after the plan."""
        spec, dh, shapes = arch_for(model), head_dim(model), layer_shapes(model)
        if len(shapes) != self.num_layers:
            raise PruneError(f"the plan is for {self.num_layers} layers, the model has {len(shapes)}. "
                             f"Fix: make the plan for this model.")
        hidden = getattr(model.config, spec.hidden_key)
        kept = dict(zip(self.kept_layers, zip(self.heads, self.ffn)))
        rows = []
        for i, (layer, shape) in enumerate(zip(encoder_layers(model), shapes)):
            before = sum(p.numel() for p in layer.parameters())
            heads, ffn = (len(kept[i][0]), len(kept[i][1])) if i in kept else (0, 0)
            if heads > shape.heads or ffn > shape.ffn or (i in kept and (kept[i][0][-1] >= shape.heads
                                                                         or kept[i][1][-1] >= shape.ffn)):
                raise PruneError(f"plan layer {i} keeps indices beyond its {shape.heads} heads / {shape.ffn} FFN "
                                 f"neurons. Fix: make the plan for this model.")
            after = (before - (shape.heads - heads) * _head_params(layer, spec, dh)
                     - (shape.ffn - ffn) * _neuron_params(layer, spec)) if i in kept else 0
            rows.append(LayerFigures(
                layer=i, kept=i in kept, heads=(shape.heads, heads), ffn=(shape.ffn, ffn), params=(before, after),
                flops=(layer_flops(hidden, shape.heads * dh, shape.ffn, seq_len),
                       layer_flops(hidden, heads * dh, ffn, seq_len) if i in kept else 0)))
        return rows

    def param_counts(self, model: nn.Module) -> dict[str, tuple[int, int]]:
        """(before, after) parameter counts: total, non-embedding, and encoder layers only."""
        rows = self.layer_figures(model)
        removed = sum(r.params[0] - r.params[1] for r in rows)
        total = sum(p.numel() for p in model.parameters())
        embedding = sum(p.numel() for p in get_module(model, arch_for(model).embeddings).parameters())
        return {"total": (total, total - removed),
                "non_embedding": (total - embedding, total - embedding - removed),
                "layers": (sum(r.params[0] for r in rows), sum(r.params[1] for r in rows))}


def _head_params(layer: nn.Module, spec, dh: int) -> int:
    # dh rows (weights + bias) of each of Q, K, V, and dh input columns of O
    rows = sum(dh * (lin.in_features + (lin.bias is not None))
               for lin in (get_module(layer, p) for p in (spec.query, spec.key, spec.value)))
    return rows + dh * get_module(layer, spec.out).out_features


def _neuron_params(layer: nn.Module, spec) -> int:
    ffn_in = get_module(layer, spec.ffn_in)
    return ffn_in.in_features + (ffn_in.bias is not None) + get_module(layer, spec.ffn_out).out_features


def layer_flops(hidden: int, attn_width: int, ffn: int, seq_len: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one layer for one sequence; softmax, norms and biases
    are left out (under 1% at these sizes)."""
    projections = 4 * 2 * seq_len * hidden * attn_width        # Q, K, V, O
    attention = 2 * 2 * seq_len * seq_len * attn_width          # Q K^T and weights x V
    return projections + attention + 2 * 2 * seq_len * hidden * ffn


def uniform_layers(n: int, k: int) -> tuple[int, ...]:
    """``k`` evenly spaced layers of ``n``, the first and the last included (round(i*(n-1)/(k-1))).

    Why both ends: the first layer reads the embeddings and the classifier was trained on the
    last layer's output. It is DistilBERT's rule: its 6-layer student took teacher layers
    [0, 2, 4, 7, 9, 11] of 12 (HF distillation/scripts/extract_distilbert.py), which this gives.
    6 -> 3 keeps [0, 3, 5]; k == 1 keeps the last layer.
    """
    if k == 1:
        return (n - 1,)
    return tuple((2 * i * (n - 1) + (k - 1)) // (2 * (k - 1)) for i in range(k))


def _top(scores, k: int) -> tuple[int, ...]:
    order = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))   # ties: lower index
    return tuple(sorted(order[:k]))


def _check_scores(name: str, scores, sizes: list[int], fix: str) -> None:
    if scores is None:
        raise PruneError(f"the plan needs {name} scores and none were given. Fix: {fix}")
    if [len(s) for s in scores] != sizes:
        raise PruneError(f"{name} scores have sizes {[len(s) for s in scores]}, the model has {sizes}. "
                         f"Fix: compute the scores on this model.")


def make_plan(model: nn.Module, cfg: PruneConfig, scores: PruneScores) -> PrunePlan:
    """Turn a config and importance scores into what to keep (see compute_scores)."""
    cfg.require_something()
    shapes = layer_shapes(model)
    n, fix = len(shapes), "compute them with edgekit.prune.compute_scores(model, cfg, batches)."
    if cfg.layers_to_keep is None:
        layers = tuple(range(n))
    elif cfg.layers_to_keep > n:
        bad_value("layers_to_keep", cfg.layers_to_keep, f"the model has {n} layers; keep at most {n}.")
    elif cfg.layer_strategy == "uniform":
        layers = uniform_layers(n, cfg.layers_to_keep)
    else:
        _check_scores("layer", None if scores.layer is None else [scores.layer], [n], fix)
        layers = _top(scores.layer, cfg.layers_to_keep)

    heads_in = [shapes[i].heads for i in layers]
    if cfg.heads_to_keep is None:
        heads = [tuple(range(h)) for h in heads_in]
    elif cfg.heads_to_keep > min(heads_in):
        bad_value("heads_to_keep", cfg.heads_to_keep,
                  f"kept layers have as few as {min(heads_in)} heads; keep at most {min(heads_in)}.")
    else:
        _check_scores("head", scores.head, [s.heads for s in shapes], fix)
        if cfg.head_scope == "per-layer":
            heads = [_top(scores.head[i], cfg.heads_to_keep) for i in layers]
        else:
            heads = _global_heads([scores.head[i] for i in layers], cfg.heads_to_keep * len(layers))

    if cfg.ffn_keep_ratio is None:
        ffn = [tuple(range(shapes[i].ffn)) for i in layers]
    else:
        _check_scores("FFN", scores.ffn, [s.ffn for s in shapes], fix)
        ffn = [_top(scores.ffn[i], max(1, round(cfg.ffn_keep_ratio * shapes[i].ffn))) for i in layers]
    return PrunePlan(num_layers=n, kept_layers=tuple(layers), heads=tuple(heads), ffn=tuple(ffn))


def _global_heads(scores, total: int) -> list[tuple[int, ...]]:
    # Rank all heads together (scores are normalized per layer), but every layer keeps its best
    # head: a layer with no heads left would need its attention block removed, not sliced.
    keep = [{_top(s, 1)[0]} for s in scores]
    ranked = sorted(((-float(v), li, h) for li, s in enumerate(scores) for h, v in enumerate(s)))
    for _, li, h in ranked:
        if sum(map(len, keep)) >= total:
            break
        keep[li].add(h)
    return [tuple(sorted(k)) for k in keep]


def format_plan(plan: PrunePlan, model: nn.Module, seq_len: int = 128) -> str:
    """The dry run: one row per layer, then totals, as a readable table."""
    rows = plan.layer_figures(model, seq_len)
    counts = plan.param_counts(model)
    arrow = lambda pair, fmt="{:,}": f"{fmt.format(pair[0])} -> {fmt.format(pair[1])}"  # noqa: E731
    mflops = lambda r: (r.flops[0] / 1e6, r.flops[1] / 1e6)  # noqa: E731
    header = ("layer", "kept", "heads", "ffn", "params", f"MFLOPs @{seq_len}")
    table = [header] + [(str(r.layer), "yes" if r.kept else "no", arrow(r.heads), arrow(r.ffn), arrow(r.params),
                         arrow(mflops(r), "{:,.1f}")) for r in rows]
    table.append(("total", f"{len(plan.kept_layers)}/{plan.num_layers}", arrow((sum(r.heads[0] for r in rows),
                  sum(r.heads[1] for r in rows))), arrow((sum(r.ffn[0] for r in rows), sum(r.ffn[1] for r in rows))),
                  arrow(counts["layers"]), arrow((sum(r.flops[0] for r in rows) / 1e6,
                                                  sum(r.flops[1] for r in rows) / 1e6), "{:,.1f}")))
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(-1, lines[1])
    (ne0, ne1), (t0, t1) = counts["non_embedding"], counts["total"]
    lines += [f"non-embedding params: {ne0:,} -> {ne1:,} (ratio {ne1 / ne0:.3f})",
              f"all params: {t0:,} -> {t1:,} (ratio {t1 / t0:.3f})",
              f"FLOPs: encoder-layer matmuls for one sequence of {seq_len} tokens; embeddings and the "
              f"classifier are left out."]
    return "\n".join(lines)
