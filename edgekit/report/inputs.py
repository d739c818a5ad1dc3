"""What a report reads besides the manifest: training/*.jsonl logs, `edgekit-run bench` results
(a result, a comparison, or benchmarks/reference.py's document), and the task adapter's metric order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from edgekit_runtime.bench.report import COMPARE_SCHEMA, ResultError, check_result

from ..tasks import get_task
from .parts import get, num


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(rows, count of unreadable lines)."""
    rows, bad = [], 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return [], 1
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def read_bench(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """[(label, edgekit-bench result)] from a result file, or both sides of a comparison file (the
    ``--compare --json`` document, or benchmarks/results/reference.json, which holds one)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultError(f"--bench {path}: cannot read it ({exc.strerror or exc}). Fix: check the path.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ResultError(f"--bench {path}: not JSON ({exc}). Fix: pass a file written by "
                          f"`edgekit-run bench --json`.") from None
    if isinstance(doc, dict) and doc.get("schema") == "edgekit-reference":  # benchmarks/reference.py
        doc = doc.get("compare")
    if isinstance(doc, dict) and doc.get("schema") == COMPARE_SCHEMA:
        out = []
        for side in ("a", "b"):
            result = check_result(get(doc, "results", side), f"{path} (side {side.upper()})")
            where = get(doc, side, "bundle") or get(result, "bundle", "path")
            name = Path(str(where)).name if where else (get(result, "bundle", "label") or side)
            out.append((f"{side.upper()}: {name}", result))
        return out
    result = check_result(doc, str(path))
    return [(str(get(result, "bundle", "label") or path.stem), result)]


def latency_samples(result: Mapping[str, Any]) -> dict[str, list[float]]:
    """Per group (b1xs128, real_b1, ...): every per-call time of the latency runs, all repeats."""
    out: dict[str, list[float]] = {}
    for run in result.get("runs") or []:
        if get(run, "kind") != "latency" or get(run, "status") != "ok":
            continue
        for detail in get(run, "details") or []:
            for group, times in (get(detail, "timings_ms") or {}).items():
                vals = [float(t) for t in times or [] if num(t) is not None]
                if vals:
                    out.setdefault(str(group), []).extend(vals)
    return out


def task_metric_order(task: Any) -> list[str]:
    """The task adapter's metric keys in its order (first = headline), or [] for an unknown task."""
    try:
        return list(get_task(str(task)).metrics(np.eye(2), np.array([0, 1])))
    except Exception:
        return []
