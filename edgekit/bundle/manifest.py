"""Host side of the bundle: fill the manifest the runtime defines (edgekit_runtime.bundle)."""

from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
from edgekit_runtime.backends.tensorrt import ENGINE_FILE, trtexec_line, workspace_mb

from .. import __version__

if TYPE_CHECKING:
    from edgekit_runtime.profile import DeviceProfile

    from ..compiler.state import CompileState
    from ..recipe import Recipe

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


def default_out(recipe: "Recipe", profile: "DeviceProfile") -> Path:
    return Path("bundles") / profile.name


def tokenizer_json(tokenizer) -> bytes:
    """The fast tokenizer as tokenizer.json, without the truncation/padding a call left on it."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend.to_str(pretty=True).encode("utf-8")


def stage_files(state: "CompileState") -> dict[str, Path | bytes]:
    return {MODEL_FILE: state.onnx_path, TOKENIZER_FILE: tokenizer_json(state.tokenizer), **state.extra_files}


def io_spec(path: Path) -> dict[str, list[dict[str, Any]]]:
    model = onnx.load(str(path), load_external_data=False)

    def spec(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                        "shape": shape})
        return out

    return {"inputs": spec(model.graph.input), "outputs": spec(model.graph.output)}


def engine_plan(state: "CompileState") -> dict[str, Any] | None:
    """What the device's TensorRT build needs: precision flags, the min / opt / max input shapes,
    the workspace pool, and the same build as a TensorRT 10 ``trtexec`` command line.

    A QDQ int8 graph builds with int8 and fp16 enabled (explicit quantization; the layers left in
    floating point run in fp16); an fp32 graph builds with the profile's default precision. The
    workspace is ``edgekit_runtime.backends.tensorrt.workspace_mb`` of the profile's memory budget; the
    runtime's native TensorRT backend builds with exactly these values.
    """
    profile = state.profile
    max_len = state.target.max_context
    inputs = [i.name for i in onnx.load(str(state.onnx_path), load_external_data=False).graph.input]
    return plan_for_shapes(profile, state.precision,
                           {name: {"min": [1, 1], "opt": [1, max_len], "max": [32, max_len]} for name in inputs})


def plan_for_shapes(profile: "DeviceProfile", precision: str, shapes: dict[str, dict[str, list[int]]]
                    ) -> dict[str, Any] | None:
    """The engine plan around given min / opt / max input shapes (None for a profile without
    TensorRT): precision flags, workspace, and the same build as a trtexec line."""

    if not any(b in ("tensorrt", "ort-tensorrt") for b in profile.backends):
        return None
    flags = ["int8", "fp16"] if precision == "int8" else (["fp16"] if profile.default_precision == "fp16" else [])
    plan = {"tensorrt": profile.tensorrt, "compute_capability": profile.compute_capability, "flags": flags,
            "workspace_mb": workspace_mb(profile.memory_budget_mb), "shapes": shapes}
    plan["trtexec"] = trtexec_line(plan, onnx=MODEL_FILE, engine=ENGINE_FILE)
    return plan


def header_sections(profile: "DeviceProfile") -> dict[str, Any]:
    """The sections every bundle's manifest starts with: who wrote it, when, where, for which profile."""
    return {
        "edgekit_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "profile": {"name": profile.name, "sha256": profile.sha256, "data": profile.to_dict()},
    }


def build_manifest(state: "CompileState") -> dict[str, Any]:
    """Every manifest section except ``files`` (write_bundle fills it)."""
    tok = state.tokenizer
    profile = state.profile
    return {
        **header_sections(profile),
        "task": state.adapter.manifest_task(state.label_names),
        "model": {"file": MODEL_FILE, "precision": state.precision,
                  "int8": ({"method": state.target.int8_method, "format": state.target.int8_format}
                           if state.precision == "int8" else None),
                  "opset": profile.opset, "rewrite_rules": list(state.rules_applied), **io_spec(state.onnx_path)},
        "tokenizer": {"file": TOKENIZER_FILE, "max_length": state.target.max_context,
                      "pad_token_id": int(tok.pad_token_id if tok.pad_token_id is not None else 0),
                      "padding_side": tok.padding_side, "truncation_side": tok.truncation_side},
        "engine_plan": engine_plan(state),
        "recipe": state.recipe.to_dict(),
        "pass_log": state.pass_log,
        "figures": state.figures,
    }
