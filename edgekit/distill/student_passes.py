"""Student passes: prune the teacher's copy (cut, not masked), distill it, evaluate it.

The recipe's ``[student] order`` decides the order of prune and distill (default prune -> distill,
as in Minitron); each runs on ``state.model``, which starts as a copy of the fine-tuned teacher.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data import cap

if TYPE_CHECKING:
    from ..pipeline import CompileState, PassResult


def _student(state: "CompileState") -> torch.nn.Module:
    if state.model is state.teacher:
        state.model = copy.deepcopy(state.teacher).eval()
    return state.model


def importance_batches(state: "CompileState") -> list[dict[str, torch.Tensor]]:
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


def plan_text(state: "CompileState") -> str:
    """The dry run for `edgekit compile --plan`: what would be cut, per layer, before anything runs."""
    from ..prune import PruneScores, compute_scores, format_plan, make_plan

    cfg = state.recipe.prune
    needs_data = cfg.layer_strategy == "importance" or (cfg.heads_to_keep is not None and cfg.head_score == "gradient") \
        or (cfg.ffn_keep_ratio is not None and cfg.ffn_score == "taylor")
    scores = compute_scores(state.model, cfg, importance_batches(state)) if needs_data else PruneScores()
    plan = make_plan(state.model, cfg, scores)
    note = ("\n(which layers / heads / neurons are kept is scored on the teacher as loaded; the compile scores "
            "the fine-tuned teacher, so the indices may differ; the counts do not)") if needs_data else ""
    return format_plan(plan, state.model, seq_len=state.recipe.max_length) + note


def check_plan_fits(state: "CompileState") -> None:
    """Refuse a prune config the teacher cannot take (too many layers / heads) before any training.

    Plans with weight-only scores, which run the same checks as the real plan without task data.
    """
    import dataclasses

    from ..prune import compute_scores, make_plan

    cfg = dataclasses.replace(state.recipe.prune, layer_strategy="uniform", head_score="variance",
                              ffn_score="magnitude")
    make_plan(state.model, cfg, compute_scores(state.model, cfg))


def pass_prune(state: "CompileState") -> "PassResult":
    from ..pipeline import PassResult
    from ..prune import check_weight_loading, format_plan, load_pruned, prune, save_pruned

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
        from edgekit_runtime.errors import EdgekitError

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


def pass_distill(state: "CompileState") -> "PassResult":
    from ..pipeline import PassResult
    from ..train.finetune import evaluate
    from ..train.loop import distill_train

    student = _student(state)
    val = state.splits.validation
    result = distill_train(
        student, state.teacher, state.adapter, state.tokenizer, state.splits.train, val, state.recipe.distill,
        state.recipe.student_train, state.recipe.max_length, state.workdir / "distill", resume=state.resume,
        eval_fn=lambda: evaluate(student, state.adapter, state.tokenizer, val, state.recipe.max_length))
    state.model = student.eval()
    state.extra_files["training/student_loss_curve.jsonl"] = result.curve_path
    figures = {"steps": result.steps, "seconds": round(result.seconds, 1), "best_validation": result.best_metric,
               "stopped_early": result.stopped_early, "resumed_from": result.resumed_from,
               "teacher_cache_bytes": result.teacher_cache_bytes, "history": result.history,
               "alerts": result.alerts}
    state.figures.setdefault("compression", {}).update(distill=figures)
    return PassResult(figures=figures, notes=list(result.alerts))


def pass_evaluate_student(state: "CompileState") -> "PassResult":
    from ..pipeline import PassResult
    from ..train.finetune import predict

    test = state.splits.test
    logits = predict(state.model, state.adapter, state.tokenizer, test, state.recipe.max_length)
    metrics = state.adapter.metrics(logits, np.asarray(test.labels))
    teacher = state.figures["quality"]["teacher_pytorch"]
    headline = next(iter(metrics))
    retention = metrics[headline] / teacher[headline] if teacher[headline] else float("nan")
    params = sum(p.numel() for p in state.model.parameters())
    state.figures["quality"]["student_pytorch"] = metrics
    state.figures["quality"]["student_retention"] = round(retention, 4)
    return PassResult(changed=False, figures={"student_pytorch": metrics, "retention": retention,
                                              "parameters": params},
                      notes=[f"student test {headline} {metrics[headline]:.4f} = {retention:.1%} of the teacher's"])
