"""The budget's passes: plan the student before training, hold the quality floor after it.

``plan-budget`` (after the teacher is loaded, before any training) times a handful of shapes of
the teacher's own architecture on this host (edgekit.budget.cost), picks layers, heads, FFN width
and precision for the budget (edgekit.budget.search), rewrites the recipe's [student], [prune]
and [quantize] to that plan and prints it with its predicted figures.

``student-floor`` (fp32 student, after distillation) and ``quality-floor`` (the bundle through the
device runtime) compare the headline validation metric with the fine-tuned teacher's. A loss
over the allowance backs off: the plan for a 1.5x looser budget (more of the teacher kept),
from the first student pass again, within the retries and minutes allowed; past those, or when a
budget the user wrote leaves no bigger student, the compile stops with the figures and the next
step. It never writes a bundle that lost more than the allowance.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

import edgekit_runtime
import numpy as np
import onnx
from edgekit_runtime.errors import EdgekitError

from ..compiler.state import CompileState, PassResult
from ..data import TextDataset
from ..quant.ptq import _graph_inputs
from ..train.finetune import evaluate
from .config import BudgetConfig
from .cost import CostModel, Shape, fit_cost_model, random_feeds, teacher_shape, time_graphs
from .search import BACKOFF, Candidate, candidates, choose, smallest, teacher_figures, within

PLAN_FILE = "budget-plan.json"
GROWTH = 1.25  # a back-off keeps at least this much more of the teacher than the attempt before
# what a student attempt leaves in the work directory (the teacher's fine-tune and logit cache stay)
STUDENT_FILES = ("student-pruned", "distill/checkpoints", "distill/loss_curve.jsonl", "qat", "student-qat.pt",
                 "export.onnx", "model.onnx", "model-int8.onnx", "stage")


class BudgetError(EdgekitError):
    """No student fits the budget, or none holds the quality floor within the allowance."""


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekit" / "cost"


def precisions(recipe, profile) -> list[str]:
    method = recipe.quantize.method
    if method == "auto":
        return ["int8", "fp32"] if "int8" in profile.precisions else ["fp32"]
    return ["fp32"] if method == "none" else ["int8"]


def fixed_shape(recipe, teacher: Shape) -> Shape | None:
    """The shape the recipe fixes (no student: the teacher's; --layers / --heads / ffn_keep_ratio), or None."""
    p = recipe.prune
    if not recipe.student.enabled:
        return teacher
    if p.is_noop:
        return None
    return Shape(p.layers_to_keep or teacher.layers, p.heads_to_keep or teacher.heads,
                 max(1, round((p.ffn_keep_ratio or 1.0) * teacher.ffn)))


def apply_candidate(recipe, c: Candidate, teacher: Shape, precision_planned: bool):
    """The recipe that trains ``c``: a student only if it cuts something; int8 as planned (when the
    recipe left [quantize] method to the plan)."""
    cut = c.shape != teacher
    prune = dataclasses.replace(
        recipe.prune, layers_to_keep=c.shape.layers if c.shape.layers < teacher.layers else None,
        heads_to_keep=c.shape.heads if c.shape.heads < teacher.heads else None,
        ffn_keep_ratio=c.shape.ffn / teacher.ffn if c.shape.ffn < teacher.ffn else None)
    method = recipe.quantize.method
    if precision_planned:
        method = "qat" if c.precision == "int8" else "none"
    return dataclasses.replace(recipe, student=dataclasses.replace(recipe.student, enabled=cut),
                               prune=prune if cut else recipe.prune,
                               quantize=dataclasses.replace(recipe.quantize, method=method))


def _check_absolute(limit, profile, what: str) -> None:
    """An ms budget is a figure on the target: this host's timings are only that where they are the target."""
    host = platform.machine().lower().replace("amd64", "x86_64")
    if limit is not None and limit.absolute is not None and profile.architecture.lower() != host:
        raise BudgetError(f"--{what}-budget {limit.describe('ms')}: profile {profile.name!r} is {profile.architecture} "
                          f"and this host is {host}; the latency model is measured here, so milliseconds on the "
                          f"target cannot be predicted. Fix: give the budget as a ratio to the teacher (e.g. "
                          f"--latency-budget 0.2), which carries across machines far better than milliseconds.")


def _limits(recipe):
    return recipe.budget.latency_limit(), recipe.budget.size_limit()


def _pool(recipe, allowed: list[str], cost: CostModel, fixed: Shape | None) -> list[Candidate]:
    pool = candidates(cost, allowed, recipe.quantize.embeddings)
    if fixed is None:
        return pool
    return [Candidate(fixed, p, cost.latency_ms(fixed, p), cost.size_bytes(fixed, p, recipe.quantize.embeddings),
                      1.0) for p in allowed]


def _save(state: CompileState) -> None:
    path = state.workdir / PLAN_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.figures["budget"], indent=1))
    tmp.replace(path)


def _to_candidate(d: dict) -> Candidate:
    shape = Shape(d["layers"], d["heads"], d["ffn"])
    return Candidate(shape, d["precision"], d["predicted_ms"], d["predicted_bytes"], d["capacity"])


def hold_out_judge(state: CompileState) -> dict[str, int]:
    """Split validation in two, stratified and deterministic: one half chooses checkpoints (early
    stopping, QAT selection, the int8 gate), the other only judges the floor. Judged on the rows that
    chose the student's best checkpoint, a student looked 1.5 points below its teacher and was 4.5
    below on the test split (benchmarks/budget.py, 500 rows)."""
    val = state.splits.validation
    seen: dict[int, int] = {}
    judge, select = [], []
    for i, label in enumerate(val.labels):
        (judge if seen.get(label, 0) % 2 else select).append(i)
        seen[label] = seen.get(label, 0) + 1
    part = lambda idx, what: TextDataset(tuple(val.texts[i] for i in idx), tuple(val.labels[i] for i in idx),
                                         val.label_names, f"{val.source} ({what} half of validation)")
    state.judge = part(judge, "judge")
    state.splits = dataclasses.replace(state.splits, validation=part(select, "select"))
    return {"select_rows": len(select), "judge_rows": len(judge)}


def pass_plan_budget(state: CompileState) -> PassResult:
    recipe, profile = state.recipe, state.profile
    halves = hold_out_judge(state)
    saved = state.workdir / PLAN_FILE
    if state.resume and saved.is_file():  # the same plan (and back-off step) as the interrupted run
        budget = json.loads(saved.read_text())
        cost = CostModel.from_dict(budget["cost_model"])
        state.figures["budget"] = budget
        state.recipe = apply_candidate(recipe, _to_candidate(budget["attempts"][-1]), cost.teacher,
                                       budget["precision_planned"])
        return PassResult(notes=[f"resumed: the plan of attempt {len(budget['attempts'])} from {saved}"])
    latency, size = _limits(recipe)
    _check_absolute(latency, profile, "latency")
    cfg, allowed = recipe.budget, precisions(recipe, profile)
    # fp32 is always timed: ratio budgets are to the teacher's fp32 latency
    cost = fit_cost_model(state.teacher, state.adapter, state.tokenizer, length=cfg.length or recipe.max_length,
                          batch=cfg.batch, threads=recipe.threads, precisions=tuple(dict.fromkeys(["fp32", *allowed])),
                          cache_dir=cache_dir() if cfg.cache else None, echo=state.echo)
    teacher = teacher_shape(state.teacher)
    fixed = fixed_shape(recipe, teacher)
    pool = _pool(recipe, allowed, cost, fixed)
    chosen = choose(pool, cost, latency, size)
    notes: list[str] = []
    if chosen is None and fixed is None:
        low = smallest(pool)
        teacher_ms, teacher_bytes = teacher_figures(cost)
        need = f"{low.latency_ms / teacher_ms:.3f} / {low.bytes / teacher_bytes:.3f}"
        if any(x is not None and x.hard for x in (latency, size)):
            raise BudgetError(
                f"no student of this teacher fits the budget (latency {_show(latency, 'ms')}, size "
                f"{_show(size, 'b')}): the smallest is {low.describe(cost)}. Fix: loosen --latency-budget / "
                f"--size-budget to at least {need}, or \"none\".")
        chosen = low  # the default budget is out of this teacher's reach: the fastest student, said loudly
        notes.append(f"no student meets the default budget (the fastest is at {need} x the teacher's latency / "
                     f"bytes); planning the fastest. Set --latency-budget / --size-budget to choose another.")
    if chosen is None:  # a shape the recipe fixed: train it, but say what the budget would have wanted
        chosen = min(pool, key=lambda c: c.latency_ms)
        over = "hard" if any(x is not None and x.hard for x in (latency, size)) else "default"
        if over == "hard":
            raise BudgetError(f"the student the recipe fixes ({chosen.describe(cost)}) is over the budget (latency "
                              f"{_show(latency, 'ms')}, size {_show(size, 'b')}). Fix: drop --layers / --heads (the "
                              f"budget then picks the shape), or loosen the budget.")
        notes.append(f"the fixed student is over the default budget: {chosen.describe(cost)}")
    planned = recipe.quantize.method == "auto"
    state.recipe = apply_candidate(recipe, chosen, teacher, planned)
    teacher_ms, teacher_bytes = teacher_figures(cost)
    state.figures["budget"] = {
        "latency": _show(latency, "ms"), "size": _show(size, "b"), "quality_allowance": cfg.quality_allowance,
        "batch": cost.batch, "length": cost.length, "teacher_ms": round(teacher_ms, 3), "teacher_bytes": teacher_bytes,
        "validation": halves, "fixed_shape": fixed is not None, "precisions": allowed, "precision_planned": planned, "cost_model": cost.to_dict(), "attempts": [chosen.to_dict(cost)],
        "started": time.time()}
    _save(state)
    what = "student" if chosen.shape != teacher else "teacher (no cut fits better)"
    notes.insert(0, f"plan: {what} {chosen.describe(cost)}; teacher fp32 {teacher_ms:.2f} ms, "
                    f"{teacher_bytes / 1e6:.1f} MB at batch {cost.batch} x {cost.length} on this host")
    return PassResult(figures={"plan": chosen.to_dict(cost), "residual": cost.residual}, notes=notes)


def _show(limit, unit: str) -> str:
    return "none" if limit is None else limit.describe("ms" if unit == "ms" else "bytes")


def teacher_validation(state: CompileState) -> dict[str, float]:
    budget = state.figures["budget"]
    if "teacher_validation" not in budget:
        budget["teacher_validation"] = evaluate(state.teacher, state.adapter, state.tokenizer,
                                                state.judge, state.recipe.max_length)
    return budget["teacher_validation"]


def _judge(state: CompileState, stage: str, metrics: dict[str, float], extra: dict | None = None) -> PassResult:
    teacher = teacher_validation(state)
    key = next(iter(teacher))
    drop = teacher[key] - metrics[key]
    allowance = state.recipe.budget.quality_allowance
    attempt = state.figures["budget"]["attempts"][-1]
    attempt[stage] = {"validation": metrics, "drop": round(drop, 4), **(extra or {})}
    _save(state)
    line = (f"quality floor ({stage}): validation {key} {metrics[key]:.4f} vs the teacher's {teacher[key]:.4f} "
            f"({-drop * 100:+.2f} points, allowance {allowance * 100:.1f})")
    if drop <= allowance:
        return PassResult(changed=False, figures=attempt[stage], notes=[line])
    return back_off(state, line)


def pass_student_floor(state: CompileState) -> PassResult:
    metrics = evaluate(state.model, state.adapter, state.tokenizer, state.judge, state.recipe.max_length)
    return _judge(state, "student", metrics)


def pass_quality_floor(state: CompileState) -> PassResult:
    """The bundle as the device runs it: validation metric, and measured vs predicted latency and bytes."""
    model = edgekit_runtime.load(state.workdir / "stage", threads=state.recipe.threads)
    logits = model.logits(list(state.judge.texts))
    metrics = state.adapter.metrics(logits, np.asarray(state.judge.labels))
    budget = state.figures["budget"]
    cost = CostModel.from_dict(budget["cost_model"])
    feeds = random_feeds(_graph_inputs(onnx.load(str(state.onnx_path), load_external_data=False)), cost.batch,
                         cost.length, state.tokenizer.vocab_size, np.random.default_rng(0))
    measured_ms = time_graphs([(state.onnx_path, state.precision)], feeds, cost.threads)[0]
    measured_bytes = sum(p.stat().st_size for p in (state.workdir / "stage").glob("*.onnx*"))
    attempt = budget["attempts"][-1]
    extra = {"measured_ms": round(measured_ms, 3), "measured_latency_ratio": round(measured_ms / budget["teacher_ms"], 4),
             "measured_bytes": measured_bytes, "measured_size_ratio": round(measured_bytes / budget["teacher_bytes"], 4),
             "predicted_ms": attempt["predicted_ms"], "predicted_bytes": attempt["predicted_bytes"]}
    return _judge(state, "bundle", metrics, extra)


def reset_student(state: CompileState) -> None:
    """Back to the fine-tuned teacher, with the last attempt's student files gone."""
    state.model, state.fp32_model, state.onnx_path, state.precision = state.teacher, None, None, "fp32"
    state.rules_applied = ()
    state.figures.pop("compression", None)
    state.extra_files.pop("training/student_loss_curve.jsonl", None)
    for name in STUDENT_FILES:
        path = state.workdir / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def back_off(state: CompileState, line: str) -> PassResult:
    budget, cfg = state.figures["budget"], state.recipe.budget
    cost = CostModel.from_dict(budget["cost_model"])
    retries = len(budget["attempts"]) - 1
    minutes = (time.time() - budget["started"]) / 60
    relax = BACKOFF ** (retries + 1)
    latency, size = _limits(state.recipe)
    nxt = None
    if not budget["fixed_shape"] and retries < cfg.backoff_retries and minutes < cfg.backoff_minutes:
        pool = _pool(state.recipe, budget["precisions"], cost, None)
        current = budget["attempts"][-1]["capacity"]
        nxt = choose(pool, cost, latency, size, relax)
        if nxt is None or nxt.capacity <= current:
            # the looser plan keeps no more (a default budget out of reach): the fastest student keeping a
            # quarter more of the teacher, within any limit the user wrote
            bigger = [c for c in pool if c.capacity >= GROWTH * current and within(c, cost, latency, size, math.inf)]
            nxt = min(bigger, key=lambda c: (c.latency_ms, -c.capacity)) if bigger else None
    if nxt is None:
        raise BudgetError(_stop_message(state, line, cost, retries, minutes, relax))
    reset_student(state)
    state.recipe = apply_candidate(state.recipe, nxt, cost.teacher, budget["precision_planned"])
    budget["attempts"].append({**nxt.to_dict(cost), "relax": relax})
    _save(state)
    names = state.adapter.pass_names(state.recipe)
    return PassResult(notes=[line, (f"backing off (retry {retries + 1} of {cfg.backoff_retries}, budget x{relax:g}): "
                                    f"{nxt.describe(cost)}")],
                      rerun_from=names[names.index("evaluate-teacher") + 1])


def _stop_message(state, line: str, cost: CostModel, retries: int, minutes: float, relax: float) -> str:
    budget, cfg = state.figures["budget"], state.recipe.budget
    tried = "; ".join(f"{a['layers']}L {a['heads']}H FFN {a['ffn']} {a['precision']}" for a in budget["attempts"])
    if budget["fixed_shape"]:
        why = "the recipe fixes the student's shape (--layers / --heads / [prune])"
        fix = "cut less (more --layers / --heads), or drop them and let the budget plan"
    elif retries >= cfg.backoff_retries or minutes >= cfg.backoff_minutes:
        why = f"the back-off allowance is spent ({retries} retries, {minutes:.0f} min)"
        fix = "raise [budget] backoff_retries / backoff_minutes"
    else:
        why = "the budget you set leaves no bigger student"
        soft = BudgetConfig()
        loose = choose(_pool(state.recipe, budget["precisions"], cost, None), cost, soft.latency_limit(),
                       soft.size_limit(), relax)
        need = loose.to_dict(cost) if loose else None
        fix = ("loosen --latency-budget / --size-budget" + (f" (the next plan needs about "
               f"{need['predicted_latency_ratio']:.3f} x the teacher's latency and "
               f"{need['predicted_size_ratio']:.3f} x its bytes)" if need else ""))
    return (f"{line}: over the allowance, and {why}. Tried: {tried}. Fix: {fix}; or accept a larger loss with "
            f"[budget] quality_allowance; or compile without compression (--no-compress). No bundle was written.")
