"""The budget: limits as written, the student search, training scaled to the rows, and the compile that
plans a student by default, backs off when the quality floor is missed, or stops with the figures."""

import json

import numpy as np
import pytest
import torch

import edgekit.budget.passes as budget_passes
from edgekit.budget.config import BudgetConfig, parse_limit
from edgekit.budget.cost import CostModel, Shape
from edgekit.budget.passes import BudgetError
from edgekit.budget.search import candidates, capacity, choose
from edgekit.compiler.run import compile_bundle, work_dir
from edgekit.profiles import resolve_profile
from edgekit.recipe import RecipeError, load_recipe, recipe_from_flags
from edgekit.train.scaling import row_schedule, scaled_finetune, scaled_qat, scaled_student
from edgekit.recipe import FinetuneConfig
from edgekit.train.manager import TrainingConfig
from tiny_models import make_csv, make_model_dir


# -- limits ------------------------------------------------------------------------------------------

def test_limits_default_soft_written_hard():
    default = BudgetConfig()
    assert default.latency_limit().ratio == 0.2 and not default.latency_limit().hard
    assert default.size_limit().ratio == 0.25 and not default.size_limit().hard
    cfg = BudgetConfig(latency="15ms", size="20MB")
    assert cfg.latency_limit().absolute == 15 and cfg.latency_limit().hard
    assert cfg.size_limit().absolute == 20e6
    assert BudgetConfig(latency=0.3).latency_limit().allowed(10.0) == pytest.approx(3.0)
    assert BudgetConfig(latency="none").latency_limit() is None


@pytest.mark.parametrize("key, value, match", [
    ("latency", 1.5, r"ratio to the teacher and must be in \(0, 1\]"),
    ("latency", "15MB", r"positive figure in ms"),
    ("size", "15ms", r"positive figure in bytes"),
    ("latency", "fast", r'use e.g. 0.2, "15ms"'),
])
def test_bad_limits_say_how_to_fix(key, value, match):
    with pytest.raises(RecipeError, match=match):
        BudgetConfig(**{key: value})


def test_flags_reach_the_recipe():
    flags = {"teacher": "t", "data": "d.csv", "latency_budget": "0.3", "size_budget": "20MB", "no_compress": False}
    recipe = recipe_from_flags("sequence-classification", {}, flags)
    assert recipe.budget.latency == 0.3 and recipe.budget.size == "20MB" and recipe.compress
    off = recipe_from_flags("sequence-classification", {}, {"teacher": "t", "no_compress": True})
    assert not off.compress and not off.student.enabled and off.quantize.method == "none"
    with pytest.raises(RecipeError, match="--latency-budget applies to --task sequence-classification"):
        recipe_from_flags("causal-lm", {}, {"teacher": "t", "latency_budget": "0.2"})


# -- the search, on a cost model with known coefficients -------------------------------------------

def _cost() -> CostModel:
    sizes = {"hidden": 64, "head_dim": 16, "embedding": 100_000, "embedding_int8": 96_000,
             "embedding_int8_rows": 1500, "layer_fixed": 500, "per_head": 4 * 16 * 64 + 48, "per_head_bias": 48,
             "per_neuron": 129, "per_neuron_bias": 1, "head": 200, "head_int8": 0, "head_int8_channels": 0,
             "overhead_fp32": 0, "overhead_layer_fp32": 0, "overhead_int8": 0, "overhead_layer_int8": 0}
    # fp32: 1 ms + 1 ms per layer + 0.1 per head + 0.001 per neuron; int8 half of the per-layer cost
    return CostModel(teacher=Shape(6, 4, 256), batch=1, length=128, threads=2,
                     coefficients={"fp32": (1.0, 1.0, 0.1, 0.001), "int8": (1.0, 0.5, 0.05, 0.0005)},
                     points=(), residual={"fp32": 0.0, "int8": 0.0}, param_sizes=sizes)


def test_choice_fits_the_limits_and_keeps_the_most():
    cost = _cost()
    pool = candidates(cost, ["int8", "fp32"])
    teacher_ms = cost.latency_ms(cost.teacher, "fp32")
    latency, size = BudgetConfig(latency=0.4, size="none").latency_limit(), None
    chosen = choose(pool, cost, latency, size)
    assert chosen.latency_ms <= 0.4 * teacher_ms
    fits = [c for c in pool if c.latency_ms <= 0.4 * teacher_ms]
    assert chosen.capacity >= 0.97 * max(c.capacity for c in fits)
    assert chosen.precision == "int8"  # at this budget int8 buys more of the teacher
    # a soft budget loosened keeps more; a hard one never loosens
    soft = BudgetConfig().latency_limit()
    assert choose(pool, cost, soft, None, relax=1.5).capacity > choose(pool, cost, soft, None).capacity
    assert choose(pool, cost, latency, None, relax=1.5) == chosen
    assert capacity(cost, cost.teacher) == pytest.approx(1.0)


def test_no_fit_is_none():
    cost = _cost()
    tiny = BudgetConfig(latency="0.01ms").latency_limit()
    assert choose(candidates(cost, ["int8"]), cost, tiny, None) is None


# -- training scaled to the rows -----------------------------------------------------------------------

def test_training_scales_with_rows_and_keeps_written_values():
    assert row_schedule(500) == (10.0, 1e-4, 1)
    assert row_schedule(30_000)[:2] == (2.0, 5e-5)
    assert row_schedule(500_000)[0] == 1.0
    small, large = scaled_finetune(FinetuneConfig(), 500), scaled_finetune(FinetuneConfig(), 30_000)
    assert small.epochs > large.epochs and small.learning_rate > large.learning_rate
    assert large.eval_every < 30_000 / 16  # several evaluations per epoch on large data
    assert scaled_finetune(FinetuneConfig(epochs=1.5, learning_rate=2e-5), 500).epochs == 1.5
    student = scaled_student(TrainingConfig(), 2_000)
    assert student.epochs == 6 and student.learning_rate == 1e-4
    assert scaled_student(TrainingConfig(learning_rate=3e-5, epochs=1), 2_000).learning_rate == 3e-5
    qat = load_recipe(None, {"teacher": "t"}).qat_train
    assert qat.epochs is None  # half an epoch, but never fewer than 100 optimizer steps
    assert scaled_qat(qat, 500).total_steps(500) >= 100 and scaled_qat(qat, 100_000).epochs == 0.5


# -- the compile -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("bert"), "bert")


def _recipe(tmp_path, teacher, **extra):
    values = {"profile": "x86-64-cpu", "teacher": str(teacher), "max_length": 32, "threads": 1,
              "data": {"path": str(make_csv(tmp_path / "data.csv", rows=150))},
              "finetune": {"max_steps": 20, "batch_size": 8, "learning_rate": 1e-3, "eval_every": 10},
              "student": {"importance_batches": 2, "importance_batch_size": 8},
              "student_train": {"max_steps": 10, "batch_size": 8, "eval_every": 5},
              "qat_train": {"max_steps": 4, "batch_size": 8},
              "rewrite": {"measure_samples": 16},
              "validate": {"batch_sizes": [1], "lengths": [8, 32], "batches_per_shape": 1},
              "budget": {"cache": False}, "bundle": {"out": str(tmp_path / "bundle")}}
    for key, value in extra.items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    return load_recipe(None, values)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_default_compile_plans_a_student_and_records_predicted_and_measured(tmp_path, bert_dir):
    recipe = _recipe(tmp_path, bert_dir)
    assert recipe.compress and recipe.prune.is_noop  # nothing asked: the plan decides
    state = compile_bundle(recipe, resolve_profile("x86-64-cpu"), echo=lambda s: None)
    manifest = json.loads((state.bundle_path / "manifest.json").read_text())
    names = [p["name"] for p in manifest["pass_log"]]
    assert names.index("plan-budget") < names.index("finetune") and names[-1] == "quality-floor"
    budget = manifest["figures"]["budget"]
    plan = budget["attempts"][-1]
    assert [plan["layers"], plan["heads"], plan["ffn"]] != budget["cost_model"]["teacher"]
    assert "prune" in names  # the plan cut something, so a student was trained
    measured = plan["bundle"]
    assert measured["measured_ms"] > 0 and measured["measured_bytes"] > 0
    assert measured["measured_bytes"] == pytest.approx(plan["predicted_bytes"], rel=0.25)
    assert measured["drop"] <= recipe.budget.quality_allowance
    # the floor judged on validation rows no early stopping saw: half of them, disjoint from the rest
    val_rows = next(p for p in manifest["pass_log"] if p["name"] == "load-data")["figures"]["validation"]["rows"]
    halves = budget["validation"]
    assert halves["judge_rows"] + halves["select_rows"] == val_rows and abs(halves["judge_rows"] - val_rows / 2) <= 3
    assert not set(state.judge.texts) & set(state.splits.validation.texts)
    # the recipe in the manifest is the one that was trained: the planned shape, the planned precision
    assert manifest["recipe"]["prune"]["layers_to_keep"] in (None, plan["layers"])
    assert manifest["recipe"]["quantize"]["method"] == ("qat" if plan["precision"] == "int8" else "none")
    assert manifest["model"]["precision"] == plan["precision"]
    assert not work_dir(state.bundle_path).exists()
    from edgekit.report import write_report

    html = write_report(state.bundle_path, tmp_path / "report.html").read_text()  # the plan vs what was measured
    assert "<h3>Budget</h3>" in html and "latency predicted" in html and f"{plan['layers']} L" in html


def _failing_first_student(monkeypatch, teacher_params: int):
    """Score the first student at 0 on validation (as a student that lost everything would)."""
    real, calls = budget_passes.evaluate, []

    def evaluate(model, *args, **kwargs):
        metrics = real(model, *args, **kwargs)
        if _params(model) < teacher_params:
            calls.append(_params(model))
            if len(calls) == 1:
                return {k: 0.0 for k in metrics}
        return metrics

    monkeypatch.setattr(budget_passes, "evaluate", evaluate)
    return calls


def test_missed_floor_backs_off_to_a_bigger_student(tmp_path, bert_dir, monkeypatch):
    calls = _failing_first_student(monkeypatch, _teacher_params(bert_dir))
    state = compile_bundle(_recipe(tmp_path, bert_dir), resolve_profile("x86-64-cpu"), echo=lambda s: None)
    manifest = json.loads((state.bundle_path / "manifest.json").read_text())
    attempts = manifest["figures"]["budget"]["attempts"]
    assert len(attempts) == 2 and attempts[0]["student"]["drop"] > 0.02
    assert attempts[1]["capacity"] > attempts[0]["capacity"]
    names = [p["name"] for p in manifest["pass_log"]]
    assert names.count("student-floor") == 2 and names[-1] == "quality-floor"
    assert len(calls) >= 2 and calls[1] > calls[0]  # the retry's student is bigger


def _teacher_params(bert_dir) -> int:
    from edgekit.tasks import get_task

    return _params(get_task("sequence-classification").load_model(str(bert_dir), ["negative", "neutral", "positive"]))


def test_fixed_shape_that_misses_the_floor_stops_with_figures(tmp_path, bert_dir, monkeypatch):
    teacher = _teacher_params(bert_dir)
    monkeypatch.setattr(budget_passes, "evaluate", lambda model, *a, **k: (
        {"macro_f1": 0.0, "accuracy": 0.0} if _params(model) < teacher else {"macro_f1": 1.0, "accuracy": 1.0}))
    recipe = _recipe(tmp_path, bert_dir, prune={"layers_to_keep": 1, "heads_to_keep": 2})
    with pytest.raises(BudgetError, match=r"quality floor \(student\).*recipe fixes the student's shape.*Fix:"):
        compile_bundle(recipe, resolve_profile("x86-64-cpu"), echo=lambda s: None)
    assert not (tmp_path / "bundle").exists()
    assert (work_dir(tmp_path / "bundle") / "budget-plan.json").is_file()  # the figures are kept


def test_a_written_budget_no_student_meets_is_refused_before_training(tmp_path, bert_dir):
    recipe = _recipe(tmp_path, bert_dir, budget={"latency": 0.01, "cache": False})
    with pytest.raises(BudgetError, match=r"no student of this teacher fits the budget.*--latency-budget"):
        compile_bundle(recipe, resolve_profile("x86-64-cpu"), echo=lambda s: None)
    assert not (tmp_path / "bundle").exists()


def test_milliseconds_need_the_target_to_be_this_host(tmp_path, bert_dir):
    recipe = _recipe(tmp_path, bert_dir, profile="jetson-orin", budget={"latency": "5ms", "cache": False})
    with pytest.raises(BudgetError, match=r"5 ms.*aarch64.*ratio to the teacher"):
        compile_bundle(recipe, resolve_profile("jetson-orin"), echo=lambda s: None)


def test_finetune_stops_early_and_keeps_the_best(bert_dir):
    from transformers import AutoTokenizer

    from edgekit.data import TextDataset
    from edgekit.tasks import get_task
    from edgekit.train.finetune import train

    adapter = get_task("sequence-classification")
    model = adapter.load_model(str(bert_dir), ["a", "b", "c"])
    tokenizer = AutoTokenizer.from_pretrained(str(bert_dir))
    ds = TextDataset(("good day", "bad day", "a day") * 8, (0, 1, 2) * 8, ("a", "b", "c"), "test")
    scores = iter([0.5, 0.9, 0.4, 0.3, 0.2, 0.1, 0.0, 0.0, 0.0])
    snapshots = []

    def eval_fn():
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"macro_f1": next(scores)}

    result = train(model, adapter, tokenizer, ds, FinetuneConfig(epochs=9, batch_size=8, eval_every=1,
                                                                 learning_rate=1e-3), 16, eval_fn=eval_fn)
    assert result.stopped_early and result.best_step == 2 and result.steps == 5  # 0.9 at step 2, 3 worse after
    best = snapshots[1]
    assert all(torch.equal(best[k], v) for k, v in model.state_dict().items())
    assert np.isclose(result.best_metric, 0.9)
