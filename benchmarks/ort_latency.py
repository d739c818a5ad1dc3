"""Interleaved ONNX Runtime latency of several graphs at one fixed shape, in a fresh process.

Run as a subprocess by the other benchmarks so that no torch thread pool or training state
shares the process with the timed sessions (what a device runs is onnxruntime alone).

    python benchmarks/ort_latency.py --text-file T --seq 128 --iters 300 --threads 2 A=a.onnx B=b.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from tokenizers import Tokenizer

from edgekit_runtime.backends.ort import ort_session

_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def in_fresh_process(paths: dict, tokenizer_json: Path, text_file: Path, seq: int, iters: int, threads: int,
                     warmup: int = 20) -> dict:
    """Run this script in a new interpreter over ``paths`` (name -> graph) and return its JSON."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__)), "--tokenizer", str(tokenizer_json), "--text-file", str(text_file),
           "--seq", str(seq), "--iters", str(iters), "--threads", str(threads), "--warmup", str(min(warmup, iters)),
           *[f"{name}={path}" for name, path in paths.items()]]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("graphs", nargs="+", help="NAME=PATH of each ONNX graph")
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json")
    ap.add_argument("--text-file", required=True, help="the text to feed (UTF-8)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--block", type=int, default=20, help="timed calls per graph per turn")
    args = ap.parse_args(argv)
    tok = Tokenizer.from_file(args.tokenizer)
    tok.enable_truncation(args.seq)
    tok.enable_padding(length=args.seq)
    enc = tok.encode(Path(args.text_file).read_text(encoding="utf-8"))
    values = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
    runners = {}
    for item in args.graphs:
        name, path = item.split("=", 1)
        # The session the device runtime would make (QDQ int8 graphs get its onnxruntime options).
        qdq = any(n.op_type == "DequantizeLinear" for n in onnx.load(path, load_external_data=False).graph.node)
        session = ort_session(path, ["CPUExecutionProvider"], threads=args.threads, quantized=qdq)
        feeds = {i.name: np.asarray([values[i.name]], dtype=_DTYPES[i.type]) for i in session.get_inputs()}
        runners[name] = (session, feeds)
    names = list(runners)
    for _ in range(args.warmup):
        for name in names:
            runners[name][0].run(None, runners[name][1])
    # Interleaved in blocks: each graph runs ``block`` timed calls in a row, after one untimed call, and
    # the graphs take turns (order rotated every round). Alternating single calls made every
    # session's call overlap the previous session's intra-op threads, which spin after a run: on 2
    # cores that inflated every graph's latency up to 2-3x (the teacher's fp32 graph read 38-40 ms
    # here against 13.8 ms alone), and unlike the PyTorch baseline timed on its own.
    times = {n: [] for n in names}
    block = max(1, min(args.block, args.iters))
    for r in range(-(-args.iters // block)):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            session, feeds = runners[name]
            session.run(None, feeds)  # the previous session's threads may still be spinning: not timed
            for _ in range(min(block, args.iters - len(times[name]))):
                start = time.perf_counter()
                session.run(None, feeds)
                times[name].append((time.perf_counter() - start) * 1e3)
    out = {n: {"median_ms": round(float(np.median(t)), 3), "p90_ms": round(float(np.percentile(t, 90)), 3),
               "samples": len(t)} for n, t in times.items()}
    out["threads"] = args.threads
    out["block"] = block
    out["seq"] = len(enc.ids)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
