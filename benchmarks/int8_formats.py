"""int8 formats side by side: static QDQ, static QOperator and dynamic int8 against the fp32 graph.

Builds the three variants of one fp32 ONNX graph with edgekit.quant.ptq (static ones calibrated on
the first --samples lines of --calibration-texts, tokenized with --tokenizer), then times all four
interleaved at batch 1 x sequence --seq in a fresh onnxruntime-only process
(benchmarks/ort_latency.py), and prints median and p90 latency, the ratio to fp32, the file size
and whether the graph uses standard ONNX ops only (what the Jetson profiles require).

    python benchmarks/int8_formats.py --model student/model.onnx --tokenizer student/tokenizer.json \\
        --calibration-texts calibration.txt --iters 300 --json benchmarks/results/int8_formats.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from tokenizers import Tokenizer

from edgekit.quant.ptq import PTQConfig, quantize_dynamic_onnx, quantize_static_onnx, standard_ops_only
from ort_latency import in_fresh_process  # benchmarks/ort_latency.py, next to this script

VARIANTS = {
    "static-qdq": PTQConfig(method="static", format="qdq"),
    "static-qoperator": PTQConfig(method="static", format="qoperator"),
    "dynamic": PTQConfig(method="dynamic"),
}


def calibration_feeds(tokenizer_json: Path, texts: list[str], max_length: int, batch_size: int):
    """Batches of tokenized texts, each padded to its longest row (as the runtime feeds them)."""
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.enable_truncation(max_length)
    pad = tok.padding or {}
    tok.enable_padding(pad_id=pad.get("pad_id", 0), pad_token=pad.get("pad_token", "[PAD]"))
    for start in range(0, len(texts), batch_size):
        enc = tok.encode_batch(texts[start:start + batch_size])
        yield {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
               "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
               "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="the fp32 ONNX graph (opset 13)")
    ap.add_argument("--tokenizer", type=Path, required=True, help="its tokenizer.json")
    ap.add_argument("--calibration-texts", type=Path, required=True, help="UTF-8 file, one task text per line")
    ap.add_argument("--samples", type=int, default=256, help="calibration texts (PTQConfig.calibration_samples)")
    ap.add_argument("--batch-size", type=int, default=8, help="calibration batch size")
    ap.add_argument("--seq", type=int, default=128, help="timed sequence length (batch 1); calibration max length")
    ap.add_argument("--iters", type=int, default=300, help="timed calls per graph")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--out-dir", type=Path, help="keep the int8 graphs here (default: a temporary directory)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    texts = [t for t in args.calibration_texts.read_text(encoding="utf-8").splitlines() if t.strip()]
    if not texts:
        ap.error(f"{args.calibration_texts} has no non-empty lines")
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out_dir or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths, built = {"fp32": args.model}, {}
        for name, cfg in VARIANTS.items():
            cfg = replace(cfg, calibration_samples=args.samples) if cfg.method == "static" else cfg
            dst = out_dir / f"{name}.onnx"
            start = time.perf_counter()
            if cfg.method == "static":
                report = quantize_static_onnx(args.model, dst, calibration_feeds(
                    args.tokenizer, texts[:args.samples], args.seq, args.batch_size), cfg)
            else:
                report = quantize_dynamic_onnx(args.model, dst, cfg)
            built[name] = {"quantize_seconds": round(time.perf_counter() - start, 2), "ops": report.ops,
                           "calibration_samples": report.calibration_samples}
            paths[name] = dst
            log(f"[{name}] built in {built[name]['quantize_seconds']} s")
        # Enough text to fill --seq tokens; ort_latency pads or truncates to exactly --seq.
        text_file = Path(tmp) / "latency_text.txt"
        text_file.write_text(" ".join(texts[:64]), encoding="utf-8")
        log(f"timing {len(paths)} graphs x {args.iters} calls at b1 x s{args.seq}, {args.threads} threads")
        lat = in_fresh_process(paths, args.tokenizer, text_file, args.seq, args.iters, args.threads)
        rows = {}
        for name, path in paths.items():
            non_standard = standard_ops_only(onnx.load(str(path)))
            rows[name] = {**lat[name], "ratio_to_fp32": round(lat[name]["median_ms"] / lat["fp32"]["median_ms"], 3),
                          "bytes": path.stat().st_size, "standard_ops_only": not non_standard,
                          "non_standard_ops": non_standard, **built.get(name, {})}
    print(f"b1 x s{lat['seq']}, {lat['threads']} threads, {args.iters} interleaved calls per graph, "
          f"calibration: {min(args.samples, len(texts))} texts")
    print(f"{'format':<18}{'median ms':>10}{'p90 ms':>10}{'x fp32':>8}{'bytes':>12}  standard ops only")
    for name, r in rows.items():
        std = "yes" if r["standard_ops_only"] else "no: " + ", ".join(r["non_standard_ops"])
        print(f"{name:<18}{r['median_ms']:>10.3f}{r['p90_ms']:>10.3f}{r['ratio_to_fp32']:>8.2f}{r['bytes']:>12,}  {std}")
    if args.json:
        figures = {"model": str(args.model), "seq": lat["seq"], "threads": lat["threads"], "iters": args.iters,
                   "calibration_texts": min(args.samples, len(texts)), "formats": rows}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
