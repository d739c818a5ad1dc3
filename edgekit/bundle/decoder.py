"""Write a causal-LM bundle: the KV-cache graph, the tokenizer and the manifest of docs/decoder.md.

The runtime's bundle format is unchanged: the same files table, profile section and hashes as
an encoder bundle; ``task`` says ``causal-lm`` and carries what generation needs (layers, KV
heads, head dim, stop ids, chat template, think tokens), and the engine plan gives TensorRT the
min / opt / max shapes of the past-KV inputs as well as of the token inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import onnx

from .manifest import MODEL_FILE, TOKENIZER_FILE, _io_spec, _tokenizer_json, header_sections, plan_for_shapes
from ..tasks.causal_lm import causal_lm_task_section
from ..models.decoder import DecoderError, decoder_shape
from ..export.ort_ops import CONTRIB_DOMAIN

EXTERNAL_DATA_FILE = MODEL_FILE + ".data"  # what export writes for models over 2 GB
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


def write_decoder_bundle(model, tokenizer, onnx_path: str | Path, out_dir: str | Path, *, profile="x86-64-cpu",
                         precision: str = "fp32", int8: Mapping[str, Any] | None = None, max_context: int = 512,
                         generation: Mapping[str, Any] | None = None, recipe: Mapping[str, Any] | None = None,
                         pass_log: list | None = None, figures: Mapping[str, Any] | None = None,
                         rewrite_rules: tuple[str, ...] = (), overwrite: bool = False) -> Path:
    """Stage the graph (and its external data, if any), tokenizer.json and the manifest; write atomically."""
    import edgekit_runtime

    from ..profiles import resolve_profile

    if isinstance(profile, str):
        profile = resolve_profile(profile)
    if precision not in profile.precisions:
        raise DecoderError(f"precision {precision!r} is not one profile '{profile.name}' allows "
                           f"({list(profile.precisions)}). Fix: pick one of those.")
    if max_context > profile.max_sequence_length:
        raise DecoderError(f"max_context {max_context} exceeds profile '{profile.name}' max_sequence_length "
                           f"{profile.max_sequence_length}. Fix: pass max_context <= {profile.max_sequence_length}.")
    onnx_path = Path(onnx_path)
    files: dict[str, Path | bytes] = {MODEL_FILE: onnx_path, TOKENIZER_FILE: _tokenizer_json(tokenizer)}
    data = onnx_path.with_name(onnx_path.name + ".data")
    if data.exists():
        files[EXTERNAL_DATA_FILE] = data
    graph = onnx.load(str(onnx_path), load_external_data=False)
    graph_ops = "ort-contrib" if any(n.domain == CONTRIB_DOMAIN for n in graph.graph.node) else "standard"
    if graph_ops == "ort-contrib" and profile.decoder_ops != "ort-contrib":
        raise DecoderError(f"{onnx_path} uses ONNX Runtime contrib ops ({CONTRIB_DOMAIN}), but profile "
                           f"'{profile.name}' runs standard ONNX graphs only (decoder_ops = "
                           f"{profile.decoder_ops!r}). Fix: export with ops=\"standard\" for this profile.")
    shape = decoder_shape(model)
    task = causal_lm_task_section(tokenizer, model, max_context=max_context, generation=generation)
    manifest = {
        **header_sections(profile),
        "task": task,
        "model": {"file": MODEL_FILE, "precision": precision, "int8": dict(int8) if int8 else None,
                  "opset": profile.opset, "rewrite_rules": list(rewrite_rules), "graph_ops": graph_ops,
                  **_io_spec(onnx_path)},
        "tokenizer": {"file": TOKENIZER_FILE, "max_length": int(max_context),
                      "pad_token_id": task["pad_token_id"],
                      "padding_side": "left", "truncation_side": "left"},
        "engine_plan": decoder_engine_plan(profile, [i.name for i in graph.graph.input], shape,
                                           precision=precision, max_context=max_context),
        "recipe": dict(recipe or {}),
        "pass_log": list(pass_log or []),
        "figures": dict(figures or {}),
    }
    return edgekit_runtime.write_bundle(out_dir, files, manifest, overwrite=overwrite)
