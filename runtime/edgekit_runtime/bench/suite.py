"""Benchmark suites as data: a TOML file with a [suite] table and one [[run]] table per run.

    [suite]
    name = "latency"                 # required
    description = "what it measures" # optional
    threads = 2                      # optional: onnxruntime intra-op threads (edgekit-run bench --threads wins)
    backend = "ort-cpu"              # optional: force one of the bundle profile's backends

    [[run]]
    kind = "latency"                 # latency | throughput | memory | accuracy | stress | custom_mix
                                     # (text classifiers) | generation (causal-LM bundles)
    name = "latency"                 # optional (default: the kind); unique in the suite
    ...                              # the kind's keys: RUN_KEYS below

Validation is strict and happens before any model is loaded: an unknown key, a wrong type, a
missing required key or a value out of range is one SuiteError naming the file, the run, the key,
the value, the reason and the fix. Relative data paths are resolved against the suite file's
directory.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import EdgekitError
from ..profile import BACKENDS

KINDS = ("latency", "throughput", "memory", "accuracy", "stress", "custom_mix", "generation")
# What each kind needs: a text classifier (predict) or a causal-LM bundle (generate).
GENERATION_KINDS = ("generation",)
DATA_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "txt"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class SuiteError(EdgekitError):
    """A suite file is malformed: the message names the file, the key, the value, why, and the fix."""


@dataclass(frozen=True)
class Key:
    """One suite key: its type word, default (``REQUIRED`` if none), a check and the fix's example."""

    type: str  # int | number | str | bool | path | list[int] | list[str] | table[str]
    default: Any
    example: str  # the fix's example value, TOML-spelled
    check: Callable[[Any], str | None] | None = None  # value -> reason it is bad, or None
    help: str = ""


REQUIRED = object()


def _at_least(low: float, *, strict: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        values = value if isinstance(value, list) else [value]
        for v in values:
            if (v <= low) if strict else (v < low):
                return f"must be {'>' if strict else '>='} {low:g}" + (" (every entry)" if isinstance(value, list) else "")
        return None
    return check


def _between(low: float, high: float) -> Callable[[Any], str | None]:
    return lambda v: None if low <= v < high else f"must be in [{low:g}, {high:g})"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {list(choices)}"


def _not_blank(value: Any) -> str | None:
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not value:
        return "must not be empty"
    if any(not v.strip() for v in values):
        return "must not be blank" + (" (every entry)" if isinstance(value, list) else "")
    return None


def _nonempty_positive(value: list[int]) -> str | None:
    if not value:
        return "must list at least one value"
    return _at_least(1)(value)


def _sequence_lengths(value: list[int]) -> str | None:
    if not value:
        return "must list at least one value"
    return _at_least(2)(value)  # [CLS] and [SEP] alone are 2 tokens


_TEXT_SOURCE = {
    "data": Key("path", None, '"data/reviews.jsonl"',
                help="texts: .txt (one per line) or .csv/.tsv/.jsonl (the text_column); default: built-in texts"),
    "text_column": Key("str", "text", '"text"', _not_blank, "column holding the text (csv/tsv/jsonl)"),
}
_LABELLED = {
    "data": Key("path", REQUIRED, '"data/reviews.jsonl"', help="labelled .csv/.tsv/.jsonl file"),
    "text_column": Key("str", "text", '"text"', _not_blank, "column holding the text"),
    "label_column": Key("str", "label", '"label"', _not_blank, "column holding the label name"),
    "label_map": Key("table[str]", None, '{ "0" = "negative", "1" = "positive" }',
                     help="file label -> bundle label, for files whose labels are not the bundle's names"),
    "limit": Key("int", None, "500", _at_least(1), "use the first N rows only"),
    "batch_size": Key("int", 32, "32", _at_least(1), "texts per inference call"),
}

RUN_KEYS: dict[str, dict[str, Key]] = {
    "latency": {
        "warmup": Key("int", 5, "5", _at_least(0), "untimed calls before each timed series"),
        "iterations": Key("int", 50, "50", _at_least(1), "timed calls per batch x sequence shape"),
        "batch_sizes": Key("list[int]", [1], "[1, 8]", _nonempty_positive),
        "sequence_lengths": Key("list[int]", [128], "[32, 128]", _sequence_lengths,
                                "tokens, special tokens included; lengths over the bundle's max_length are skipped"),
        "seed_text": Key("str", "the battery lasts all day and the screen is sharp and bright", '"a review text"',
                         _not_blank, "repeated to build the fixed-shape inputs"),
        "real_texts": Key("int", 50, "50", _at_least(0), "texts timed at natural length, batch 1 (0: none)"),
        **_TEXT_SOURCE,
    },
    "throughput": {
        "warmup": Key("int", 2, "2", _at_least(0), "untimed predict calls per batch size"),
        "batch_sizes": Key("list[int]", [1, 8, 32], "[1, 8, 32]", _nonempty_positive),
        "items": Key("int", 128, "128", _at_least(1), "texts per measurement"),
        "rounds": Key("int", 3, "3", _at_least(1), "measurements per batch size, batch sizes interleaved"),
        **_TEXT_SOURCE,
    },
    "memory": {
        "processes": Key("int", 3, "3", _at_least(1), "fresh processes, each loads the bundle once"),
        "batch_size": Key("int", 1, "1", _at_least(1), "texts in the first inference"),
        "timeout_s": Key("number", 300.0, "300", _at_least(0, strict=True), "limit per process"),
    },
    "accuracy": dict(_LABELLED),
    "stress": {
        "clients": Key("int", 8, "8", _at_least(1), "concurrent client threads, one keep-alive connection each"),
        "rate": Key("number", 100.0, "100", _at_least(0, strict=True), "target requests per second, all clients"),
        "duration_s": Key("number", 10.0, "10", _between(0.1, 3600.0), "how long requests are sent"),
        "texts_per_request": Key("int", 1, "1", _at_least(1)),
        "warmup_requests": Key("int", 20, "20", _at_least(0), "unrecorded requests before the timed window"),
        "timeout_s": Key("number", 30.0, "30", _at_least(0, strict=True), "per request; past it: lost"),
        "server": Key("str", "subprocess", '"subprocess"', _one_of("subprocess", "in-process"),
                      "`edgekit-run serve` as a subprocess, or PredictServer in this process"),
        "max_batch": Key("int", 16, "16", _at_least(1), "the server's --max-batch"),
        "max_wait_ms": Key("number", 5.0, "5", _at_least(0), "the server's --max-wait-ms"),
        **_TEXT_SOURCE,
    },
    "custom_mix": {
        **_LABELLED,
        "long_fraction": Key("number", 0.2, "0.2", _between(0.0, 1.0), "share of items made longer than max_length"),
        "domain_fraction": Key("number", 0.15, "0.15", _between(0.0, 1.0), "share of items given domain terms"),
        "domain_terms": Key("list[str]", REQUIRED, '["firmware", "lidar"]', _not_blank, "terms inserted into texts"),
        "terms_per_text": Key("int", 2, "2", _at_least(1)),
        "seed": Key("int", 0, "0", _at_least(0), "picks which items become long / domain items"),
        "warmup": Key("int", 5, "5", _at_least(0), "untimed calls before the batch-1 latency pass"),
    },
    "generation": {
        "prompts": Key("int", 8, "8", _at_least(1), "prompts taken from the texts (the first N)"),
        "max_new_tokens": Key("int", 64, "64", _at_least(2), "tokens generated per prompt"),
        "fixed_length": Key("bool", True, "true", None,
                            "min_new_tokens = max_new_tokens: every prompt generates exactly that many tokens, "
                            "so runs compare like for like (false: stop at eos)"),
        "batch_sizes": Key("list[int]", [1], "[1, 4]", _nonempty_positive, "prompts per generate call"),
        "warmup": Key("int", 1, "1", _at_least(0), "untimed generate calls per batch size"),
        "chat": Key("bool", False, "false", None, "wrap each prompt in the bundle's chat template"),
        **_TEXT_SOURCE,
    },
}
COMMON_KEYS = {"kind": Key("str", REQUIRED, '"latency"', _one_of(*KINDS)),
               "name": Key("str", None, '"latency-short"', None, "unique run name (default: the kind)")}
SUITE_KEYS = {
    "name": Key("str", REQUIRED, '"standard"', _not_blank),
    "description": Key("str", "", '"what this suite measures"'),
    "threads": Key("int", None, "2", _at_least(1), "onnxruntime intra-op threads"),
    "backend": Key("str", None, '"ort-cpu"', _one_of(*BACKENDS)),
}
TOP_KEYS = ("suite", "run")


@dataclass(frozen=True)
class RunSpec:
    kind: str
    name: str
    params: Mapping[str, Any]  # every key of the kind, defaults filled in, paths resolved

    def __getitem__(self, key: str) -> Any:
        return self.params[key]


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    threads: int | None
    backend: str | None
    runs: tuple[RunSpec, ...]
    file: str | None = None
    sha256: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "file": self.file, "sha256": self.sha256,
                "threads": self.threads, "backend": self.backend, "overrides": dict(self.overrides)}


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if '"' in value else f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in list(value.items())[:4]) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value[:6]) + (", ..." if len(value) > 6 else "") + "]"
    return str(value)


def _type_name(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    return names.get(type(value), type(value).__name__)


_TYPE_WORDS = {"int": "an integer", "number": "a number", "str": "a string", "bool": "true or false",
               "path": "a file path string", "list[int]": "an array of integers",
               "list[str]": "an array of strings", "table[str]": "a table of strings"}


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind in ("str", "path"):
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "list[int]":
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "table[str]":
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    raise AssertionError(kind)


class _Where:
    def __init__(self, file: str):
        self.file = file

    def error(self, where: str, key: str, value: Any, reason: str, fix: str) -> SuiteError:
        shown = "(missing)" if value is REQUIRED else _toml_value(value)
        return SuiteError(f"{self.file}: {where}key '{key}' = {shown}: {reason}. Fix: {fix}.")


def _check_keys(w: _Where, where: str, table: Mapping[str, Any], keys: Mapping[str, Key]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise w.error(where, key, value, "unknown key", f"{hint}remove it, or use one of {sorted(keys)}")
    for key, spec in keys.items():
        if key not in table:
            if spec.default is REQUIRED:
                raise w.error(where, key, REQUIRED, "required key is missing", f"add {key} = {spec.example}"
                              + (f" ({spec.help})" if spec.help else ""))
            out[key] = spec.default
            continue
        value = table[key]
        if not _type_ok(spec.type, value):
            raise w.error(where, key, value, f"expected {_TYPE_WORDS[spec.type]}, got {_type_name(value)}",
                          f"write it as {key} = {spec.example}")
        if spec.type == "number":
            value = float(value)
        reason = spec.check(value) if spec.check else None
        if reason:
            raise w.error(where, key, value, reason, f"set e.g. {key} = {spec.example}"
                          + (f" ({spec.help})" if spec.help else ""))
        out[key] = value
    return out


def _resolve_path(w: _Where, where: str, key: str, value: str, base: Path) -> str:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    if path.suffix.lower() not in DATA_EXTENSIONS:
        raise w.error(where, key, value, f"unknown file type {path.suffix or '(no extension)'!r}",
                      f"use a file ending in one of {sorted(DATA_EXTENSIONS)}")
    if not path.is_file():
        raise w.error(where, key, value, f"no such file ({path})",
                      "give a path relative to the suite file's directory, an absolute path, or --data FILE")
    return str(path)


def parse_suite(data: Mapping[str, Any], source: str, base: Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> Suite:
    """Validate a parsed suite table. ``overrides``: ``data`` (a path replacing every run's data
    file), ``threads``, ``backend`` (each replacing the suite's)."""
    w = _Where(source)
    base = base or Path.cwd()
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key, value in data.items():
        if key not in TOP_KEYS:
            raise w.error("", key, value, "unknown top-level key",
                          "put suite settings under [suite] and each run under [[run]]")
    suite_table = data.get("suite", REQUIRED)
    if suite_table is REQUIRED:
        raise w.error("", "suite", REQUIRED, "the [suite] table is missing", 'add [suite] with name = "..."')
    if not isinstance(suite_table, dict):
        raise w.error("", "suite", suite_table, "expected a table", 'write [suite] on its own line, then name = "..."')
    settings = _check_keys(w, "[suite] ", suite_table, SUITE_KEYS)
    runs_table = data.get("run", REQUIRED)
    if runs_table is REQUIRED or (isinstance(runs_table, list) and not runs_table):
        raise w.error("", "run", runs_table if runs_table is not REQUIRED else REQUIRED, "the suite has no runs",
                      'add at least one [[run]] table with kind = "latency" (or another kind)')
    if not isinstance(runs_table, list) or not all(isinstance(r, dict) for r in runs_table):
        raise w.error("", "run", runs_table, "expected an array of tables",
                      "write each run as a [[run]] table (double brackets)")
    runs: list[RunSpec] = []
    for i, table in enumerate(runs_table):
        where = f"[[run]] #{i + 1} "
        kind = table.get("kind", REQUIRED)
        if kind is REQUIRED:
            raise w.error(where, "kind", REQUIRED, "required key is missing", f"add kind = one of {list(KINDS)}")
        if not isinstance(kind, str) or kind not in KINDS:
            close = difflib.get_close_matches(str(kind), KINDS, n=1)
            raise w.error(where, "kind", kind, "unknown run kind",
                          (f"did you mean '{close[0]}'? " if close else "") + f"use one of {list(KINDS)}")
        name = table.get("name", kind)
        where = f"[[run]] #{i + 1} ({name!s}) "
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise w.error(where, "name", name, "a run name is letters, digits, '-' and '_' (it prefixes metric names)",
                          f'name it e.g. name = "{kind}-1"')
        if any(r.name == name for r in runs):
            raise w.error(where, "name", name, "another run has this name", f'give each run its own name, e.g. '
                          f'name = "{name}-2"')
        params = _check_keys(w, where, {k: v for k, v in table.items() if k not in COMMON_KEYS}, RUN_KEYS[kind])
        if kind == "custom_mix" and params["long_fraction"] + params["domain_fraction"] > 1.0:
            raise w.error(where, "domain_fraction", params["domain_fraction"],
                          f"long_fraction {params['long_fraction']:g} + domain_fraction > 1: the groups cannot overlap",
                          "lower one of them so that they add up to at most 1")
        if "data" in params:
            if "data" in overrides:
                params["data"] = str(Path(overrides["data"]).expanduser().resolve())
                if not Path(params["data"]).is_file():
                    raise SuiteError(f"--data {overrides['data']}: no such file. Fix: pass an existing "
                                     f"labelled .csv/.tsv/.jsonl file.")
            elif params["data"] is not None:
                params["data"] = _resolve_path(w, where, "data", params["data"], base)
        runs.append(RunSpec(kind, name, params))
    threads = overrides.get("threads", settings["threads"])
    backend = overrides.get("backend", settings["backend"])
    return Suite(settings["name"], settings["description"], threads, backend, tuple(runs), overrides=overrides)


def load_suite(path: str | Path, **overrides: Any) -> Suite:
    """Read and validate a suite file; SuiteError names what is wrong and how to fix it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read the suite file ({exc.strerror or exc}). Fix: pass an existing "
                         f"suite, e.g. benchmarks/suites/standard.toml.") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{path}: not UTF-8 text (byte {exc.start}). Fix: save the suite as UTF-8.") from None
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: not valid TOML ({exc}). Fix: correct the syntax at that line.") from None
    suite = parse_suite(data, str(path), path.parent, overrides)
    return Suite(suite.name, suite.description, suite.threads, suite.backend, suite.runs, file=str(path),
                 sha256=hashlib.sha256(raw).hexdigest(), overrides=suite.overrides)
