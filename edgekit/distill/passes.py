"""The distillation stage's passes: the student learns from the teacher (encoder: logit KD with an
annealed temperature, hidden-state and attention losses; causal LM: token KD, optionally from an
on-disk top-k cache of the teacher), then is evaluated on the test split."""

from __future__ import annotations

import time

import numpy as np

from ..compiler.state import CompileState, PassResult
from ..prune.passes import student_model
from ..train.causal import distill_causal, text_batches
from ..train.checkpoint import load_module, save_module
from ..train.finetune import evaluate, predict
from ..train.loop import distill_train
from .topk_cache import TopKCache, estimate_bytes


def pass_distill(state: CompileState) -> PassResult:
    student = student_model(state)
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


def pass_evaluate_student(state: CompileState) -> PassResult:
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


def pass_distill_lm(state: CompileState) -> PassResult:
    """Token-level KD of the pruned causal LM from its teacher (live, or from an on-disk top-k cache)."""
    saved = state.workdir / "student-distilled.pt"
    if state.resume and saved.is_file():
        state.model, figures = load_module(saved)
        return PassResult(figures=figures, notes=[f"resumed: the distilled student reloaded from {saved}"])
    cfg = state.recipe.distill
    texts = list(state.splits.train[:cfg.max_texts] if cfg.max_texts else state.splits.train)
    teacher, extra = state.teacher, {}
    if cfg.teacher_cache_top_k:
        vocab = state.teacher.config.vocab_size
        cache = TopKCache(state.workdir / "teacher-topk", len(texts), state.recipe.max_length,
                          cfg.teacher_cache_top_k, vocab, pad_token_id=state.tokenizer.pad_token_id)
        start = time.perf_counter()
        teacher = cache.fill(state.teacher, text_batches(state.tokenizer, texts, state.recipe.max_length, 16))
        extra = {"teacher_cache_bytes": cache.nbytes, "teacher_cache_seconds": round(time.perf_counter() - start, 1),
                 "teacher_cache_estimate": estimate_bytes(len(texts), state.recipe.max_length,
                                                          cfg.teacher_cache_top_k, vocab)}
        state.echo(f"      teacher top-{cfg.teacher_cache_top_k} cache: {cache.nbytes:,} bytes on disk for "
                   f"{len(texts):,} texts; the teacher is freed for the student's training")
        state.teacher = None  # the cache is all the student needs; nothing later reads the teacher
    figures = distill_causal(state.model, teacher, state.tokenizer, texts, cfg.loss, steps=cfg.steps,
                             batch_size=cfg.batch_size, lr=cfg.learning_rate, max_length=state.recipe.max_length,
                             progress=state.progress, seed=state.recipe.seed)
    figures = {**{k: v for k, v in figures.items() if not isinstance(v, list)}, **extra}
    save_module(saved, state.model, figures)
    return PassResult(figures=figures)
