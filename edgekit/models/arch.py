"""The architecture table: where each supported model family keeps the modules edgekit cuts,
distills, quantizes and exports, and which config keys hold its sizes. The one place with
model knowledge; edgekit.models.encoder and edgekit.models.decoder read their rows from it.

Paths are dotted attribute paths: model-level ones (``layers``, ``embeddings``, ``final_norm``,
``head``) from the ``base_class`` model, the others from one block of ``layers``. A row's
``kind`` says which pipeline takes it: encoders (``*ForSequenceClassification``: structured
pruning, classifier distillation) or decoders (``*ForCausalLM``: GQA-aware pruning, the
KV-cache export).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

ENCODER = "encoder"
DECODER = "decoder"
KINDS = (ENCODER, DECODER)

# The encoder fields the pruned-model modeling file reads (edgekit.prune.apply). The file is checked
# byte for byte when a pruned model loads, so these keys and their values must not change.
ENCODER_LAYOUT = ("base_class", "layers", "embeddings", "attention", "query", "key", "value", "out", "ffn_in",
                  "ffn_out", "num_layers_key", "num_heads_key", "intermediate_key", "hidden_key",
                  "head_count_attrs", "head_width_attrs")


@dataclass(frozen=True)
class ArchSpec:
    model_type: str             # config.model_type
    kind: str                   # ENCODER or DECODER
    base_class: str             # the transformers class edgekit loads
    # model -> ...
    layers: str                 # the nn.ModuleList of blocks
    embeddings: str             # the embeddings module (the "embedding" parameters)
    final_norm: str | None      # the norm after the last block (None: encoders normalize inside each block)
    head: str                   # the output head (classifier or lm_head)
    # block -> ...
    attention: str              # the module whose forward splits heads (holds the head-count attrs)
    query: str
    key: str
    value: str
    out: str                    # attention output projection (input columns are grouped by head)
    ffn: str | None             # the module holding the whole FFN (None: BERT splits it over two modules)
    ffn_gate: str | None        # SwiGLU gate projection (rows = FFN units); None for a plain two-linear FFN
    ffn_in: str                 # FFN input projection (rows = FFN units; SwiGLU's up projection)
    ffn_out: str                # FFN output projection (input columns = FFN units; SwiGLU's down)
    norms: tuple[str, ...]      # the block's norms, in forward order
    # config keys
    num_layers_key: str
    num_heads_key: str
    num_kv_heads_key: str | None    # GQA key/value heads (None: every query head has its own K/V)
    head_dim_key: str | None        # explicit per-head width, when the config may carry one
    intermediate_key: str
    hidden_key: str
    # attention attributes that hold the block's head count, and heads * head_dim (decoder attention
    # reads its sizes from the config and the weights; edgekit.prune.decoder sets what it caches)
    head_count_attrs: tuple[str, ...]
    head_width_attrs: tuple[str, ...]

    @property
    def ffn_inputs(self) -> tuple[str, ...]:
        """The projections whose output rows are the FFN units (gate and up for SwiGLU)."""
        return (self.ffn_in,) if self.ffn_gate is None else (self.ffn_gate, self.ffn_in)

    def layout(self) -> dict:
        """The encoder row as plain data (written into the generated modeling file)."""
        return {name: getattr(self, name) for name in ENCODER_LAYOUT}


def _bert_like(model_type: str, base_class: str) -> ArchSpec:
    return ArchSpec(
        model_type=model_type, kind=ENCODER, base_class=base_class, layers=f"{model_type}.encoder.layer",
        embeddings=f"{model_type}.embeddings", final_norm=None, head="classifier", attention="attention.self",
        query="attention.self.query", key="attention.self.key", value="attention.self.value",
        out="attention.output.dense", ffn=None, ffn_gate=None, ffn_in="intermediate.dense", ffn_out="output.dense",
        norms=("attention.output.LayerNorm", "output.LayerNorm"), num_layers_key="num_hidden_layers",
        num_heads_key="num_attention_heads", num_kv_heads_key=None, head_dim_key=None,
        intermediate_key="intermediate_size", hidden_key="hidden_size", head_count_attrs=("num_attention_heads",),
        head_width_attrs=("all_head_size",))


def _decoder_like(model_type: str, base_class: str) -> ArchSpec:
    """Qwen2 and Llama share one layout; they differ in biases and RoPE variants, not in paths."""
    return ArchSpec(
        model_type=model_type, kind=DECODER, base_class=base_class, layers="model.layers",
        embeddings="model.embed_tokens", final_norm="model.norm", head="lm_head", attention="self_attn",
        query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj", out="self_attn.o_proj",
        ffn="mlp", ffn_gate="mlp.gate_proj", ffn_in="mlp.up_proj", ffn_out="mlp.down_proj",
        norms=("input_layernorm", "post_attention_layernorm"), num_layers_key="num_hidden_layers",
        num_heads_key="num_attention_heads", num_kv_heads_key="num_key_value_heads", head_dim_key="head_dim",
        intermediate_key="intermediate_size", hidden_key="hidden_size", head_count_attrs=(),
        head_width_attrs=())


ARCHS: dict[str, ArchSpec] = {
    "bert": _bert_like("bert", "BertForSequenceClassification"),
    "roberta": _bert_like("roberta", "RobertaForSequenceClassification"),
    "distilbert": ArchSpec(
        model_type="distilbert", kind=ENCODER, base_class="DistilBertForSequenceClassification",
        layers="distilbert.transformer.layer", embeddings="distilbert.embeddings", final_norm=None,
        head="classifier", attention="attention", query="attention.q_lin", key="attention.k_lin",
        value="attention.v_lin", out="attention.out_lin", ffn="ffn", ffn_gate=None, ffn_in="ffn.lin1",
        ffn_out="ffn.lin2", norms=("sa_layer_norm", "output_layer_norm"), num_layers_key="n_layers",
        num_heads_key="n_heads", num_kv_heads_key=None, head_dim_key=None, intermediate_key="hidden_dim",
        hidden_key="dim", head_count_attrs=("n_heads",), head_width_attrs=()),
    "qwen2": _decoder_like("qwen2", "Qwen2ForCausalLM"),
    "llama": _decoder_like("llama", "LlamaForCausalLM"),
}


def model_types(kind: str) -> tuple[str, ...]:
    """The supported model_types of ``kind``, in table order."""
    return tuple(t for t, spec in ARCHS.items() if spec.kind == kind)


def model_type_of(model_or_config) -> str | None:
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None)


def find_arch(model_or_config, kind: str) -> ArchSpec | None:
    """The table row of ``kind`` for a model (or its config); None when there is none."""
    spec = ARCHS.get(model_type_of(model_or_config))
    return spec if spec is not None and spec.kind == kind else None


def get_module(root: nn.Module, path: str) -> nn.Module:
    for name in path.split("."):
        root = getattr(root, name)
    return root


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get_module(root, parent) if parent else root, name, module)
