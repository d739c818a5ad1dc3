"""Teacher in PyTorch vs the teacher's bundle in ONNX Runtime fp32, side by side in one run.

Compiles the demo (or your --teacher/--data) for a profile, then on the same machine, same
process, interleaved: latency at batch 1 x sequence 128 (fixed shape, padded) and at batch 1 on
real test texts (tokenization included), and macro-F1 on the held-back test split.

    python benchmarks/teacher_vs_bundle.py --profile x86-64-cpu --max-steps 400
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import edgekit_runtime
from edgekit.evaluate.latency import environment, interleaved
from edgekit.compiler.run import compile_bundle
from edgekit.profiles import resolve_profile
from edgekit.recipe import load_recipe


def fixed_shape_latency(state, runtime_model, seq: int, iters: int) -> dict:
    """Batch 1 x ``seq`` tokens (padded to exactly seq), model call only, both systems."""
    text = max(state.splits.test.texts, key=len)
    batch = state.tokenizer([text], padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    torch_inputs = state.adapter.model_inputs(state.model, dict(batch))
    session = runtime_model.backend.session
    feeds = {i.name: batch[i.name].numpy().astype(np.int32 if "int32" in i.type else np.int64)
             for i in session.get_inputs()}

    @torch.no_grad()
    def teacher(_):
        return state.model(**torch_inputs)

    def bundle(_):
        return session.run(None, feeds)

    return interleaved({"teacher_pytorch": teacher, "bundle_ort_fp32": bundle}, [text] * iters)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="x86-64-cpu")
    ap.add_argument("--teacher")
    ap.add_argument("--data")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--iters", type=int, default=100, help="timed calls per system for the fixed shape")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    profile = resolve_profile(args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(None, {"profile": profile.name, "teacher": args.teacher, "threads": threads,
                                    # the teacher itself is bundled here, in fp32
                                    "student": {"enabled": False}, "quantize": {"method": "none"},
                                    "data": {"path": args.data}, "finetune": {"max_steps": args.max_steps},
                                    "bundle": {"out": str(Path(tmp) / "bundle")}})
        state = compile_bundle(recipe, profile, echo=lambda s: print(s, file=sys.stderr))
        runtime_model = edgekit_runtime.load(state.bundle_path, threads=threads)
        fixed = fixed_shape_latency(state, runtime_model, 128, args.iters)
        real = state.figures["latency"]
        q = state.figures["quality"]
    env = environment(threads)
    rows = [
        ("system", "b1 x s128 median", "b1 x s128 p90", "real texts median", "real texts p90", "test macro-F1"),
        ("teacher PyTorch fp32", fixed["teacher_pytorch"]["median_ms"], fixed["teacher_pytorch"]["p90_ms"],
         real["teacher_pytorch"]["median_ms"], real["teacher_pytorch"]["p90_ms"], q["teacher_pytorch"]["macro_f1"]),
        ("teacher bundle ORT fp32", fixed["bundle_ort_fp32"]["median_ms"], fixed["bundle_ort_fp32"]["p90_ms"],
         real["bundle_runtime"]["median_ms"], real["bundle_runtime"]["p90_ms"], q["bundle_runtime"]["macro_f1"]),
    ]
    print(f"# teacher vs bundle, profile {profile.name}, {q['rows']} test rows, "
          f"{fixed['teacher_pytorch']['samples']} fixed-shape and {real['bundle_runtime']['samples']} real-text "
          f"samples per system, {threads} threads")
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for r in rows[1:]:
        print(f"| {r[0]} | {r[1]:.2f} ms | {r[2]:.2f} ms | {r[3]:.2f} ms | {r[4]:.2f} ms | {r[5]:.4f} |")
    ratio = fixed["teacher_pytorch"]["median_ms"] / fixed["bundle_ort_fp32"]["median_ms"]
    print(f"\nbundle speedup at b1 x s128 (median): {ratio:.2f}x; majority-class baseline macro-F1: "
          f"{q['majority_baseline']['macro_f1']:.4f}")
    print("environment: " + json.dumps(env))
    if args.json:
        args.json.write_text(json.dumps({"env": env, "fixed_b1_s128": fixed, "real_texts": real, "quality": q},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
