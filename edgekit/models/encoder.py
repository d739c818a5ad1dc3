"""Where each supported encoder keeps the tensors pruning cuts: the one place with model knowledge.

Paths are dotted attribute paths: model-level ones from the ``*ForSequenceClassification``
model, the others from one encoder layer. Everything else in ``edgekit.prune`` reads this table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from edgekit_runtime.errors import EdgekitError


class PruneError(EdgekitError):
    """A prune config, plan or pruned model cannot be used as given."""


@dataclass(frozen=True)
class ArchSpec:
    base_class: str            # the transformers *ForSequenceClassification class
    layers: str                # model -> the nn.ModuleList of encoder layers
    embeddings: str            # model -> the embeddings module (the "embedding" parameters)
    attention: str             # layer -> the module whose forward splits heads (holds the head-count attrs)
    query: str
    key: str
    value: str
    out: str                   # layer -> attention output projection (input columns are grouped by head)
    ffn_in: str
    ffn_out: str
    num_layers_key: str        # config keys
    num_heads_key: str
    intermediate_key: str
    hidden_key: str
    head_count_attrs: tuple[str, ...]   # attention attrs that hold the layer's head count
    head_width_attrs: tuple[str, ...]   # attention attrs that hold heads * head_dim

    def layout(self) -> dict:
        """The table row as plain data (written into the generated modeling file)."""
        return asdict(self)


_BERT_LIKE = dict(
    embeddings="{prefix}.embeddings", layers="{prefix}.encoder.layer", attention="attention.self",
    query="attention.self.query", key="attention.self.key", value="attention.self.value",
    out="attention.output.dense", ffn_in="intermediate.dense", ffn_out="output.dense",
    num_layers_key="num_hidden_layers", num_heads_key="num_attention_heads",
    intermediate_key="intermediate_size", hidden_key="hidden_size",
    head_count_attrs=("num_attention_heads",), head_width_attrs=("all_head_size",),
)


def _bert_like(prefix: str, base_class: str) -> ArchSpec:
    fields = {k: v.format(prefix=prefix) if isinstance(v, str) else v for k, v in _BERT_LIKE.items()}
    return ArchSpec(base_class=base_class, **fields)


ARCHS: dict[str, ArchSpec] = {
    "bert": _bert_like("bert", "BertForSequenceClassification"),
    "roberta": _bert_like("roberta", "RobertaForSequenceClassification"),
    "distilbert": ArchSpec(
        base_class="DistilBertForSequenceClassification", layers="distilbert.transformer.layer",
        embeddings="distilbert.embeddings", attention="attention", query="attention.q_lin",
        key="attention.k_lin", value="attention.v_lin", out="attention.out_lin", ffn_in="ffn.lin1",
        ffn_out="ffn.lin2", num_layers_key="n_layers", num_heads_key="n_heads", intermediate_key="hidden_dim",
        hidden_key="dim", head_count_attrs=("n_heads",), head_width_attrs=()),
}


def arch_for(model_or_config) -> ArchSpec:
    """The table row for a model (or its config); EdgekitError for an unsupported model_type."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        raise PruneError(f"structured pruning does not support model_type {model_type!r}; supported: "
                           f"{', '.join(sorted(ARCHS))}. Fix: use a BERT, RoBERTa or DistilBERT "
                           f"*ForSequenceClassification model, or add a row to edgekit.prune.arch.ARCHS.")
    return ARCHS[model_type]


def get_module(root: nn.Module, path: str) -> nn.Module:
    for name in path.split("."):
        root = getattr(root, name)
    return root


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get_module(root, parent) if parent else root, name, module)


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    return get_module(model, arch_for(model).layers)


def head_dim(model_or_config) -> int:
    """Per-head width; pruning never changes it, so the original config keeps defining it."""
    config = getattr(model_or_config, "config", model_or_config)
    spec = arch_for(config)
    return getattr(config, spec.hidden_key) // getattr(config, spec.num_heads_key)


@dataclass(frozen=True)
class LayerShape:
    heads: int
    ffn: int


def layer_shapes(model: nn.Module) -> list[LayerShape]:
    """Head count and FFN width of every layer, read from the weights (right for pruned models too)."""
    spec, dh = arch_for(model), head_dim(model)
    return [LayerShape(heads=get_module(layer, spec.query).out_features // dh,
                       ffn=get_module(layer, spec.ffn_in).out_features)
            for layer in get_module(model, spec.layers)]


def set_head_count(layer: nn.Module, spec: ArchSpec, heads: int, dh: int) -> None:
    """Make the attention module's bookkeeping agree with its sliced Q/K/V (forward reshapes with -1)."""
    attention = get_module(layer, spec.attention)
    for attr in spec.head_count_attrs:
        setattr(attention, attr, heads)
    for attr in spec.head_width_attrs:
        setattr(attention, attr, heads * dh)
