"""The report's training section: loss and evaluation curves of the teacher fine-tune, the
student's distillation and QAT, from the bundle's training/*.jsonl logs. A mixin of page.Report."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .inputs import read_jsonl
from .parts import LOSS_KEYS, NOT_RECORDED, STAGES, color_for, esc, fmt, get, missing, num, para, short
from .plots import figure, img, plain_log_ticks, smooth


class TrainingSections:
    """``training`` (with ``_curve_plot``), for Report."""

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
        fig, axes = figure(10.0 if panels == 2 else 6.5, 3.4, panels)
        i = 0
        if loss_keys:
            ax = axes[i]
            i += 1
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
                    ax.plot(xs, smooth(ys), color=color, linewidth=1.6, label=label,
                            linestyle="--" if key == "total" and twin else "-",
                            zorder=4 if key == "total" and twin else 2)
                else:
                    ax.plot(xs, ys, color=color, marker="o", markersize=3, label=label)
            ax.set_title("training loss per step", fontsize=10)
            ax.set_xlabel("optimizer step", fontsize=9)
            ax.set_ylabel("loss (log scale)" if log_y else "loss", fontsize=9)
            if log_y:
                ax.set_yscale("log")
                plain_log_ticks(ax, "y", subs=(1.0,))
            ax.legend(fontsize=8, loc="best")
        if fractions:
            ax = axes[i]
            for n, key in enumerate(fractions):
                xs, ys = series(evals, key)
                ax.plot(xs, ys, color=color_for(key, n), marker="o", markersize=4, label=short(key, 30))
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
