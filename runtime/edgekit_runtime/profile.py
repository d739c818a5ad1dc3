"""Device profiles: what a target can run, as a frozen, validated dataclass.

Profiles are TOML files (the host ships them in ``device_profiles/``); a bundle embeds the
resolved profile so the device never needs the file. Validation is strict: an unknown key, a
wrong type or a missing field is an error naming the file, the key and the fix.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from .errors import ProfileError

# Backends the runtime knows, in the words profiles use.
BACKENDS = ("tensorrt", "ort-tensorrt", "ort-cuda", "ort-cpu")
PRECISIONS = ("fp32", "fp16", "int8")
TOKEN_DTYPES = ("int64", "int32")
ARCHITECTURES = ("aarch64", "x86_64")
ACCELERATORS = ("gpu", "cpu")
DECODER_OPS = ("standard", "ort-contrib")
INT8_FORMATS = ("qdq", "qoperator")


@dataclass(frozen=True)
class Tolerance:
    """Allowed difference between the exported graph and the PyTorch reference."""

    atol: float
    rtol: float


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    device: str
    architecture: str
    accelerator: str
    backends: tuple[str, ...]
    precisions: tuple[str, ...]
    default_precision: str
    opset: int
    rewrite_rules: tuple[str, ...]
    unsupported_ops: tuple[str, ...]
    token_dtype: str
    memory_budget_mb: int
    max_sequence_length: int
    tolerances: Mapping[str, Tolerance] = field(hash=False)
    int8_formats: tuple[str, ...] = ()  # int8 graph formats the target takes; required when int8 is allowed
    int8_format: str | None = None  # the default among them
    # Operator set of causal-LM graphs: "standard" (ONNX domain only, any backend) or "ort-contrib"
    # (ONNX Runtime's com.microsoft fused decoder kernels; not with the native TensorRT backend).
    decoder_ops: str = "standard"
    jetpack: str | None = None
    tensorrt: str | None = None
    cuda: str | None = None
    compute_capability: str | None = None
    # Where the profile came from and the sha256 of its canonical content (not TOML keys).
    source: str = field(default="<dict>", compare=False)
    sha256: str = field(default="", compare=False)

    def tolerance(self, precision: str) -> Tolerance:
        if precision not in self.tolerances:
            raise ProfileError(
                f"profile '{self.name}' has no tolerance for precision '{precision}'; "
                f"it allows {list(self.precisions)}. Fix: use one of those precisions or add "
                f"[tolerances.{precision}] to {self.source}."
            )
        return self.tolerances[precision]

    def __reduce__(self):
        # MappingProxyType cannot be pickled or deep-copied: rebuild (and re-check) from data.
        return (profile_from_dict, (self.to_dict(), self.source))

    def __deepcopy__(self, memo):
        return self

    def to_dict(self) -> dict[str, Any]:
        """The TOML content of this profile as plain JSON-able data (no source/sha256)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("source", "sha256"):
                continue
            value = getattr(self, f.name)
            if value is None or (f.name == "int8_formats" and not value):
                continue
            if f.name == "decoder_ops" and value == "standard":
                continue  # the default: left out, so profiles written before the key keep their sha256
            if isinstance(value, tuple):
                value = list(value)
            elif f.name == "tolerances":
                value = {k: {"atol": t.atol, "rtol": t.rtol} for k, t in value.items()}
            out[f.name] = value
        return out


# key -> (python type(s), required, allowed values or None, one-line help)
_SCHEMA: dict[str, tuple[Any, bool, tuple | None, str]] = {
    "name": (str, True, None, "the profile's name, e.g. 'jetson-orin'"),
    "description": (str, True, None, "one line for `edgekit profiles`"),
    "device": (str, True, None, "the board or machine, e.g. 'NVIDIA Jetson AGX Orin 64GB'"),
    "architecture": (str, True, ARCHITECTURES, "CPU architecture of the target"),
    "accelerator": (str, True, ACCELERATORS, "where inference runs"),
    "backends": (list, True, BACKENDS, "backends in preference order"),
    "precisions": (list, True, PRECISIONS, "precisions the target may run"),
    "default_precision": (str, True, PRECISIONS, "precision used when the recipe names none"),
    "opset": (int, True, None, "ONNX opset of exported graphs (13)"),
    "rewrite_rules": (list, True, None, "graph rewrite rules to apply, e.g. ['gelu-tanh']"),
    "unsupported_ops": (list, True, None, "ONNX op types the target cannot run"),
    "token_dtype": (str, True, TOKEN_DTYPES, "dtype of token-id inputs"),
    "memory_budget_mb": (int, True, None, "memory the model may use on the device, MiB"),
    "max_sequence_length": (int, True, None, "longest sequence the target should be given"),
    "tolerances": (dict, True, None, "[tolerances.fp32] atol = ..., rtol = ... per precision"),
    "int8_formats": (list, False, INT8_FORMATS, "int8 graph formats the target takes, e.g. ['qdq']"),
    "int8_format": (str, False, INT8_FORMATS, "the default int8 format, one of int8_formats"),
    "decoder_ops": (str, False, DECODER_OPS, "operator set of causal-LM graphs: 'standard' (ONNX only) or "
                                              "'ort-contrib' (ONNX Runtime CPU fused kernels)"),
    "jetpack": (str, False, None, "JetPack version, e.g. '6.2'"),
    "tensorrt": (str, False, None, "TensorRT version, e.g. '10.3'"),
    "cuda": (str, False, None, "CUDA version, e.g. '12.6'"),
    "compute_capability": (str, False, None, "GPU compute capability, e.g. '8.7' (sm_87)"),
}


def _type_name(t: Any) -> str:
    return {str: "a string", int: "an integer", list: "a list", dict: "a table"}[t]


def profile_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> DeviceProfile:
    """Validate ``data`` against the profile schema and build a DeviceProfile."""

    def fail(key: str, reason: str, fix: str) -> ProfileError:
        return ProfileError(f"{source}: key '{key}': {reason}. Fix: {fix}")

    unknown = sorted(set(data) - set(_SCHEMA))
    if unknown:
        key = unknown[0]
        raise fail(key, "unknown key", f"remove it or use one of: {', '.join(sorted(_SCHEMA))}")
    values: dict[str, Any] = {}
    for key, (typ, required, allowed, help_) in _SCHEMA.items():
        if key not in data:
            if required:
                raise fail(key, "missing required field", f"add `{key} = ...` ({help_})")
            continue
        value = data[key]
        # bool is a subclass of int; a profile saying `opset = true` is a mistake.
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise fail(key, f"expected {_type_name(typ)}, got {value!r}", f"set it to {_type_name(typ)} ({help_})")
        if typ is list:
            bad = [v for v in value if not isinstance(v, str)]
            if bad:
                raise fail(key, f"expected a list of strings, found {bad[0]!r}", f"quote each entry ({help_})")
            if allowed is not None:
                bad = [v for v in value if v not in allowed]
                if bad:
                    raise fail(key, f"unknown value {bad[0]!r}", f"use values from {list(allowed)}")
            if len(set(value)) != len(value):
                dup = next(v for v in value if value.count(v) > 1)
                raise fail(key, f"{dup!r} is listed twice", "list each entry once")
            if key in ("backends", "precisions") and not value:
                raise fail(key, "empty list", f"name at least one of {list(allowed)}")
            value = tuple(value)
        elif allowed is not None and value not in allowed:
            raise fail(key, f"unknown value {value!r}", f"use one of {list(allowed)}")
        if typ is int and value <= 0:
            raise fail(key, f"must be positive, got {value}", f"set a positive integer ({help_})")
        values[key] = value

    if values["opset"] != 13:
        raise fail("opset", f"edgekit exports opset 13, got {values['opset']}",
                   "set `opset = 13` (the legacy exporter's opset that TensorRT 8.5+ and ORT both run)")
    if values["default_precision"] not in values["precisions"]:
        raise fail("default_precision", f"{values['default_precision']!r} is not in precisions {list(values['precisions'])}",
                   "add it to `precisions` or choose one of them")
    tolerances: dict[str, Tolerance] = {}
    for prec, tol in values["tolerances"].items():
        key = f"tolerances.{prec}"
        if prec not in PRECISIONS:
            raise fail(key, f"unknown precision {prec!r}", f"use one of {list(PRECISIONS)}")
        if not isinstance(tol, dict) or set(tol) != {"atol", "rtol"}:
            raise fail(key, f"expected a table with exactly atol and rtol, got {tol!r}",
                       f"write [tolerances.{prec}] with `atol = 1e-4` and `rtol = 1e-3`")
        for k in ("atol", "rtol"):
            if not isinstance(tol[k], (int, float)) or isinstance(tol[k], bool) or tol[k] < 0:
                raise fail(f"{key}.{k}", f"expected a non-negative number, got {tol[k]!r}", "set a number like 1e-4")
        tolerances[prec] = Tolerance(float(tol["atol"]), float(tol["rtol"]))
    missing = [p for p in values["precisions"] if p not in tolerances]
    if missing:
        raise fail(f"tolerances.{missing[0]}", f"precision {missing[0]!r} is allowed but has no tolerance",
                   f"add [tolerances.{missing[0]}] with atol and rtol")
    values["tolerances"] = MappingProxyType(tolerances)
    if "int8" in values["precisions"]:
        if not values.get("int8_formats"):
            raise fail("int8_formats", "int8 is an allowed precision but no int8 format is named",
                       f"add int8_formats = [...] from {list(INT8_FORMATS)} (TensorRT takes only 'qdq')")
        if values.get("int8_format") not in values["int8_formats"]:
            raise fail("int8_format", f"{values.get('int8_format')!r} is not one of int8_formats "
                       f"{list(values['int8_formats'])}", "set int8_format to one of int8_formats")
    elif "int8_formats" in values or "int8_format" in values:
        raise fail("int8_formats", "int8 formats are named but int8 is not in precisions",
                   "add \"int8\" to precisions or remove int8_formats / int8_format")
    if "tensorrt" in values["backends"] and values.get("int8_formats") and values["int8_formats"] != ("qdq",):
        raise fail("int8_formats", f"{list(values['int8_formats'])}: TensorRT's explicit quantization reads only "
                   "QuantizeLinear/DequantizeLinear graphs", 'use int8_formats = ["qdq"] for a TensorRT target')
    if values.get("decoder_ops") == "ort-contrib" and "tensorrt" in values["backends"]:
        raise fail("decoder_ops", f"'ort-contrib' graphs use ONNX Runtime's own ops, which TensorRT cannot parse, but "
                   f"backends are {list(values['backends'])}", 'use decoder_ops = "standard" (the default) for a '
                   'TensorRT target')
    gpu_backends = [b for b in values["backends"] if b != "ort-cpu"]
    if values["accelerator"] == "cpu" and gpu_backends:
        raise fail("backends", f"GPU backend {gpu_backends[0]!r} on a CPU-only target",
                   "use backends = [\"ort-cpu\"] or set accelerator = \"gpu\"")
    if values["accelerator"] == "gpu":
        for key in ("tensorrt", "cuda", "compute_capability"):
            if key not in values:
                raise fail(key, "a GPU profile must say it", f"add `{key} = \"...\"` ({_SCHEMA[key][3]})")
    profile = DeviceProfile(**values, source=source)
    digest = hashlib.sha256(json.dumps(profile.to_dict(), sort_keys=True).encode()).hexdigest()
    object.__setattr__(profile, "sha256", digest)
    return profile


def load_profile_file(path: str | Path) -> DeviceProfile:
    """Read and validate one profile TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile file. Fix: check the path, or pass a profile name.") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: not a readable UTF-8 TOML file ({exc.__class__.__name__}). "
                           f"Fix: pass the path of a .toml profile file.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML ({exc}). Fix: correct the syntax at that line.") from None
    profile = profile_from_dict(data, source=str(path))
    if path.stem != profile.name:
        raise ProfileError(
            f"{path}: key 'name': the profile is named {profile.name!r} but the file is {path.name!r}. "
            f"Fix: rename the file to {profile.name}.toml or set name = {path.stem!r}."
        )
    return profile
