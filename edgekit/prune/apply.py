"""How a layer is cut: slice the Linear weights a plan drops, drop layers, rewrite the config, and
save the result so it reloads with ``from_pretrained``.

Config representation. A model whose kept layers all keep every head and share one FFN width
is an ordinary model: ``num_hidden_layers`` and ``intermediate_size`` (``n_layers`` /
``hidden_dim``) say it all and plain ``from_pretrained`` loads it. Otherwise, including a
uniform head cut (BERT-style attention derives the head width as hidden / num_heads, so a
plain config cannot say "8 heads of 32"), the config keeps the original head count (it defines
the head width) and gains ``edgekit_heads_per_layer`` and ``edgekit_intermediate_per_layer``;
``save_pruned`` writes a small modeling file next to the weights whose class resizes each layer
before the weights load, found through ``config.auto_map`` (``trust_remote_code=True``).
"""

from __future__ import annotations

import pprint
from pathlib import Path

import torch
from torch import nn

from ..models.arch import ArchSpec, get_module, set_module
from ..models.encoder import PruneError, arch_for, encoder_layers, head_dim, set_head_count
from .plan import PrunePlan

MODELING_MODULE = "modeling_edgekit_pruned"
AUTO_CLASS = "AutoModelForSequenceClassification"
PER_LAYER_KEYS = ("edgekit_heads_per_layer", "edgekit_intermediate_per_layer")


def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear holding only rows (dim 0: output features) or columns (dim 1: inputs) ``index``."""
    weight = linear.weight.detach().index_select(dim, index.to(linear.weight.device))
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias[index] if dim == 0 else linear.bias)
    new.requires_grad_(linear.weight.requires_grad)
    return new.train(linear.training)


def apply_plan(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Cut ``model`` in place to what ``plan`` keeps and rewrite its config; returns the model."""
    spec, dh = arch_for(model), head_dim(model)
    plan.layer_figures(model)  # refuses a plan made for another model
    layers = encoder_layers(model)
    for i, heads, ffn in zip(plan.kept_layers, plan.heads, plan.ffn):
        layer = layers[i]
        rows = torch.cat([torch.arange(h * dh, (h + 1) * dh) for h in heads])
        for path in (spec.query, spec.key, spec.value):
            set_module(layer, path, slice_linear(get_module(layer, path), rows, 0))
        set_module(layer, spec.out, slice_linear(get_module(layer, spec.out), rows, 1))
        set_head_count(layer, spec, len(heads), dh)
        neurons = torch.tensor(ffn)
        set_module(layer, spec.ffn_in, slice_linear(get_module(layer, spec.ffn_in), neurons, 0))
        set_module(layer, spec.ffn_out, slice_linear(get_module(layer, spec.ffn_out), neurons, 1))
    kept = nn.ModuleList([layers[i] for i in plan.kept_layers])
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):  # cache bookkeeping follows the new numbering
                module.layer_idx = new_index
    set_module(model, spec.layers, kept)
    _rewrite_config(model.config, spec, [len(h) for h in plan.heads], [len(f) for f in plan.ffn])
    return model


def _rewrite_config(config, spec: ArchSpec, heads: list[int], widths: list[int]) -> None:
    setattr(config, spec.num_layers_key, len(heads))
    setattr(config, spec.intermediate_key, max(widths))
    full_heads = getattr(config, spec.num_heads_key)
    if all(h == full_heads for h in heads) and len(set(widths)) == 1:
        for key in PER_LAYER_KEYS:
            if hasattr(config, key):
                delattr(config, key)
    else:
        config.edgekit_heads_per_layer = list(heads)
        config.edgekit_intermediate_per_layer = list(widths)


def needs_custom_code(config) -> bool:
    """True when layers differ from what the plain config builds (per-layer sizes present)."""
    return getattr(config, PER_LAYER_KEYS[0], None) is not None


_MODELING_TEMPLATE = '''"""Written by edgekit.prune: a @BASE@ whose encoder layers have their own head
counts and FFN widths (config.edgekit_heads_per_layer, config.edgekit_intermediate_per_layer).
Each layer is resized in __init__, before from_pretrained loads the weights."""
from torch import nn
from transformers import @BASE@

LAYOUT = @LAYOUT@


def _get(root, path):
    for name in path.split("."):
        root = getattr(root, name)
    return root


def _resize(layer, path, in_features, out_features):
    old = _get(layer, path)
    parent, _, name = path.rpartition(".")
    setattr(_get(layer, parent) if parent else layer, name, nn.Linear(
        in_features, out_features, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype))


class @NAME@(@BASE@):
    def __init__(self, config):
        super().__init__(config)
        heads_per_layer = getattr(config, "edgekit_heads_per_layer", None)
        if heads_per_layer is None:  # a plain config: the base class is already right
            return
        hidden = getattr(config, LAYOUT["hidden_key"])
        head_dim = hidden // getattr(config, LAYOUT["num_heads_key"])
        layers = _get(self, LAYOUT["layers"])
        for layer, heads, width in zip(layers, heads_per_layer, config.edgekit_intermediate_per_layer):
            for key in ("query", "key", "value"):
                _resize(layer, LAYOUT[key], hidden, heads * head_dim)
            _resize(layer, LAYOUT["out"], heads * head_dim, hidden)
            _resize(layer, LAYOUT["ffn_in"], hidden, width)
            _resize(layer, LAYOUT["ffn_out"], width, hidden)
            attention = _get(layer, LAYOUT["attention"])
            for attr in LAYOUT["head_count_attrs"]:
                setattr(attention, attr, heads)
            for attr in LAYOUT["head_width_attrs"]:
                setattr(attention, attr, heads * head_dim)
'''


def modeling_source(spec: ArchSpec) -> tuple[str, str]:
    """(class name, file text) of the modeling file for ``spec``; the layout comes from the arch table."""
    name = f"EdgekitPruned{spec.base_class}"
    text = (_MODELING_TEMPLATE.replace("@BASE@", spec.base_class).replace("@NAME@", name)
            .replace("@LAYOUT@", pprint.pformat(spec.layout(), width=100, sort_dicts=True)))
    return name, text


def save_pruned(model: nn.Module, directory: str | Path) -> Path:
    """``save_pretrained`` plus, for per-layer sizes, the modeling file and ``auto_map`` to it."""
    directory = Path(directory)
    config = model.config
    previous = getattr(config, "auto_map", None)
    if needs_custom_code(config):
        name, text = modeling_source(arch_for(config))
        config.auto_map = {AUTO_CLASS: f"{MODELING_MODULE}.{name}"}
    elif previous and MODELING_MODULE in str(previous.get(AUTO_CLASS, "")):
        del config.auto_map  # a model made uniform again needs no custom code
        previous = None
    try:
        model.save_pretrained(directory)
    finally:
        if previous is None and hasattr(config, "auto_map"):
            del config.auto_map
        elif previous is not None:
            config.auto_map = previous
    modeling_file = directory / f"{MODELING_MODULE}.py"
    if needs_custom_code(config):
        modeling_file.write_text(text, encoding="utf-8")
    elif modeling_file.exists():
        modeling_file.unlink()
    return directory


def load_pruned(directory: str | Path, **kwargs) -> nn.Module:
    """Load a ``save_pruned`` directory (eager attention); every weight must load exactly.

    Custom code runs only if the modeling file is byte-for-byte the one edgekit writes.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    directory = Path(directory)
    config = AutoConfig.from_pretrained(directory)
    remote = needs_custom_code(config)
    if remote:
        name, text = modeling_source(arch_for(config))
        path = directory / f"{MODELING_MODULE}.py"
        ref = (getattr(config, "auto_map", None) or {}).get(AUTO_CLASS)
        if ref != f"{MODELING_MODULE}.{name}" or not path.is_file() or path.read_text(encoding="utf-8") != text:
            raise PruneError(f"{directory}: config has per-layer sizes but {path.name} / auto_map is not the code "
                             f"edgekit writes; refusing to run it. Fix: re-save the model with save_pruned.")
    kwargs.setdefault("attn_implementation", "eager")
    model, info = AutoModelForSequenceClassification.from_pretrained(
        directory, trust_remote_code=remote, output_loading_info=True, **kwargs)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise PruneError(f"{directory}: weights did not load exactly: {bad}. Fix: save with save_pruned.")
    return model


def weight_loading_report(student: nn.Module, teacher_state_dict: dict[str, torch.Tensor]):
    """(missing, unexpected, mismatched) of loading ``teacher_state_dict`` into ``student``;
    mismatched holds (key, teacher shape, student shape)."""
    own = student.state_dict()
    missing = sorted(set(own) - set(teacher_state_dict))
    unexpected = sorted(set(teacher_state_dict) - set(own))
    mismatched = [(k, tuple(teacher_state_dict[k].shape), tuple(own[k].shape))
                  for k in sorted(set(own) & set(teacher_state_dict)) if own[k].shape != teacher_state_dict[k].shape]
    return missing, unexpected, mismatched


def check_weight_loading(student: nn.Module, teacher_state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Raise PruneError listing unexpected and mismatched keys; return the missing ones."""
    missing, unexpected, mismatched = weight_loading_report(student, teacher_state_dict)
    if unexpected or mismatched:
        lines = [f"unexpected: {k}" for k in unexpected]
        lines += [f"mismatched: {k} (given {t}, model has {s})" for k, t, s in mismatched]
        raise PruneError(f"{len(lines)} weights do not fit the model:\n  " + "\n  ".join(lines)
                         + "\nFix: load weights saved from a model pruned with the same plan (save_pruned).")
    return missing
