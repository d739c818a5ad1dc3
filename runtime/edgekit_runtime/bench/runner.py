"""Run a suite's runs on one bundle, or on two bundles interleaved, and collect the results.

What each kind times (see benchmarks/README.md for the table of metrics):

- latency: fixed shapes, ``backend.run`` only (batch b x sequence s, from ``seed_text`` repeated past
  the bundle's max_length and cut to s tokens, its last token kept: [CLS] ... [SEP]); then real texts
  at natural length, batch 1, through ``predict`` (tokenization and post-processing included).
- throughput: ``predict`` of ``items`` texts at each batch size; batch sizes interleaved per round
  (the order rotates each round); items per second over the whole call.
- memory: ``processes`` fresh Python processes (memprobe.py): import, load (verify + backend choice
  + smoke run), first and second inference, RSS after each, peak RSS.
- accuracy: ``predict`` of a labelled file; accuracy, macro-F1, macro one-vs-rest AUC, next to
  the majority-class baseline on the same rows.
- stress: an open-loop load: request i is due at t0 + i / rate, taken by the first free of
  ``clients`` threads (one keep-alive connection each) and sent at once if it is late; requests
  whose due time falls after the window are not sent (counted). Latency is from send to answer,
  of 200 answers only; lateness (send - due) shows when the clients could not keep the rate.
- custom_mix: the mix of data.build_mix; accuracy over it and batch-1 latency of every item, per
  group (plain, long, domain) and overall.
- generation (causal-LM bundles): greedy ``generate`` of the first ``prompts`` texts at each batch
  size, ``max_new_tokens`` each (exactly that many with ``fixed_length``); the runtime's own timings:
  time to first token, prefill tokens/s, and decode tokens/s (per row, and for the whole batch).

Every run is repeated ``repeats`` times; with two bundles the repeats alternate which bundle goes
first (A B, B A, A B, ...). A metric's value is the median over its repeats, its ``samples`` the
per-repeat values. Progress goes to stderr through ``progress``; no input text is ever shown.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import metrics as M
from ..errors import EdgekitError
from .context import Context
from .data import build_mix, read_labelled, read_texts
from .env import environment
from .generation import run_generation
from .serve_client import BenchRunError, ServeTarget, child_env, connection, get_json, open_loop
from .stats import Metric, latency_stats
from .suite import RunSpec, Suite

SCHEMA, VERSION = "edgekit-bench", 1
PROBE = Path(__file__).resolve().with_name("memprobe.py")




def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def failure(exc: BaseException) -> str:
    """An error as one line; only the type of foreign exceptions (their message might quote a text)."""
    if isinstance(exc, EdgekitError):
        return " ".join(str(exc).split())
    if isinstance(exc, (OSError, subprocess.SubprocessError, TimeoutError)):
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return f"internal error {type(exc).__name__} (message withheld: it may quote input; rerun with --verbose)"


# ---------------------------------------------------------------- latency

def long_feeds(model: Any, seed_text: str, limit: int = 10_000) -> dict[str, np.ndarray]:
    """Feeds of one text at exactly the bundle's max_length: ``seed_text`` repeated until truncated."""
    text = seed_text
    for _ in range(limit):
        batch = model.encoder.encode_batch([text])
        if batch.truncated[0]:
            return batch.feeds
        text = f"{text} {seed_text}"
    raise BenchRunError(f"seed_text repeated {limit} times is still within max_length {model.encoder.max_length}. "
                        f"Fix: use a seed_text with words the tokenizer knows.")


def fixed_feeds(full: Mapping[str, np.ndarray], batch: int, sequence: int) -> dict[str, np.ndarray]:
    """batch x sequence feeds cut from ``full`` (1 x max_length): the first sequence-1 tokens, then the last."""
    return {name: np.ascontiguousarray(np.repeat(np.concatenate([a[:, :sequence - 1], a[:, -1:]], axis=1), batch,
                                                 axis=0)) for name, a in full.items()}


def _timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def run_latency(ctx: Context, spec: RunSpec) -> tuple[dict[str, Metric], dict[str, Any]]:
    model = ctx.model
    max_length = model.encoder.max_length
    metrics: dict[str, Metric] = {}
    info: dict[str, Any] = {"max_length": max_length, "skipped": [], "timings_ms": {}}
    full = long_feeds(model, spec["seed_text"])
    for b in spec["batch_sizes"]:
        for s in spec["sequence_lengths"]:
            group = f"b{b}xs{s}"
            if s > max_length:
                info["skipped"].append({"shape": group, "reason": f"sequence {s} > the bundle's max_length {max_length}"})
                continue
            ctx.progress(f"{group}: {spec['warmup']} warm-up + {spec['iterations']} timed calls")
            feeds = fixed_feeds(full, b, s)
            try:
                _timed(lambda: model.backend.run(feeds), spec["warmup"])
                times = _timed(lambda: model.backend.run(feeds), spec["iterations"])
            except EdgekitError as exc:  # e.g. a TensorRT engine built for smaller shapes
                info["skipped"].append({"shape": group, "reason": failure(exc)})
                continue
            metrics.update(latency_stats(group, times))
            info["timings_ms"][group] = [round(t * 1e3, 4) for t in times]
    if spec["real_texts"] > 0:
        texts, source = read_texts(spec["data"], spec["text_column"], limit=spec["real_texts"])
        ctx.progress(f"real texts: {len(texts)} at natural length, batch 1")
        for i in range(spec["warmup"]):
            model.predict([texts[i % len(texts)]])
        times, truncated = [], 0
        for text in texts:
            t = time.perf_counter()
            result = model.predict([text])
            times.append(time.perf_counter() - t)
            truncated += bool(result[0]["truncated"])
        metrics.update(latency_stats("real_b1", times))
        info["timings_ms"]["real_b1"] = [round(t * 1e3, 4) for t in times]
        info["real_texts"] = {**source, "n": len(texts), "truncated": truncated}
    return metrics, info


# ---------------------------------------------------------------- throughput

def run_throughput(ctx: Context, spec: RunSpec) -> tuple[dict[str, Metric], dict[str, Any]]:
    model = ctx.model
    texts, source = read_texts(spec["data"], spec["text_column"])
    items = [texts[i % len(texts)] for i in range(spec["items"])]
    sizes = list(spec["batch_sizes"])
    for b in sizes:
        for _ in range(spec["warmup"]):
            model.predict(items[:b], batch_size=b)
    rates: dict[int, list[float]] = {b: [] for b in sizes}
    for r in range(spec["rounds"]):
        order = sizes[r % len(sizes):] + sizes[:r % len(sizes)]
        ctx.progress(f"round {r + 1}/{spec['rounds']}: {len(items)} texts at batch sizes {order}")
        for b in order:
            t = time.perf_counter()
            model.predict(items, batch_size=b)
            rates[b].append(len(items) / (time.perf_counter() - t))
    metrics: dict[str, Metric] = {}
    for b in sizes:
        metrics[f"b{b}.items_per_s"] = (float(np.median(rates[b])), "items/s", "higher")
        metrics[f"b{b}.ms_per_item"] = (1e3 / float(np.median(rates[b])), "ms", "lower")
    return metrics, {"texts": {**source, "n_distinct": len(texts), "items": len(items)},
                     "items_per_s_by_round": {f"b{b}": [round(x, 3) for x in v] for b, v in rates.items()}}


# ---------------------------------------------------------------- memory

PROBE_FIELDS = {"import_s": ("import.seconds", "s"), "load_s": ("load.seconds", "s"),
                "first_inference_s": ("first_inference.seconds", "s"),
                "second_inference_s": ("second_inference.seconds", "s"),
                "rss_start_mb": ("rss.start_mb", "MB"), "rss_after_import_mb": ("rss.after_import_mb", "MB"),
                "rss_after_load_mb": ("rss.after_load_mb", "MB"),
                "rss_after_first_inference_mb": ("rss.after_first_inference_mb", "MB"),
                "peak_rss_mb": ("rss.peak_mb", "MB")}


def probe_command(ctx: Context, batch_size: int) -> list[str]:
    cmd = [sys.executable, str(PROBE), str(ctx.bundle), "--batch-size", str(batch_size)]
    if ctx.threads is not None:
        cmd += ["--threads", str(ctx.threads)]
    if ctx.backend is not None:
        cmd += ["--backend", ctx.backend]
    return cmd


def run_memory(ctx: Context, spec: RunSpec) -> tuple[dict[str, Metric], dict[str, Any]]:
    probes = []
    for k in range(spec["processes"]):
        ctx.progress(f"fresh process {k + 1}/{spec['processes']}: import, load, first inference")
        try:
            proc = subprocess.run(probe_command(ctx, spec["batch_size"]), capture_output=True, text=True,
                                  timeout=spec["timeout_s"], env=child_env())
        except subprocess.TimeoutExpired:
            raise BenchRunError(f"the memory probe ran past timeout_s {spec['timeout_s']:g}. Fix: raise timeout_s "
                                f"(a TensorRT engine build can take minutes the first time).") from None
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
            raise BenchRunError(f"the memory probe exited {proc.returncode}: {tail[0][:300]}. Fix: run "
                                f"`edgekit-run predict {ctx.bundle} \"test\" --verbose` to see why the bundle "
                                f"does not load.")
        probe = json.loads(lines[-1])
        if probe.get("peak_rss_mb") is None:  # no /proc (macOS): getrusage's peak
            probe["peak_rss_mb"] = probe.get("peak_rss_getrusage_mb")
        probes.append(probe)
    metrics: dict[str, Metric] = {}
    for key, (name, unit) in PROBE_FIELDS.items():
        values = [p.get(key) for p in probes if p.get(key) is not None]
        metrics[name] = (float(np.median(values)) if values else None, unit, "lower")
    return metrics, {"processes": probes, "backend": probes[-1].get("backend") if probes else None}


# ---------------------------------------------------------------- accuracy

def _probabilities(results: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> np.ndarray:
    return np.array([[r["probabilities"][name] for name in labels] for r in results], dtype=np.float64)


def classification_metrics(prefix: str, y: np.ndarray, probs: np.ndarray) -> tuple[dict[str, Metric], dict]:
    pred = probs.argmax(axis=1)
    per_class = [M.binary_auc(y == c, probs[:, c]) for c in range(probs.shape[1])]
    out = {f"{prefix}.accuracy": (M.accuracy(y, pred), "fraction", "higher"),
           f"{prefix}.macro_f1": (M.macro_f1(y, pred), "fraction", "higher")}
    auc = M.roc_auc_ovr(y, probs, skip_undefined=True)
    out[f"{prefix}.auc_ovr"] = (None if np.isnan(auc) else auc, "fraction", "higher")
    undefined = [c for c, a in enumerate(per_class) if np.isnan(a)]
    return out, {"auc_classes_without_both_outcomes": undefined}


def _majority(prefix: str, y: np.ndarray) -> dict[str, Metric]:
    counts = np.bincount(y)
    pred = np.full_like(y, int(counts.argmax()))  # ties: the lowest label index
    return {f"{prefix}.accuracy": (M.accuracy(y, pred), "fraction", "higher"),
            f"{prefix}.macro_f1": (M.macro_f1(y, pred), "fraction", "higher")}


def _labelled(ctx: Context, spec: RunSpec):
    return read_labelled(spec["data"], ctx.model.labels, text_column=spec["text_column"],
                         label_column=spec["label_column"], label_map=spec["label_map"], limit=spec["limit"])


def run_accuracy(ctx: Context, spec: RunSpec) -> tuple[dict[str, Metric], dict[str, Any]]:
    model = ctx.model
    data = _labelled(ctx, spec)
    ctx.progress(f"{len(data.texts)} labelled texts at batch size {spec['batch_size']}")
    results = model.predict(list(data.texts), batch_size=spec["batch_size"])
    y = np.asarray(data.labels)
    metrics, notes = classification_metrics("bundle", y, _probabilities(results, model.labels))
    metrics.update(_majority("majority_baseline", y))
    metrics["data.n"] = (len(y), "count", None)
    labels = model.labels
    return metrics, {"data": {"source": data.source, "sha256": data.sha256, "n": len(y),
                              "dropped_blank": data.dropped_blank,
                              "counts": {labels[c]: int((y == c).sum()) for c in range(len(labels))}},
                     "truncated": sum(bool(r["truncated"]) for r in results),
                     "macro_f1_classes": "those in the labels or the predictions",
                     "auc_classes_without_both_outcomes": [labels[c] for c in notes["auc_classes_without_both_outcomes"]]}


# ---------------------------------------------------------------- stress

def run_stress(ctx: Context, spec: RunSpec) -> tuple[dict[str, Metric], dict[str, Any]]:
    model = ctx.model
    texts, source = read_texts(spec["data"], spec["text_column"])
    k = spec["texts_per_request"]
    reference = model.predict(texts)
    bodies = []
    for i in range(len(texts)):
        ids = [(i * k + j) % len(texts) for j in range(k)]
        bodies.append((json.dumps({"texts": [texts[t] for t in ids]}).encode("utf-8"), ids))
    ctx.progress(f"starting the server ({spec['server']}, max batch {spec['max_batch']}, "
                 f"max wait {spec['max_wait_ms']:g} ms)")
    server = ServeTarget(ctx, spec, max_texts=k)
    try:
        if spec["warmup_requests"]:
            conn = connection(server.url, spec["timeout_s"])
            for i in range(spec["warmup_requests"]):
                conn.request("POST", "/predict", body=bodies[i % len(bodies)][0],
                             headers={"Content-Type": "application/json"})
                conn.getresponse().read()
            conn.close()
        before = get_json(server.url, "/health")["batches"]
        ctx.progress(f"{spec['clients']} clients at {spec['rate']:g} requests/s for {spec['duration_s']:g} s")
        r = open_loop(server.url, bodies, reference, clients=spec["clients"], rate=spec["rate"],
                      duration_s=spec["duration_s"], timeout_s=spec["timeout_s"])
        batches = get_json(server.url, "/health")["batches"] - before
    finally:
        exit_code = server.stop()
    metrics: dict[str, Metric] = {
        "requests.target_qps": (float(spec["rate"]), "1/s", None),
        # answers per second of the window, or of the time to the last answer if that was longer
        "requests.achieved_qps": (r["ok"] / max(r["seconds"], spec["duration_s"]), "1/s", "higher"),
        "requests.sent": (r["sent"], "count", None),
        "requests.ok": (r["ok"], "count", "higher"),
        "requests.errors": (r["errors"], "count", "lower"),
        "requests.lost": (r["lost"], "count", "lower"),
        "requests.not_sent": (r["not_sent"], "count", "lower"),
        "requests.wrong": (r["wrong"], "count", "lower"),
    }
    metrics.update(latency_stats("latency", r["latency_s"]))
    late = np.asarray(r["late_ms"])
    metrics["schedule.late_p50_ms"] = (float(np.percentile(late, 50)) if late.size else None, "ms", "lower")
    metrics["schedule.late_p99_ms"] = (float(np.percentile(late, 99)) if late.size else None, "ms", "lower")
    metrics["server.texts_per_batch"] = (r["ok"] * k / batches if batches else None, "texts", None)
    return metrics, {"texts": {**source, "n": len(texts)}, "requests_planned": r["total"],
                     "window_s": spec["duration_s"], "seconds": round(r["seconds"], 4), "statuses": r["statuses"],
                     "server_batches": batches, "server_exit_code": exit_code,
                     "timings_ms": {"latency": [round(x * 1e3, 4) for x in r["latency_s"]]}}


# ---------------------------------------------------------------- custom mix

def run_custom_mix(ctx: Context, spec: RunSpec) -> tuple[dict[str, Metric], dict[str, Any]]:
    model = ctx.model
    data = _labelled(ctx, spec)
    items = build_mix(data, long_fraction=spec["long_fraction"], domain_fraction=spec["domain_fraction"],
                      domain_terms=spec["domain_terms"], terms_per_text=spec["terms_per_text"], seed=spec["seed"],
                      is_long=lambda text: model.encoder.encode_batch([text]).truncated[0])
    texts = [it.text for it in items]
    ctx.progress(f"{len(items)} items ({sum(it.group == 'long' for it in items)} long, "
                 f"{sum(it.group == 'domain' for it in items)} domain): accuracy, then batch-1 latency")
    results = model.predict(texts, batch_size=spec["batch_size"])
    for i in range(spec["warmup"]):
        model.predict([texts[i % len(texts)]])
    times = []
    for text in texts:
        t = time.perf_counter()
        model.predict([text])
        times.append(time.perf_counter() - t)
    y = np.asarray([it.label for it in items])
    probs = _probabilities(results, model.labels)
    groups = np.asarray([it.group for it in items])
    metrics: dict[str, Metric] = {}
    composition = {}
    for name in ("all", "plain", "long", "domain"):
        mask = np.ones(len(items), dtype=bool) if name == "all" else groups == name
        composition[name] = int(mask.sum())
        if not mask.any():
            continue
        m, _ = classification_metrics(name, y[mask], probs[mask])
        if name != "all":
            m.pop(f"{name}.auc_ovr")  # small groups: AUC per group is mostly noise
        metrics.update(m)
        stats = latency_stats(name, [t for t, keep in zip(times, mask) if keep])
        metrics.update({k: v for k, v in stats.items() if k.split(".")[1] in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "n")})
    truncated = {name: int(sum(r["truncated"] for r, g in zip(results, groups) if name == "all" or g == name))
                 for name in composition}
    return metrics, {"data": {"source": data.source, "sha256": data.sha256, "rows": len(data.texts),
                              "dropped_blank": data.dropped_blank},
                     "composition": composition, "truncated": truncated,
                     "rule": "edgekit_runtime.bench.data.build_mix (sha256 ranking, same-label concatenation "
                             "past max_length, terms inserted at fixed word positions)",
                     "timings_ms": {"all": [round(t * 1e3, 4) for t in times]}}




KIND_RUNNERS: dict[str, Callable[[Context, RunSpec], tuple[dict[str, Metric], dict[str, Any]]]] = {
    "latency": run_latency, "throughput": run_throughput, "memory": run_memory, "accuracy": run_accuracy,
    "stress": run_stress, "custom_mix": run_custom_mix, "generation": run_generation,
}


# ---------------------------------------------------------------- suites and results

def bundle_record(ctx: Context) -> dict[str, Any]:
    model = ctx.model
    manifest = model.manifest
    model_file = manifest["model"]["file"]
    options = getattr(getattr(model.backend, "session", None), "get_session_options", None)
    intra = options().intra_op_num_threads if callable(options) else None
    return {"path": str(ctx.bundle), "label": ctx.label, "task": manifest["task"].get("name"),
            "labels": list(model.labels), "profile": model.profile.name, "device": model.profile.device,
            "precision": manifest["model"].get("precision"), "max_length": model.encoder.max_length,
            "model_sha256": manifest["files"][model_file]["sha256"], "manifest_sha256": manifest.get("manifest_sha256"),
            "backend": model.backend_name, "backend_requested": ctx.backend,
            "backend_passed_over": list(getattr(model, "backend_reasons", [])),
            "threads": ctx.threads, "ort_intra_op_num_threads": intra}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    return value


def aggregate(spec: RunSpec, repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's result from its repeats (each {metrics, info, seconds, error})."""
    keys: dict[str, tuple[str, str | None]] = {}
    for rep in repeats:
        for key, (_, unit, better) in (rep["metrics"] or {}).items():
            keys.setdefault(key, (unit, better))
    out = {}
    for key, (unit, better) in keys.items():
        samples = [rep["metrics"][key][0] if rep["metrics"] and key in rep["metrics"] else None for rep in repeats]
        values = [v for v in samples if v is not None]
        out[key] = {"value": float(np.median(values)) if values else None, "unit": unit, "better": better,
                    "samples": samples}
    errors = [rep["error"] for rep in repeats if rep["error"]]
    return _jsonable({"name": spec.name, "kind": spec.kind, "config": dict(spec.params),
                      "status": "error" if errors else "ok", "error": errors[0] if errors else None,
                      "seconds": [round(rep["seconds"], 3) for rep in repeats], "metrics": out,
                      "details": [rep["info"] for rep in repeats]})


def execute(ctx: Context, spec: RunSpec) -> dict[str, Any]:
    """One repeat of one run: {metrics, info, seconds, error}; an error does not stop the suite."""
    t = time.perf_counter()
    try:
        metrics, info = KIND_RUNNERS[spec.kind](ctx, spec)
        error = None
    except Exception as exc:
        if ctx.verbose:
            traceback.print_exc()
        metrics, info, error = {}, {}, failure(exc)
        ctx.progress(f"FAILED: {error}")
    return {"metrics": metrics, "info": info, "seconds": time.perf_counter() - t, "error": error}


def run_suite(suite: Suite, contexts: Sequence[Context], *, repeats: int = 1, command: Sequence[str] | None = None,
              progress: Callable[[str], None] = lambda line: None) -> list[dict[str, Any]]:
    """Run every run of ``suite`` ``repeats`` times on each context; one result document per context.
    With several contexts each repeat alternates their order (A B, then B A, ...)."""
    env = environment()
    started = _now()
    per_ctx: list[list[dict[str, Any]]] = [[] for _ in contexts]
    n = len(suite.runs)
    for i, spec in enumerate(suite.runs):
        reps: list[list[dict[str, Any]]] = [[] for _ in contexts]
        for k in range(repeats):
            order = list(range(len(contexts)))
            if k % 2:
                order.reverse()
            for c in order:
                ctx = contexts[c]
                where = f"[{i + 1}/{n}] {spec.name} ({spec.kind})" + (f" repeat {k + 1}/{repeats}" if repeats > 1 else "") \
                    + (f" {ctx.label}" if len(contexts) > 1 else "")
                original = ctx.progress
                ctx.progress = lambda line, where=where, original=original: original(f"{where}: {line}")
                try:
                    ctx.progress("start")
                    reps[c].append(execute(ctx, spec))
                finally:
                    ctx.progress = original
        for c in range(len(contexts)):
            per_ctx[c].append(aggregate(spec, reps[c]))
    return [{"schema": SCHEMA, "version": VERSION, "created_utc": started, "finished_utc": _now(),
             "command": list(command) if command is not None else list(sys.argv), "suite": suite.describe(),
             "bundle": bundle_record(ctx), "environment": env, "repeats": repeats, "runs": runs}
            for ctx, runs in zip(contexts, per_ctx)]
