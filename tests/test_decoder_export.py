"""The KV-cache decoder graph (docs/decoder.md) and the causal-lm task adapter, on tiny random
Qwen2 / Llama models: contract I/O, ORT against transformers with its own cache (left-padded batch of
2, prefill + decode), int32 ids, QAT Q/DQ export, external data, and the adapter's figures."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from edgekit.models.decoder import DecoderError
from edgekit.export.decoder import (DECODER_OPS, MASK_FILL, ExportableDecoder, decoder_io, empty_past,
                                    export_decoder, position_ids_from_mask)
from edgekit.validate.decoder import DecoderValidationError, validate_decoder
from edgekit.models.toy import CHAT_TEMPLATE, tiny_config, train_tokenizer
from edgekit.export.graph import constant_node_value
from edgekit.tasks import get_task
from edgekit.bundle.decoder import causal_lm_task_section
from edgekit.tasks.causal_lm import CausalLM

SUBJECTS = ["the cat", "a dog", "my phone", "the old car", "her bike", "the small robot"]
VERBS = ["runs fast", "is quiet today", "needs a battery", "was very good", "looks tired", "will arrive soon"]
TEXTS = [f"{s} {v}." for s in SUBJECTS for v in VERBS]  # 36 sentences
PROMPTS = ["the old car was very good and the cat runs fast", "a dog"]  # rows of different lengths
LAYERS = 2


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=400)


def make_model(tokenizer, model_type="qwen2", seed=0, tied=False, **extra):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(model_type, vocab_size=len(tokenizer), hidden_size=64, layers=LAYERS,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **extra)
    config.tie_word_embeddings = tied  # tiny_config fixes it to False in its own call
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # init leaves biases at 0 and norm weights at 1: make a dropped one show
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def qwen(tokenizer):
    return make_model(tokenizer, "qwen2")


@pytest.fixture(scope="module")
def qwen_onnx(qwen, tmp_path_factory):
    return export_decoder(qwen, tmp_path_factory.mktemp("qwen") / "model.onnx")


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_graph_io_follows_the_contract(qwen, qwen_onnx):
    graph = onnx.load(str(qwen_onnx))
    io = decoder_io(qwen)
    assert [v.name for v in graph.graph.input] == list(io.input_names)
    assert [v.name for v in graph.graph.output] == list(io.output_names)
    assert list(io.input_names[3:5]) == ["past_key_values.0.key", "past_key_values.0.value"]
    assert list(io.output_names[-2:]) == [f"present.{LAYERS - 1}.key", f"present.{LAYERS - 1}.value"]
    inputs = {v.name: v for v in graph.graph.input}
    outputs = {v.name: v for v in graph.graph.output}
    int64, f32 = onnx.TensorProto.INT64, onnx.TensorProto.FLOAT
    for name in ("input_ids", "attention_mask", "position_ids"):
        assert inputs[name].type.tensor_type.elem_type == int64
    assert _dims(inputs["input_ids"]) == ["batch", "sequence"] == _dims(inputs["position_ids"])
    assert _dims(inputs["attention_mask"]) == ["batch", "total_sequence"]
    for i in range(LAYERS):
        for kv in ("key", "value"):
            past, present = inputs[f"past_key_values.{i}.{kv}"], outputs[f"present.{i}.{kv}"]
            assert past.type.tensor_type.elem_type == f32 == present.type.tensor_type.elem_type
            assert _dims(past) == ["batch", 2, "past_sequence", 16]
            assert _dims(present) == ["batch", 2, "total_sequence", 16]
    assert outputs["logits"].type.tensor_type.elem_type == f32
    assert _dims(outputs["logits"]) == ["batch", "sequence", qwen.config.vocab_size]
    # opset 13, standard domain only, the mask applied with Where (no additive large negatives)
    assert {(op.domain or "ai.onnx"): op.version for op in graph.opset_import} == {"ai.onnx": 13}
    assert {n.domain for n in graph.graph.node} <= {""}
    ops = Counter(n.op_type for n in graph.graph.node)
    assert ops["Where"] == LAYERS and ops["Softmax"] == LAYERS
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}
    constants.update({n.output[0]: constant_node_value(n) for n in graph.graph.node if n.op_type == "Constant"})
    fills = [constants[n.input[2]] for n in graph.graph.node if n.op_type == "Where"]
    assert all(float(f) == MASK_FILL == -65504.0 for f in fills)
    assert ops["Cos"] == 1 and ops["Sin"] == 1 and ops["Range"] == 2  # RoPE and mask built once, not per layer
    assert ops["Expand"] == 0 and ops["Tile"] == 0                   # GQA without copying KV heads


def test_helpers_position_ids_and_empty_past(qwen):
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert position_ids_from_mask(mask, 1).tolist() == [[2], [4]]
    assert position_ids_from_mask(torch.from_numpy(mask), 2).tolist() == [[1, 2], [3, 4]]
    past = empty_past(qwen, batch=3)
    assert list(past) == list(decoder_io(qwen).input_names[3:])
    assert all(v.shape == (3, 2, 0, 16) and v.dtype == np.float32 for v in past.values())


VARIANTS = {
    "qwen2": ("qwen2", {}),
    "llama": ("llama", {}),
    # Llama's optional biases and Llama 3.1 RoPE scaling
    "llama-bias-llama3": ("llama", {"attention_bias": True, "mlp_bias": True, "rope_parameters": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64, "rope_theta": 500000.0}}),
    # YaRN: attention_scaling != 1 folds into cos/sin
    "qwen2-yarn": ("qwen2", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0,
                                                 "original_max_position_embeddings": 128, "rope_theta": 10000.0}}),
}


@pytest.mark.parametrize("ops", DECODER_OPS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_onnx_matches_transformers_prefill_and_decode(variant, ops, tokenizer, tmp_path):
    model_type, extra = VARIANTS[variant]
    model = make_model(tokenizer, model_type, **extra)
    path = export_decoder(model, tmp_path / "model.onnx", ops=ops, max_positions=64)
    domains = {n.domain for n in onnx.load(str(path), load_external_data=False).graph.node}
    assert domains == ({"", "com.microsoft"} if ops == "ort-contrib" else {""})
    enc = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    assert enc["attention_mask"][1, 0] == 0 and enc["attention_mask"][0].all()  # left padded, uneven rows
    figures = validate_decoder(model, path, prompts=PROMPTS, tokenizer=tokenizer, decode_steps=3, atol=1e-4,
                               threads=1)
    assert figures["prefill_logits"] < 1e-4 and figures["decode_logits"] < 1e-4 and figures["present"] < 1e-4
    assert figures["greedy_agreement"] == 1.0


@pytest.mark.parametrize("ops", DECODER_OPS)
def test_int32_token_graph_runs_in_ort(qwen, ops, tmp_path):
    import onnxruntime as ort

    path = export_decoder(qwen, tmp_path / "model.onnx", token_dtype="int32", ops=ops)
    graph = onnx.load(str(path))
    types = {v.name: v.type.tensor_type.elem_type for v in graph.graph.input}
    assert types["input_ids"] == types["attention_mask"] == types["position_ids"] == onnx.TensorProto.INT32
    ids = torch.tensor([[0, 5, 9, 11], [7, 8, 9, 10]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids.numpy().astype(np.int32), "attention_mask": mask.numpy().astype(np.int32),
             "position_ids": position_ids_from_mask(mask.numpy()).astype(np.int32), **empty_past(qwen, 2)}
    logits = session.run(["logits"], feeds)[0]
    with torch.no_grad():
        ref = qwen(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits.numpy()
    assert logits.shape == (2, 4, qwen.config.vocab_size)
    assert np.abs(logits - ref)[mask.numpy().astype(bool)].max() < 1e-4
    figures = validate_decoder(qwen, path, input_ids=ids, attention_mask=mask, decode_steps=2, threads=1)
    assert figures["decode_logits"] < 1e-4


@pytest.mark.parametrize("ops", DECODER_OPS)
def test_qat_model_exports_qdq_and_matches_fake_quant(tokenizer, ops, tmp_path):
    from edgekit.quant.fake import QATConfig, calibrate, enable_fake_quant, prepare_qat

    model = make_model(tokenizer, "llama", seed=1)
    batches = [CausalLM().collate(tokenizer, TEXTS[i:i + 4], None, 32) for i in (0, 4)]
    inputs = [CausalLM().model_inputs(model, b) for b in batches]
    with torch.no_grad():
        fp32 = model(**inputs[0]).logits
    prepare_qat(model, QATConfig(include=("model.layers.*",), exclude=(), fp32_most_sensitive=0))
    calibrate(model, inputs)
    enable_fake_quant(model)
    with torch.no_grad():
        fake = model(**inputs[0]).logits
    assert (fake - fp32).abs().max() > 1e-3  # fake quant is really on

    path = export_decoder(model, tmp_path / "model.onnx", ops=ops)
    counts = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    linears = LAYERS * 7  # q, k, v, o, gate, up, down: input and weight each get a Q/DQ pair
    assert counts["QuantizeLinear"] == counts["DequantizeLinear"] == 2 * linears
    if ops == "ort-contrib":  # QuantLinears stay unfused: RoPE runs as its own node on q and on k
        assert counts["GroupQueryAttention"] == counts["RotaryEmbedding"] / 2 == LAYERS
    figures = validate_decoder(model, path, prompts=PROMPTS, tokenizer=tokenizer, decode_steps=3, atol=1e-3,
                               threads=1)
    assert figures["prefill_logits"] < 1e-3 and figures["decode_logits"] < 1e-3


def test_validation_fails_closed_on_a_corrupted_graph(qwen, qwen_onnx, tokenizer, tmp_path):
    graph = onnx.load(str(qwen_onnx))
    head = next(n for n in graph.graph.node if n.output[0] == "logits")
    weight = next(t for t in graph.graph.initializer if t.name == head.input[1])
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 1.05, weight.name))
    onnx.save(graph, str(tmp_path / "bad.onnx"))
    with pytest.raises(DecoderValidationError, match=r"prefill_logits: max \|diff\| .* > atol 0.0001.*Fix:"):
        validate_decoder(qwen, tmp_path / "bad.onnx", prompts=PROMPTS, tokenizer=tokenizer, threads=1)


@pytest.mark.parametrize("ops", DECODER_OPS)
def test_tied_embeddings_stored_once(tokenizer, ops, tmp_path):
    model = make_model(tokenizer, "qwen2", tied=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    path = export_decoder(model, tmp_path / "model.onnx", ops=ops)
    graph = onnx.load(str(path))
    vocab_sized = [t.name for t in graph.graph.initializer if sorted(t.dims) == sorted((len(tokenizer), 64))]
    assert len(vocab_sized) == 1
    figures = validate_decoder(model, path, prompts=PROMPTS, tokenizer=tokenizer, decode_steps=3, threads=1)
    assert figures["decode_logits"] < 1e-4 and figures["greedy_agreement"] == 1.0


def test_external_data_above_threshold(qwen, tokenizer, tmp_path):
    path = export_decoder(qwen, tmp_path / "model.onnx", external_data_threshold=1024)
    data = tmp_path / "model.onnx.data"
    assert data.exists() and data.stat().st_size > 10 * path.stat().st_size
    locations = {e.value for t in onnx.load(str(path), load_external_data=False).graph.initializer
                 for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}
    figures = validate_decoder(qwen, path, prompts=PROMPTS, tokenizer=tokenizer, decode_steps=1, threads=1)
    assert figures["prefill_logits"] < 1e-4
    # below the threshold again: one self-contained file, the stale data file gone
    export_decoder(qwen, path)
    assert not data.exists() and not list(tmp_path.glob(".export-*"))


def test_refuses_what_the_graph_cannot_express(tokenizer):
    with pytest.raises(DecoderError, match=r"sliding_window=8 .*Fix: set config.use_sliding_window=False"):
        ExportableDecoder(make_model(tokenizer, "qwen2", use_sliding_window=True, sliding_window=8,
                                     max_window_layers=1))
    with pytest.raises(DecoderError, match=r"rope_type='dynamic'.*Fix:"):
        dynamic = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
        ExportableDecoder(make_model(tokenizer, "llama", rope_parameters=dynamic))
    with pytest.raises(DecoderError, match=r"float16.*Fix: export model.float\(\)"):
        ExportableDecoder(make_model(tokenizer, "qwen2").half())
    with pytest.raises(DecoderError, match="token_dtype='int16'"):
        export_decoder(make_model(tokenizer, "qwen2"), "unused.onnx", token_dtype="int16")
    # a window as wide as the context never applies: exported (as full attention), not refused
    wide = ExportableDecoder(make_model(tokenizer, "qwen2", use_sliding_window=True, sliding_window=512,
                                        max_window_layers=1))
    assert wide.groups == [2, 2]


def test_torch_wrapper_matches_model_and_keeps_padding_rows_finite(qwen):
    wrapper = ExportableDecoder(qwen)
    ids = torch.tensor([[1, 1, 7], [5, 6, 7]])
    mask = torch.tensor([[0, 0, 1], [1, 1, 1]])
    pos = position_ids_from_mask(mask)
    past = [torch.from_numpy(v) for v in empty_past(qwen, 2).values()]
    with torch.no_grad():
        logits, *present = wrapper(ids, mask, pos, *past)
        ref = qwen(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert torch.isfinite(logits).all() and len(present) == 2 * LAYERS
    assert present[0].shape == (2, 2, 3, 16)
    real = mask.bool()
    assert (logits - ref)[real].abs().max() < 1e-5


# ----------------------------------------------------------------------------- the task adapter

def test_adapter_is_registered_and_collates_left_padded(tokenizer, qwen):
    adapter = get_task("causal-lm")
    assert isinstance(adapter, CausalLM)
    batch = adapter.collate(tokenizer, PROMPTS, None, 64)
    mask = batch["attention_mask"]
    assert mask[1, 0] == 0 and mask[:, -1].all()
    assert (batch["labels"][mask == 0] == -100).all()
    assert torch.equal(batch["labels"][mask == 1], batch["input_ids"][mask == 1])
    assert torch.equal(batch["position_ids"], position_ids_from_mask(mask))
    assert list(adapter.model_inputs(qwen, batch)) == ["input_ids", "attention_mask", "position_ids"]
    assert adapter.export_io(qwen, tokenizer) == decoder_io(qwen)
    tokenizer.padding_side = "right"
    try:
        with pytest.raises(DecoderError, match="padding_side='right'.*Fix"):
            adapter.collate(tokenizer, PROMPTS, None, 64)
    finally:
        tokenizer.padding_side = "left"


def test_adapter_loss_and_perplexity_match_hand_computation(tokenizer, qwen):
    adapter = CausalLM()
    batch = adapter.collate(tokenizer, TEXTS[:3] + PROMPTS, None, 64)
    with torch.no_grad():
        outputs = qwen(**adapter.model_inputs(qwen, batch))
        reference = qwen(**adapter.model_inputs(qwen, batch), labels=batch["labels"]).loss
    loss = adapter.loss(outputs, batch)
    assert torch.allclose(loss, reference, atol=1e-5)

    logits, labels = adapter.predictions(outputs), batch["labels"]
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(), labels[:, 1:].reshape(-1),
                          ignore_index=-100).item()
    figures = adapter.metrics(logits.numpy(), labels.numpy())
    assert list(figures) == ["perplexity", "nll"]
    assert figures["nll"] == pytest.approx(nll, rel=1e-9)
    assert figures["perplexity"] == pytest.approx(math.exp(nll), rel=1e-9)
    assert figures["perplexity"] == pytest.approx(math.exp(loss.item()), rel=1e-5)
    # per-batch arrays padded to different lengths: one token-weighted figure over both
    parts = [adapter.collate(tokenizer, texts, None, 64) for texts in (TEXTS[:3], PROMPTS)]
    with torch.no_grad():
        part_logits = [qwen(**adapter.model_inputs(qwen, b)).logits for b in parts]
    assert part_logits[0].shape[1] != part_logits[1].shape[1]
    sums = [F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]).double(), b["labels"][:, 1:].reshape(-1),
                            ignore_index=-100, reduction="sum").item() for lg, b in zip(part_logits, parts)]
    tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in parts)
    split = adapter.metrics([lg.numpy() for lg in part_logits], [b["labels"].numpy() for b in parts])
    assert split["nll"] == pytest.approx(sum(sums) / tokens, rel=1e-9)


def test_adapter_loads_eager_fp32(tokenizer, tmp_path):
    from tests.tiny_models import make_model_dir

    make_model(tokenizer, "qwen2").to(torch.bfloat16).save_pretrained(tmp_path / "m")  # as R1-Distill ships
    model = CausalLM().load_model(str(tmp_path / "m"), label_names=["ignored"])
    assert model.config._attn_implementation == "eager"
    assert next(model.parameters()).dtype == torch.float32

    with pytest.raises(DecoderError, match="model_type.*'bert'.*Fix"):
        CausalLM().load_model(str(make_model_dir(tmp_path / "bert")), [])


def test_manifest_task_section(tokenizer, qwen):
    section = causal_lm_task_section(tokenizer, qwen, max_context=256, generation={"max_new_tokens": 64})
    assert list(section) == ["name", "num_layers", "num_key_value_heads", "head_dim", "vocab_size", "max_context",
                             "eos_token_ids", "pad_token_id", "bos_token_id", "chat_template", "think", "generation"]
    assert section["name"] == "causal-lm" and section["max_context"] == 256
    assert (section["num_layers"], section["num_key_value_heads"], section["head_dim"]) == (LAYERS, 2, 16)
    assert section["vocab_size"] == len(tokenizer)
    assert section["eos_token_ids"] == [tokenizer.eos_token_id]
    assert section["pad_token_id"] == tokenizer.pad_token_id and section["bos_token_id"] is None
    assert section["chat_template"] == CHAT_TEMPLATE
    assert section["think"] == {"start": "<think>", "end": "</think>"}
    assert section["generation"] == {"max_new_tokens": 64, "do_sample": False, "temperature": 1.0, "top_k": 0,
                                     "top_p": 1.0}
    with pytest.raises(DecoderError, match="max_context=4096.*Fix"):
        causal_lm_task_section(tokenizer, qwen, max_context=4096)
    with pytest.raises(DecoderError, match=r"generation.top_p=0.*Fix"):
        causal_lm_task_section(tokenizer, qwen, max_context=64, generation={"top_p": 0})
    with pytest.raises(DecoderError, match=r"generation.max_new_tokens=True.*Fix"):
        causal_lm_task_section(tokenizer, qwen, max_context=64, generation={"max_new_tokens": True})
    with pytest.raises(DecoderError, match=r"generation keys \['top_n'\].*Fix"):
        causal_lm_task_section(tokenizer, qwen, max_context=64, generation={"top_n": 5})
    with pytest.raises(DecoderError, match="causal_lm_task_section"):
        CausalLM().manifest_task([])


def test_manifest_without_think_tokens_or_template(qwen):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {w: i for i, w in enumerate(["<unk>", "<eos>", "the", "cat"])}
    raw = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    plain = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<eos>")
    section = causal_lm_task_section(plain, qwen, max_context=64)
    assert section["think"] is None and section["chat_template"] is None
    assert section["eos_token_ids"][0] == 1  # the tokenizer's eos first, then the model config's


def test_contrib_graph_chunked_prefill_and_positions(qwen, tmp_path):
    """The ort-contrib graph rotates at each row's cache index, not at position_ids: a left-padded
    row's positions are all shifted by its padding, which RoPE (relative) does not see. Prefill in
    two chunks over a past gives the one-chunk logits and cache; position_ids stays a graph input."""
    import onnxruntime as ort

    path = export_decoder(qwen, tmp_path / "model.onnx", ops="ort-contrib", max_positions=64)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()][:3] == ["input_ids", "attention_mask", "position_ids"]
    names = [o.name for o in session.get_outputs()]
    ids = np.array([[3, 9, 4, 12, 7, 5, 8, 10, 6]])
    mask = np.ones_like(ids)
    pos = position_ids_from_mask(mask)
    whole = dict(zip(names, session.run(None, {"input_ids": ids, "attention_mask": mask, "position_ids": pos,
                                               **empty_past(qwen, 1)})))
    first = dict(zip(names, session.run(None, {"input_ids": ids[:, :4], "attention_mask": mask[:, :4],
                                               "position_ids": pos[:, :4], **empty_past(qwen, 1)})))
    past = {n.replace("present", "past_key_values"): v for n, v in first.items() if n.startswith("present")}
    second = dict(zip(names, session.run(None, {"input_ids": ids[:, 4:], "attention_mask": mask,
                                                "position_ids": pos[:, 4:], **past})))
    assert np.abs(second["logits"] - whole["logits"][:, 4:]).max() < 1e-5
    assert np.abs(second["present.1.value"] - whole["present.1.value"]).max() < 1e-6
    with torch.no_grad():
        ref = qwen(input_ids=torch.from_numpy(ids)).logits.numpy()
    assert np.abs(whole["logits"] - ref).max() < 1e-4


def test_contrib_graph_only_for_profiles_that_allow_it(qwen, tokenizer, tmp_path):
    from edgekit.bundle.decoder import write_decoder_bundle
    from edgekit.export.opcheck import OpSupportError, check_ops
    from edgekit.export.ort_ops import contrib_ops_for
    from edgekit.profiles import resolve_profile

    path = export_decoder(qwen, tmp_path / "g" / "model.onnx", ops="ort-contrib")
    graph = onnx.load(str(path), load_external_data=False)
    jetson, cpu = resolve_profile("jetson-orin"), resolve_profile("x86-64-cpu")
    assert jetson.decoder_ops == "standard" and cpu.decoder_ops == "ort-contrib"
    check_ops(graph, cpu, extra_ops=contrib_ops_for(cpu.decoder_ops))
    with pytest.raises(OpSupportError, match="com.microsoft"):
        check_ops(graph, jetson, extra_ops=contrib_ops_for(jetson.decoder_ops))
    with pytest.raises(DecoderError, match="jetson-orin.*Fix: export with ops=\"standard\""):
        write_decoder_bundle(qwen, tokenizer, path, tmp_path / "b", profile="jetson-orin", max_context=64)
    bundle = write_decoder_bundle(qwen, tokenizer, path, tmp_path / "c", profile="x86-64-cpu", max_context=64)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["graph_ops"] == "ort-contrib"
