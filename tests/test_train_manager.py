"""Training management: warmup clamp, early stopping, divergence alerts, checkpoints and exact resume."""

import json

import pytest
import torch

from edgekit.data import load_labelled, split_dataset
from edgekit.distill import AttentionConfig, DistillConfig, HiddenStateConfig
from edgekit.tasks import get_task
from edgekit.train.loop import distill_train
from edgekit.train.manager import CheckpointManager, DivergenceMonitor, EarlyStopper, LossCurveWriter, TrainingConfig
from tests.tiny_models import make_csv, make_model_dir


def test_defaults_and_warmup_clamp():
    cfg = TrainingConfig()
    # epochs and learning rate are left to the training rows (edgekit.train.scaling)
    assert cfg.effective_batch == 32 and cfg.learning_rate is None and cfg.epochs is None and cfg.weight_decay == 0.01
    assert cfg.warmup(1000) == 100  # 500 asked, at most 10% of 1000 steps
    assert cfg.warmup(10_000) == 500


def test_early_stopping_after_three_non_improving_evals():
    stopper = EarlyStopper(patience=3)
    stops = []
    for metric in (0.5, 0.6, 0.6, 0.55, 0.59):
        stopper.update(metric)
        stops.append(stopper.should_stop)
    assert stops == [False, False, False, False, True] and stopper.best == 0.6


def test_divergence_alert_fires_on_growing_gap_only():
    growing = DivergenceMonitor(window=3)
    alerts = [growing.update(kd, 0.5) for kd in (0.6, 0.7, 0.9, 1.2)]  # gaps 0.1, 0.2, 0.4, 0.7
    assert alerts[:3] == [None, None, None] and "Fix" in alerts[3] and "temperature" in alerts[3]
    shrinking = DivergenceMonitor(window=3)
    assert all(shrinking.update(kd, 0.5) is None for kd in (1.2, 0.9, 0.7, 0.6, 0.55))
    flat_then_up = DivergenceMonitor(window=3)
    assert all(flat_then_up.update(kd, 0.5) is None for kd in (0.7, 0.7, 0.8, 0.9))  # one step did not grow


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    ckpt = CheckpointManager(tmp_path)
    ckpt.save({"step": 1, "w": torch.ones(2)})

    def torn(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError):
        ckpt.save({"step": 2, "w": torch.zeros(2)})
    assert ckpt.load_latest()["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_loss_curve_keeps_rows_up_to_resume_step(tmp_path):
    curve = LossCurveWriter(tmp_path / "c.jsonl")
    for step in (1, 2, 3):
        curve.step(step, {"total": 1.0 / step})
    curve.eval(2, {"macro_f1": 0.5})
    LossCurveWriter(tmp_path / "c.jsonl", keep_until=2)
    rows = [json.loads(r) for r in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in rows] == [("step", 1), ("step", 2), ("eval", 2)]
    assert set(rows[0]) == {"kind", "step", *LossCurveWriter.STEP_KEYS}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

    root = tmp_path_factory.mktemp("manager")
    adapter = get_task("sequence-classification")
    splits = split_dataset(load_labelled(make_csv(root / "d.csv", rows=60))[0], seed=0)
    path = make_model_dir(root / "teacher")
    tokenizer = AutoTokenizer.from_pretrained(path)
    teacher = adapter.load_model(str(path), splits.train.label_names).eval()

    def student():  # narrower (16 vs 32), shallower (1 vs 2 layers), fewer heads (2 vs 4) than the teacher
        torch.manual_seed(1)
        cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=128, num_labels=3)
        return AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager")

    return adapter, tokenizer, teacher, splits, student


CFG = TrainingConfig(batch_size=8, grad_accum=2, learning_rate=1e-3, warmup_steps=2, max_steps=6, eval_every=2)
DISTILL = DistillConfig(hidden=HiddenStateConfig(), attention=AttentionConfig())


def _run(setup, workdir, distill=DISTILL, cfg=CFG, **kw):
    adapter, tokenizer, teacher, splits, make_student = setup
    student = make_student()
    result = distill_train(student, teacher if distill else None, adapter, tokenizer, splits.train,
                           splits.validation, distill, cfg, 32, workdir, **kw)
    return student, result


def test_resume_reaches_the_same_weights(setup, tmp_path):
    full, full_result = _run(setup, tmp_path / "full")

    def interrupt(step):
        if step == 3:  # after the step-2 checkpoint, mid-way to the next one
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(setup, tmp_path / "cut", on_step=interrupt)
    resumed, result = _run(setup, tmp_path / "cut", resume=True)
    assert result.resumed_from == 2 and result.steps == full_result.steps == 6
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))
    assert result.losses == full_result.losses and result.history == full_result.history
    rows = [json.loads(r) for r in (tmp_path / "cut" / "loss_curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "step"] == [1, 2, 3, 4, 5, 6]  # the cut run's step 3 replaced
    first = rows[0]
    assert first["temperature"] == 4.0 and first["task_weight"] == 0.0 and first["hidden"] > 0 and first["attention"] > 0
    assert result.teacher_cache_bytes > 0


def test_hard_label_training_stops_early(setup, tmp_path):
    cfg = TrainingConfig(batch_size=8, grad_accum=1, learning_rate=1e-3, warmup_steps=0, max_steps=50, eval_every=1,
                         early_stopping_patience=3)
    _, result = _run(setup, tmp_path, distill=None, cfg=cfg, eval_fn=lambda: {"score": 0.5})
    assert result.stopped_early and result.steps == 4  # best at eval 1, then 3 evaluations without improvement
    rows = [json.loads(r) for r in (tmp_path / "loss_curve.jsonl").read_text().splitlines() if '"step"' in r]
    assert rows[0]["kd"] is None and rows[0]["task"] > 0 and rows[0]["task_weight"] == 1.0
