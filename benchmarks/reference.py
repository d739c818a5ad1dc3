"""The reference table: the edgekit demo bundle against what a user gets without edgekit.

The peer (A) is the demo's fine-tuned teacher exported as it is and quantized with ONNX Runtime's
dynamic int8 (`benchmarks/recipes/peer.toml`, compiled with `edgekit compile` for x86-64-cpu);
the demo (B) is an edgekit bundle (pruned + distilled student, QAT int8). Both run the standard
suite in one `edgekit-run bench --compare` process, repeats interleaved (A B, B A, A B).

    python benchmarks/reference.py --bundle bundles/x86-64-cpu                 # compiles the peer first
    python benchmarks/reference.py --bundle bundles/x86-64-cpu --peer bundles/peer   # reuse a peer

Writes benchmarks/results/reference.json (both bundles' recorded figures, the whole comparison
document with every per-repeat value, environment, commit, commands) and reference.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEER_RECIPE = HERE / "recipes" / "peer.toml"
PEER_PROFILE = "x86-64-cpu"
# The rows of the short table, in order: (run, metric, what it is).
HEADLINE = [
    ("latency", "b1xs128.p50_ms", "b1 x s128 model call, p50"),
    ("latency", "b1xs128.p99_ms", "b1 x s128 model call, p99"),
    ("latency", "b8xs128.p50_ms", "b8 x s128 model call, p50"),
    ("latency", "real_b1.p50_ms", "real texts, batch 1, predict, p50"),
    ("latency", "real_b1.p99_ms", "real texts, batch 1, predict, p99"),
    ("throughput", "b1.items_per_s", "texts/s at batch 1"),
    ("throughput", "b32.items_per_s", "texts/s at batch 32"),
    ("memory", "load.seconds", "load (verify + session + smoke)"),
    ("memory", "rss.peak_mb", "peak RSS"),
    ("stress", "requests.achieved_qps", "served requests/s (target 100)"),
    ("stress", "latency.p99_ms", "served p99"),
    ("accuracy", "bundle.macro_f1", "macro-F1, 60 bundled reviews (smoke)"),
    ("custom_mix", "all.macro_f1", "macro-F1, custom mix (smoke)"),
]


def log(msg: str) -> None:
    print(f"reference: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str]) -> int:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd).returncode


def tool(script: str, module: str) -> list[str]:
    """The installed console script (so results record `edgekit-run ...`), else ``python -m module``."""
    found = shutil.which(script)
    return [found] if found else [sys.executable, "-m", module]


def bundle_facts(path: Path) -> dict:
    """What the bundle itself recorded: precision, sizes, test-split quality, the gate."""
    import edgekit_runtime

    m = edgekit_runtime.verify_bundle(path)
    fig = m.get("figures", {})
    q = fig.get("quality", {})
    gate = fig.get("quant_gate") or {}
    recorded = list(q.get("teacher_pytorch", {}))  # the manifest's keys are sorted: prefer the gate's metric
    headline = gate.get("metric") or ("macro_f1" if "macro_f1" in recorded or not recorded else recorded[0])
    model_file = m["model"]["file"]
    return {"path": str(path), "profile": m["profile"]["name"], "precision": m["model"]["precision"],
            "int8": m["model"].get("int8"), "student": "student_pytorch" in q,
            "model_bytes": m["files"][model_file]["bytes"],
            "bundle_bytes": sum(e["bytes"] for e in m["files"].values()),
            "model_sha256": m["files"][model_file]["sha256"],
            "test_split": {"rows": q.get("rows"), "metric": headline,
                           "bundle": q.get("bundle_runtime", {}).get(headline),
                           "teacher_pytorch": q.get("teacher_pytorch", {}).get(headline),
                           "majority_baseline": q.get("majority_baseline", {}).get(headline)},
            "gate": {k: gate.get(k) for k in ("argmax_agreement", "reference_metric", "quantized_metric",
                                              "metric_drop", "passed")} if gate else None,
            "compile_latency_b1_median_ms": fig.get("latency", {}).get("bundle_runtime", {}).get("median_ms"),
            "created_utc": m.get("created_utc")}


def _f(x, spec=".4f") -> str:
    return "-" if x is None else f"{x:{spec}}"


def markdown(doc: dict) -> str:
    from edgekit_runtime.bench.report import compare_markdown, fmt

    a, b, cmp = doc["bundles"]["peer"], doc["bundles"]["demo"], doc["compare"]
    rows = {(r["run"], r["metric"]): r for r in cmp["rows"]}
    env = cmp["results"]["a"]["environment"]
    lines = ["# Reference: edgekit demo bundle vs ONNX Runtime dynamic int8 of the same fine-tuned teacher", "",
             f"Made by `{doc['command']}` at commit {doc['commit']} ({doc['created_utc']}).", "",
             f"- **A, peer**: `{a['path']}`: the fine-tuned teacher exported as is, ONNX Runtime dynamic int8 "
             f"(`benchmarks/recipes/peer.toml`), profile {a['profile']}",
             f"- **B, edgekit demo**: `{b['path']}`: profile {b['profile']}, {b['precision']}"
             + (f" ({b['int8']['method']}, {b['int8']['format']})" if b.get("int8") else "")
             + (", pruned + distilled student" if b["student"] else ""),
             f"- suite `{cmp['a']['suite']}`, {cmp['a']['repeats']} repeats per side, interleaved in one process "
             f"(same_run: {cmp['same_run']}); backend A {cmp['a']['backend']}, B {cmp['b']['backend']}",
             f"- machine: {env.get('cpu_model')}, {env.get('cpu_usable_cores')} usable cores, onnxruntime "
             f"{env.get('onnxruntime')}, {env.get('distro') or env.get('os')}", "",
             "## What the bundles recorded (test split, at compile time)", "",
             "| | A peer | B demo |", "|---|---|---|",
             f"| model file | {a['model_bytes'] / 1e6:.1f} MB | {b['model_bytes'] / 1e6:.1f} MB |",
             f"| whole bundle | {a['bundle_bytes'] / 1e6:.1f} MB | {b['bundle_bytes'] / 1e6:.1f} MB |",
             f"| test {a['test_split']['metric']} ({a['test_split']['rows']} rows) | {_f(a['test_split']['bundle'])} "
             f"| {_f(b['test_split']['bundle'])} |",
             f"| fine-tuned teacher (PyTorch) on the same rows | {_f(a['test_split']['teacher_pytorch'])} "
             f"| {_f(b['test_split']['teacher_pytorch'])} |",
             f"| majority-class baseline | {_f(a['test_split']['majority_baseline'])} "
             f"| {_f(b['test_split']['majority_baseline'])} |",
             "| int8 vs its fp32 model (validation): argmax agreement / metric drop | "
             + " | ".join("-" if not s["gate"] else f"{_f(s['gate']['argmax_agreement'])} / "
                          f"{_f((s['gate']['metric_drop'] or 0) * 100, '+.2f')} points" for s in (a, b)) + " |",
             "", "## Headline rows of the bench comparison", "",
             "| figure | metric | A peer | B demo | B/A | better | beyond noise |", "|---|---|---|---|---|---|---|"]
    for run_name, metric, label in HEADLINE:
        r = rows.get((run_name, metric))
        if r is None:
            lines.append(f"| {label} | {run_name} {metric} | not measured | | | | |")
            continue
        noise = "n/a" if r["beyond_noise"] is None else ("yes" if r["beyond_noise"] else "no")
        lines.append(f"| {label} | {run_name} {metric} | {fmt(r['a'], r['unit'])} | {fmt(r['b'], r['unit'])} | "
                     f"{'-' if r['ratio'] is None else format(r['ratio'], '.3f')} | "
                     f"{ {'A': 'A', 'B': 'B', 'same': '=', None: ''}[r['better']] } | {noise} |")
    lines += ["", "Values are medians over the repeats; 'beyond noise' needs the [min, max] ranges of the "
              "per-repeat values not to overlap (p = 0.10 at 3 + 3 repeats). The accuracy rows of the suite are "
              "on its 60 bundled reviews, a smoke check; quality is the test-split table above.", "",
              "## Every row", ""]
    full = compare_markdown(cmp).splitlines()
    start = next((i for i, line in enumerate(full) if line.startswith("|")), len(full))
    lines += full[start:]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="the edgekit demo bundle (B), e.g. bundles/x86-64-cpu")
    p.add_argument("--peer", default=None, help="an already compiled peer bundle (A); default: compile it")
    p.add_argument("--peer-out", default="bundles/peer-ort-dynamic",
                   help="where to compile the peer (default bundles/peer-ort-dynamic; replaced if present)")
    p.add_argument("--suite", default=str(HERE / "suites" / "standard.toml"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads for the bench "
                                                                "(default: the suite's, else onnxruntime's)")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    args = p.parse_args(argv)

    demo = Path(args.bundle)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    compile_seconds = None
    if args.peer:
        peer = Path(args.peer)
    else:
        peer = Path(args.peer_out)
        start = time.perf_counter()
        code = run([*tool("edgekit", "edgekit.cli"), "compile", "--profile", PEER_PROFILE,
                    "--recipe", str(PEER_RECIPE), "--out", str(peer), "--force"])
        compile_seconds = round(time.perf_counter() - start, 1)
        if code != 0:
            log(f"the peer compile failed (exit {code})")
            return code
    facts = {"peer": bundle_facts(peer), "demo": bundle_facts(demo)}
    cmp_json = out_dir / "reference.compare.tmp.json"
    bench = [*tool("edgekit-run", "edgekit_runtime.cli"), "bench", "--compare", str(peer), str(demo),
             "--suite", args.suite, "--repeats", str(args.repeats), "--json", str(cmp_json)]
    if args.threads:
        bench += ["--threads", str(args.threads)]
    start = time.perf_counter()
    code = run(bench)
    bench_seconds = round(time.perf_counter() - start, 1)
    if not cmp_json.is_file():
        log(f"the bench wrote no comparison (exit {code})")
        return code or 1
    compare = json.loads(cmp_json.read_text())
    cmp_json.unlink()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    doc = {"schema": "edgekit-reference", "version": 1,
           "created_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
           "command": " ".join(["python", "benchmarks/reference.py", *(argv if argv is not None else sys.argv[1:])]),
           "commit": commit + ("+uncommitted changes" if dirty else ""),
           "peer_recipe": PEER_RECIPE.read_text(), "peer_compiled_here": not args.peer,
           "peer_compile_seconds": compile_seconds, "bench_seconds": bench_seconds, "bench_exit": code,
           "bench_command": bench, "bundles": facts, "compare": compare}
    (out_dir / "reference.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    md = markdown(doc)
    (out_dir / "reference.md").write_text(md)
    print(md, end="")
    log(f"wrote {out_dir / 'reference.md'} and {out_dir / 'reference.json'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
