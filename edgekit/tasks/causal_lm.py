"""Causal language modelling (Qwen2 / DeepSeek-R1-Distill-Qwen, Llama) for AutoModelForCausalLM.

Labels are the input ids themselves (padding set to -100); the model shifts them. Batches are left
padded and carry ``position_ids`` computed from the mask, as the exported KV-cache graph takes them
(docs/decoder.md), so training and the device see the same positions.

The compile runs the same loop as every task (edgekit.compiler.run) over this adapter's passes;
the manifest's task section (stop ids, KV shapes, chat template) is edgekit.bundle.decoder's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..bundle.decoder import decoder_files, decoder_manifest
from ..compiler.adapter import ExportIO
from ..data.passes import pass_load_texts
from ..distill.passes import pass_distill_lm
from ..evaluate.passes import pass_evaluate_graph, pass_evaluate_lm_student, pass_evaluate_lm_teacher
from ..export.decoder import decoder_io, position_ids_from_mask
from ..export.ort_ops import contrib_ops_for
from ..export.passes import pass_check_ops, pass_export_lm
from ..models.decoder import DecoderError, check_supported
from ..models.passes import pass_load_lm_teacher
from ..prune.passes import pass_prune_lm
from ..quant.passes import pass_qat_lm
from ..train.passes import pass_finetune_lm
from ..validate.passes import pass_validate_lm

IGNORE = -100  # label of padding: no loss, no perplexity
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


class CausalLM:
    name = "causal-lm"
    context_name = "max_context"
    context_flag = "--max-context"
    PASSES = {
        "load data": pass_load_texts, "load teacher": pass_load_lm_teacher, "fine-tune teacher": pass_finetune_lm,
        "evaluate teacher": pass_evaluate_lm_teacher, "prune": pass_prune_lm, "distill": pass_distill_lm,
        "evaluate student": pass_evaluate_lm_student, "qat int8": pass_qat_lm, "export": pass_export_lm,
        "check ops": pass_check_ops, "validate": pass_validate_lm, "evaluate graph": pass_evaluate_graph,
    }

    # -- the compile: which passes, in which order, and what the bundle holds ------------------------

    def pass_names(self, recipe) -> list[str]:
        names = ["load data", "load teacher"]
        if recipe.finetune.steps:
            names.append("fine-tune teacher")
        names.append("evaluate teacher")
        if recipe.prune is not None:
            names += ["prune", "distill", "evaluate student"]
        if recipe.quantize.method == "qat":
            names.append("qat int8")
        return names + ["export", "check ops", "validate", "evaluate graph"]

    def max_context(self, recipe, profile) -> int:
        """Prompt + generated tokens the bundle allows (the teacher's RoPE range is checked on load)."""
        return recipe.max_context or profile.max_sequence_length

    def preflight(self, recipe, profile) -> None:
        pass  # the prune counts need the teacher's shape: checked by "load teacher", before any training

    def default_out(self, profile) -> Path:
        return Path("bundles") / f"{profile.name}-lm"

    def bundle_files(self, state) -> dict[str, Any]:
        return decoder_files(state.tokenizer, state.onnx_path)

    def manifest(self, state) -> dict[str, Any]:
        model = state.fp32_model or state.model
        target = state.target
        max_context = min(target.max_context, getattr(model.config, "max_position_embeddings", target.max_context))
        int8 = {"method": target.int8_method, "format": target.int8_format} if state.precision == "int8" else None
        return decoder_manifest(model, state.tokenizer, state.onnx_path, profile=state.profile,
                                precision=state.precision, int8=int8, max_context=max_context,
                                recipe=state.recipe.to_dict(), pass_log=state.pass_log, figures=state.figures,
                                rewrite_rules=state.rules_applied)

    def extra_ops(self, target) -> frozenset[tuple[str, str]]:
        """Beyond the ONNX domain: ONNX Runtime's fused decoder ops where the profile's decoder_ops allows them."""
        return contrib_ops_for(target.decoder_ops)

    def plan(self, state) -> str:
        raise DecoderError("--plan prints an encoder's cut; a causal LM's prune report is printed by the compile "
                           "itself (pass \"prune\"). Fix: run the compile without --plan.")

    # -- the model: head, batches, loss, metrics, graph signature ------------------------------------

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
                           "which manifest_task(label_names) does not get. Fix: call edgekit.bundle.decoder."
                           "causal_lm_task_section(tokenizer, model, max_context=...).")
