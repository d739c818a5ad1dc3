"""Structured pruning of Qwen2 / Llama decoders that cuts tensors and stays a plain transformers model.

    scores = compute_scores(model, cfg, batches)   # what matters
    kept = plan(model, cfg, scores)                # how much; print(format_plan(kept, model)) is the dry run
    apply(model, kept)                             # cut; save_pruned_decoder writes a from_pretrained directory

or ``prune_decoder(model, cfg, batches)`` for all three. Every kept layer keeps the same number of
KV groups, query heads per group and SwiGLU channels, so the result is described by the ordinary
config fields (``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``, an explicit
``head_dim``) and reloads with ``AutoModelForCausalLM.from_pretrained`` without custom code.

GQA: query head ``h`` reads KV head ``h // group_size`` (transformers' ``repeat_kv``). Cutting a KV
group removes its K/V rows and all its query heads; cutting query heads within groups keeps every
group the same size, so the sliced heads still line up with their KV heads.

Batches are dicts with ``input_ids``, ``attention_mask`` and ``labels`` (``input_ids`` with pads
set to -100). They are iterated once per score, so pass a list, not a generator.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..models.arch import get_module, set_module
from ..models.decoder import DecoderError, DecoderShape, check_supported, decoder_layers, decoder_shape
from .apply import slice_linear
from .config import DecoderPruneConfig
from .decoder_importance import Batches, DecoderScores, compute_scores, group_importance, unit_rows
from .plan import uniform_layers


# ---------------------------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class DecoderPrunePlan:
    """What is kept, in the numbering of the model it was made for. Counts are uniform over layers."""
    num_layers: int
    kept_layers: tuple[int, ...]
    groups: tuple[tuple[int, ...], ...]     # per kept layer: kept KV heads
    heads: tuple[tuple[int, ...], ...]      # per kept layer: kept query heads (grouped, ascending)
    channels: tuple[tuple[int, ...], ...]   # per kept layer: kept SwiGLU channels

    def __post_init__(self):
        k = self.kept_layers
        if not k or list(k) != sorted(set(k)) or k[0] < 0 or k[-1] >= self.num_layers:
            raise DecoderError(f"[decoder prune] plan keeps layers {k} of {self.num_layers}: need at least one, "
                               f"ascending, unique, in range. Fix: build plans with plan().")
        for what in ("groups", "heads", "channels"):
            entries = getattr(self, what)
            if len(entries) != len(k) or len({len(e) for e in entries}) != 1:
                raise DecoderError(f"[decoder prune] plan {what} {entries}: need one entry per kept layer, all the "
                                   f"same length (uniform pruning). Fix: build plans with plan().")
            for e in entries:
                if not e or list(e) != sorted(set(e)) or e[0] < 0:
                    raise DecoderError(f"[decoder prune] plan {what} entry {e}: need at least one, ascending, "
                                       f"unique. Fix: build plans with plan().")
        if len(self.heads[0]) % len(self.groups[0]):
            raise DecoderError(f"[decoder prune] plan keeps {len(self.heads[0])} query heads over "
                               f"{len(self.groups[0])} KV groups: need the same number in every group.")

    def check(self, shape: DecoderShape) -> None:
        """Refuse a plan made for another model, or whose query heads do not sit evenly in its groups."""
        if shape.num_layers != self.num_layers:
            raise DecoderError(f"[decoder prune] the plan is for {self.num_layers} layers, the model has "
                               f"{shape.num_layers}. Fix: make the plan for this model.")
        per_group = len(self.heads[0]) // len(self.groups[0])
        for layer, groups, heads, channels in zip(self.kept_layers, self.groups, self.heads, self.channels):
            if groups[-1] >= shape.num_kv_heads or heads[-1] >= shape.num_heads or \
                    channels[-1] >= shape.intermediate_size:
                raise DecoderError(f"[decoder prune] plan layer {layer} keeps indices beyond the model's "
                                   f"{shape.num_kv_heads} KV / {shape.num_heads} query heads / "
                                   f"{shape.intermediate_size} channels. Fix: make the plan for this model.")
            owners = [h // shape.group_size for h in heads]
            if sorted(set(owners)) != list(groups) or any(owners.count(g) != per_group for g in groups):
                raise DecoderError(f"[decoder prune] plan layer {layer} keeps query heads {heads} (groups {owners}) "
                                   f"but KV groups {groups}: every kept group needs {per_group} of its own heads.")

    @property
    def sizes(self) -> dict[str, int]:
        """The pruned model's config sizes."""
        return {"num_hidden_layers": len(self.kept_layers), "num_attention_heads": len(self.heads[0]),
                "num_key_value_heads": len(self.groups[0]), "intermediate_size": len(self.channels[0])}


def _top(scores: Tensor, k: int) -> tuple[int, ...]:
    order = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))   # ties: lower index
    return tuple(sorted(order[:k]))


def _need(name: str, scores, fix: str):
    if scores is None:
        raise DecoderError(f"[decoder prune] the plan needs {name} scores and none were given. Fix: {fix}")
    return scores


def _check_config_loads(config, sizes: dict[str, int], head_dim: int, asked: str) -> None:
    # The config classes validate themselves at save time (LlamaConfig wants hidden_size % heads == 0
    # even with an explicit head_dim): refuse such a plan before anything is cut. A config that
    # fails its own validation already is not ours to judge.
    if not hasattr(config, "validate"):
        return
    try:
        config.validate()
    except Exception:  # noqa: BLE001
        return
    candidate = copy.deepcopy(config)
    for key, value in {**sizes, "head_dim": head_dim}.items():
        setattr(candidate, key, value)
    if hasattr(candidate, "layer_types") and candidate.layer_types is not None:
        candidate.layer_types = list(candidate.layer_types)[:sizes["num_hidden_layers"]]
    try:
        candidate.validate()
    except Exception as err:  # noqa: BLE001 - any validator's complaint is a reason to refuse
        reason = " ".join(str(err).split()).rstrip(".")
        raise DecoderError(f"[decoder prune] {asked}: {sizes['num_attention_heads']} query heads over "
                           f"{sizes['num_key_value_heads']} KV heads (hidden_size {config.hidden_size}) make a config "
                           f"{type(config).__name__} rejects ({reason}). Fix: keep a number of query heads "
                           f"(groups x heads per group) that divides hidden_size.") from None


def plan(model: nn.Module, cfg: DecoderPruneConfig, scores: DecoderScores) -> DecoderPrunePlan:
    """Which layers, KV groups, query heads and channels to keep (see compute_scores). Cuts nothing."""
    shape = decoder_shape(model)
    cfg.check(shape)
    n, fix = shape.num_layers, "compute them with compute_scores(model, cfg, batches)."
    if cfg.keep_layers is None:
        layers = tuple(range(n))
    elif cfg.layer_importance == "uniform":
        layers = uniform_layers(n, cfg.keep_layers)
    else:
        layers = _top(_need("layer", scores.layer, fix), cfg.keep_layers)

    n_groups = cfg.kv_groups_keep or shape.num_kv_heads
    per_group = cfg.heads_per_group_keep or shape.group_size
    if cfg.kv_groups_keep is None and cfg.heads_per_group_keep is None:
        groups = [tuple(range(shape.num_kv_heads))] * len(layers)
        heads = [tuple(range(shape.num_heads))] * len(layers)
    else:
        head_scores = _need("head", scores.head, fix)
        groups, heads = [], []
        for i in layers:
            kept = _top(group_importance([head_scores[i]], shape.num_kv_heads)[0], n_groups)
            in_group = head_scores[i].reshape(shape.num_kv_heads, shape.group_size)
            groups.append(kept)
            heads.append(tuple(g * shape.group_size + h for g in kept for h in _top(in_group[g], per_group)))
    if cfg.intermediate_keep is None:
        channels = [tuple(range(shape.intermediate_size))] * len(layers)
    else:
        channels = [_top(_need("channel", scores.channel, fix)[i], cfg.intermediate_keep) for i in layers]
    result = DecoderPrunePlan(num_layers=n, kept_layers=tuple(layers), groups=tuple(groups), heads=tuple(heads),
                              channels=tuple(channels))
    asked = f"kv_groups_keep = {cfg.kv_groups_keep!r}, heads_per_group_keep = {cfg.heads_per_group_keep!r}"
    _check_config_loads(model.config, result.sizes, shape.head_dim, asked)
    return result


def _layer_params(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


def _linear_params(linear: nn.Linear, out_features: int, in_features: int) -> int:
    return out_features * in_features + (out_features if linear.bias is not None else 0)


def _layer_params_after(layer: nn.Module, spec, n_heads: int, n_groups: int, n_channels: int, dh: int) -> int:
    hidden = get_module(layer, spec.query).in_features
    q_width, kv_width = n_heads * dh, n_groups * dh
    sizes = {spec.query: (q_width, hidden), spec.key: (kv_width, hidden), spec.value: (kv_width, hidden),
             spec.out: (hidden, q_width), spec.ffn_out: (hidden, n_channels),
             **{path: (n_channels, hidden) for path in spec.ffn_inputs}}
    cut = {get_module(layer, path): size for path, size in sizes.items()}
    rest = _layer_params(layer) - sum(_layer_params(linear) for linear in cut)
    return rest + sum(_linear_params(linear, *size) for linear, size in cut.items())


def param_counts(kept: DecoderPrunePlan, model: nn.Module) -> dict[str, tuple[int, int]]:
    """(before, after) parameter counts, total and decoder layers only, without cutting anything."""
    spec, shape, layers = check_supported(model), decoder_shape(model), decoder_layers(model)
    sizes = kept.sizes
    before = sum(_layer_params(layer) for layer in layers)
    after = sum(_layer_params_after(layers[i], spec, sizes["num_attention_heads"], sizes["num_key_value_heads"],
                                    sizes["intermediate_size"], shape.head_dim) for i in kept.kept_layers)
    total = sum(p.numel() for p in model.parameters())
    return {"total": (total, total - before + after), "layers": (before, after)}


def format_plan(kept: DecoderPrunePlan, model: nn.Module, scores: DecoderScores | None = None,
                cfg: DecoderPruneConfig | None = None) -> str:
    """The dry run: what each stage keeps, and the parameter counts before and after."""
    shape, sizes, counts = decoder_shape(model), kept.sizes, param_counts(kept, model)

    def stage(name: str, before: int | str, after: int | str, key: str) -> str:
        how = f" ({getattr(cfg, key)})" if cfg is not None and before != after else ""
        return f"{name}{how}: {before} -> {after}"

    dropped = [i for i in range(kept.num_layers) if i not in kept.kept_layers]
    lines = [f"decoder prune ({shape.model_type})",
             stage("layers", shape.num_layers, sizes["num_hidden_layers"], "layer_importance")
             + f"; kept {list(kept.kept_layers)}, dropped {dropped}"]
    if scores is not None and scores.layer is not None:
        lines.append("  angular distance per layer: "
                     + " ".join(f"{i}:{float(s):.4f}" for i, s in enumerate(scores.layer)))
    per_group = sizes["num_attention_heads"] // sizes["num_key_value_heads"]
    lines.append(stage("query heads / KV heads per layer", f"{shape.num_heads}/{shape.num_kv_heads}",
                       f"{sizes['num_attention_heads']}/{sizes['num_key_value_heads']}", "head_importance")
                 + f" ({per_group} query heads per group, head_dim {shape.head_dim})")
    if (sizes["num_attention_heads"], sizes["num_key_value_heads"]) != (shape.num_heads, shape.num_kv_heads):
        lines += [f"  layer {i}: KV groups {list(groups)}, query heads {list(heads)}"
                  for i, groups, heads in zip(kept.kept_layers, kept.groups, kept.heads)]
    lines.append(stage("SwiGLU channels per layer", shape.intermediate_size, sizes["intermediate_size"],
                       "channel_importance"))
    (t0, t1), (l0, l1) = counts["total"], counts["layers"]
    lines += [f"decoder-layer params: {l0:,} -> {l1:,} (ratio {l1 / l0:.3f})",
              f"all params: {t0:,} -> {t1:,} (ratio {t1 / t0:.3f})"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- cut

def apply(model: nn.Module, kept: DecoderPrunePlan) -> nn.Module:
    """Cut ``model`` in place to what ``kept`` keeps and rewrite its config; returns the model."""
    spec, shape = check_supported(model), decoder_shape(model)
    if getattr(model.config, "is_heterogeneous", False):
        raise DecoderError("[decoder prune] the config has per_layer_config (per-layer sizes); uniform pruning "
                           "would overwrite them. Fix: prune a checkpoint with a uniform config.")
    kept.check(shape)
    dh, layers = shape.head_dim, decoder_layers(model)
    _check_config_loads(model.config, kept.sizes, dh, "the plan")  # before anything is cut
    for i, groups, heads, channels in zip(kept.kept_layers, kept.groups, kept.heads, kept.channels):
        layer = layers[i]
        q_rows, kv_rows, chan = unit_rows(heads, dh), unit_rows(groups, dh), torch.tensor(channels)
        for path, index, dim in ((spec.query, q_rows, 0), (spec.key, kv_rows, 0), (spec.value, kv_rows, 0),
                                 (spec.out, q_rows, 1), *((p, chan, 0) for p in spec.ffn_inputs),
                                 (spec.ffn_out, chan, 1)):
            set_module(layer, path, slice_linear(get_module(layer, path), index, dim))
        # what the attention forward reads from the module, not the config
        attn = get_module(layer, spec.attention)
        attn.head_dim = dh
        attn.num_key_value_groups = len(heads) // len(groups)
        for name, value in (("num_heads", len(heads)), ("num_key_value_heads", len(groups))):
            if hasattr(attn, name):  # older transformers cached these too
                setattr(attn, name, value)
        mlp = get_module(layer, spec.ffn)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(channels)
    remaining = nn.ModuleList([layers[i] for i in kept.kept_layers])
    for new_index, layer in enumerate(remaining):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):  # the KV cache is indexed by layer_idx
                module.layer_idx = new_index
    set_module(model, spec.layers, remaining)
    _rewrite_config(model.config, spec, kept, dh)
    backbone = get_module(model, spec.layers.rpartition(".")[0])
    if hasattr(backbone, "has_sliding_layers"):  # Qwen2Model caches it from layer_types
        backbone.has_sliding_layers = "sliding_attention" in model.config.layer_types
    return model


def _rewrite_config(config, spec, kept: DecoderPrunePlan, dh: int) -> None:
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "max_window_layers", None)
    for key, value in kept.sizes.items():
        setattr(config, key, value)
    setattr(config, spec.head_dim_key, dh)  # explicit: hidden_size / num_attention_heads no longer gives it
    if layer_types is not None:
        config.layer_types = [layer_types[i] for i in kept.kept_layers]
    if window is not None:  # layers numbered >= max_window_layers use the sliding window
        config.max_window_layers = sum(i < window for i in kept.kept_layers)


# ---------------------------------------------------------------------------------------------- entry points

@dataclass(frozen=True)
class DecoderPruneReport:
    plan: DecoderPrunePlan
    scores: DecoderScores
    params: tuple[int, int]          # all parameters, before and after
    layer_params: tuple[int, int]    # decoder layers only
    text: str

    def __str__(self) -> str:
        return self.text


def prune_decoder(model: nn.Module, cfg: DecoderPruneConfig, batches: Batches | None = None,
                  dry_run: bool = False) -> tuple[nn.Module, DecoderPruneReport]:
    """Score, plan and cut ``model`` in place; returns (model, report). ``dry_run`` plans only."""
    cfg.check(decoder_shape(model))
    scores = compute_scores(model, cfg, batches)
    kept = plan(model, cfg, scores)
    counts, text = param_counts(kept, model), format_plan(kept, model, scores, cfg)
    if not dry_run:
        apply(model, kept)
        actual = sum(p.numel() for p in model.parameters())
        if actual != counts["total"][1]:
            raise DecoderError(f"[decoder prune] the cut model has {actual:,} parameters, the plan said "
                               f"{counts['total'][1]:,}. This is a bug in edgekit.prune.decoder.")
    return model, DecoderPruneReport(plan=kept, scores=scores, params=counts["total"],
                                     layer_params=counts["layers"], text=text)


def save_pruned_decoder(model: nn.Module, tokenizer, directory: str | Path) -> Path:
    """``save_pretrained`` of model and tokenizer: a directory plain ``from_pretrained`` loads."""
    directory = Path(directory)
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory
