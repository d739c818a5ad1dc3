"""The end-of-compile summary table: quality, size and latency on this host."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pipeline import CompileState


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def format_summary(state: "CompileState") -> str:
    fig = state.figures
    q, lat = fig.get("quality", {}), fig.get("latency", {})
    teacher_bytes = sum(p.numel() * p.element_size() for p in state.model.parameters())
    bundle_bytes = sum(p.stat().st_size for p in state.bundle_path.rglob("*") if p.is_file())
    rows = [("", "teacher (PyTorch)", f"bundle ({q.get('backend', '?')})")]
    headline = next(iter(q.get("teacher_pytorch", {"macro_f1": 0})))
    rows.append((f"test {headline}", f"{q['teacher_pytorch'][headline]:.4f}", f"{q['bundle_runtime'][headline]:.4f}"))
    rows.append(("test accuracy", f"{q['teacher_pytorch']['accuracy']:.4f}", f"{q['bundle_runtime']['accuracy']:.4f}"))
    rows.append(("size", _mb(teacher_bytes) + " (weights)", _mb(bundle_bytes) + " (bundle)"))
    for key, label in (("median_ms", "latency b=1 median"), ("p90_ms", "latency b=1 p90")):
        rows.append((label, f"{lat['teacher_pytorch'][key]:.2f} ms", f"{lat['bundle_runtime'][key]:.2f} ms"))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(width[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in width))
    base = q["majority_baseline"][headline]
    lines.append("")
    lines.append(f"majority-class baseline {headline}: {base:.4f} (label '{q['majority_label']}'), "
                 f"{q['rows']} test rows; latency over {lat['bundle_runtime']['samples']} real test texts, "
                 f"{lat['threads']} threads")
    val = fig["validation"]
    lines.append(f"validation vs PyTorch: max |diff| {val['max_abs_diff']:.2e} over {len(val['cases'])} "
                 f"batch x length cases (atol {val['atol']}, rtol {val['rtol']})")
    for rule, s in fig.get("substitutions", {}).items():
        if "max_abs_logit_diff" in s:
            lines.append(f"substitution {rule}: max |logit diff| {s['max_abs_logit_diff']:.2e}, "
                         f"argmax agreement {s['argmax_agreement']:.4f} on {s['samples']} validation texts")
    lines.append(f"bundle: {state.bundle_path}")
    return "\n".join(lines)
