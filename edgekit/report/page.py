"""The page of `edgekit report`: one self-contained HTML page about a bundle.

Everything comes from what the bundle recorded (manifest.json, training/*.jsonl) and, optionally,
from `edgekit-run bench --json` results. Nothing is estimated: a figure the bundle did not record
is named as missing, never drawn. Plots are matplotlib (Agg) PNGs inlined as base64 data URIs;
the CSS is inline; the page references no file or URL. Every string from a manifest or a result
goes through html.escape.

Report holds the manifest, the facts every task's sections share, the environment section and the
page around the sections (render). The other sections of SECTIONS are a task's: each task's
subclass is in its own module (sequence_classification.py, causal_lm.py), found by registry.py.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from .inputs import task_metric_order
from .parts import NOT_RECORDED, SECTIONS, esc, fmt, fmt_bytes, get, kv_table, missing, num, para, pre, table


# ---------------------------------------------------------------- the report


class Report:
    """The page and the shared facts; a task's subclass adds summary, training, latency, tradeoff and
    substitutions (the sections of SECTIONS other than environment)."""

    task = ""  # the manifest's task name this page is for (registry.py)

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
        order = task_metric_order(get(self.m, "task", "name"))
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

    # ------------------------------------------------------------ shared rows

    def file_size_rows(self) -> list[tuple[str, str]]:
        """The whole bundle's bytes and the graph file's, where recorded."""
        rows = []
        if self.bundle_bytes() is not None:
            rows.append(("bundle (every file)", fmt_bytes(self.bundle_bytes())))
        model_file = get(self.m, "model", "file") or "model.onnx"
        if self.file_bytes(model_file) is not None:
            rows.append((f"{model_file} ({self.precision} graph)", fmt_bytes(self.file_bytes(model_file))))
        return rows

    def signature(self) -> str:
        if self.dir is None:
            return "not checked"
        return "manifest.sig present (check it with edgekit-run verify --public-key)" \
            if (self.dir / "manifest.sig").is_file() else "unsigned"

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
        out.append(self.commands())
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

    def commands(self) -> str:
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

