"""The parts `edgekit report` is built from: HTML primitives (every string escaped), matplotlib
figure helpers (Agg, PNGs inlined as data URIs), and the readers of training logs and
`edgekit-run bench` results. The page itself is assembled in report.py.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

NOT_RECORDED = "not recorded in this bundle"
SECTIONS = (("summary", "Summary"), ("training", "Training curves"), ("latency", "Latency"),
            ("tradeoff", "Quality vs size vs latency"), ("substitutions", "Graph substitutions and validation"),
            ("environment", "Environment and commands"))
STAGES = (("finetune", "Teacher fine-tune", None), ("distill", "Student distillation", "student_loss_curve.jsonl"),
          ("qat", "Quantization-aware training (QAT)", "qat_loss_curve.jsonl"))
LOSS_KEYS = ("total", "kd", "task", "hidden", "attention")
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
# The same quantity keeps its colour in every plot.
NAMED_COLORS = {"total": COLORS[0], "kd": COLORS[1], "task": COLORS[2], "hidden": COLORS[3], "attention": COLORS[4],
                "macro_f1": COLORS[0], "accuracy": COLORS[1], "selection_agreement": COLORS[2]}


# Each system keeps its colour and marker in every plot.
SYSTEM_STYLE = {"teacher_pytorch": (COLORS[0], "o"), "student_pytorch": (COLORS[1], "s"),
                "bundle_runtime": (COLORS[2], "D")}


def color_for(key: str, index: int) -> str:
    return NAMED_COLORS.get(key, COLORS[(index + 5) % len(COLORS)])


class Raw(str):
    """HTML that is already safe (built here from escaped parts)."""


def esc(value: Any) -> str:
    return value if isinstance(value, Raw) else html.escape(str(value), quote=True)


def get(node: Any, *keys: Any) -> Any:
    """node[k1][k2]... or None where any step is missing or of the wrong kind."""
    for key in keys:
        if isinstance(node, Mapping):
            node = node.get(key)
        elif isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node):
            node = node[key]
        else:
            return None
    return node


def num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def fmt(value: Any, spec: str = ".4f", unit: str = "") -> str:
    x = num(value)
    if x is None:
        return "-" if value is None else str(value)
    return f"{x:{spec}}{unit}"


def fmt_bytes(n: Any) -> str:
    x = num(n)
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.1f} MB"
    if x >= 1e3:
        return f"{x / 1e3:.1f} kB"
    return f"{int(x)} B"


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def kv_table(rows: Iterable[tuple[Any, Any]]) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def para(text: Any, cls: str = "") -> str:
    return f'<p class="{cls}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def missing(what: str) -> str:
    return para(f"{what}: {NOT_RECORDED}.", "missing")


def pre(text: Any) -> str:
    return f"<pre>{esc(text)}</pre>"


# ---------------------------------------------------------------- plots


def _figure(width: float = 10.0, height: float = 3.6, ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: no global figure state, no GUI backend
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=9)
    return fig, list(axes)


def img(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def _smooth(values: Sequence[float]) -> list[float]:
    """Trailing moving average over about a 20th of the points (at least 1)."""
    import numpy as np

    arr = np.asarray(values, dtype=float)
    window = max(1, len(arr) // 20)
    if window == 1:
        return list(arr)
    csum = np.cumsum(np.insert(arr, 0, 0.0))
    out = [(csum[i + 1] - csum[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(len(arr))]
    return out


def _plain_log_ticks(ax, which: str = "x", subs: tuple[float, ...] = (1.0, 2.0, 5.0)) -> None:
    """Log-axis ticks as plain numbers (1, 2, 5, 10, 20, ...): mathtext is off for manifest strings."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _short(text: str, n: int = 40) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _place_labels(fig, labelled) -> None:
    """Annotate scatter points without overlaps: each label takes the first spot around its point
    that stays inside the axes and clears every label and marker placed so far."""
    fig.canvas.draw()  # settle the layout, then freeze it so the labels measure where they will be drawn
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    spots = [(8, 6, "left", "bottom"), (8, -6, "left", "top"), (-8, 6, "right", "bottom"), (-8, -6, "right", "top"),
             (10, 24, "left", "bottom"), (10, -24, "left", "top"), (-10, 24, "right", "bottom"),
             (-10, -24, "right", "top"), (10, 42, "left", "bottom"), (10, -42, "left", "top")]
    for ax, items in labelled:
        frame = ax.get_window_extent(renderer)
        markers = []
        for x, y, _, _ in items:
            px, py = ax.transData.transform((x, y))
            markers.append((px - 7, py - 7, px + 7, py + 7))
        placed: list[tuple[float, float, float, float]] = []

        def clear(bb, own: int) -> bool:
            if bb.x0 < frame.x0 or bb.x1 > frame.x1 or bb.y0 < frame.y0 or bb.y1 > frame.y1:
                return False
            boxes = placed + [m for j, m in enumerate(markers) if j != own]
            return not any(bb.x0 < b[2] and bb.x1 > b[0] and bb.y0 < b[3] and bb.y1 > b[1] for b in boxes)

        for k, (x, y, text, color) in enumerate(items):
            chosen = None
            for dx, dy, ha, va in spots:
                # Measured without its leader line (whose box would span back to the point).
                t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                                fontsize=8, color="#222")
                bb = t.get_window_extent(renderer)
                if clear(bb, k):
                    if abs(dy) > 10:  # away from its point: draw a leader line to it
                        t.remove()
                        t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                                        fontsize=8, color="#222",
                                        arrowprops={"arrowstyle": "-", "color": "#888", "lw": 0.8})
                    chosen = (t, bb)
                    break
                t.remove()
            if chosen is None:  # nowhere clear: the first spot, drawn anyway
                t = ax.annotate(text, (x, y), xytext=spots[0][:2], textcoords="offset points", ha="left",
                                va="bottom", fontsize=8)
                chosen = (t, t.get_window_extent(renderer))
            bb = chosen[1]
            placed.append((bb.x0, bb.y0, bb.x1, bb.y1))


# ---------------------------------------------------------------- inputs


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
    from edgekit_runtime.bench.report import COMPARE_SCHEMA, ResultError, check_result

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


def _task_metric_order(task: Any) -> list[str]:
    """The task adapter's metric keys in its order (first = headline), or [] for an unknown task."""
    try:
        import numpy as np

        from .tasks import get_task

        return list(get_task(str(task)).metrics(np.eye(2), np.array([0, 1])))
    except Exception:
        return []
