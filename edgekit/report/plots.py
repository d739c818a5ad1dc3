"""Matplotlib helpers of the report: a pyplot-free Agg figure, its PNG inlined as a data URI, a moving
average, plain log ticks and scatter labels that do not overlap."""

from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np

from .parts import esc


def figure(width: float = 10.0, height: float = 3.6, ncols: int = 1):
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


def smooth(values: Sequence[float]) -> list[float]:
    """Trailing moving average over about a 20th of the points (at least 1)."""
    arr = np.asarray(values, dtype=float)
    window = max(1, len(arr) // 20)
    if window == 1:
        return list(arr)
    csum = np.cumsum(np.insert(arr, 0, 0.0))
    out = [(csum[i + 1] - csum[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(len(arr))]
    return out


def plain_log_ticks(ax, which: str = "x", subs: tuple[float, ...] = (1.0, 2.0, 5.0)) -> None:
    """Log-axis ticks as plain numbers (1, 2, 5, 10, 20, ...): mathtext is off for manifest strings."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def place_labels(fig, labelled) -> None:
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
