"""Causal language modelling (Qwen2 / DeepSeek-R1-Distill-Qwen, Llama) for AutoModelForCausalLM.

Labels are the input ids themselves (padding set to -100); the model shifts them. Batches are left
padded and carry ``position_ids`` computed from the mask, as the exported KV-cache graph takes them
(docs/decoder.md), so training and the device see the same positions.

The manifest's task section needs the tokenizer and the model, which the Protocol's
``manifest_task(label_names)`` does not receive: build it with ``causal_lm_task_section``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..models.decoder import DecoderError, check_supported, decoder_shape
from ..export.decoder import decoder_io, position_ids_from_mask
from .base import ExportIO

IGNORE = -100  # label of padding: no loss, no perplexity
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")
GENERATION_DEFAULTS = {"max_new_tokens": 256, "do_sample": False, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
THINK = ("<think>", "</think>")


class CausalLM:
    name = "causal-lm"

    def load_model(self, path: str, label_names: Sequence[str] = ()) -> torch.nn.Module:
        """fp32, eager attention (the KV-cache graph is float32; ``label_names`` has no meaning here)."""
        from transformers import AutoConfig, AutoModelForCausalLM

        check_supported(AutoConfig.from_pretrained(path))  # before loading billions of weights
        return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)

    def collate(self, tokenizer, texts, labels, max_length):
        """Left-padded ids, mask, position ids and labels (``labels`` is ignored: they are the ids)."""
        if tokenizer.padding_side != "left":
            raise DecoderError(f"tokenizer.padding_side={tokenizer.padding_side!r}; decoder batches pad on the left "
                               f"so every row's next token is the last column. Fix: set tokenizer.padding_side = "
                               f"'left' before collating.")
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        mask = enc["attention_mask"]
        return {"input_ids": enc["input_ids"], "attention_mask": mask, "position_ids": position_ids_from_mask(mask),
                "labels": enc["input_ids"].masked_fill(mask == 0, IGNORE)}

    def model_inputs(self, model, batch):
        return {k: batch[k] for k in MODEL_INPUTS if k in batch}

    def loss(self, outputs, batch):
        if getattr(outputs, "loss", None) is not None:
            return outputs.loss
        logits, labels = outputs.logits[:, :-1], batch["labels"][:, 1:]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE)

    def predictions(self, outputs):
        return outputs.logits

    def metrics(self, outputs, labels) -> dict[str, float]:
        """Shifted next-token NLL over non-padding labels, and its exp. Takes (N, S, V) logits with
        (N, S) labels, or sequences of per-batch arrays (batches padded to different lengths)."""
        pairs = zip(outputs, labels) if isinstance(outputs, (list, tuple)) else [(outputs, labels)]
        total, count = 0.0, 0
        for logits, target in pairs:
            logits, target = np.asarray(logits), np.asarray(target)
            for row, row_labels in zip(logits, target):  # one row at a time: (S, V) float64 is small
                keep = row_labels[1:] != IGNORE
                if not keep.any():
                    continue
                x = row[:-1][keep].astype(np.float64)
                top = x.max(-1, keepdims=True)
                lse = top[:, 0] + np.log(np.exp(x - top).sum(-1))
                total += float((lse - x[np.arange(len(x)), row_labels[1:][keep]]).sum())
                count += int(keep.sum())
        if count == 0:
            raise DecoderError("metrics got no labelled token after shifting (every label is -100 or rows have one "
                               "token). Fix: evaluate on texts of at least two tokens.")
        nll = total / count
        return {"perplexity": math.exp(nll), "nll": nll}

    def export_io(self, model, tokenizer) -> ExportIO:
        return decoder_io(model)

    def manifest_task(self, label_names) -> dict[str, Any]:
        raise DecoderError("the causal-lm manifest section needs the tokenizer, the model and the context length, "
                           "which manifest_task(label_names) does not get. Fix: call edgekit.tasks.causal_lm."
                           "causal_lm_task_section(tokenizer, model, max_context=...).")


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _single_token(tokenizer, text: str) -> bool:
    """``text`` is one vocabulary entry and encodes to just it (the runtime looks it up by token_to_id)."""
    token_id = tokenizer.convert_tokens_to_ids(text)
    return token_id is not None and token_id != tokenizer.unk_token_id \
        and tokenizer.encode(text, add_special_tokens=False) == [token_id]


def _generation(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    unknown = sorted(set(overrides or {}) - set(GENERATION_DEFAULTS))
    if unknown:
        raise DecoderError(f"generation keys {unknown} are not part of the manifest. Fix: use only "
                           f"{sorted(GENERATION_DEFAULTS)}.")
    gen = {**GENERATION_DEFAULTS, **(overrides or {})}

    def number(key, integer=False):  # bool is an int to Python, not to the manifest
        return isinstance(gen[key], int if integer else (int, float)) and not isinstance(gen[key], bool)

    checks = [("max_new_tokens", number("max_new_tokens", True) and gen["max_new_tokens"] >= 1, "a positive integer"),
              ("do_sample", isinstance(gen["do_sample"], bool), "true or false"),
              ("temperature", number("temperature") and 0 < gen["temperature"] < math.inf, "a number > 0"),
              ("top_k", number("top_k", True) and gen["top_k"] >= 0, "an integer >= 0 (0 = off)"),
              ("top_p", number("top_p") and 0 < gen["top_p"] <= 1, "a number in (0, 1]")]
    for key, ok, wanted in checks:
        if not ok:
            raise DecoderError(f"generation.{key}={gen[key]!r} must be {wanted}. "
                               f"Fix: e.g. {GENERATION_DEFAULTS[key]!r}.")
    return gen


def causal_lm_task_section(tokenizer, model, *, max_context: int,
                           generation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest ``task`` section of docs/decoder.md (stands in for the Protocol's manifest_task)."""
    shape = decoder_shape(model)
    config = getattr(model, "config", model)
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(max_context, int) or max_context < 2 or (limit and max_context > limit):
        raise DecoderError(f"max_context={max_context!r}: must be an integer in [2, {limit}] (the model's "
                           f"max_position_embeddings; RoPE beyond it was never trained). Fix: lower max_context.")
    gen_config = getattr(model, "generation_config", None)
    eos = list(dict.fromkeys(_ids(tokenizer.eos_token_id) + _ids(getattr(config, "eos_token_id", None))
                             + _ids(getattr(gen_config, "eos_token_id", None))))
    if not eos:
        raise DecoderError("neither the tokenizer nor the model config names an end-of-sequence token; generation "
                           "would never stop. Fix: set tokenizer.eos_token (or config.eos_token_id).")
    pad = tokenizer.pad_token_id
    pad = pad if pad is not None else getattr(config, "pad_token_id", None)
    template = tokenizer.chat_template
    if isinstance(template, Mapping):  # named templates: the runtime renders the default one
        template = template.get("default")
    think = {"start": THINK[0], "end": THINK[1]} if all(_single_token(tokenizer, t) for t in THINK) else None
    return {"name": CausalLM.name, "num_layers": shape.num_layers, "num_key_value_heads": shape.num_kv_heads,
            "head_dim": shape.head_dim, "vocab_size": shape.vocab_size, "max_context": max_context,
            "eos_token_ids": eos, "pad_token_id": int(pad) if pad is not None else eos[0],
            "bos_token_id": tokenizer.bos_token_id, "chat_template": template, "think": think,
            "generation": _generation(generation)}
