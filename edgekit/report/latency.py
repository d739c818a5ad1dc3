"""The report's latency sections: the latency distributions (from `edgekit-run bench --json`
results, else the manifest's compile-time figures) and the quality vs size vs latency trade-off.
A mixin of page.Report, which holds the manifest and the bench results."""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from .inputs import latency_samples
from .parts import COLORS, NOT_RECORDED, SYSTEM_STYLE, fmt, fmt_bytes, get, missing, num, para, short, table
from .plots import figure, img, place_labels, plain_log_ticks


class LatencySections:
    """``latency`` and ``tradeoff`` (with ``tradeoff_points``), for Report."""

    def latency(self) -> str:
        if self.bench:
            return self._bench_latency()
        lat = get(self.fig, "latency")
        if not isinstance(lat, Mapping) or not any(isinstance(v, Mapping) for v in lat.values()):
            return missing("latency figures") + para("Pass --bench RESULT.json (from edgekit-run bench --json) "
                                                     "to plot a measured distribution.")
        rank = {"teacher_pytorch": 0, "student_pytorch": 1, "bundle_runtime": 2}
        systems = sorted(((k, v) for k, v in lat.items() if isinstance(v, Mapping)), key=lambda kv: rank.get(kv[0], 3))
        names = {"teacher_pytorch": "teacher (PyTorch)", "bundle_runtime": self.bundle_name(),
                 "student_pytorch": "student (PyTorch)"}
        n = next((v.get("samples") for _, v in systems if v.get("samples") is not None), "?")
        out = [para(f"Source: the manifest's latency figures, measured when the bundle was compiled on the build "
                    f"host: batch 1, {n} real test texts, tokenization included, interleaved, "
                    f"{lat.get('threads', '?')} threads. The manifest keeps only the median and p90 of those "
                    f"calls, so no histogram can be drawn: the plot shows the two recorded points of each "
                    f"distribution. Pass --bench RESULT.json for the full distribution.", "source")]
        rows = [(names.get(k, k), fmt(v.get("median_ms"), ".2f", " ms"), fmt(v.get("p90_ms"), ".2f", " ms"),
                 v.get("samples", "-")) for k, v in systems]
        out.append(table(["system", "median", "p90", "calls"], rows))
        if num(lat.get("speedup")) is not None:
            out.append(para(f"Bundle speedup over the PyTorch teacher (median): {lat['speedup']:.2f}x."))
        fig, (ax,) = figure(7.0, 3.2)
        for i, (k, v) in enumerate(systems):
            pts = [(num(v.get("median_ms")), 0.5), (num(v.get("p90_ms")), 0.9)]
            pts = [p for p in pts if p[0] is not None]
            if pts:
                color, marker = SYSTEM_STYLE.get(k, (COLORS[(i + 3) % len(COLORS)], "o"))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, linestyle=":",
                        color=color, label=short(names.get(k, k), 45))
        ax.set_xlabel("latency per call (ms)", fontsize=9)
        ax.set_ylabel("fraction of calls at or below", fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlim(left=0)
        ax.set_title("recorded percentiles (p50, p90) of the compile-time latency", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        out.append(img(fig, "recorded latency percentiles"))
        return "".join(out)

    def _bench_latency(self) -> str:
        data = [(label, result, latency_samples(result)) for label, result in self.bench]
        files = ", ".join(self.bench_files) if self.bench_files else "--bench"
        out = [para(f"Source: edgekit-run bench results ({files}): every per-call time of their latency runs, "
                    f"all repeats pooled. The manifest's compile-time figures are not used here.", "source")]
        rows = []
        mine = get(self.m, "files", get(self.m, "model", "file") or "model.onnx", "sha256")
        for label, result, groups in data:
            same = "yes" if mine and get(result, "bundle", "model_sha256") == mine else "no"
            for group, vals in groups.items():
                arr = np.asarray(vals)
                rows.append((label, same, group, len(arr), f"{np.percentile(arr, 50):.2f}",
                             f"{np.percentile(arr, 90):.2f}", f"{np.percentile(arr, 99):.2f}", f"{arr.max():.2f}"))
            if not groups:
                out.append(para(f"{label}: no latency run with per-call timings in this result.", "missing"))
        if not rows:
            return "".join(out)
        out.append(table(["result", "this bundle's model", "group", "calls", "p50 ms", "p90 ms", "p99 ms", "max ms"],
                         rows))
        out.append(para("Groups: bBxsS is batch B x sequence S, the model call only (fixed padded shape); real_b1 is "
                        "real texts at their natural length through predict, batch 1, tokenization included."))
        all_groups = [g for _, _, groups in data for g in groups]
        primary = "real_b1" if "real_b1" in all_groups else all_groups[0]
        series = [(label, groups[primary]) for label, _, groups in data if primary in groups]
        # This bundle's results in its colour (as in the trade-off plot); other bundles in the others.
        others_colors = iter([c for c in COLORS if c != SYSTEM_STYLE["bundle_runtime"][0]] * 4)
        colors: dict[str, str] = {}
        for label, result, _ in data:
            own = mine and get(result, "bundle", "model_sha256") == mine
            green = SYSTEM_STYLE["bundle_runtime"][0]
            colors[label] = green if own and green not in colors.values() else next(others_colors)
        fig, axes = figure(10.0, 3.6, 2)
        lo = min(min(v) for _, v in series)
        hi = max(np.percentile(v, 99.5) for _, v in series)
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
        for i, (label, vals) in enumerate(series):
            color = colors[label]
            axes[0].hist(np.clip(vals, None, bins[-1]), bins=bins, alpha=0.55 if len(series) > 1 else 0.85,
                         color=color, label=short(label, 40))
            xs = np.sort(vals)
            axes[1].plot(xs, np.arange(1, len(xs) + 1) / len(xs), color=color, label=short(label, 40))
            p50 = float(np.median(vals))
            axes[1].axvline(p50, color=color, linestyle=":", linewidth=1)
        axes[0].set_title(f"{primary}: histogram (values above p99.5 in the last bin)", fontsize=10)
        axes[0].set_xlabel("latency per call (ms)", fontsize=9)
        axes[0].set_ylabel("calls", fontsize=9)
        axes[1].set_title(f"{primary}: CDF (dotted: median)", fontsize=10)
        axes[1].set_xlabel("latency per call (ms)", fontsize=9)
        axes[1].set_ylabel("fraction of calls at or below", fontsize=9)
        axes[1].set_ylim(0, 1.01)
        for ax in axes:
            ax.legend(fontsize=8, loc="lower right" if ax is axes[1] else "upper right")
        out.append(img(fig, f"latency histogram and CDF of {primary}"))
        others = sorted({g for g in all_groups if g != primary},
                        key=lambda g: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", g)])
        if others:
            fig, (ax,) = figure(10.0, 3.6)
            styles = ("-", "--", ":", "-.")
            for gi, group in enumerate(others):
                for si, (label, _, groups) in enumerate(data):
                    if group not in groups:
                        continue
                    xs = np.sort(groups[group])
                    name = group if len(data) == 1 else f"{group} — {short(label, 25)}"
                    ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), color=COLORS[gi % len(COLORS)],
                            linestyle=styles[si % len(styles)], label=name)
            ax.set_xscale("log")
            plain_log_ticks(ax)
            ax.set_xlabel("latency per call (ms, log scale)", fontsize=9)
            ax.set_ylabel("fraction of calls at or below", fontsize=9)
            ax.set_ylim(0, 1.01)
            ax.set_title("CDF of the fixed-shape groups (model call only)", fontsize=10)
            ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
            out.append(img(fig, "latency CDF per shape"))
        return "".join(out)

    # ------------------------------------------------------------ trade-off

    def tradeoff_points(self) -> tuple[list[dict[str, Any]], list[str]]:
        q, lat, headline = self.quality, get(self.fig, "latency"), self.headline
        model_file = get(self.m, "model", "file") or "model.onnx"
        candidates = [
            ("teacher (PyTorch fp32)", "teacher_pytorch",
             self.teacher_params() * 4 if self.teacher_params() is not None else None, "fp32 weights"),
            ("student (PyTorch fp32)", "student_pytorch",
             self.student_params() * 4 if self.student_params() is not None else None, "fp32 weights"),
            (("quantized " if self.precision == "int8" else "") + self.bundle_name(), "bundle_runtime",
             self.file_bytes(model_file), f"{model_file} file"),
        ]
        points, gaps = [], []
        for name, key, size, size_kind in candidates:
            if key == "student_pytorch" and not self.expects_student():
                continue  # no student in this bundle: nothing missing
            point = {"name": name, "key": key, "quality": num(get(q, key, headline)) if headline else None,
                     "size": size, "size_kind": size_kind, "latency": num(get(lat, key, "median_ms"))}
            absent = [w for w, k in (("quality", "quality"), ("size", "size"), ("latency", "latency")) if point[k] is None]
            if absent:
                gaps.append(f"{name}: {' and '.join(absent)} {NOT_RECORDED}")
            points.append(point)
        return points, gaps

    def tradeoff(self) -> str:
        points, gaps = self.tradeoff_points()
        headline = self.headline or "quality"
        if not points:
            return missing("quality, size and latency figures")
        rows = [(p["name"], fmt(p["quality"]), f"{fmt_bytes(p['size'])} ({p['size_kind']})" if p["size"] is not None
                 else "-", fmt(p["latency"], ".2f", " ms")) for p in points]
        out = [table(["system", f"test {headline}", "size", "latency b1 median"], rows)]
        out.append(para("Sizes are what each system needs to hold: fp32 parameters x 4 bytes for the PyTorch models, "
                        "the ONNX file for the bundle. Latency is the compile-time batch-1 median on the build host "
                        "(real test texts, tokenization included)."))
        for gap in gaps:
            out.append(para(gap + " (no point drawn for it on that axis).", "missing"))
        base = num(get(self.quality, "majority_baseline", headline))
        panels = [("size", "size (MB)", 1e-6), ("latency", "latency b1 median (ms)", 1.0)]
        panels = [p for p in panels if any(pt[p[0]] is not None and pt["quality"] is not None for pt in points)]
        if not panels:
            out.append(missing("any point with both a quality and a size or latency"))
            return "".join(out)
        fig, axes = figure(10.0 if len(panels) == 2 else 6.0, 3.8, len(panels))
        qualities = [p["quality"] for p in points if p["quality"] is not None]
        lo, hi = min(qualities), max(qualities)
        pad = max(0.005, (hi - lo) * 0.6)
        ylim = (max(0.0, lo - pad), min(1.0, hi + pad) if hi <= 1.0 else hi + pad)
        style = {i: SYSTEM_STYLE.get(p["key"], (COLORS[(i + 3) % len(COLORS)], "^")) for i, p in enumerate(points)}
        labelled = []
        for ax, (key, label, scale) in zip(axes, panels):
            drawn = [(i, p) for i, p in enumerate(points) if p[key] is not None and p["quality"] is not None]
            xs = [p[key] * scale for _, p in drawn]
            for (i, p), x in zip(drawn, xs):
                color, marker = style[i]
                # Hollow, larger markers for the PyTorch models: a bundle exported from the student sits on
                # top of it (same size and quality) and both stay visible.
                hollow = "PyTorch" in p["name"]
                ax.scatter([x], [p["quality"]], s=130 if hollow else 60, marker=marker, zorder=3,
                           facecolors="none" if hollow else color, edgecolors=color, linewidths=1.6 if hollow else 0.8)
            ax.set_xlabel(label, fontsize=9)
            ax.set_ylabel(f"test {headline}", fontsize=9)
            ax.set_xlim(0, max(xs) * 1.6 if max(xs) > 0 else 1)  # room for the labels right of the points
            ax.set_ylim(*ylim)
            ax.set_title(f"test {headline} vs {key}", fontsize=10)
            if base is not None and ylim[0] <= base <= ylim[1]:
                ax.axhline(base, color="gray", linestyle="--", linewidth=1)
                ax.annotate("majority baseline", (0, base), xycoords=("axes fraction", "data"),
                            xytext=(4, 3), textcoords="offset points", fontsize=8, color="gray")
            elif base is not None:
                ax.annotate(f"majority baseline {base:.3f}: {'below' if base < ylim[0] else 'above'} this axis",
                            (0.01, 0.02 if base < ylim[0] else 0.95), xycoords="axes fraction", fontsize=8,
                            color="gray")
            labelled.append((ax, [(x, p["quality"], short(p["name"], 40), style[i][0])
                                  for (i, p), x in zip(drawn, xs)]))
        place_labels(fig, labelled)
        out.append(img(fig, f"test {headline} vs size and latency"))
        return "".join(out)
