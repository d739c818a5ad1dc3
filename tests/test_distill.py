"""Distillation losses, schedules and the teacher cache, checked against hand-computed numbers."""

import math
from types import SimpleNamespace

import pytest
import torch

from edgekit.data import load_labelled
from edgekit.distill import (AttentionConfig, DistillConfig, HiddenProjection, HiddenStateConfig, LogitKDConfig,
                             Schedule, TeacherCache, distill_loss, estimate_bytes)
from edgekit.distill.losses import attention_layer_map, attention_mse, hidden_layer_map, hidden_mse, logit_kd
from edgekit.recipe import RecipeError
from edgekit.tasks import get_task
from edgekit_runtime.errors import EdgekitError
from tests.tiny_models import make_csv, make_model_dir

# teacher logits [2 ln 3, 0] at T = 2 soften to [3/4, 1/4]; student logits [0, 0] give [1/2, 1/2].
KL_ROW = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)


def _outputs(logits, hidden=None, attentions=None):
    return SimpleNamespace(logits=torch.tensor(logits), hidden_states=hidden, attentions=attentions)


def _constant_cfg(task_weight=0.5, **extra):
    return DistillConfig(logits=LogitKDConfig(temperature=Schedule(2.0, 2.0, "constant")),
                         task_weight=Schedule(task_weight, task_weight, "constant"), soft_only_fraction=0.0, **extra)


def test_schedule_endpoints_and_shapes():
    linear = Schedule(4.0, 1.0, "linear")
    assert linear.value(0, 11) == 4.0 and linear.value(10, 11) == 1.0 and linear.value(50, 11) == 1.0
    assert linear.value(5, 11) == pytest.approx(2.5)
    cosine = Schedule(4.0, 1.0, "cosine")
    assert cosine.value(0, 5) == 4.0 and cosine.value(4, 5) == 1.0
    assert cosine.value(2, 5) == pytest.approx(2.5)  # midpoint: same as linear
    assert cosine.value(1, 5) == pytest.approx(1.0 + 3.0 * 0.5 * (1 + math.cos(math.pi / 4)))  # 3.56, linear 3.25
    assert Schedule(0.5, 0.5, "constant").value(3, 10) == 0.5
    with pytest.raises(RecipeError, match="Fix"):
        Schedule(4.0, 1.0, "exponential")
    with pytest.raises(RecipeError, match="Fix"):
        LogitKDConfig(temperature=Schedule(4.0, 0.0))


def test_logit_kd_is_t_squared_forward_kl_batch_mean():
    student = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    teacher = torch.tensor([[2 * math.log(3), 0.0], [1.0, 2.0]])  # second row: no divergence
    assert logit_kd(student, teacher, 2.0).item() == pytest.approx(4 * KL_ROW / 2, rel=1e-6)


def test_logit_mse_is_summed_over_classes_and_averaged_over_the_batch():
    student = torch.tensor([[0.0, 1.0], [1.0, 2.0]])
    teacher = torch.tensor([[1.0, -1.0], [1.0, 2.0]])  # row errors (1 + 4) and 0
    assert logit_kd(student, teacher, 7.0, kind="mse").item() == pytest.approx(5.0 / 2)  # temperature unused
    with pytest.raises(RecipeError, match="mse"):
        LogitKDConfig(kind="reverse")


def test_total_mixes_kd_and_task_ce_by_task_weight():
    student, teacher = _outputs([[0.0, 0.0]]), _outputs([[2 * math.log(3), 0.0]])
    batch = {"labels": torch.tensor([0]), "input_ids": torch.zeros(1, 3, dtype=torch.long)}
    loss, parts = distill_loss(student, teacher, batch, step=0, total=10, cfg=_constant_cfg(0.3))
    kd, ce = 4 * KL_ROW, math.log(2)
    assert parts["kd"] == pytest.approx(kd, rel=1e-6) and parts["task"] == pytest.approx(ce, rel=1e-6)
    assert loss.item() == pytest.approx(0.7 * kd + 0.3 * ce, rel=1e-6)
    assert parts["temperature"] == 2.0 and parts["task_weight"] == 0.3
    assert parts["hidden"] is None and parts["attention"] is None


def test_progressive_task_weight_is_zero_for_first_20_percent():
    cfg = DistillConfig()  # soft_only_fraction 0.2, task weight 0.3 -> 0.6
    assert [cfg.task_weight_at(s, 10) for s in (0, 1)] == [0.0, 0.0]
    assert cfg.task_weight_at(2, 10) == 0.3 and cfg.task_weight_at(9, 10) == 0.6
    assert all(cfg.task_weight_at(s, 100) == 0.0 for s in range(20)) and cfg.task_weight_at(20, 100) == 0.3
    student, teacher = _outputs([[0.0, 0.0]]), _outputs([[2 * math.log(3), 0.0]])
    batch = {"labels": torch.tensor([1]), "input_ids": torch.zeros(1, 3, dtype=torch.long)}
    loss, parts = distill_loss(student, teacher, batch, step=0, total=10, cfg=cfg)
    assert parts["task_weight"] == 0.0 and parts["temperature"] == 4.0 and loss.item() == parts["kd"]


def test_hidden_mse_ignores_padding():
    student = torch.tensor([[[1.0, 2.0], [100.0, -100.0]]])  # second token is padding
    teacher = torch.zeros(1, 2, 2)
    assert hidden_mse(student, teacher, torch.tensor([[1, 0]])).item() == pytest.approx((1 + 4) / 2)


def test_hidden_projection_used_when_widths_differ():
    proj = HiddenProjection(((1, 1),), student_width=2, teacher_width=3)
    with torch.no_grad():
        proj.proj["1"].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        proj.proj["1"].bias.zero_()
    assert len(list(HiddenProjection(((1, 1),), 4, 4).parameters())) == 0  # same width: identity
    embed = torch.zeros(1, 1, 2)
    student = _outputs([[0.0, 0.0]], hidden=(embed, torch.tensor([[[1.0, 2.0]]])))
    teacher = _outputs([[0.0, 0.0]], hidden=(torch.zeros(1, 1, 3), torch.zeros(1, 1, 3)))
    cfg = DistillConfig(hidden=HiddenStateConfig(layer_map=((1, 1),), weight=1.0))
    batch = {"labels": torch.tensor([0]), "attention_mask": torch.ones(1, 1, dtype=torch.long)}
    loss, parts = distill_loss(student, teacher, batch, 0, 10, cfg, proj)  # step 0: soft only, equal logits: KD 0
    assert parts["hidden"] == pytest.approx((1 + 4 + 9) / 3) and loss.item() == pytest.approx(14 / 3)
    loss.backward()
    assert proj.proj["1"].weight.grad is not None and proj.proj["1"].weight.grad.abs().sum() > 0


def test_layer_maps_are_evenly_spaced():
    assert hidden_layer_map(HiddenStateConfig(), 2, 6) == ((1, 3), (2, 6))
    assert attention_layer_map(AttentionConfig(), 2, 6) == ((1, 5),)  # last layer to last layer
    assert attention_layer_map(AttentionConfig(layers=None), 3, 6) == ((0, 1), (1, 3), (2, 5))
    with pytest.raises(RecipeError, match="Fix"):
        hidden_layer_map(HiddenStateConfig(layer_map=((1, 9),)), 2, 6)


def test_attention_loss_masks_padded_queries_and_keys():
    mask = torch.tensor([[1, 0]])
    student = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])  # [batch, heads, query, key]
    teacher = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])
    assert attention_mse(student, teacher, mask).item() == pytest.approx(0.25)  # only (q0, k0): 0.5 ** 2
    wild = teacher.clone()
    wild[0, 0, 1, :] = 9.0
    wild[0, 0, :, 1] = 9.0
    assert attention_mse(student, wild, mask).item() == pytest.approx(0.25)


def test_attention_with_different_head_counts_compares_head_averages():
    student = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]]])  # 2 heads, mean 0.5 everywhere
    teacher = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # 1 head
    assert attention_mse(student, teacher, torch.ones(1, 2)).item() == pytest.approx(0.25)


@pytest.fixture(scope="module")
def teacher_and_data(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("cache")
    adapter = get_task("sequence-classification")
    ds, _ = load_labelled(make_csv(root / "d.csv", rows=20))
    path = make_model_dir(root / "teacher")
    teacher = adapter.load_model(str(path), ds.label_names).eval()
    return teacher, adapter, AutoTokenizer.from_pretrained(path), ds


def test_teacher_cache_matches_teacher_and_runs_it_once_per_example(teacher_and_data):
    teacher, adapter, tokenizer, ds = teacher_and_data
    seen = []
    hook = teacher.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        cache = TeacherCache(len(ds), 32, hidden_layers=(2,), attention_layers=(1,))
        cache.fill(teacher, adapter, tokenizer, ds, batch_size=8, progress=False)
        runs = list(seen)
        idx = [3, 0, 17, 9]
        batch = adapter.collate(tokenizer, [ds.texts[i] for i in idx], None, 32)
        for _ in range(3):  # three epochs: no further teacher runs
            got = cache.get(idx, batch["attention_mask"])
        assert seen == runs and sum(runs) == len(ds) == cache.teacher_examples
        with torch.no_grad():
            want = teacher(**adapter.model_inputs(teacher, batch), output_hidden_states=True, output_attentions=True)
    finally:
        hook.remove()
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.hidden_states[2][mask], want.hidden_states[2][mask], atol=1e-5, rtol=0)
    pair = (mask[:, :, None] & mask[:, None, :])[:, None].expand_as(want.attentions[1])
    torch.testing.assert_close(got.attentions[1][pair], want.attentions[1][pair], atol=1e-5, rtol=0)
    assert set(got.hidden_states) == {2} and got.num_layers == 2  # only the mapped layers are kept
    assert cache.memory_bytes == estimate_bytes(len(ds), 3, 32, 32, 1, 4, 1)


def test_teacher_cache_refuses_train_mode_and_changed_tokenization(teacher_and_data):
    teacher, adapter, tokenizer, ds = teacher_and_data
    cache = TeacherCache(len(ds), 32)
    with pytest.raises(EdgekitError, match="teacher.eval"):
        cache.fill(teacher.train(), adapter, tokenizer, ds, progress=False)
    teacher.eval()
    cache.fill(teacher, adapter, tokenizer, ds, progress=False)
    short = adapter.collate(tokenizer, [ds.texts[0]], None, 3)["attention_mask"]  # another max_length
    with pytest.raises(EdgekitError, match="token count"):
        cache.get([0], short)


def test_teacher_cache_memory_estimate():
    # 30k examples, 3 labels, 128 tokens, hidden 384: logits + lengths, then 2 mapped hidden layers in fp32.
    assert estimate_bytes(30_000, 3, 128) == 30_000 * 3 * 4 + 30_000 * 8 == 600_000  # 0.6 MB
    assert estimate_bytes(30_000, 3, 128, 384, 2) == 600_000 + 2 * 30_000 * 128 * 384 * 4 == 11_797_080_000  # 11 GiB
    assert estimate_bytes(30_000, 3, 128, 384, 2, itemsize=2) == 5_898_840_000  # fp16: 5.5 GiB


def test_teacher_cache_spills_to_disk_past_its_memory_limit(teacher_and_data, tmp_path):
    teacher, adapter, tokenizer, ds = teacher_and_data
    with pytest.raises(EdgekitError, match="disk_dir"):
        TeacherCache(len(ds), 32, hidden_layers=(1,), max_memory_bytes=1).fill(teacher, adapter, tokenizer, ds,
                                                                              progress=False)
    on_disk = TeacherCache(len(ds), 32, hidden_layers=(1,), max_memory_bytes=1, disk_dir=tmp_path)
    on_disk.fill(teacher, adapter, tokenizer, ds, progress=False)
    in_memory = TeacherCache(len(ds), 32, hidden_layers=(1,))
    in_memory.fill(teacher, adapter, tokenizer, ds, progress=False)
    assert (tmp_path / "hidden1.npy").exists()
    mask = adapter.collate(tokenizer, [ds.texts[i] for i in (4, 2)], None, 32)["attention_mask"]
    a, b = on_disk.get([4, 2], mask), in_memory.get([4, 2], mask)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.hidden_states[1], b.hidden_states[1])
