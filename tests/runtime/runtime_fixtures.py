"""Builders for the runtime tests' tiny bundle (used by conftest.py; tests import the constants).

A random 2-layer BERT exported to ONNX opset 13, a WordPiece tokenizer.json, and a manifest.
These use torch and transformers; the runtime under test must not.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from edgekit_runtime import load_profile_file, profile_from_dict
from edgekit_runtime.backends.trt_plan import trtexec_line

REPO = Path(__file__).resolve().parents[2]
LABELS = ["negative", "neutral", "positive"]
MAX_LENGTH = 32
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "was", "great", "bad", "good", "not",
         "i", "it", "film", "love", "hate", "##s", "##ing", ",", ".", "!", "a", "very", "story", "acting",
         "and", "but", "fun", "boring", "plot", "music", "ok", "slow", "loved", "terrible"]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")

MINIMAL_PROFILE = {
    "name": "x86-64-cpu", "description": "test CPU profile", "device": "x86-64 test machine",
    "architecture": "x86_64", "accelerator": "cpu", "backends": ["ort-cpu"], "precisions": ["fp32"],
    "default_precision": "fp32", "opset": 13, "rewrite_rules": [], "unsupported_ops": [], "token_dtype": "int64",
    "memory_budget_mb": 1024, "max_sequence_length": 512, "tolerances": {"fp32": {"atol": 1e-4, "rtol": 1e-3}},
}


def cpu_profile_dict() -> dict:
    """The x86-64-cpu profile's data, from the repo's TOML when it exists."""
    path = REPO / "device_profiles" / "x86-64-cpu.toml"
    if path.exists():
        return load_profile_file(path).to_dict()
    return profile_from_dict(MINIMAL_PROFILE).to_dict()


def build_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", VOCAB.index("[CLS]")), ("[SEP]", VOCAB.index("[SEP]"))])
    tok.save(str(path))


def export_model(path: Path) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    # A wide initializer so different texts give clearly different logits.
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=len(LABELS),
                        initializer_range=0.5)
    model = BertForSequenceClassification._from_config(config, attn_implementation="eager").eval()
    ids = torch.tensor([[2, 5, 6, 7, 8, 3], [2, 12, 15, 13, 3, 0]])
    args = (ids, (ids != 0).long(), torch.zeros_like(ids))
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    axes["logits"] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=13, input_names=list(INPUTS),
                          output_names=["logits"], dynamic_axes=axes)


def tiny_manifest(profile_data: dict) -> dict:
    profile = profile_from_dict(profile_data, source="tests")
    return {
        "edgekit_version": "0.1.0",
        "profile": {"name": profile.name, "sha256": profile.sha256, "data": profile.to_dict()},
        "task": {"name": "sequence-classification", "labels": list(LABELS)},
        "model": {"file": "model.onnx", "precision": "fp32", "opset": 13,
                  "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in INPUTS],
                  "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", len(LABELS)]}]},
        "tokenizer": {"file": "tokenizer.json", "max_length": MAX_LENGTH, "pad_token_id": 0,
                      "padding_side": "right", "truncation_side": "right"},
        "recipe": {"task": "sequence-classification", "max_length": MAX_LENGTH},
        "pass_log": [{"name": "export", "seconds": 0.42, "changed": True},
                     {"name": "validate", "seconds": 0.07, "changed": False}],
        "figures": {"validation": {"precision": "fp32", "atol": 1e-4, "rtol": 1e-3, "max_abs_diff": 2.1e-6},
                    "substitutions": {"gelu-tanh": {"fired": False, "skipped": []}}},
    }


# ---------------------------------------------------------------- GPU profiles and TensorRT engine plans

MODEL_SHA = "ab" * 32
GPU_FIELDS = {"accelerator": "gpu", "tensorrt": "10.3", "cuda": "12.6", "compute_capability": "8.7",
              "int8_formats": ["qdq"], "int8_format": "qdq", "decoder_ops": "standard"}


def make_plan(flags=("fp16",), max_batch=32, length=MAX_LENGTH, workspace=4096, names=INPUTS):
    plan = {"tensorrt": "10.3", "compute_capability": "8.7", "flags": list(flags), "workspace_mb": workspace,
            "shapes": {n: {"min": [1, 1], "opt": [1, length], "max": [max_batch, length]} for n in names}}
    plan["trtexec"] = trtexec_line(plan)
    return plan


def gpu_profile(backends):
    return profile_from_dict(cpu_profile_dict() | GPU_FIELDS | {"backends": list(backends)}, source="test")
