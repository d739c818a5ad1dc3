"""The teacher fine-tune stage: the task's supervised loss on its training split (every task)."""

from __future__ import annotations

import torch

from ..compiler.state import CompileState, PassResult
from .finetune import evaluate, train
from .lm_finetune import LMTrainConfig, pack_texts, train_lm


def pass_finetune(state: CompileState) -> PassResult:
    cfg = state.recipe.finetune
    if not cfg.enabled:
        return PassResult(changed=False, notes=["fine-tune disabled in the recipe: the teacher is used as loaded"])
    saved = state.workdir / "teacher-finetuned.pt"
    if state.resume and saved.is_file():
        state.teacher.load_state_dict(torch.load(saved, weights_only=True))
        return PassResult(notes=[f"resumed: fine-tuned teacher weights reloaded from {saved}"])
    val = state.splits.validation
    result = train(state.model, state.adapter, state.tokenizer, state.splits.train, cfg, state.recipe.max_length,
                   eval_fn=lambda: evaluate(state.model, state.adapter, state.tokenizer, val, state.recipe.max_length))
    tmp = saved.with_suffix(".tmp")
    torch.save(state.teacher.state_dict(), tmp)
    tmp.replace(saved)
    return PassResult(figures={"steps": result.steps, "seconds": round(result.seconds, 1),
                               "best_validation": result.best_metric, "best_step": result.best_step,
                               "stopped_early": result.stopped_early, "config": result.config,
                               "history": result.history,
                               "loss_first": result.losses[:1], "loss_last": result.losses[-1:]})


def pass_finetune_lm(state: CompileState) -> PassResult:
    """Next-token fine-tune of a causal-LM teacher on packed blocks of the training texts."""
    cfg = state.recipe.finetune
    if cfg.steps == 0:
        return PassResult(changed=False, figures={"skipped": "finetune.steps = 0"})
    saved = state.workdir / "teacher-finetuned.pt"
    if state.resume and saved.is_file():
        state.teacher.load_state_dict(torch.load(saved, weights_only=True))
        return PassResult(notes=[f"resumed: fine-tuned teacher weights reloaded from {saved}"])
    blocks = pack_texts(state.tokenizer, state.splits.train, state.recipe.max_length)
    figures = train_lm(state.teacher, blocks, LMTrainConfig(steps=cfg.steps, batch_size=cfg.batch_size,
                                                           block_size=state.recipe.max_length,
                                                           learning_rate=cfg.learning_rate,
                                                           warmup_steps=max(0, cfg.steps // 10),
                                                           seed=state.recipe.seed), progress=state.echo)
    tmp = saved.with_suffix(".tmp")
    torch.save(state.teacher.state_dict(), tmp)
    tmp.replace(saved)
    return PassResult(figures={k: v for k, v in figures.items() if k != "losses"})
