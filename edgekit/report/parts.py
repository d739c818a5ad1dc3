"""The parts every report page is built from: the page's section list, the colours and markers the
plots share, and the HTML primitives (every string escaped). Plot helpers are in plots.py, the
readers of training logs and bench results in inputs.py; the page itself is page.py.
"""

from __future__ import annotations

import html
import math
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


def short(text: str, n: int = 40) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"
