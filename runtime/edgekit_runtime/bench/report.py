"""Result documents: reading and checking them, Markdown, and the A/B comparison.

The result schema ("edgekit-bench", version 1) is documented in docs/bench-schema.md. In short::

    {"schema": "edgekit-bench", "version": 1, "created_utc", "finished_utc", "command": [argv],
     "suite": {name, description, file, sha256, threads, backend, overrides},
     "bundle": {path, label, task, labels, profile, device, precision, max_length, model_sha256,
                manifest_sha256, backend, backend_requested, backend_passed_over, threads,
                ort_intra_op_num_threads},
     "environment": {see env.ENV_KEYS; unknown fields null},
     "repeats": N,
     "runs": [{"name", "kind", "config", "status": "ok"|"error", "error", "seconds": [per repeat],
               "metrics": {"GROUP.STAT": {"value", "unit", "better": "lower"|"higher"|null,
                                          "samples": [per repeat]}},
               "details": [per-repeat free-form facts]}]}

A reader must refuse a different ``schema`` or a ``version`` it does not know; within version 1,
keys are only ever added.

The A/B rule ("beyond noise"): a metric differs beyond the noise when both sides have at least
``MIN_REPEATS`` (3) per-repeat values and the two ranges [min, max] do not overlap. That is the
most extreme outcome of an exact two-sided permutation (Mann-Whitney) test on the repeat values:
with n and m repeats its p-value is 2 / C(n + m, n): 0.10 for 3 + 3, 0.029 for 4 + 4, 0.0079 for
5 + 5 (reported as ``p_separation``). Fewer repeats: "n/a". Values that are equal in every
repeat (accuracy of a deterministic model) overlap and so never count as a difference.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from .runner import SCHEMA, VERSION
from .suite import SuiteError

COMPARE_SCHEMA, COMPARE_VERSION = "edgekit-bench-compare", 1
MIN_REPEATS = 3
RULE = (f"beyond noise = at least {MIN_REPEATS} repeats per side and the [min, max] ranges of the per-repeat values "
        f"do not overlap (exact permutation test at its most extreme outcome: p = 2 / C(n+m, n), 0.10 for 3+3, "
        f"0.029 for 4+4, 0.008 for 5+5)")


class ResultError(SuiteError):
    """A result file is not an edgekit-bench result this runtime can read."""


def _fail(source: str, where: str, reason: str, fix: str) -> ResultError:
    return ResultError(f"{source}: {where}: {reason}. Fix: {fix}.")


def check_result(doc: Any, source: str = "result") -> dict[str, Any]:
    """The document if it is an edgekit-bench version-1 result, else ResultError naming what is wrong."""
    regen = "regenerate it with `edgekit-run bench BUNDLE --suite FILE --json OUT`"
    if not isinstance(doc, dict):
        raise _fail(source, "top level", f"a JSON {type(doc).__name__}, expected an object", regen)
    if doc.get("schema") != SCHEMA:
        raise _fail(source, "schema", f"is {doc.get('schema')!r}, expected {SCHEMA!r}", "pass a file written by "
                    "`edgekit-run bench --json`")
    if doc.get("version") != VERSION:
        raise _fail(source, "version", f"is {doc.get('version')!r}; this runtime reads version {VERSION}",
                    "read it with the edgekit-runtime that wrote it, or " + regen)
    for key, kind in (("suite", dict), ("bundle", dict), ("environment", dict), ("runs", list), ("repeats", int),
                      ("created_utc", str)):
        if not isinstance(doc.get(key), kind):
            raise _fail(source, key, f"missing or not a JSON {kind.__name__}", regen)
    for i, run in enumerate(doc["runs"]):
        if not isinstance(run, dict) or not isinstance(run.get("name"), str) or not isinstance(run.get("metrics"), dict):
            raise _fail(source, f"runs[{i}]", "expected an object with a name and metrics", regen)
        if run.get("status") not in ("ok", "error"):
            raise _fail(source, f"runs[{i}].status", f"is {run.get('status')!r}, expected 'ok' or 'error'", regen)
        for key, m in run["metrics"].items():
            if (not isinstance(m, dict) or not (m.get("value") is None or isinstance(m.get("value"), (int, float)))
                    or m.get("better") not in ("lower", "higher", None) or not isinstance(m.get("samples"), list)):
                raise _fail(source, f"runs[{i}] ({run['name']}) metric {key!r}",
                            "expected {value: number|null, unit, better: lower|higher|null, samples: [...]}", regen)
    return doc


def read_result(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultError(f"{path}: cannot read it ({exc.strerror or exc}). Fix: check the path.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ResultError(f"{path}: not JSON ({exc}). Fix: pass a file written by `edgekit-run bench --json`.") from None
    return check_result(doc, str(path))


def is_result_file(path: str | Path) -> bool:
    """True for a file holding an edgekit-bench result (any version); False for a bundle or anything else."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() != ".json":
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("schema") == SCHEMA
    except (OSError, ValueError, AttributeError, UnicodeDecodeError):
        return False


def write_json(doc: Mapping[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- Markdown

def fmt(value: Any, unit: str | None = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if unit == "count" or isinstance(value, int):
        return f"{int(value):,}" if float(value).is_integer() else f"{value:,.1f}"
    if unit == "fraction":
        return f"{value:.4f}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4g}"


def _column(stat: str) -> str:
    words = {"items_per_s": "items/s", "ms_per_item": "ms/item", "qps": "QPS", "n": "n"}
    if stat in words:
        return words[stat]
    for suffix, unit in (("_ms", " ms"), ("_mb", " MB"), ("_qps", " QPS"), ("_s", " s")):
        if stat.endswith(suffix):
            return stat[: -len(suffix)].replace("_", " ") + unit
    return stat.replace("_", " ")


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def metrics_table(metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """GROUP.STAT metrics as tables: a row per group, a column per stat; groups with the same
    stats share a table (first-seen order)."""
    groups: dict[str, dict[str, Mapping[str, Any]]] = {}
    for key, m in metrics.items():
        group, _, stat = key.rpartition(".")
        groups.setdefault(group or "-", {})[stat] = m
    tables: dict[tuple[str, ...], list[str]] = {}
    for group, row in groups.items():
        home = next((stats for stats in tables if set(row) <= set(stats)), tuple(row))  # fewer stats: blank cells
        tables.setdefault(home, []).append(group)
    out: list[str] = []
    for stats, names in tables.items():
        rows = [[g] + [fmt(groups[g][s]["value"], groups[g][s].get("unit")) if s in groups[g] else "" for s in stats]
                for g in names]
        out += ([""] if out else []) + _table(rows, [""] + [_column(s) for s in stats])
    return out


def environment_line(env: Mapping[str, Any]) -> str:
    parts = [f"{env.get('cpu_model') or 'CPU model unknown'}, {env.get('cpu_cores')} cores"
             + (f" ({env.get('cpu_usable_cores')} usable)" if env.get("cpu_usable_cores") not in (None, env.get("cpu_cores")) else ""),
             f"{env.get('distro') or env.get('os')} ({env.get('os')} {env.get('os_release')}, {env.get('architecture')})",
             f"Python {env.get('python')}, onnxruntime {env.get('onnxruntime')} "
             f"({', '.join(env.get('onnxruntime_providers') or [])}), numpy {env.get('numpy')}, "
             f"tokenizers {env.get('tokenizers')}"]
    if env.get("tensorrt"):
        parts.append(f"TensorRT {env['tensorrt']}")
    if env.get("gpu"):
        parts.append("GPU " + "; ".join(env["gpu"]))
    jetson = env.get("jetson")
    if jetson:
        mode = jetson.get("power_mode") or {}
        parts.append(f"Jetson {jetson.get('model')}, L4T {jetson.get('l4t')}, JetPack {jetson.get('jetpack')}, "
                     f"power mode {mode.get('name')} ({mode.get('id')})")
    return "; ".join(parts)


def to_markdown(doc: Mapping[str, Any]) -> str:
    b, s, env = doc["bundle"], doc["suite"], doc["environment"]
    threads = b.get("threads") if b.get("threads") is not None else "onnxruntime default"
    lines = [f"# edgekit-run bench: suite {s.get('name')} on {Path(str(b.get('path'))).name}", "",
             f"- bundle: `{b.get('path')}`: {b.get('task')}, profile {b.get('profile')}, {b.get('precision')}, "
             f"max length {b.get('max_length')}; backend {b.get('backend')}, threads {threads}",
             f"- suite: `{s.get('file')}` (sha256 {str(s.get('sha256'))[:12]}), {doc.get('repeats')} repeat(s)"
             + ("; values are medians over the repeats" if doc.get("repeats", 1) > 1 else ""),
             f"- environment: {environment_line(env)}",
             f"- run {doc.get('created_utc')} to {doc.get('finished_utc')}, commit {env.get('git_commit')}, "
             f"command `{' '.join(map(str, doc.get('command') or []))}`"]
    for run in doc["runs"]:
        lines += ["", f"## {run['name']} ({run['kind']}), {sum(run.get('seconds') or [0]):.1f} s", ""]
        if run["status"] == "error":
            lines.append(f"**failed**: {run['error']}")
            lines.append("")
        if run["metrics"]:
            lines += metrics_table(run["metrics"])
        notes = _run_notes(run)
        if notes:
            lines += [""] + notes
    return "\n".join(lines) + "\n"


def _run_notes(run: Mapping[str, Any]) -> list[str]:
    details = (run.get("details") or [{}])[-1] or {}
    notes = []
    for item in details.get("skipped", []):
        notes.append(f"- skipped {item['shape']}: {item['reason']}")
    if run["kind"] == "latency" and "real_texts" in details:
        rt = details["real_texts"]
        notes.append(f"- fixed shapes: model call only; real_b1: {rt['n']} texts from {rt['source']} through predict "
                     f"(tokenization included), {rt['truncated']} truncated")
    if run["kind"] == "accuracy" and "data" in details:
        d = details["data"]
        notes.append(f"- {d['n']} rows of {d['source']} ({d['counts']}), {details.get('truncated')} truncated, "
                     f"{d['dropped_blank']} blank rows dropped")
    if run["kind"] == "custom_mix" and "composition" in details:
        notes.append(f"- composition {details['composition']}; truncated {details['truncated']}")
    if run["kind"] == "stress" and "statuses" in details:
        notes.append(f"- {details['requests_planned']} requests planned over {details['window_s']:g} s; "
                     f"HTTP errors {details['statuses'] or 'none'}; server exit code {details['server_exit_code']}")
    if run["kind"] == "memory" and details.get("processes"):
        notes.append(f"- {len(details['processes'])} fresh processes, backend {details.get('backend')}; "
                     f"load = verify sha256 + backend choice + smoke run")
    return notes


# ---------------------------------------------------------------- A/B comparison

def verdict(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, min_repeats: int = MIN_REPEATS) -> dict[str, Any]:
    """One metric of A and B: values, ratio B/A, which is better, and whether it is beyond the noise."""
    av = a.get("value") if a else None
    bv = b.get("value") if b else None
    better_dir = (a or b or {}).get("better")
    row: dict[str, Any] = {"a": av, "b": bv, "unit": (a or b or {}).get("unit"), "direction": better_dir,
                           "ratio": bv / av if av not in (None, 0) and bv is not None else None,
                           "better": None, "beyond_noise": None, "p_separation": None, "why": ""}
    if av is None or bv is None:
        row["why"] = "missing on one side"
        return row
    if better_dir is None:  # a count or a setting (samples, target rate): neither side is better
        row["why"] = "no direction"
        return row
    if av == bv:
        row["better"] = "same"
    else:
        row["better"] = "B" if (bv < av) == (better_dir == "lower") else "A"
    sa = [x for x in (a.get("samples") or []) if x is not None]
    sb = [x for x in (b.get("samples") or []) if x is not None]
    if len(sa) < min_repeats or len(sb) < min_repeats:
        row["why"] = f"{len(sa)} and {len(sb)} repeats; the rule needs {min_repeats} per side"
        return row
    row["p_separation"] = 2 / math.comb(len(sa) + len(sb), len(sa))
    disjoint = max(sa) < min(sb) or max(sb) < min(sa)
    row["beyond_noise"] = disjoint
    row["why"] = (f"A [{fmt(min(sa))}, {fmt(max(sa))}] vs B [{fmt(min(sb))}, {fmt(max(sb))}] "
                  + ("do not overlap" if disjoint else "overlap"))
    return row


def _side(doc: Mapping[str, Any], label: str, source: str) -> dict[str, Any]:
    b = doc["bundle"]
    return {"label": label, "source": source, "bundle": b.get("path"), "model_sha256": b.get("model_sha256"),
            "backend": b.get("backend"), "suite": doc["suite"].get("name"), "suite_sha256": doc["suite"].get("sha256"),
            "repeats": doc.get("repeats"), "created_utc": doc.get("created_utc")}


def compare(a: Mapping[str, Any], b: Mapping[str, Any], *, a_source: str = "A", b_source: str = "B",
            same_run: bool = False, min_repeats: int = MIN_REPEATS) -> dict[str, Any]:
    """The A/B document: one row per (run, metric) of either side, A's order first."""
    notes = []
    if a["suite"].get("sha256") != b["suite"].get("sha256"):
        notes.append(f"the suites differ (A: {a['suite'].get('name')}, B: {b['suite'].get('name')}): "
                     f"only metrics both have are comparable")
    if not same_run:
        ea, eb = a["environment"], b["environment"]
        differ = [k for k in ("cpu_model", "cpu_cores", "architecture", "onnxruntime", "edgekit_runtime")
                  if ea.get(k) != eb.get(k)]
        notes.append("A and B were measured in separate runs" + (f" with different {', '.join(differ)}" if differ else "")
                     + ": ratios are not from one interleaved run (use --compare BUNDLE_A BUNDLE_B for that)")
    runs_a = {r["name"]: r for r in a["runs"]}
    runs_b = {r["name"]: r for r in b["runs"]}
    names = list(runs_a) + [n for n in runs_b if n not in runs_a]
    rows = []
    for name in names:
        ma = runs_a.get(name, {}).get("metrics", {})
        mb = runs_b.get(name, {}).get("metrics", {})
        for key in list(ma) + [k for k in mb if k not in ma]:
            rows.append({"run": name, "metric": key, **verdict(ma.get(key), mb.get(key), min_repeats)})
    return {"schema": COMPARE_SCHEMA, "version": COMPARE_VERSION, "rule": RULE, "min_repeats": min_repeats,
            "same_run": same_run, "a": _side(a, "A", a_source), "b": _side(b, "B", b_source), "notes": notes,
            "rows": rows, "results": {"a": a, "b": b}}


def compare_markdown(doc: Mapping[str, Any]) -> str:
    a, b = doc["a"], doc["b"]
    lines = ["# edgekit-run bench: A/B comparison", "",
             f"- A: `{a['bundle']}` ({a['source']}), backend {a['backend']}, suite {a['suite']}, {a['repeats']} repeat(s)",
             f"- B: `{b['bundle']}` ({b['source']}), backend {b['backend']}, suite {b['suite']}, {b['repeats']} repeat(s)",
             f"- rule: {doc['rule']}"]
    lines += [f"- note: {n}" for n in doc["notes"]]
    env = doc["results"]["a"]["environment"]
    lines.append(f"- environment (A): {environment_line(env)}")
    counts = summary_counts(doc["rows"])
    lines += [f"- beyond the noise: B better on {counts['B']} metrics, A better on {counts['A']}", ""]
    table = []
    for r in doc["rows"]:
        noise = ("" if r["direction"] is None else "n/a") if r["beyond_noise"] is None else (
            "yes" if r["beyond_noise"] else "no")
        better = {"A": "A", "B": "B", "same": "=", None: ""}[r["better"]]
        table.append([r["run"], r["metric"], fmt(r["a"], r["unit"]), fmt(r["b"], r["unit"]),
                      "-" if r["ratio"] is None else f"{r['ratio']:.3f}", better, noise])
    lines += _table(table, ["run", "metric", "A", "B", "B/A", "better", "beyond noise"])
    return "\n".join(lines) + "\n"


def check_compare(doc: Any, source: str = "comparison") -> dict[str, Any]:
    if not isinstance(doc, dict) or doc.get("schema") != COMPARE_SCHEMA or doc.get("version") != COMPARE_VERSION:
        raise ResultError(f"{source}: not an {COMPARE_SCHEMA} version {COMPARE_VERSION} document. Fix: regenerate it "
                          f"with `edgekit-run bench --compare A B --json OUT`.")
    check_result(doc["results"]["a"], f"{source} results.a")
    check_result(doc["results"]["b"], f"{source} results.b")
    return doc


def summary_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    out = {"A": 0, "B": 0, "same": 0}
    for r in rows:
        if r["beyond_noise"] and r["better"] in out:
            out[r["better"]] += 1
    return out
