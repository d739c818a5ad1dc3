"""The architecture table: every row's paths and config keys exist on a tiny model of its type."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.models.arch import ARCHS, DECODER, ENCODER, KINDS, find_arch, get_module, model_types
from edgekit.models.decoder import DecoderError, check_supported, decoder_shape
from edgekit.models.encoder import PruneError, arch_for
from edgekit.models.toy import tiny_config


def tiny_model(model_type: str) -> nn.Module:
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, BertConfig,
                              DistilBertConfig, RobertaConfig)

    torch.manual_seed(0)
    if ARCHS[model_type].kind == DECODER:
        return AutoModelForCausalLM.from_config(tiny_config(model_type, vocab_size=64), attn_implementation="eager")
    config = {"bert": lambda: BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64),
              "roberta": lambda: RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=64, pad_token_id=0),
              "distilbert": lambda: DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=64),
              }[model_type]()
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")


def test_kinds_partition_the_table():
    assert model_types(ENCODER) == ("bert", "roberta", "distilbert")
    assert model_types(DECODER) == ("qwen2", "llama")
    assert all(spec.kind in KINDS and spec.model_type == name for name, spec in ARCHS.items())


@pytest.mark.parametrize("model_type", list(ARCHS))
def test_every_path_and_config_key_resolves(model_type):
    spec, model = ARCHS[model_type], tiny_model(model_type)
    assert type(model).__name__ == spec.base_class
    assert find_arch(model, spec.kind) is spec and find_arch(model, ({*KINDS} - {spec.kind}).pop()) is None
    layers = get_module(model, spec.layers)
    assert isinstance(layers, nn.ModuleList) and len(layers) == getattr(model.config, spec.num_layers_key)
    for path in (spec.embeddings, spec.head, *([spec.final_norm] if spec.final_norm else [])):
        assert isinstance(get_module(model, path), nn.Module), path
    layer, hidden = layers[0], getattr(model.config, spec.hidden_key)
    for path in (spec.query, spec.key, spec.value, spec.out, *spec.ffn_inputs, spec.ffn_out):
        assert isinstance(get_module(layer, path), nn.Linear), path
    for path in (spec.attention, *spec.norms, *([spec.ffn] if spec.ffn else [])):
        assert isinstance(get_module(layer, path), nn.Module), path
    width = getattr(model.config, spec.intermediate_key)
    assert all(get_module(layer, p).out_features == width for p in spec.ffn_inputs)
    assert get_module(layer, spec.ffn_out).in_features == width and get_module(layer, spec.out).out_features == hidden
    attention = get_module(layer, spec.attention)
    assert all(hasattr(attention, a) for a in spec.head_count_attrs + spec.head_width_attrs)
    heads = getattr(model.config, spec.num_heads_key)
    kv_heads = getattr(model.config, spec.num_kv_heads_key) if spec.num_kv_heads_key else heads
    dh = hidden // heads
    assert get_module(layer, spec.query).out_features == heads * dh
    assert get_module(layer, spec.key).out_features == kv_heads * dh


def test_lookups_refuse_the_other_kind_naming_the_supported_ones():
    bert, qwen = tiny_model("bert"), tiny_config("qwen2")
    assert arch_for(bert) is ARCHS["bert"] and check_supported(qwen) is ARCHS["qwen2"]
    assert decoder_shape(qwen).num_kv_heads == 2
    with pytest.raises(PruneError, match="'qwen2'.*supported: bert, distilbert, roberta"):
        arch_for(qwen)
    with pytest.raises(DecoderError, match="covers model_type qwen2, llama; got 'bert'"):
        check_supported(bert)
