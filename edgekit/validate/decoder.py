"""Validate an exported decoder graph (edgekit.decoder.export) against the transformers model it
came from: a left-padded prefill, then greedy decode steps, both sides fed the same tokens, with
logits compared at real positions and present K/V at real key positions."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from edgekit_runtime.backends.ort import ort_session
from torch import nn

from ..export.decoder import NP_TOKEN_DTYPES, empty_past, position_ids_from_mask
from ..models.decoder import DecoderError


class DecoderValidationError(DecoderError):
    """The exported decoder graph does not match the transformers model within tolerance."""


def _cache_kwarg(model) -> str:

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _cache_tensors(cache) -> list[torch.Tensor]:
    """Flat (k0, v0, k1, v1, ...) of a transformers cache (DynamicCache layers or legacy tuples)."""
    if hasattr(cache, "layers"):
        return [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return [t for pair in cache for t in pair[:2]]


def _max_diff(onnx_out: np.ndarray, ref: np.ndarray, keep: np.ndarray, what: str, problems: list[str],
              rtol: float = 0.0) -> tuple[float, float]:
    """max |onnx - ref| where ``keep`` (broadcast) holds, and max (|onnx - ref| - rtol |ref|), the part
    the atol must cover; a shape difference is a problem of its own."""
    if onnx_out.shape != ref.shape:
        problems.append(f"{what}: shape {onnx_out.shape} from ONNX, {ref.shape} from transformers")
        return float("inf"), float("inf")
    where = np.broadcast_to(keep, onnx_out.shape)
    diff = np.abs(onnx_out - ref)[where]
    if not diff.size:
        return 0.0, 0.0
    return float(diff.max()), float((diff - rtol * np.abs(ref[where])).max())  # NaN stays NaN and fails


@torch.no_grad()
def validate_decoder(model: nn.Module, onnx_path: str | Path, *, input_ids=None, attention_mask=None,
                     prompts: Sequence[str] | None = None, tokenizer=None, decode_steps: int = 4, atol: float = 1e-4,
                     rtol: float = 0.0, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None
                     ) -> dict[str, float]:
    """ONNX against ``model`` with its own KV cache: a left-padded prefill, then greedy decode steps.

    Give token ids (``input_ids`` + ``attention_mask``, left padded) or ``prompts`` + ``tokenizer``.
    Both sides are fed the transformers model's greedy tokens; logits are compared at real (unpadded)
    positions, present K/V at real key positions. Returns the max abs differences and the greedy
    agreement; raises DecoderValidationError when a difference exceeds ``atol + rtol * |reference|``
    or a shape differs.
    """
    impl = getattr(model.config, "_attn_implementation", "eager")
    if impl not in (None, "eager", "sdpa"):
        raise DecoderError(f"attn_implementation={impl!r}: the reference must run on CPU with padding masks. Fix: "
                           f"load the model with attn_implementation='eager' (the causal-lm adapter does).")
    if input_ids is None:
        if prompts is None or tokenizer is None:
            raise DecoderError("validate_decoder got neither input_ids nor prompts + tokenizer. Fix: pass one.")
        if tokenizer.padding_side != "left":
            raise DecoderError(f"tokenizer.padding_side={tokenizer.padding_side!r}; the decoder contract pads on "
                               f"the left. Fix: set tokenizer.padding_side = 'left'.")
        enc = tokenizer(list(prompts), padding=True, return_tensors="pt")
        input_ids, attention_mask = enc["input_ids"], enc["attention_mask"]
    input_ids = torch.as_tensor(input_ids, dtype=torch.long)
    mask = torch.ones_like(input_ids) if attention_mask is None else torch.as_tensor(attention_mask).long()
    if bool((mask[:, -1] == 0).any()):
        raise DecoderError("attention_mask has padding in its last column: the batch is right padded. Fix: pad on "
                           "the left (tokenizer.padding_side = 'left').")

    import onnx


    # The session the device runtime makes (for a QDQ graph on the CPU provider: its fusion settings).
    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    qdq = any(n.op_type == "DequantizeLinear" for n in nodes)
    # GroupQueryAttention with RoPE inside (the ort-contrib graph's fused layers) rotates keys at their
    # cache index: a left-padded row's keys are all turned by its padding, which attention (relative)
    # does not see. Then keys are compared on unpadded rows; the padded rows' keys are checked through
    # the decode steps' logits, which read them.
    shifted_keys = any(n.op_type == "GroupQueryAttention" and any(a.name == "do_rotary" and a.i for a in n.attribute)
                       for n in nodes)
    session = ort_session(str(onnx_path), list(providers), threads=threads, quantized=qdq)
    token_np = NP_TOKEN_DTYPES[session.get_inputs()[0].type]
    names = [o.name for o in session.get_outputs()]
    cache_kw = _cache_kwarg(model)
    was_training = model.training
    model.eval()
    problems: list[str] = []
    figures = {"prefill_logits": 0.0, "decode_logits": 0.0, "present": 0.0}
    excess = dict.fromkeys(figures, 0.0)  # max |diff| - rtol |ref|: what atol must cover
    agree = total = 0
    try:
        ids, past, cache = input_ids, empty_past(model, input_ids.shape[0]), None
        for step in range(decode_steps + 1):
            pos = position_ids_from_mask(mask, ids.shape[1])
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_kw: cache})
            cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            feeds = {"input_ids": ids.numpy().astype(token_np), "attention_mask": mask.numpy().astype(token_np),
                     "position_ids": pos.numpy().astype(token_np), **past}
            results = dict(zip(names, session.run(None, feeds)))
            real = mask[:, -ids.shape[1]:].bool().numpy()[:, :, None]        # query rows that are tokens
            keys_real = mask.bool().numpy()[:, None, :, None]                 # cache rows that are tokens
            key = "prefill_logits" if step == 0 else "decode_logits"
            ref_logits = out.logits.float().numpy()
            diff, over = _max_diff(results["logits"], ref_logits, real, f"step {step} logits", problems, rtol)
            figures[key] = float(np.maximum(figures[key], diff))  # np.maximum keeps a NaN
            excess[key] = float(np.maximum(excess[key], over))
            unpadded = mask.bool().all(1).numpy()[:, None, None, None]
            for name, ref in zip(names[1:], _cache_tensors(cache)):
                keep = keys_real & unpadded if shifted_keys and name.endswith(".key") else keys_real
                diff, over = _max_diff(results[name], ref.numpy(), keep, f"step {step} {name}", problems, rtol)
                figures["present"] = float(np.maximum(figures["present"], diff))
                excess["present"] = float(np.maximum(excess["present"], over))
            ref_next, onnx_next = ref_logits[:, -1].argmax(-1), results["logits"][:, -1].argmax(-1)
            agree, total = agree + int((ref_next == onnx_next).sum()), total + len(ref_next)
            ids = torch.from_numpy(ref_next).long().unsqueeze(1)
            mask = torch.cat((mask, torch.ones_like(ids)), 1)
            past = {name.replace("present", "past_key_values"): results[name] for name in names[1:]}
    finally:
        model.train(was_training)
    figures["greedy_agreement"] = agree / total
    figures["present_keys"] = "unpadded rows (ort-contrib: keys rotated at cache index)" if shifted_keys else "all rows"
    for name in ("prefill_logits", "decode_logits", "present"):
        if not excess[name] <= atol:
            problems.append(f"{name}: max |diff| {figures[name]:.3g} > atol {atol:g} + rtol {rtol:g} x |reference|")
    if problems:
        raise DecoderValidationError(f"{onnx_path}: the decoder graph does not match the transformers model "
                                     f"(prefill + {decode_steps} decode steps, batch {input_ids.shape[0]}, left "
                                     f"padded): {'; '.join(problems)}; greedy agreement "
                                     f"{figures['greedy_agreement']:.2%}. Fix: re-export from the same model; if it "
                                     f"persists, report the model config (a RoPE, mask or bias difference).")
    return figures
