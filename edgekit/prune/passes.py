"""The prune stage's passes: structured cuts (tensors cut, config rewritten), encoder and decoder.

The recipe's ``[student] order`` decides whether an encoder prunes before or after distillation;
a causal LM prunes its copy of the teacher (blocks, GQA groups, SwiGLU channels) before distilling.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from edgekit_runtime.errors import EdgekitError

from ..compiler.state import CompileState, PassResult
from ..data import cap
from ..train.causal import text_batches
from . import prune
from .apply import check_weight_loading, load_pruned, save_pruned
from .decoder import prune_decoder
from .importance import PruneScores, compute_scores
from .plan import format_plan, make_plan


def student_model(state: CompileState) -> torch.nn.Module:
    if state.model is state.teacher:
        state.model = copy.deepcopy(state.teacher).eval()
    return state.model


def importance_batches(state: CompileState) -> list[dict[str, torch.Tensor]]:
    """Labelled train batches for importance scores (deterministic sample)."""
    cfg = state.recipe.student
    sample = cap(state.splits.train, cfg.importance_batches * cfg.importance_batch_size, cfg.importance_batches)
    out = []
    for start in range(0, len(sample), cfg.importance_batch_size):
        texts = sample.texts[start:start + cfg.importance_batch_size]
        labels = sample.labels[start:start + cfg.importance_batch_size]
        batch = state.adapter.collate(state.tokenizer, texts, labels, state.recipe.max_length)
        out.append({**state.adapter.model_inputs(state.model, batch), "labels": batch["labels"]})
    return out


def plan_text(state: CompileState) -> str:
    """The dry run for `edgekit compile --plan`: what would be cut, per layer, before anything runs."""

    cfg = state.recipe.prune
    needs_data = cfg.layer_strategy == "importance" or (cfg.heads_to_keep is not None and cfg.head_score == "gradient") \
        or (cfg.ffn_keep_ratio is not None and cfg.ffn_score == "taylor")
    scores = compute_scores(state.model, cfg, importance_batches(state)) if needs_data else PruneScores()
    plan = make_plan(state.model, cfg, scores)
    note = ("\n(which layers / heads / neurons are kept is scored on the teacher as loaded; the compile scores "
            "the fine-tuned teacher, so the indices may differ; the counts do not)") if needs_data else ""
    return format_plan(plan, state.model, seq_len=state.recipe.max_length) + note


def check_plan_fits(state: CompileState) -> None:
    """Refuse a prune config the teacher cannot take (too many layers / heads) before any training.

    Plans with weight-only scores, which run the same checks as the real plan without task data.
    """


    cfg = dataclasses.replace(state.recipe.prune, layer_strategy="uniform", head_score="variance",
                              ffn_score="magnitude")
    make_plan(state.model, cfg, compute_scores(state.model, cfg))


def pass_prune(state: CompileState) -> PassResult:
    cfg = state.recipe.prune
    cfg.require_something()
    teacher = state.model  # the model as it stands (the teacher, or a student distilled first)
    reference = copy.deepcopy(teacher)
    batches = importance_batches(state)
    student, plan = prune(copy.deepcopy(teacher), cfg, batches)
    table = format_plan(plan, reference, seq_len=state.recipe.max_length)
    counts = plan.param_counts(reference)
    # Round trip: the cut student saves, reloads with from_pretrained and computes the same thing.
    saved = save_pruned(student, state.workdir / "student-pruned")
    reloaded = load_pruned(saved).eval()
    missing = check_weight_loading(reloaded, student.state_dict())
    with torch.no_grad():
        probe = {k: v for k, v in batches[0].items() if k != "labels"}
        diff = float((reloaded(**probe).logits - student.eval()(**probe).logits).abs().max())
    if diff > 1e-5 or missing:

        raise EdgekitError(f"the pruned student does not reload faithfully (max |logit diff| {diff:.3g}, missing "
                           f"keys {missing[:5]}). Fix: report this model type; pruning it is not supported yet.")
    state.model = student.eval()
    figures = {"plan": [{"layer": r.layer, "kept": r.kept, "heads": list(r.heads), "ffn": list(r.ffn),
                         "params": list(r.params), "mflops": [round(f / 1e6, 1) for f in r.flops]}
                        for r in plan.layer_figures(reference, state.recipe.max_length)],
               "params": {k: list(v) for k, v in counts.items()},
               "non_embedding_ratio": round(counts["non_embedding"][1] / counts["non_embedding"][0], 4),
               "reload_max_abs_diff": diff, "reload_missing_keys": missing}
    state.figures.setdefault("compression", {}).update(prune=figures)
    return PassResult(figures=figures, notes=table.splitlines()[-3:])


def pass_prune_lm(state: CompileState) -> PassResult:
    """GQA-aware cut of a copy of the teacher: blocks by angular importance, KV groups or query heads,
    SwiGLU channels (deterministic, so a resumed compile cuts the same student again)."""
    cfg = state.recipe.prune
    student = copy.deepcopy(state.teacher)
    batches = [{**b, "labels": b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)}
               for b in text_batches(state.tokenizer, state.splits.train[:256], state.recipe.max_length, 16)]
    student, report = prune_decoder(student, cfg, batches)
    state.echo("\n".join("      " + line for line in str(report).splitlines()))
    state.model = student
    before, after = report.params
    return PassResult(figures={"params_before": before, "params_after": after,
                               "param_ratio": round(after / before, 4)})
