"""Sequence classification (one label per text) for any AutoModelForSequenceClassification."""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .base import ExportIO

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class SequenceClassification:
    name = "sequence-classification"

    def load_model(self, path: str, label_names: Sequence[str]) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        labels = list(label_names)
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)}, attn_implementation="eager",
            ignore_mismatched_sizes=True,  # a teacher fine-tuned on other labels gets a fresh head
        )

    def collate(self, tokenizer, texts, labels, max_length):
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        batch = dict(enc)
        if labels is not None:
            batch["labels"] = torch.as_tensor(list(labels), dtype=torch.long)
        return batch

    def _forward_names(self, model) -> tuple[str, ...]:
        params = inspect.signature(model.forward).parameters
        return tuple(n for n in TOKEN_INPUTS if n in params)

    def model_inputs(self, model, batch):
        return {k: batch[k] for k in self._forward_names(model) if k in batch}

    def loss(self, outputs, batch):
        return F.cross_entropy(outputs.logits, batch["labels"])

    def predictions(self, outputs):
        return outputs.logits

    def metrics(self, outputs, labels):
        from sklearn.metrics import accuracy_score, f1_score

        pred = np.asarray(outputs).argmax(-1)
        return {"macro_f1": float(f1_score(labels, pred, average="macro", zero_division=0)),
                "accuracy": float(accuracy_score(labels, pred))}

    def export_io(self, model, tokenizer) -> ExportIO:
        # Only the inputs both the tokenizer produces and the model takes (DistilBERT and
        # RoBERTa-style tokenizers have no token_type_ids, for instance).
        produced = set(tokenizer.model_input_names)
        names = tuple(n for n in self._forward_names(model) if n in produced)
        axes = {n: {0: "batch", 1: "sequence"} for n in names}
        axes["logits"] = {0: "batch"}
        return ExportIO(input_names=names, output_names=("logits",), dynamic_axes=axes)

    def manifest_task(self, label_names) -> dict[str, Any]:
        return {"name": self.name, "labels": list(label_names)}
