"""Sequence classification (one label per text) for any AutoModelForSequenceClassification."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from edgekit_runtime.errors import EdgekitError

from ..budget.passes import pass_plan_budget, pass_quality_floor, pass_student_floor
from ..bundle.manifest import build_manifest, stage_files
from ..compiler.adapter import ExportIO
from ..data.passes import pass_load_data
from ..distill.passes import pass_distill, pass_evaluate_student
from ..evaluate.passes import pass_evaluate_bundle, pass_evaluate_teacher
from ..export.passes import pass_check_ops, pass_export, pass_rewrite
from ..models.passes import pass_load_teacher
from ..prune.passes import pass_prune, plan_text
from ..quant.passes import pass_int8, pass_qat, pass_quant_gate
from ..train.passes import pass_finetune
from ..validate.passes import pass_validate

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _key(entry) -> str:
    return entry[0] if isinstance(entry, (tuple, list)) else str(entry)


def _head_prefixes(model) -> tuple[str, ...]:
    """Module names of the classification head (created fresh when the label set differs)."""
    names = [name for name, _ in model.named_children() if name in ("classifier", "pre_classifier", "score")]
    return tuple(names) or ("classifier",)


TEACHER_PASSES = ["load-data", "load-teacher", "finetune", "evaluate-teacher"]
COMPRESS_PASSES = ["load-data", "load-teacher", "plan-budget", "finetune", "evaluate-teacher"]
GRAPH_PASSES = ["export", "rewrite", "check-ops", "validate", "evaluate-bundle"]


class SequenceClassification:
    name = "sequence-classification"
    context_name = "max_length"
    context_flag = "in the recipe"
    PASSES = {
        "load-data": pass_load_data, "load-teacher": pass_load_teacher, "finetune": pass_finetune,
        "evaluate-teacher": pass_evaluate_teacher, "prune": pass_prune, "distill": pass_distill,
        "evaluate-student": pass_evaluate_student, "qat": pass_qat, "int8": pass_int8, "quant-gate": pass_quant_gate,
        "export": pass_export, "rewrite": pass_rewrite, "check-ops": pass_check_ops, "validate": pass_validate,
        "evaluate-bundle": pass_evaluate_bundle, "plan-budget": pass_plan_budget,
        "student-floor": pass_student_floor, "quality-floor": pass_quality_floor,
    }

    # -- the compile: which passes, in which order, and what the bundle holds ------------------------

    def pass_names(self, recipe) -> list[str]:
        """The passes this recipe runs, in order (student stages in the recipe's order). Compressing
        (a student, or int8 left to the plan) adds the budget plan before training and the quality
        floors after the student and after the bundle."""
        method, compress = recipe.quantize.method, recipe.compress
        middle = [*recipe.student.order, "evaluate-student"] if recipe.student.enabled else []
        if recipe.student.enabled:
            middle.append("student-floor")
        if method in ("qat", "auto"):
            middle.append("qat")
        graph = list(GRAPH_PASSES)
        if method != "none":
            graph.insert(graph.index("rewrite") + 1, "int8")
            graph.insert(graph.index("validate") + 1, "quant-gate")
        if compress:
            graph.append("quality-floor")
        return (COMPRESS_PASSES if compress else TEACHER_PASSES) + middle + graph

    def max_context(self, recipe, profile) -> int:
        return recipe.max_length

    def preflight(self, recipe, profile) -> None:
        """Nothing beyond the shared preflight: an empty [prune] is the budget plan's to fill, and
        the plan refuses a budget no student fits before any training."""

    def default_out(self, profile) -> Path:
        return Path("bundles") / profile.name

    def bundle_files(self, state) -> dict[str, Any]:
        return stage_files(state)

    def manifest(self, state) -> dict[str, Any]:
        return build_manifest(state)

    def extra_ops(self, target) -> frozenset[tuple[str, str]]:
        return frozenset()  # standard ONNX domain only

    def plan(self, state) -> str:
        """`--plan`: load the data and the teacher, plan to the budget (timing this host, no training)
        when compressing, and say what pruning would cut."""
        recipe = state.recipe
        pass_load_data(state)
        pass_load_teacher(state)
        head = ""
        if recipe.compress:
            head = "\n".join(pass_plan_budget(state).notes) + "\n"
        recipe = state.recipe
        if not (recipe.student.enabled and "prune" in recipe.student.order):
            return head + "no pruning in this recipe (no student, or no 'prune' in [student] order)"
        return head + plan_text(state)

    # -- the model: head, batches, loss, metrics, graph signature ------------------------------------

    def load_model(self, path: str, label_names: Sequence[str]) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        labels = list(label_names)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)}, attn_implementation="eager",
            ignore_mismatched_sizes=True,  # a teacher fine-tuned on other labels gets a fresh head
            output_loading_info=True)
        # Only the head may be re-initialised: a body weight of the wrong shape (e.g. an edgekit-pruned
        # model saved with plain save_pretrained, which drops its per-layer head counts) is an error,
        # not a random layer.
        head = _head_prefixes(model)
        body = [key for key in info.get("mismatched_keys", []) if not _key(key).startswith(head)]
        if body:
            raise EdgekitError(f"{path}: weights of the wrong shape for this architecture: {[_key(k) for k in body][:4]}"
                             f"{' ...' if len(body) > 4 else ''}. If this is a pruned edgekit model, its per-layer "
                             f"sizes were lost. Fix: save it with edgekit.prune.apply.save_pruned (or pass the "
                             f"directory edgekit wrote).")
        return model

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
