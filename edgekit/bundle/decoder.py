"""Write a causal-LM bundle: the KV-cache graph, the tokenizer and the manifest of docs/decoder.md.

The runtime's bundle format is unchanged: the same files table, profile section and hashes as
an encoder bundle; ``task`` says ``causal-lm`` and carries what generation needs (layers, KV
heads, head dim, stop ids, chat template, think tokens), and the engine plan gives TensorRT the
min / opt / max shapes of the past-KV inputs as well as of the token inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import math

import onnx

import edgekit_runtime

from ..export.ort_ops import CONTRIB_DOMAIN
from ..models.decoder import DecoderError, decoder_shape
from ..profiles import resolve_profile
from .manifest import MODEL_FILE, TOKENIZER_FILE, header_sections, io_spec, plan_for_shapes, tokenizer_json

EXTERNAL_DATA_FILE = MODEL_FILE + ".data"  # what export writes for models over 2 GB
TASK_NAME = "causal-lm"
GENERATION_DEFAULTS = {"max_new_tokens": 256, "do_sample": False, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
THINK = ("<think>", "</think>")


def decoder_engine_plan(profile, graph_inputs: list[str], shape, *, precision: str, max_context: int) -> dict[str, Any] | None:
    """TensorRT shapes: tokens (batch, sequence), the mask over past + new, and past KV (batch, H_kv, past, D).

    ``opt`` is a batch-1 decode step (one new token over a half-full context), the shape an
    engine runs most; prefill (up to the whole context at once) and batch up to 8 are covered by max.
    """
    half, batch = max(1, max_context // 2), 8
    shapes = {}
    for name in graph_inputs:
        if name.startswith("past_key_values."):
            shapes[name] = {"min": [1, shape.num_kv_heads, 0, shape.head_dim],
                            "opt": [1, shape.num_kv_heads, half, shape.head_dim],
                            "max": [batch, shape.num_kv_heads, max_context - 1, shape.head_dim]}
        elif name == "attention_mask":
            shapes[name] = {"min": [1, 1], "opt": [1, half + 1], "max": [batch, max_context]}
        else:
            shapes[name] = {"min": [1, 1], "opt": [1, 1], "max": [batch, max_context]}
    return plan_for_shapes(profile, precision, shapes)


def decoder_files(tokenizer, onnx_path: str | Path) -> dict[str, Path | bytes]:
    """The bundle's files: the graph (and its external data, if any) and tokenizer.json."""
    onnx_path = Path(onnx_path)
    files: dict[str, Path | bytes] = {MODEL_FILE: onnx_path, TOKENIZER_FILE: tokenizer_json(tokenizer)}
    data = onnx_path.with_name(onnx_path.name + ".data")
    if data.exists():
        files[EXTERNAL_DATA_FILE] = data
    return files


def decoder_manifest(model, tokenizer, onnx_path: str | Path, *, profile, precision: str = "fp32",
                     int8: Mapping[str, Any] | None = None, max_context: int = 512,
                     generation: Mapping[str, Any] | None = None, recipe: Mapping[str, Any] | None = None,
                     pass_log: list | None = None, figures: Mapping[str, Any] | None = None,
                     rewrite_rules: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every manifest section of a causal-LM bundle except ``files`` (write_bundle fills it)."""
    if precision not in profile.precisions:
        raise DecoderError(f"precision {precision!r} is not one profile '{profile.name}' allows "
                           f"({list(profile.precisions)}). Fix: pick one of those.")
    if max_context > profile.max_sequence_length:
        raise DecoderError(f"max_context {max_context} exceeds profile '{profile.name}' max_sequence_length "
                           f"{profile.max_sequence_length}. Fix: pass max_context <= {profile.max_sequence_length}.")
    onnx_path = Path(onnx_path)
    graph = onnx.load(str(onnx_path), load_external_data=False)
    graph_ops = "ort-contrib" if any(n.domain == CONTRIB_DOMAIN for n in graph.graph.node) else "standard"
    if graph_ops == "ort-contrib" and profile.decoder_ops != "ort-contrib":
        raise DecoderError(f"{onnx_path} uses ONNX Runtime contrib ops ({CONTRIB_DOMAIN}), but profile "
                           f"'{profile.name}' runs standard ONNX graphs only (decoder_ops = "
                           f"{profile.decoder_ops!r}). Fix: export with ops=\"standard\" for this profile.")
    shape = decoder_shape(model)
    task = causal_lm_task_section(tokenizer, model, max_context=max_context, generation=generation)
    return {
        **header_sections(profile),
        "task": task,
        "model": {"file": MODEL_FILE, "precision": precision, "int8": dict(int8) if int8 else None,
                  "opset": profile.opset, "rewrite_rules": list(rewrite_rules), "graph_ops": graph_ops,
                  **io_spec(onnx_path)},
        "tokenizer": {"file": TOKENIZER_FILE, "max_length": int(max_context),
                      "pad_token_id": task["pad_token_id"],
                      "padding_side": "left", "truncation_side": "left"},
        "engine_plan": decoder_engine_plan(profile, [i.name for i in graph.graph.input], shape,
                                           precision=precision, max_context=max_context),
        "recipe": dict(recipe or {}),
        "pass_log": list(pass_log or []),
        "figures": dict(figures or {}),
    }


def write_decoder_bundle(model, tokenizer, onnx_path: str | Path, out_dir: str | Path, *, profile="x86-64-cpu",
                         overwrite: bool = False, **manifest: Any) -> Path:
    """Stage the graph, tokenizer.json and the manifest (``decoder_manifest``'s keywords); write atomically."""
    if isinstance(profile, str):
        profile = resolve_profile(profile)
    return edgekit_runtime.write_bundle(out_dir, decoder_files(tokenizer, onnx_path),
                                        decoder_manifest(model, tokenizer, onnx_path, profile=profile, **manifest),
                                        overwrite=overwrite)


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _single_token(tokenizer, text: str) -> bool:
    """``text`` is one vocabulary entry and encodes to just it (the runtime looks it up by token_to_id)."""
    token_id = tokenizer.convert_tokens_to_ids(text)
    return token_id is not None and token_id != tokenizer.unk_token_id \
        and tokenizer.encode(text, add_special_tokens=False) == [token_id]


def _generation(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    unknown = sorted(set(overrides or {}) - set(GENERATION_DEFAULTS))
    if unknown:
        raise DecoderError(f"generation keys {unknown} are not part of the manifest. Fix: use only "
                           f"{sorted(GENERATION_DEFAULTS)}.")
    gen = {**GENERATION_DEFAULTS, **(overrides or {})}

    def number(key, integer=False):  # bool is an int to Python, not to the manifest
        return isinstance(gen[key], int if integer else (int, float)) and not isinstance(gen[key], bool)

    checks = [("max_new_tokens", number("max_new_tokens", True) and gen["max_new_tokens"] >= 1, "a positive integer"),
              ("do_sample", isinstance(gen["do_sample"], bool), "true or false"),
              ("temperature", number("temperature") and 0 < gen["temperature"] < math.inf, "a number > 0"),
              ("top_k", number("top_k", True) and gen["top_k"] >= 0, "an integer >= 0 (0 = off)"),
              ("top_p", number("top_p") and 0 < gen["top_p"] <= 1, "a number in (0, 1]")]
    for key, ok, wanted in checks:
        if not ok:
            raise DecoderError(f"generation.{key}={gen[key]!r} must be {wanted}. "
                               f"Fix: e.g. {GENERATION_DEFAULTS[key]!r}.")
    return gen


def causal_lm_task_section(tokenizer, model, *, max_context: int,
                           generation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest ``task`` section of docs/decoder.md (stands in for the Protocol's manifest_task)."""
    shape = decoder_shape(model)
    config = getattr(model, "config", model)
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(max_context, int) or max_context < 2 or (limit and max_context > limit):
        raise DecoderError(f"max_context={max_context!r}: must be an integer in [2, {limit}] (the model's "
                           f"max_position_embeddings; RoPE beyond it was never trained). Fix: lower max_context.")
    gen_config = getattr(model, "generation_config", None)
    eos = list(dict.fromkeys(_ids(tokenizer.eos_token_id) + _ids(getattr(config, "eos_token_id", None))
                             + _ids(getattr(gen_config, "eos_token_id", None))))
    if not eos:
        raise DecoderError("neither the tokenizer nor the model config names an end-of-sequence token; generation "
                           "would never stop. Fix: set tokenizer.eos_token (or config.eos_token_id).")
    pad = tokenizer.pad_token_id
    pad = pad if pad is not None else getattr(config, "pad_token_id", None)
    template = tokenizer.chat_template
    if isinstance(template, Mapping):  # named templates: the runtime renders the default one
        template = template.get("default")
    think = {"start": THINK[0], "end": THINK[1]} if all(_single_token(tokenizer, t) for t in THINK) else None
    return {"name": TASK_NAME, "num_layers": shape.num_layers, "num_key_value_heads": shape.num_kv_heads,
            "head_dim": shape.head_dim, "vocab_size": shape.vocab_size, "max_context": max_context,
            "eos_token_ids": eos, "pad_token_id": int(pad) if pad is not None else eos[0],
            "bos_token_id": tokenizer.bos_token_id, "chat_template": template, "think": think,
            "generation": _generation(generation)}
