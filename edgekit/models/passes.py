"""Loading the teacher: the task adapter's head, a fast tokenizer, the architecture checked up front."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from edgekit_runtime.errors import EdgekitError

from ..compiler.state import CompileState, PassResult
from ..data import demo_teacher_path
from ..prune.passes import check_plan_fits
from .decoder import DecoderError, decoder_shape


def pass_load_teacher(state: CompileState) -> PassResult:
    from transformers import AutoTokenizer

    path = Path(state.recipe.teacher) if state.recipe.teacher else demo_teacher_path()
    state.teacher_path = path
    state.tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not getattr(state.tokenizer, "is_fast", False):
        raise_missing_fast(path)
    state.model = state.teacher = state.adapter.load_model(str(path), state.label_names).eval()
    if state.recipe.student.enabled and "prune" in state.recipe.student.order and not state.recipe.prune.is_noop:
        check_plan_fits(state)  # a shape the recipe fixes (an empty [prune] is the budget plan's to fill)
    return PassResult(figures={"path": str(path), "architecture": type(state.model).__name__,
                               "parameters": param_count(state.model)})


def raise_missing_fast(path: Path):

    raise EdgekitError(f"{path}: no fast (Rust) tokenizer could be built; the device runtime needs tokenizer.json. "
                       f"Fix: save the tokenizer with a recent transformers (tokenizer.save_pretrained) so "
                       f"tokenizer.json exists.")


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def pass_load_lm_teacher(state: CompileState) -> PassResult:
    """A causal LM in fp32 with eager attention; its tokenizer pads on the left (the decoder contract)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(state.recipe.teacher)
    if not (path / "config.json").is_file():
        raise DecoderError(f"--teacher {path}: no config.json there. Fix: pass a local Hugging Face model directory "
                           f"(config.json, weights, tokenizer files).")
    tok = AutoTokenizer.from_pretrained(str(path))
    if not getattr(tok, "is_fast", False):
        raise DecoderError(f"{path}: the tokenizer is not a fast (tokenizers) one, which the device runtime needs. "
                           f"Fix: save the tokenizer with tokenizer.json (PreTrainedTokenizerFast).")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager", dtype=torch.float32)
    model.eval()
    shape = decoder_shape(model)  # refuses unsupported architectures before any training
    if state.recipe.prune is not None:
        state.recipe.prune.check(shape)  # and prune counts this model cannot take
    if state.recipe.max_context and state.recipe.max_context > getattr(model.config, "max_position_embeddings",
                                                                       state.recipe.max_context):
        raise DecoderError(f"max_context {state.recipe.max_context} exceeds the teacher's max_position_embeddings "
                           f"{model.config.max_position_embeddings} (RoPE positions it never trained on). "
                           f"Fix: pass --max-context {model.config.max_position_embeddings} or less.")
    state.tokenizer, state.teacher, state.model = tok, model, model
    return PassResult(figures={"params": param_count(model), **dataclasses.asdict(shape)})
