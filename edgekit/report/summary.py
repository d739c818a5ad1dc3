"""The end-of-compile summary printed to the terminal: for a sequence classifier the table of quality, size
and latency on this host (format_summary); for a causal LM the perplexities (format_lm_summary)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..compiler.state import CompileState


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def format_summary(state: "CompileState") -> str:
    fig = state.figures
    q, lat = fig.get("quality", {}), fig.get("latency", {})
    teacher_bytes = sum(p.numel() * p.element_size() for p in state.teacher.parameters())
    bundle_bytes = sum(p.stat().st_size for p in state.bundle_path.rglob("*") if p.is_file())
    student = "student_pytorch" in q
    head = ["", "teacher (PyTorch)"] + (["student (PyTorch)"] if student else []) + [f"bundle ({q.get('backend', '?')})"]
    rows = [tuple(head)]
    headline = next(iter(q.get("teacher_pytorch", {"macro_f1": 0})))

    def row(label, fmt, key):
        cells = [fmt(q["teacher_pytorch"][key])] + ([fmt(q["student_pytorch"][key])] if student else [])
        return (label, *cells, fmt(q["bundle_runtime"][key]))

    rows.append(row(f"test {headline}", "{:.4f}".format, headline))
    rows.append(row("test accuracy", "{:.4f}".format, "accuracy"))
    student_bytes = [_mb(sum(p.numel() * p.element_size() for p in state.model.parameters())) + " (weights)"]
    rows.append(("size", _mb(teacher_bytes) + " (weights)", *(student_bytes if student else []),
                 _mb(bundle_bytes) + " (bundle)"))
    for key, label in (("median_ms", "latency b=1 median"), ("p90_ms", "latency b=1 p90")):
        rows.append((label, f"{lat['teacher_pytorch'][key]:.2f} ms", *(["-"] if student else []),
                     f"{lat['bundle_runtime'][key]:.2f} ms"))
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(width[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in width))
    base = q["majority_baseline"][headline]
    lines.append("")
    lines.append(f"majority-class baseline {headline}: {base:.4f} (label '{q['majority_label']}'), "
                 f"{q['rows']} test rows; latency over {lat['bundle_runtime']['samples']} real test texts, "
                 f"{lat['threads']} threads")
    if student:
        comp = fig.get("compression", {})
        if "prune" in comp:
            lines.append(f"student: {comp['prune']['non_embedding_ratio']:.1%} of the teacher's non-embedding "
                         f"parameters; keeps {q['student_retention']:.1%} of its test {headline}")
        for alert in comp.get("distill", {}).get("alerts", []):
            lines.append(f"alert: {alert}")
    lines.extend(budget_lines(fig.get("budget")))
    val = fig["validation"]
    lines.append(f"validation vs PyTorch: max |diff| {val['max_abs_diff']:.2e} over {len(val['cases'])} "
                 f"batch x length cases (atol {val['atol']}, rtol {val['rtol']})")
    for rule, s in fig.get("substitutions", {}).items():
        if "max_abs_logit_diff" in s:
            lines.append(f"substitution {rule}: max |logit diff| {s['max_abs_logit_diff']:.2e}, "
                         f"argmax agreement {s['argmax_agreement']:.4f} on {s['samples']} validation texts")
    lines.append(f"bundle: {state.bundle_path}")
    return "\n".join(lines)


def budget_lines(budget: dict | None) -> list[str]:
    """The plan against its budget: predicted and measured latency and bytes (ratios to the teacher)."""
    if not budget:
        return []
    final = budget["attempts"][-1]
    measured = final.get("bundle", {})
    lines = [f"budget: latency {budget['latency']}, size {budget['size']}; plan {final['layers']} layers, "
             f"{final['heads']} heads, FFN {final['ffn']}, {final['precision']}"
             + (f" after {len(budget['attempts']) - 1} back-off(s)" if len(budget["attempts"]) > 1 else "")]
    if "measured_latency_ratio" in measured:
        lines.append(f"budget at b={budget['batch']} x {budget['length']} (ORT, this host): latency predicted "
                     f"{final['predicted_latency_ratio']:.3f}, measured {measured['measured_latency_ratio']:.3f} x "
                     f"the teacher; bytes predicted {final['predicted_size_ratio']:.3f}, measured "
                     f"{measured['measured_size_ratio']:.3f} x")
    return lines


def format_lm_summary(state: "CompileState") -> str:
    """A causal-LM compile's closing lines: where the bundle is, and perplexity of teacher, student, graph."""
    figures = state.figures
    lines = [f"bundle: {state.bundle_path}"]
    for name in ("teacher", "student", "graph"):
        if name in figures:
            lines.append(f"{name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in figures[name].items()))
    return "\n".join(lines)
