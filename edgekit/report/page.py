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
from pathlib import Path
from typing import Any, Mapping, Sequence

from .report_latency import LatencySections
from .report_parts import (NOT_RECORDED, SECTIONS, _short, _task_metric_order, esc, fmt, fmt_bytes, get, kv_table,
                           latency_samples, missing, num, para, pre, read_bench, table)
from .report_training import TrainingSections


# ---------------------------------------------------------------- the report


class Report(TrainingSections, LatencySections):
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
