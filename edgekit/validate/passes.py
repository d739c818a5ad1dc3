"""The validation stage: the exported graph against its PyTorch reference at the target's tolerance
for the graph's precision; every output, shape first, fails closed (every task)."""

from __future__ import annotations

from edgekit_runtime.profile import Tolerance

from ..compiler.state import CompileState, PassResult
from .decoder import validate_decoder
from .graph import REFERENCE_PATCHES, reference_model, validate_graph


def pass_validate(state: CompileState) -> PassResult:
    precision = state.precision
    tolerance = Tolerance(*state.target.tolerance(precision))
    ptq = precision == "int8" and state.target.int8_method.startswith("ptq")
    # A PTQ graph has no PyTorch model that computes it: shapes and finiteness are checked here and
    # its values are judged by the quantized gate (metric, not atol). A QAT graph is compared with
    # the fake-quant model it was trained as.
    reference = reference_model(state.model, state.rules_applied)
    cases = validate_graph(state.onnx_path, reference, state.adapter, state.tokenizer, state.splits.validation,
                           state.recipe.validate, tolerance, state.recipe.max_length, state.recipe.threads,
                           compare_values=not ptq)
    figures = {"precision": precision, "atol": tolerance.atol, "rtol": tolerance.rtol, "values_compared": not ptq,
               "reference_patches": [r for r in state.rules_applied if r in REFERENCE_PATCHES],
               "max_abs_diff": max(c.max_abs_diff for c in cases),
               "cases": [{"batch": c.batch_size, "length": c.length, "max_abs_diff": c.max_abs_diff} for c in cases]}
    state.figures["validation"] = figures
    return PassResult(changed=False, figures=figures)


def pass_validate_lm(state: CompileState) -> PassResult:
    """Prefill and greedy decode steps of the graph against the model it was exported from, at the
    profile's tolerance for the graph's precision (``[validate] atol`` overrides the atol only)."""
    cfg = state.recipe.validate
    atol, rtol = state.target.tolerance(state.precision)
    atol = cfg.atol if cfg.atol is not None else atol
    prompts = list(state.splits.validation[:cfg.prompts])
    figures = validate_decoder(state.model, state.onnx_path, prompts=prompts, tokenizer=state.tokenizer,
                               decode_steps=cfg.decode_steps, atol=atol, rtol=rtol, threads=state.recipe.threads)
    figures = {**figures, "precision": state.precision, "atol": atol, "rtol": rtol}
    state.figures["validation"] = figures
    return PassResult(changed=False, figures=figures)
