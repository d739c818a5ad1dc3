"""TensorRT engine plans, as pure functions: checking the bundle's ``engine_plan``, ONNX Runtime's
TensorRT provider options, and the equivalent trtexec command line.

The host writes ``engine_plan`` into the manifest (``edgekit/bundle.py``): precision ``flags``
(``["int8", "fp16"]``, ``["fp16"]`` or ``[]``), ``shapes`` (``{input: {min, opt, max}}``),
``workspace_mb`` and the ``trtexec`` command line. The native backend and its engine cache are in
``trt_engine.py``.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..bundle.format import MANIFEST, canonical_json
from ..errors import BundleError

PLAN_FLAGS = ("int8", "fp16")
SHAPE_KEYS = ("min", "opt", "max")
MIN_WORKSPACE_MB = 256
ENGINE_FILE = "model.engine"  # the name the trtexec line saves to


# ---------------------------------------------------------------- the plan (pure)

def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_engine_plan(plan: Any, input_names: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The manifest's ``engine_plan`` checked (None stays None); BundleError names what is wrong.

    ``input_names``: the graph inputs the manifest lists; the plan must give shapes for exactly those.
    """
    if plan is None:
        return None

    def bad(what: str) -> BundleError:
        return BundleError(f"{MANIFEST}: engine_plan{what}. Fix: recompile the bundle (the host writes engine_plan "
                           f"from the exported graph and the profile).")

    if not isinstance(plan, Mapping):
        raise bad(f" is {plan!r}, expected a table or null")
    flags = plan.get("flags")
    if not isinstance(flags, list) or any(f not in PLAN_FLAGS for f in flags) or len(set(flags)) != len(flags):
        raise bad(f".flags is {flags!r}, expected a list of distinct values from {list(PLAN_FLAGS)}")
    shapes = plan.get("shapes")
    if not isinstance(shapes, Mapping) or not shapes:
        raise bad(f".shapes is {shapes!r}, expected a table of input name -> {{min, opt, max}}")
    for name, spec in shapes.items():
        if not isinstance(spec, Mapping) or set(spec) != set(SHAPE_KEYS):
            raise bad(f".shapes.{name} is {spec!r}, expected exactly min, opt and max")
        dims = [spec[k] for k in SHAPE_KEYS]
        # min may be 0 (an empty past-KV input: a decoder's prefill step); opt and max are positive.
        if (any(not isinstance(d, list) or not d or not all(_positive_int(x) or (key == "min" and x == 0)
                                                            for x in d) for key, d in zip(SHAPE_KEYS, dims))
                or len({len(d) for d in dims}) != 1):
            raise bad(f".shapes.{name} is {dict(spec)!r}, expected three lists of integers of one length "
                      f"(positive; min may be 0)")
        if not all(lo <= opt <= hi for lo, opt, hi in zip(*dims)):
            raise bad(f".shapes.{name} is {dict(spec)!r}: every dimension needs min <= opt <= max")
    if "workspace_mb" in plan and not _positive_int(plan["workspace_mb"]):
        raise bad(f".workspace_mb is {plan['workspace_mb']!r}, expected a positive integer (MiB)")
    if "trtexec" in plan and not isinstance(plan["trtexec"], str):
        raise bad(f".trtexec is {plan['trtexec']!r}, expected the command line as a string")
    if input_names is not None and set(shapes) != set(input_names):
        raise bad(f".shapes names {sorted(shapes)} are not the graph's inputs {sorted(map(str, input_names))}")
    return json.loads(json.dumps(plan))  # a plain, private copy


def workspace_mb(memory_budget_mb: int) -> int:
    """TensorRT's workspace pool for a profile: a quarter of its memory budget, at least 256 MiB.

    The workspace is scratch memory for layer implementations (tactics); on a Jetson it comes out
    of the same DRAM the CPU and the application use, so it is bounded by the profile's budget.
    """
    return max(MIN_WORKSPACE_MB, int(memory_budget_mb) // 4)


def _dims(dims: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in dims)


def profile_shapes(plan: Mapping[str, Any], which: str) -> str:
    """One of the plan's shape sets as ``name:1x1,name2:1x1``: the format of ONNX Runtime's
    ``trt_profile_{min,opt,max}_shapes`` and of trtexec's ``--{min,opt,max}Shapes``."""
    if which not in SHAPE_KEYS:
        raise ValueError(f"which={which!r}: expected one of {SHAPE_KEYS}")
    return ",".join(f"{name}:{_dims(spec[which])}" for name, spec in plan["shapes"].items())


def _trtexec_shapes(plan: Mapping[str, Any], which: str) -> str:
    # trtexec splits the spec on ',' and ':'; a name holding either is wrapped in single quotes
    # (trtexec --help: "Input names can be wrapped with escaped single quotes (ex: 'Input:0')").
    def quote(name: str) -> str:
        return f"'{name}'" if any(c in name for c in ",:") else name

    return ",".join(f"{quote(name)}:{_dims(spec[which])}" for name, spec in plan["shapes"].items())


def trtexec_command(plan: Mapping[str, Any], *, onnx: str = "model.onnx", engine: str = ENGINE_FILE,
                    workspace: int | None = None) -> list[str]:
    """The TensorRT 10 ``trtexec`` argv that builds the engine the plan describes.

    ``--memPoolSize=workspace:NM`` (M: MiB; TensorRT 10 removed ``--workspace``), the three shape
    sets as one explicit optimization profile, ``--fp16`` / ``--int8`` as the plan's flags say, and
    ``--skipInference`` (build and save only). ``workspace`` defaults to the plan's ``workspace_mb``.
    """
    argv = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}"]
    argv += [f"--{which}Shapes={_trtexec_shapes(plan, which)}" for which in SHAPE_KEYS]
    argv += [f"--{flag}" for flag in ("fp16", "int8") if flag in plan["flags"]]
    ws = workspace if workspace is not None else plan.get("workspace_mb")
    if ws:
        argv.append(f"--memPoolSize=workspace:{int(ws)}M")
    argv.append("--skipInference")
    return argv


def trtexec_line(plan: Mapping[str, Any], **kwargs: Any) -> str:
    """``trtexec_command`` as one shell-quoted line."""
    return shlex.join(trtexec_command(plan, **kwargs))


# ---------------------------------------------------------------- ONNX Runtime's TensorRT provider (pure)

def ort_engine_dir(root: str | Path, ort_version: str, plan: Mapping[str, Any] | None, model_sha256: str) -> Path:
    """Where onnxruntime keeps this bundle's engines: one directory per onnxruntime version, model
    and plan. onnxruntime names cached engines by a hash of the graph's structure, not of its
    weights, and does not notice a TensorRT upgrade; a directory per model file and onnxruntime
    version (which pins its TensorRT) keeps a recompiled bundle off a stale engine."""
    digest = hashlib.sha256(canonical_json({"model_sha256": model_sha256, "plan": plan})).hexdigest()
    return Path(root) / f"ort-{ort_version}" / digest[:24]


def ort_tensorrt_options(plan: Mapping[str, Any] | None, engine_dir: str | Path | None, *,
                         timing_dir: str | Path | None = None, workspace_bytes: int | None = None) -> dict[str, Any]:
    """TensorrtExecutionProvider options for a bundle's plan (names: onnxruntime's TensorRT EP docs).

    ``engine_dir`` None: no engine or timing cache (e.g. the cache directory is not writable).
    ``timing_dir`` (default ``engine_dir``): the timing cache, which may be shared between models.
    Without a plan (an older bundle): caches and workspace only, as before.
    """
    options: dict[str, Any] = {}
    if engine_dir is not None:
        options.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(engine_dir),
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": str(timing_dir if timing_dir is not None else engine_dir)})
    if workspace_bytes:
        options["trt_max_workspace_size"] = int(workspace_bytes)
    if plan is not None:
        fp16 = "fp16" in plan["flags"]
        options.update({
            "trt_fp16_enable": fp16,
            "trt_int8_enable": "int8" in plan["flags"],  # a QDQ graph: explicit quantization, no calibration table
            # LayerNorm's Pow + ReduceMean overflow in fp16; onnxruntime reads this only with fp16 on.
            "trt_layer_norm_fp32_fallback": fp16,
            # All three or none: onnxruntime uses explicit profiles only when min, opt and max are given.
            "trt_profile_min_shapes": profile_shapes(plan, "min"),
            "trt_profile_opt_shapes": profile_shapes(plan, "opt"),
            "trt_profile_max_shapes": profile_shapes(plan, "max"),
        })
    return options


# ---------------------------------------------------------------- the engine cache (pure Python; adapter-driven)
