"""Load test of `edgekit-run serve`: throughput, latency and correctness under concurrent clients.

Starts the server as a subprocess on loopback, then at concurrency 1, 8 and 32 (threads, one
keep-alive http.client connection each, single-text requests from a fixed text list) sends a
bounded number of requests and reports QPS, p50/p99 latency, errors (non-200), lost requests
(no HTTP answer) and wrong answers (label differs, or a probability differs by more than 1e-5
from a direct ``load(bundle).predict`` of the same text). Then, at concurrency 32, compares
micro-batching (default --max-batch) with --max-batch 1, both servers up, rounds interleaved.

    python benchmarks/serve_load.py BUNDLE --json serve_load.json
    python benchmarks/serve_load.py BUNDLE --requests 384 --rounds 6 --threads 2

Needs only the runtime (numpy, onnxruntime, tokenizers): it runs on the device itself.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from edgekit_runtime import load
from edgekit_runtime.bench.data import BUILTIN_TEXTS

TOLERANCE = 1e-5
# Fixed, synthetic review-like texts of mixed length (no corpus needed; nothing personal).
TEXTS = list(BUILTIN_TEXTS)


def start_server(bundle: str, threads: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """`edgekit-run serve BUNDLE --port 0 ...` (same entry point, this interpreter); (process, base URL)."""
    cmd = [sys.executable, "-m", "edgekit_runtime.cli", "serve", bundle, "--port", "0", "--threads", str(threads),
           *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    seen = []  # backend fallbacks are logged before the server announces its address
    for line in proc.stderr:
        match = re.search(r"http://[\d.]+:\d+", line)
        if match:
            break
        seen.append(line.strip())
    else:
        proc.kill()
        raise SystemExit("server did not start:\n" + "\n".join(seen))
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
    return proc, match.group(0)


def stop_server(proc: subprocess.Popen) -> int:
    proc.terminate()  # SIGTERM: graceful shutdown
    return proc.wait(timeout=60)


def get_json(url: str, path: str) -> dict:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("GET", path)
    return json.loads(conn.getresponse().read())


def matches(got: dict, want: dict) -> bool:
    if got.get("label") != want["label"] or set(got.get("probabilities", {})) != set(want["probabilities"]):
        return False
    return all(abs(got["probabilities"][k] - v) <= TOLERANCE for k, v in want["probabilities"].items())


def client(url: str, indices: list[int], reference: list[dict], out: dict, start: threading.Barrier) -> None:
    """One client thread: its share of the requests over one keep-alive connection."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    start.wait()
    for i in indices:
        text_id = i % len(TEXTS)
        body = json.dumps({"texts": [TEXTS[text_id]]})
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            out["lost"] += 1  # no HTTP answer at all
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=120)
            continue
        elapsed_ms = (time.perf_counter() - t0) * 1e3
        if resp.status != 200:
            out["errors"] += 1
            out["statuses"][resp.status] = out["statuses"].get(resp.status, 0) + 1
            continue
        out["latency_ms"].append(elapsed_ms)  # of answered requests only: a fast 429 is not a fast answer
        preds = json.loads(data).get("predictions", [])
        if len(preds) != 1 or not matches(preds[0], reference[text_id]):
            out["wrong"] += 1
    conn.close()


def load_run(url: str, concurrency: int, requests: int, reference: list[dict]) -> dict:
    """``requests`` single-text requests from ``concurrency`` threads; the figures of the run."""
    outs = [{"latency_ms": [], "errors": 0, "lost": 0, "wrong": 0, "statuses": {}} for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=client, args=(url, list(range(k, requests, concurrency)), reference, o, barrier))
               for k, o in enumerate(outs)]
    for t in threads:
        t.start()
    batches_before = get_json(url, "/health")["batches"]
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    batches = get_json(url, "/health")["batches"] - batches_before
    lat = np.array([x for o in outs for x in o["latency_ms"]])
    statuses: dict[str, int] = {}
    for o in outs:
        for k, v in o["statuses"].items():
            statuses[str(k)] = statuses.get(str(k), 0) + v
    return {"concurrency": concurrency, "requests": requests, "seconds": round(seconds, 3),
            "qps": round(requests / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
            "errors": sum(o["errors"] for o in outs), "lost": sum(o["lost"] for o in outs),
            "wrong": sum(o["wrong"] for o in outs), "statuses": statuses,
            "texts_per_batch": round(requests / batches, 2) if batches else None}


def merge(runs: list[dict]) -> dict:
    """Rounds of one configuration as one figure: QPS over the total time, latency percentiles over
    the rounds' percentiles (median of p50s, max of p99s: the conservative reading)."""
    total = sum(r["requests"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    return {"concurrency": runs[0]["concurrency"], "requests": total, "seconds": round(seconds, 3),
            "qps": round(total / seconds, 1), "p50_ms": round(float(np.median([r["p50_ms"] for r in runs])), 2),
            "p99_ms": max(r["p99_ms"] for r in runs), "errors": sum(r["errors"] for r in runs),
            "lost": sum(r["lost"] for r in runs), "wrong": sum(r["wrong"] for r in runs),
            "texts_per_batch": round(float(np.mean([r["texts_per_batch"] or 0 for r in runs])), 2),
            "rounds": runs}


def environment(threads: int) -> dict:
    import onnxruntime

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": threads,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "commit": commit, "command": " ".join(sys.argv)}


def row(name: str, max_batch: str, r: dict) -> str:
    return (f"| {name} | {r['concurrency']} | {max_batch} | {r['requests']} | {r['qps']:.1f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['texts_per_batch']} | {r['errors']} | {r['lost']} | {r['wrong']} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", help="bundle directory or .tar")
    ap.add_argument("--requests", type=int, default=192, help="requests per concurrency level (default 192)")
    ap.add_argument("--rounds", type=int, default=4,
                    help="interleaved rounds per configuration in the batching comparison (default 4)")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads of the server (default 2)")
    ap.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch for the sweep (default 16)")
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = ap.parse_args(argv)

    with load(args.bundle, threads=args.threads) as model:  # the reference: each text on its own
        reference = [model.predict([t])[0] for t in TEXTS]
    batched, url_b = start_server(args.bundle, args.threads, ["--max-batch", str(args.max_batch)])
    single, url_s = start_server(args.bundle, args.threads, ["--max-batch", "1"])
    try:
        for url in (url_b, url_s):  # warm-up: first calls allocate onnxruntime buffers
            load_run(url, 4, 32, reference)
        sweep = [load_run(url_b, c, args.requests, reference) for c in (1, 8, 32)]
        compare: dict[str, list[dict]] = {"micro-batching": [], "max-batch 1": []}
        servers = [("micro-batching", url_b), ("max-batch 1", url_s)]
        for k in range(args.rounds):  # A, B, then B, A, ...: neither always runs first
            for name, url in servers[k % 2:] + servers[:k % 2]:
                compare[name].append(load_run(url, 32, args.requests, reference))
    finally:
        codes = [stop_server(batched), stop_server(single)]
    merged = {name: merge(runs) for name, runs in compare.items()}

    env = environment(args.threads)
    lines = [f"# edgekit-run serve, {Path(args.bundle).name}, single-text requests from {len(TEXTS)} fixed texts, "
             f"{args.threads} onnxruntime threads, loopback",
             "| run | clients | max batch | requests | QPS | p50 ms | p99 ms | texts/batch | errors | lost | wrong |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [row("sweep", str(args.max_batch), r) for r in sweep]
    lines.append(row(f"micro-batching ({args.rounds} rounds)", str(args.max_batch), merged["micro-batching"]))
    lines.append(row(f"no batching ({args.rounds} rounds)", "1", merged["max-batch 1"]))
    a, b = merged["micro-batching"], merged["max-batch 1"]
    lines.append(f"\nAt 32 clients, micro-batching / --max-batch 1: QPS x{a['qps'] / b['qps']:.2f}, "
                 f"p50 x{a['p50_ms'] / b['p50_ms']:.2f}, p99 x{a['p99_ms'] / b['p99_ms']:.2f}. "
                 f"Servers exited {codes} on SIGTERM (0 = graceful).")
    print("\n".join(lines))
    print("environment: " + json.dumps(env))
    if args.json:
        args.json.write_text(json.dumps({"env": env, "bundle": str(args.bundle), "tolerance": TOLERANCE,
                                         "sweep": sweep, "compare_c32": merged, "exit_codes": codes}, indent=2) + "\n")
    bad = sum(r["errors"] + r["lost"] + r["wrong"] for r in [*sweep, a, b])
    return 1 if bad or any(codes) else 0


if __name__ == "__main__":
    sys.exit(main())
