"""`edgekit report`: one self-contained HTML page about a bundle.

Everything comes from what the bundle recorded (manifest.json, training/*.jsonl) and, optionally,
from `edgekit-run bench --json` results. Nothing is estimated: a figure the bundle did not record
is named as missing, never drawn. Plots are matplotlib (Agg) PNGs inlined as base64 data URIs;
the CSS is inline; the page references no file or URL. Every string from a manifest or a result
goes through html.escape.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from .report_parts import (COLORS, LOSS_KEYS, NOT_RECORDED, SECTIONS, STAGES, SYSTEM_STYLE, _figure,
                           _place_labels, _plain_log_ticks, _short, _smooth, _task_metric_order, color_for,
                           esc, fmt, fmt_bytes, get, img, kv_table, latency_samples, missing, num, para, pre,
                           read_bench, read_jsonl, table)  # noqa: F401  (tests and callers import some from here)


# ---------------------------------------------------------------- the report


class Report:
    def __init__(self, manifest: Mapping[str, Any], bundle_dir: Path | None = None,
                 bench: Sequence[tuple[str, Mapping[str, Any]]] = (), integrity: str | None = None,
                 command: str | None = None, bench_files: Sequence[str] = ()):
        self.m = manifest
        self.dir = Path(bundle_dir) if bundle_dir is not None else None
        self.bench = list(bench)
        self.bench_files = list(bench_files)
        self.integrity = integrity
        self.command = command
        self.fig = get(manifest, "figures") if isinstance(get(manifest, "figures"), Mapping) else {}
        self.quality = get(self.fig, "quality") if isinstance(get(self.fig, "quality"), Mapping) else {}
        self.passes = {p.get("name"): p for p in get(manifest, "pass_log") or [] if isinstance(p, Mapping)}

    # ------------------------------------------------------------ shared facts

    @functools.cached_property
    def headline(self) -> str | None:
        """The task's headline metric (its adapter's first key; the manifest's JSON has sorted keys)."""
        recorded: list[str] = []
        for key in ("teacher_pytorch", "student_pytorch", "bundle_runtime", "majority_baseline"):
            metrics = get(self.quality, key)
            if isinstance(metrics, Mapping):
                recorded += [str(k) for k in metrics if str(k) not in recorded]
        if not recorded:
            return None
        gate_metric = get(self.fig, "quant_gate", "metric")
        if gate_metric in recorded:
            return gate_metric
        order = _task_metric_order(get(self.m, "task", "name"))
        return next((k for k in order if k in recorded), recorded[0])

    @property
    def precision(self) -> str:
        return str(get(self.m, "model", "precision") or "?")

    def file_bytes(self, name: str) -> float | None:
        return num(get(self.m, "files", name, "bytes"))

    def bundle_bytes(self) -> float | None:
        files = get(self.m, "files")
        if not isinstance(files, Mapping) or not files:
            return None
        sizes = [num(get(e, "bytes")) for e in files.values()]
        return sum(s for s in sizes if s is not None)

    def bundle_name(self) -> str:
        quant = get(self.m, "model", "int8", "method")
        backend = get(self.quality, "backend")
        parts = [self.precision] + ([str(quant)] if quant else []) + ([str(backend)] if backend else [])
        return f"bundle ({', '.join(parts)})"

    def expects_student(self) -> bool:
        return (get(self.m, "recipe", "student", "enabled") is True or "evaluate-student" in self.passes
                or "student_pytorch" in self.quality)

    def teacher_params(self) -> float | None:
        return num(get(self.passes, "load-teacher", "figures", "parameters"))

    def student_params(self) -> float | None:
        return num(get(self.passes, "evaluate-student", "figures", "parameters"))

    # ------------------------------------------------------------ sections

    def summary(self) -> str:
        m, q = self.m, self.quality
        out = []
        labels = get(m, "task", "labels")
        int8 = get(m, "model", "int8")
        precision = self.precision + (f" (int8 method {int8.get('method')}, format {int8.get('format')})"
                                      if isinstance(int8, Mapping) else "")
        rows = [("task", f"{get(m, 'task', 'name') or '?'}"
                 + (f" — labels: {', '.join(map(str, labels))}" if isinstance(labels, list) else "")),
                ("profile", f"{get(m, 'profile', 'name') or '?'} — {get(m, 'profile', 'data', 'device') or '?'}"),
                ("precision", precision),
                ("backend (quality and latency below)", q.get("backend") or NOT_RECORDED),
                ("integrity", self.integrity or "not checked"),
                ("signature", self._signature()),
                ("compiled", f"{get(m, 'created_utc') or '?'} by edgekit {get(m, 'edgekit_version') or '?'}")]
        out.append(kv_table(rows))

        out.append("<h3>Sizes</h3>")
        size_rows = self._file_size_rows()
        int8 = get(self.passes, "int8", "figures")
        if isinstance(int8, Mapping) and num(int8.get("bytes_fp32")) is not None:
            size_rows.append(("graph before / after int8", f"{fmt_bytes(int8.get('bytes_fp32'))} -> "
                                                           f"{fmt_bytes(int8.get('bytes_int8'))}"))
        if self.teacher_params() is not None:
            size_rows.append(("teacher weights (fp32, parameters x 4 bytes)",
                              f"{fmt_bytes(self.teacher_params() * 4)} ({self.teacher_params():,.0f} parameters)"))
        if self.student_params() is not None:
            size_rows.append(("student weights (fp32, parameters x 4 bytes)",
                              f"{fmt_bytes(self.student_params() * 4)} ({self.student_params():,.0f} parameters)"))
        out.append(kv_table(size_rows) if size_rows else missing("sizes"))

        out.append("<h3>Quality</h3>")
        out.append(self._quality_table())
        out.append("<h3>Quantized gate</h3>")
        out.append(self._gate())
        out.append("<h3>Compression</h3>")
        out.append(self._compression())
        return "".join(out)

    def _file_size_rows(self) -> list[tuple[str, str]]:
        """The whole bundle's bytes and the graph file's, where recorded."""
        rows = []
        if self.bundle_bytes() is not None:
            rows.append(("bundle (every file)", fmt_bytes(self.bundle_bytes())))
        model_file = get(self.m, "model", "file") or "model.onnx"
        if self.file_bytes(model_file) is not None:
            rows.append((f"{model_file} ({self.precision} graph)", fmt_bytes(self.file_bytes(model_file))))
        return rows

    def _signature(self) -> str:
        if self.dir is None:
            return "not checked"
        return "manifest.sig present (check it with edgekit-run verify --public-key)" \
            if (self.dir / "manifest.sig").is_file() else "unsigned"

    def _quality_table(self) -> str:
        q = self.quality
        systems = [("teacher (PyTorch)", "teacher_pytorch"), ("student (PyTorch)", "student_pytorch"),
                   (self.bundle_name(), "bundle_runtime"),
                   (f"majority-class baseline (always '{q.get('majority_label', '?')}')", "majority_baseline")]
        present = [(name, key) for name, key in systems if isinstance(q.get(key), Mapping)]
        if not present:
            return missing("quality figures")
        metrics: list[str] = []
        for _, key in present:
            for metric in q[key]:
                if metric not in metrics:
                    metrics.append(str(metric))
        headline = self.headline
        if headline in metrics:
            metrics.remove(headline)
            metrics.insert(0, headline)
        base = num(get(q, "majority_baseline", headline))
        headers = ["system"] + metrics + ([f"{headline} vs baseline"] if base is not None else [])
        rows = []
        for name, key in present:
            row = [name] + [fmt(q[key].get(metric)) for metric in metrics]
            if base is not None:
                value = num(q[key].get(headline))
                row.append("-" if value is None or key == "majority_baseline" else f"{(value - base) * 100:+.1f} points")
            rows.append(row)
        out = [table(headers, rows)]
        where = f"{q.get('split', '?')} split, {q.get('rows', '?')} rows" if q.get("rows") is not None else None
        notes = []
        if where:
            notes.append(f"On the {where}, which no training, calibration or checkpoint choice saw.")
        if num(q.get("student_retention")) is not None:
            notes.append(f"The student keeps {q['student_retention']:.1%} of the teacher's {headline}.")
        if notes:
            out.append(para(" ".join(notes)))
        absent = [name for name, key in systems[:3] if key not in q
                  and (key != "student_pytorch" or self.expects_student())]
        if "student_pytorch" not in q and not self.expects_student():
            out.append(para("No student: the recipe built none ([student] enabled = false), so the bundle is the "
                            "teacher's graph."))
        for name in absent:
            out.append(missing(f"{name} quality"))
        return "".join(out)

    def _gate(self) -> str:
        gate = get(self.fig, "quant_gate")
        if not isinstance(gate, Mapping):
            if self.precision == "int8":
                return missing("the quantized gate's figures")
            return para(f"No quantized gate: this bundle is {self.precision} (the gate judges int8 graphs).")
        metric = gate.get("metric", "metric")
        passed = gate.get("passed")
        verdict = "passed" if passed is True else ("FAILED" if passed is False else "?")
        rows = [("verdict", verdict), ("rows (validation split)", gate.get("rows", "-")),
                ("argmax agreement with the fp32 model", f"{fmt(gate.get('argmax_agreement'))} "
                                                         f"(needs >= {fmt(gate.get('min_argmax_agreement'), 'g')})"),
                (f"{metric}: fp32 -> int8", f"{fmt(gate.get('reference_metric'))} -> {fmt(gate.get('quantized_metric'))}"),
                (f"{metric} drop", (f"{num(gate.get('metric_drop')) * 100:+.2f} points"
                                    if num(gate.get("metric_drop")) is not None else "-")
                 + (f" (allowed <= {num(gate.get('max_metric_drop')) * 100:.2f})"
                    if num(gate.get("max_metric_drop")) is not None else ""))]
        return kv_table(rows)

    def _compression(self) -> str:
        comp = get(self.fig, "compression")
        if not isinstance(comp, Mapping) or not comp:
            return para("No compression stage ran (no prune, distill or QAT figures in this bundle).")
        out = []
        prune = comp.get("prune")
        if isinstance(prune, Mapping):
            params = prune.get("params") if isinstance(prune.get("params"), Mapping) else {}
            rows = [(f"{k} parameters", f"{fmt(get(v, 0), ',.0f')} -> {fmt(get(v, 1), ',.0f')}") for k, v in params.items()]
            rows.append(("non-embedding parameters kept", fmt(prune.get("non_embedding_ratio"), ".1%")))
            out.append("<h4>Prune</h4>" + kv_table(rows))
        distill = comp.get("distill")
        if isinstance(distill, Mapping):
            rows = [("steps", distill.get("steps", "-")),
                    ("best validation metric", fmt(distill.get("best_validation"))),
                    ("stopped early", distill.get("stopped_early")),
                    ("seconds", fmt(distill.get("seconds"), ".1f"))]
            rows += [("alert", a) for a in distill.get("alerts") or []]
            out.append("<h4>Distill</h4>" + kv_table(rows))
        qat = comp.get("qat")
        if isinstance(qat, Mapping):
            sel = qat.get("selection") if isinstance(qat.get("selection"), Mapping) else None
            kept = qat.get("kept_fp32") or []
            rows = [("quantized Linear layers", qat.get("quantized_linears", "-")),
                    ("kept in fp32 (most sensitive)", ", ".join(map(str, kept)) if kept else "none"),
                    ("int8 embedding tables", ", ".join(map(str, qat.get("int8_embedding_tables") or [])) or "none"),
                    ("distilled from", qat.get("distilled_from", "-")),
                    ("steps", qat.get("steps", "-"))]
            if sel:
                rows.append(("argmax agreement with fp32 on held-out train texts, before -> after QAT",
                             f"{fmt(sel.get('agreement_before_qat'))} -> {fmt(sel.get('agreement_after_qat'))} "
                             f"({sel.get('texts', '?')} texts; kept the {sel.get('kept', '?')} model)"))
            rows += [("alert", a) for a in qat.get("alerts") or []]
            out.append("<h4>QAT</h4>" + kv_table(rows))
            sens = qat.get("most_sensitive")
            if isinstance(sens, Mapping) and sens:
                out.append(para("Most quantization-sensitive Linear layers: mean |logit change| when only that "
                                "layer is int8 (the rest fp32), on train texts; the top ones stay fp32."))
                out.append(table(["layer", "sensitivity", "kept fp32"],
                                 [(k, fmt(v, ".5f"), "yes" if k in kept else "no") for k, v in sens.items()]))
            else:
                out.append(missing("QAT layer sensitivity"))
        return "".join(out) or missing("compression figures")

    # ------------------------------------------------------------ training

    def training(self) -> str:
        out = []
        shown_files = set()
        for name, title, curve_file in STAGES:
            entry = self.passes.get(name)
            comp = get(self.fig, "compression", name)
            rows: list[dict[str, Any]] = []
            bad = 0
            source = None
            if curve_file and self.dir is not None and (self.dir / "training" / curve_file).is_file():
                rows, bad = read_jsonl(self.dir / "training" / curve_file)
                source = f"training/{curve_file}"
                shown_files.add(curve_file)
            history = get(entry, "figures", "history") or get(comp, "history") or []
            if entry is None and comp is None and not rows:
                if name == "finetune" or (name in self.passes):
                    out.append(f"<h3>{esc(title)}</h3>" + missing(f"the {name} pass"))
                continue
            out.append(f"<h3>{esc(title)}</h3>")
            for note in get(entry, "notes") or []:
                out.append(para(note, "note"))
            steps = [r for r in rows if r.get("kind") == "step"]
            evals = [r for r in rows if r.get("kind") == "eval"] or [h for h in history if isinstance(h, Mapping)]
            if not steps and not evals:
                if not (get(entry, "notes") or []):
                    out.append(missing(f"{name} loss or evaluation curves"))
                continue
            out.append(self._curve_plot(title, steps, evals))
            facts = []
            if source:
                facts.append(f"Losses per optimizer step from {source} (faint: raw; solid: moving average)"
                             + (f"; {bad} unreadable lines skipped" if bad else "") + ".")
            elif steps == []:
                first, last = get(entry, "figures", "loss_first", 0), get(entry, "figures", "loss_last", 0)
                if num(first) is not None and num(last) is not None:
                    facts.append(f"Per-step losses were not kept for this pass; training loss went "
                                 f"{first:.4f} (first step) -> {last:.4f} (last step).")
                else:
                    facts.append(f"Per-step losses: {NOT_RECORDED}.")
            if evals:
                facts.append(f"Validation metrics at {len(evals)} evaluation(s) (from "
                             f"{source if rows and any(r.get('kind') == 'eval' for r in rows) else 'the pass log'}).")
            seconds = num(get(entry, "seconds"))
            if seconds is not None:
                facts.append(f"Pass time {seconds:.1f} s.")
            out.append(para(" ".join(facts)))
        # Loss curves the bundle carries that no known stage claims.
        if self.dir is not None and (self.dir / "training").is_dir():
            for path in sorted((self.dir / "training").glob("*.jsonl")):
                if path.name in shown_files:
                    continue
                rows, bad = read_jsonl(path)
                steps = [r for r in rows if r.get("kind") == "step"]
                evals = [r for r in rows if r.get("kind") == "eval"]
                out.append(f"<h3>{esc('training/' + path.name)}</h3>")
                out.append(self._curve_plot(path.name, steps, evals) if steps or evals
                           else missing(f"readable rows in training/{path.name}"))
        return "".join(out) or missing("training curves")

    def _curve_plot(self, title: str, steps: list[dict], evals: list[dict]) -> str:
        def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
            pts = [(num(r.get("step")), num(r.get(key))) for r in rows]
            pts = [p for p in pts if p[0] is not None and p[1] is not None]
            return [p[0] for p in pts], [p[1] for p in pts]

        loss_keys = [k for k in LOSS_KEYS if any(num(r.get(k)) is not None for r in steps)]
        eval_keys: list[str] = []
        for r in evals:
            for k, v in r.items():
                if k not in ("kind", "step") and num(v) is not None and k not in eval_keys:
                    eval_keys.append(k)
        # One axis for fractions in [0, 1] (accuracy, F1, agreement); anything else is named, not squeezed in.
        fractions = [k for k in eval_keys if all(0.0 <= v <= 1.0 for v in series(evals, k)[1])]
        others = [k for k in eval_keys if k not in fractions]
        panels = int(bool(loss_keys)) + int(bool(fractions))
        if not panels:
            return missing(f"{title}: plottable losses or metrics")
        fig, axes = _figure(10.0 if panels == 2 else 6.5, 3.4, panels)
        i = 0
        if loss_keys:
            ax = axes[i]
            i += 1
            import numpy as np

            unweighted = all(num(r.get("task_weight")) == 0.0 for r in steps) and "task" in loss_keys
            medians = {k: float(np.median(series(steps, k)[1])) for k in loss_keys}
            positive = all(v > 0 for k in loss_keys for v in series(steps, k)[1])
            log_y = positive and max(medians.values()) > 30 * min(medians.values())
            for n, key in enumerate(loss_keys):
                xs, ys = series(steps, key)
                color = color_for(key, n)
                label = key
                twin = next((k for k in loss_keys if k != key and series(steps, k)[1] == ys), None)
                if key == "total" and twin:
                    label = f"total (= {twin})"  # drawn under its twin, same values
                if key == "task" and unweighted:
                    label = "task (weight 0: logged, not trained on)"
                if len(xs) > 20:
                    ax.plot(xs, ys, color=color, alpha=0.2, linewidth=0.8)
                    ax.plot(xs, _smooth(ys), color=color, linewidth=1.6, label=label,
                            linestyle="--" if key == "total" and twin else "-",
                            zorder=4 if key == "total" and twin else 2)
                else:
                    ax.plot(xs, ys, color=color, marker="o", markersize=3, label=label)
            ax.set_title("training loss per step", fontsize=10)
            ax.set_xlabel("optimizer step", fontsize=9)
            ax.set_ylabel("loss (log scale)" if log_y else "loss", fontsize=9)
            if log_y:
                ax.set_yscale("log")
                _plain_log_ticks(ax, "y", subs=(1.0,))
            ax.legend(fontsize=8, loc="best")
        if fractions:
            ax = axes[i]
            for n, key in enumerate(fractions):
                xs, ys = series(evals, key)
                ax.plot(xs, ys, color=color_for(key, n), marker="o", markersize=4, label=_short(key, 30))
            ax.set_title("validation metrics", fontsize=10)
            ax.set_xlabel("optimizer step", fontsize=9)
            ax.set_ylabel("fraction", fontsize=9)
            lo = min(min(series(evals, k)[1]) for k in fractions)
            hi = max(max(series(evals, k)[1]) for k in fractions)
            pad = max(0.01, (hi - lo) * 0.15)
            ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) if hi + pad <= 1.0 else 1.005)
            ax.legend(fontsize=8, loc="best")
        out = img(fig, f"{title}: loss and validation curves")
        if others:
            last = evals[-1]
            out += para("Also logged at each evaluation, not plotted (not a fraction in [0, 1]): "
                        + ", ".join(f"{k} (last {fmt(last.get(k), '.4g')})" for k in others) + ".")
        return out

    # ------------------------------------------------------------ latency

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
        fig, (ax,) = _figure(7.0, 3.2)
        for i, (k, v) in enumerate(systems):
            pts = [(num(v.get("median_ms")), 0.5), (num(v.get("p90_ms")), 0.9)]
            pts = [p for p in pts if p[0] is not None]
            if pts:
                color, marker = SYSTEM_STYLE.get(k, (COLORS[(i + 3) % len(COLORS)], "o"))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, linestyle=":",
                        color=color, label=_short(names.get(k, k), 45))
        ax.set_xlabel("latency per call (ms)", fontsize=9)
        ax.set_ylabel("fraction of calls at or below", fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlim(left=0)
        ax.set_title("recorded percentiles (p50, p90) of the compile-time latency", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        out.append(img(fig, "recorded latency percentiles"))
        return "".join(out)

    def _bench_latency(self) -> str:
        import numpy as np

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
        fig, axes = _figure(10.0, 3.6, 2)
        lo = min(min(v) for _, v in series)
        hi = max(np.percentile(v, 99.5) for _, v in series)
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
        for i, (label, vals) in enumerate(series):
            color = colors[label]
            axes[0].hist(np.clip(vals, None, bins[-1]), bins=bins, alpha=0.55 if len(series) > 1 else 0.85,
                         color=color, label=_short(label, 40))
            xs = np.sort(vals)
            axes[1].plot(xs, np.arange(1, len(xs) + 1) / len(xs), color=color, label=_short(label, 40))
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
            fig, (ax,) = _figure(10.0, 3.6)
            styles = ("-", "--", ":", "-.")
            for gi, group in enumerate(others):
                for si, (label, _, groups) in enumerate(data):
                    if group not in groups:
                        continue
                    xs = np.sort(groups[group])
                    name = group if len(data) == 1 else f"{group} — {_short(label, 25)}"
                    ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), color=COLORS[gi % len(COLORS)],
                            linestyle=styles[si % len(styles)], label=name)
            ax.set_xscale("log")
            _plain_log_ticks(ax)
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
        fig, axes = _figure(10.0 if len(panels) == 2 else 6.0, 3.8, len(panels))
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
            labelled.append((ax, [(x, p["quality"], _short(p["name"], 40), style[i][0])
                                  for (i, p), x in zip(drawn, xs)]))
        _place_labels(fig, labelled)
        out.append(img(fig, f"test {headline} vs size and latency"))
        return "".join(out)

    # ------------------------------------------------------------ substitutions

    def substitutions(self) -> str:
        out = []
        subs = get(self.fig, "substitutions")
        applied = get(self.m, "model", "rewrite_rules")
        if isinstance(applied, list):
            out.append(para("Rules applied to the shipped graph: " + (", ".join(map(str, applied)) or "none") + "."))
        if not isinstance(subs, Mapping):
            out.append(missing("substitution effects"))
        else:
            rows = []
            for rule, s in subs.items():
                if not isinstance(s, Mapping):
                    continue
                name = "all rules + simplify (the shipped graph)" if rule == "all_rules_and_simplify" else rule
                fired = s.get("fired", "-" if rule == "all_rules_and_simplify" else "?")
                skipped = "; ".join(map(str, s.get("skipped") or []))
                rows.append((name, fired, fmt(s.get("max_abs_logit_diff"), ".2e"), fmt(s.get("argmax_agreement")),
                             s.get("samples", "-"), _short(skipped, 80) if skipped else ""))
            out.append(para("Each rule is measured alone against the plain export on validation texts, then all "
                            "together with the simplifier: max |logit diff| and the fraction of texts whose argmax "
                            "is unchanged."))
            out.append(table(["rule", "fired (nodes)", "max |logit diff|", "argmax agreement", "texts",
                              "skipped (first)"], rows))
        val = get(self.fig, "validation")
        out.append("<h3>Validation of the graph</h3>")
        if not isinstance(val, Mapping):
            out.append(missing("validation figures"))
            return "".join(out)
        compared = val.get("values_compared", True)
        out.append(kv_table([
            ("precision", val.get("precision", "-")),
            ("values compared with PyTorch", "yes" if compared else "no (PTQ graph: shapes and finiteness checked; "
                                                                    "its values are judged by the quantized gate)"),
            ("max |diff| over every case", fmt(val.get("max_abs_diff"), ".2e")),
            ("tolerance", f"atol {fmt(val.get('atol'), 'g')}, rtol {fmt(val.get('rtol'), 'g')}"),
            ("reference patched for", ", ".join(map(str, val.get("reference_patches") or [])) or "nothing")]))
        cases = [c for c in val.get("cases") or [] if isinstance(c, Mapping)]
        if cases:
            batches = list(dict.fromkeys(c.get("batch", "-") for c in cases))
            lengths = list(dict.fromkeys(c.get("length", "-") for c in cases))
            cell = {(c.get("batch", "-"), c.get("length", "-")): fmt(c.get("max_abs_diff"), ".2e") for c in cases}
            out.append(para("max |diff| per shape (real validation texts, padded to the length):"))
            out.append(table(["batch \\ length"] + [str(n) for n in lengths],
                             [[str(b)] + [cell.get((b, n), "-") for n in lengths] for b in batches], "compact"))
        return "".join(out)

    # ------------------------------------------------------------ environment

    def environment(self) -> str:
        m = self.m
        out = [kv_table([
            ("edgekit", get(m, "edgekit_version") or "?"),
            ("compiled (UTC)", get(m, "created_utc") or "?"),
            ("build host", f"Python {get(m, 'host', 'python') or '?'} on {get(m, 'host', 'machine') or '?'}"),
            ("profile", f"{get(m, 'profile', 'name') or '?'} (sha256 {str(get(m, 'profile', 'sha256') or '?')[:16]}…)"),
            ("manifest sha256", get(m, "manifest_sha256") or "?"),
            ("report command", self.command or "-"),
        ])]
        out.append("<h3>Commands</h3>")
        out.append(para("The compile command line is " + NOT_RECORDED + "; the resolved recipe below is what it ran "
                        "(every flag folded in)."))
        name = str(get(m, "profile", "name") or "PROFILE")
        out.append(self._commands())
        trt = get(m, "engine_plan", "trtexec")
        if trt:
            out.append(para(f"TensorRT build on the device ({name}), as recorded in engine_plan:"))
            out.append(pre(trt))
        for label, result in self.bench:
            env = get(result, "environment") or {}
            cmd = get(result, "command")
            out.append(f"<h4>Bench result {esc(label)}</h4>")
            out.append(kv_table([
                ("command", " ".join(map(str, cmd)) if isinstance(cmd, list) else (cmd or "-")),
                ("measured (UTC)", f"{get(result, 'created_utc') or '?'} -> {get(result, 'finished_utc') or '?'}"),
                ("CPU", f"{env.get('cpu_model') or '?'} ({env.get('cpu_usable_cores') or '?'} usable cores)"),
                ("GPU / Jetson", f"{env.get('gpu') or 'none'} / {env.get('jetson') or 'not a Jetson'}"),
                ("OS", f"{env.get('distro') or env.get('os') or '?'} {env.get('os_release') or ''}"),
                ("onnxruntime", f"{env.get('onnxruntime') or '?'} {env.get('onnxruntime_providers') or ''}"),
                ("backend, threads", f"{get(result, 'bundle', 'backend') or '?'}, "
                                     f"{get(result, 'bundle', 'threads') or 'onnxruntime default'}"),
                ("suite", f"{get(result, 'suite', 'name') or '?'} ({get(result, 'suite', 'file') or '?'}), "
                          f"{get(result, 'repeats') or 1} repeat(s)"),
                ("git commit", env.get("git_commit") or "?"),
                ("bundle model sha256 matches", "yes" if get(result, "bundle", "model_sha256") ==
                 get(m, "files", get(m, "model", "file") or "model.onnx", "sha256") else
                 "NO: this result is of another model")]))
        out.append("<h3>Pass log</h3>")
        passes = [p for p in get(m, "pass_log") or [] if isinstance(p, Mapping)]
        if passes:
            out.append(table(["pass", "seconds", "changed", "notes"],
                             [(p.get("name", "?"), fmt(p.get("seconds"), ".1f"),
                               {True: "yes", False: "no"}.get(p.get("changed"), "-"),
                               " | ".join(map(str, p.get("notes") or []))) for p in passes]))
            total = sum(num(p.get("seconds")) or 0 for p in passes)
            out.append(para(f"Total {total:.0f} s ({total / 60:.1f} min)."))
        else:
            out.append(missing("the pass log"))
        recipe = get(m, "recipe")
        out.append("<h3>Recipe</h3>")
        if isinstance(recipe, Mapping):
            out.append("<details><summary>resolved recipe (JSON)</summary>" + pre(json.dumps(recipe, indent=1))
                       + "</details>")
        else:
            out.append(missing("the recipe"))
        return "".join(out)

    def _commands(self) -> str:
        return pre("\n".join(["edgekit-run verify BUNDLE", "edgekit-run predict BUNDLE \"some text\"",
                              "edgekit-run bench BUNDLE --suite benchmarks/suites/standard.toml --json result.json",
                              "edgekit report BUNDLE --bench result.json --out report.html"]))

    # ------------------------------------------------------------ page

    def render(self) -> str:
        import matplotlib

        matplotlib.use("Agg", force=False)
        # Labels come from the manifest: draw '$' as a dollar sign, never as mathtext.
        with matplotlib.rc_context({"text.parse_math": False}):
            return self._render()

    def _render(self) -> str:
        parts = []
        for sid, title in SECTIONS:
            try:
                body = getattr(self, sid)()
            except Exception as exc:  # a malformed figure must not cost the whole report
                body = para(f"This section could not be drawn from the recorded figures "
                            f"({type(exc).__name__}: {exc}).", "missing")
            parts.append(f'<section id="{sid}"><h2>{esc(title)}</h2>{body}</section>')
        nav = " · ".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title in SECTIONS)
        title = f"edgekit report: {get(self.m, 'task', 'name') or '?'} on {get(self.m, 'profile', 'name') or '?'}"
        where = f" — {self.dir.name}" if self.dir is not None else ""
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{esc(title + where)}</title><style>{CSS}</style></head><body>"
                f"<header><h1>{esc(title)}</h1><p class=\"sub\">{esc(self.bundle_name() + where)}</p>"
                f"<nav>{nav}</nav></header>{''.join(parts)}"
                f"<footer>Written by edgekit report from the bundle's manifest.json"
                f"{' and ' + str(len(self.bench)) + ' bench result(s)' if self.bench else ''}. "
                f"Nothing in this page was estimated.</footer></body></html>\n")


CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#222;max-width:1080px;margin:0 auto;
padding:0 20px 40px;line-height:1.45;font-size:15px}
header{border-bottom:2px solid #1f77b4;margin-bottom:8px}h1{font-size:24px;margin:18px 0 2px}
.sub{color:#555;margin:0 0 6px}nav{font-size:13px;margin-bottom:8px}nav a{color:#1f77b4;text-decoration:none}
h2{font-size:19px;border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:30px}h3{font-size:16px;margin:18px 0 6px}
h4{font-size:14px;margin:12px 0 4px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}thead th{background:#f3f6fa}
table.kv th{background:#f8f8f8;font-weight:600;width:300px}table.compact td{padding:1px 8px}
img{max-width:100%;height:auto;display:block;margin:8px 0}
pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:12px;white-space:pre-wrap;word-break:break-all}
.missing{color:#a15c00}.source{background:#f3f6fa;padding:6px 10px;border-left:3px solid #1f77b4}
.note{color:#555;font-style:italic}footer{margin-top:30px;color:#777;font-size:12px}
"""


def write_report(bundle: str | Path, out: str | Path, bench_paths: Sequence[str | Path] = (),
                 command: str | None = None) -> Path:
    """Check the bundle, read its manifest (and the bench results), write the HTML page to ``out``."""
    import edgekit_runtime
    from edgekit_runtime.errors import BundleError

    bundle = Path(bundle)
    manifest = edgekit_runtime.read_manifest(bundle)
    try:
        edgekit_runtime.verify_bundle(bundle)
        integrity = "verified: manifest and the sha256 of every file match"
    except BundleError as exc:
        integrity = "FAILED: " + str(exc).replace("\n", " ")
    bench = [item for path in bench_paths for item in read_bench(path)]
    kind = Report
    if get(manifest, "task", "name") == "causal-lm":
        from .report_lm import LMReport

        kind = LMReport
    page = kind(manifest, bundle, bench, integrity=integrity, command=command,
                bench_files=[str(p) for p in bench_paths]).render()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


__all__ = ["NOT_RECORDED", "SECTIONS", "Report", "latency_samples", "read_bench", "write_report"]
