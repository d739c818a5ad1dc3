"""`edgekit compile-lm` end to end on a tiny random Qwen2 teacher: prune, distill, QAT, export,
validate, bundle; the bundle verifies and its graph runs; the int8 perplexity gate fails on a
deliberately broken scale; bad flags fail before any training."""

from __future__ import annotations

import html
import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from edgekit.cli import main
from edgekit.models.decoder import DecoderError
from edgekit.export.ort_ops import CONTRIB_OPS
from edgekit.models.toy import tiny_config, train_tokenizer

WORDS = ["the", "cat", "dog", "runs", "sleeps", "fast", "today", "battery", "phone", "is", "good", "bad", "very"]


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 12)))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("lm")
    texts = _texts(400)
    (root / "corpus.txt").write_text("\n".join(texts), encoding="utf-8")
    tok = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(vocab_size=len(tok), layers=3), attn_implementation="eager")
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    (root / "recipe.toml").write_text(
        "[data]\nmax_eval = 30\n[finetune]\nsteps = 30\nbatch_size = 8\nlearning_rate = 3e-3\n"
        "[distill]\nsteps = 20\nbatch_size = 8\n[quantize]\nsteps = 5\nbatch_size = 8\n", encoding="utf-8")
    return root


def _compile(root, *extra):
    return CliRunner().invoke(main, ["compile-lm", "--profile", "x86-64-cpu", "--teacher", str(root / "teacher"),
                                     "--data", str(root / "corpus.txt"), "--recipe", str(root / "recipe.toml"),
                                     "--max-length", "32", "--threads", "1", *extra])


@pytest.mark.slow
def test_compile_lm_int8_student_bundle(workspace):
    out = workspace / "bundle-int8"
    result = _compile(workspace, "--layers", "2", "--kv-groups", "1", "--ffn", "64", "--int8", "--out", str(out))
    assert result.exit_code == 0, result.output
    import edgekit_runtime

    manifest = edgekit_runtime.verify_bundle(out)
    assert manifest["task"]["name"] == "causal-lm"
    assert manifest["task"]["num_layers"] == 2 and manifest["task"]["num_key_value_heads"] == 1
    assert manifest["model"]["precision"] == "int8" and manifest["model"]["int8"]["format"] == "qdq"
    figures = manifest["figures"]
    assert figures["student"]["params"] < figures["teacher"]["params"]
    # the graph's perplexity is measured through ONNX Runtime and gated against the fp32 student
    assert figures["graph"]["perplexity_vs_fp32"] <= 1.05
    assert figures["teacher"]["test_perplexity"] < 300  # the fine-tune learned something (vocab 300)
    graph = onnx.load(str(out / "model.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # x86-64-cpu's decoder_ops = "ort-contrib": ONNX Runtime's fused attention, norms and RoPE, nothing else
    contrib = {(n.domain, n.op_type) for n in graph.graph.node if n.domain not in ("", "ai.onnx")}
    assert ("com.microsoft", "GroupQueryAttention") in contrib and contrib <= CONTRIB_OPS
    assert manifest["model"]["graph_ops"] == "ort-contrib"
    names = [p["name"] for p in manifest["pass_log"]]
    assert names[-4:] == ["export", "check ops", "validate", "evaluate graph"] and "qat int8" in names

    # `edgekit report` reads a causal-LM bundle as one: perplexity (lower is better), the int8 gate,
    # pruning, validation, and generate (not predict) as the command
    report = workspace / "lm-report.html"
    result = CliRunner().invoke(main, ["report", str(out), "--out", str(report)])
    assert result.exit_code == 0, result.output
    page = html.unescape(report.read_text(encoding="utf-8"))
    ppl = figures["graph"]["test_perplexity"]
    assert "test perplexity (lower is better)" in page and f"{ppl:.3f}" in page
    assert f"{figures['graph']['perplexity_vs_fp32']:.4f}x the fp32 student" in page and "passed" in page
    assert "2 -> 1" in page  # KV heads, from the prune
    assert "edgekit-run generate BUNDLE" in page and "edgekit-run predict" not in page
    assert "greedy agreement" in page and "No compression stage ran" not in page


@pytest.mark.slow
def test_int8_gate_fails_on_a_broken_scale(workspace, tmp_path):
    """The gate reads the graph's own perplexity: a QDQ scale blown up 100x fails it with the figures."""
    from edgekit.compiler.state import CompileState
    from edgekit.compiler.target import resolve_target
    from edgekit.evaluate.passes import pass_evaluate_graph
    from edgekit.recipe import build_lm_recipe
    from edgekit.tasks import get_task
    from edgekit.data.text import load_texts, split_texts
    from edgekit.profiles import resolve_profile
    from transformers import AutoTokenizer

    graph = onnx.load(str(workspace / "bundle-int8" / "model.onnx"))
    # the per-channel scales of the first int8 weights (initializers or Constant nodes, as the exporter wrote them)
    inits = {i.name: i for i in graph.graph.initializer}
    constants = {n.output[0]: n for n in graph.graph.node if n.op_type == "Constant"}
    wanted = {n.input[1] for n in graph.graph.node if n.op_type == "DequantizeLinear"
              and (n.input[0] in inits or n.input[0] in constants)}
    broken_count = 0
    for name in sorted(wanted)[:4]:
        if name in inits:
            tensor = inits[name]
        else:
            tensor = next(a.t for a in constants[name].attribute if a.name == "value")
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 30, tensor.name))
        broken_count += 1
    assert broken_count == 4
    broken = tmp_path / "model.onnx"
    onnx.save(graph, str(broken))
    manifest = json.loads((workspace / "bundle-int8" / "manifest.json").read_text())
    recipe = build_lm_recipe({"teacher": str(workspace / "teacher"), "max_length": 32})
    texts, _ = load_texts(workspace / "corpus.txt")
    tok = AutoTokenizer.from_pretrained(str(workspace / "teacher"))
    tok.padding_side = "left"
    profile, adapter = resolve_profile("x86-64-cpu"), get_task("causal-lm")
    state = CompileState(recipe=recipe, profile=profile, target=resolve_target(recipe, profile, adapter),
                         adapter=adapter, workdir=tmp_path, echo=print,
                         splits=split_texts(texts), tokenizer=tok, precision="int8", onnx_path=broken,
                         figures={k: manifest["figures"][k] for k in ("teacher", "student")})
    with pytest.raises(DecoderError, match="int8 gate"):
        pass_evaluate_graph(state)


def test_bad_flags_fail_before_training(workspace, tmp_path):
    result = _compile(workspace, "--heads-per-group", "3", "--out", str(tmp_path / "x"))
    assert result.exit_code == 1 and "heads_per_group_keep = 3" in result.output and "at most 2" in result.output
    assert "fine-tune teacher" not in result.output  # refused before any training
    result = _compile(workspace, "--max-context", "4096", "--out", str(tmp_path / "y"))
    assert result.exit_code == 1 and "max_context 4096" in result.output and "Fix" in result.output
    result = CliRunner().invoke(main, ["compile-lm", "--profile", "x86-64-cpu", "--teacher", str(tmp_path)])
    assert result.exit_code == 1 and "config.json" in result.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_distill_from_an_on_disk_teacher_cache(workspace, tmp_path):
    """distill.teacher_cache_top_k: the teacher's top-k goes to disk (the size estimate_bytes predicts),
    the teacher is freed, and the student trains from the cache to a working fp32 bundle."""
    from edgekit.distill.topk_cache import estimate_bytes

    recipe = tmp_path / "cache.toml"
    recipe.write_text((workspace / "recipe.toml").read_text().replace(
        "[distill]\n", "[distill]\nmax_texts = 120\nteacher_cache_top_k = 16\n"), encoding="utf-8")
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["compile-lm", "--profile", "x86-64-cpu", "--teacher", str(workspace / "teacher"),
                                       "--data", str(workspace / "corpus.txt"), "--recipe", str(recipe),
                                       "--max-length", "32", "--threads", "1", "--layers", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    distill = next(p for p in manifest["pass_log"] if p["name"] == "distill")["figures"]
    assert distill["examples"] == 120
    assert distill["teacher_cache_bytes"] == distill["teacher_cache_estimate"] == estimate_bytes(120, 32, 16, 300)
    assert "the teacher is freed" in result.output
    assert manifest["figures"]["student"]["test_perplexity"] < manifest["figures"]["teacher"]["test_perplexity"] * 1.5


def test_jetson_bundle_plans_tensorrt_shapes_for_the_kv_inputs(workspace, tmp_path):
    """A TensorRT profile gets min / opt / max shapes for every graph input; past KV starts empty
    (min 0: the prefill step), and the runtime's plan check accepts that."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgekit.bundle.decoder import write_decoder_bundle
    from edgekit.export.decoder import export_decoder
    from edgekit_runtime.backends.trt_plan import check_engine_plan

    model = AutoModelForCausalLM.from_pretrained(str(workspace / "teacher"), attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(str(workspace / "teacher"))
    graph = export_decoder(model, tmp_path / "g" / "model.onnx")
    out = write_decoder_bundle(model, tok, graph, tmp_path / "b", profile="jetson-orin", max_context=256)
    manifest = json.loads((out / "manifest.json").read_text())
    plan = manifest["engine_plan"]
    names = [i["name"] for i in manifest["model"]["inputs"]]
    assert check_engine_plan(plan, names) == plan
    key = plan["shapes"]["past_key_values.0.key"]
    assert key["min"] == [1, 2, 0, 16] and key["max"] == [8, 2, 255, 16]
    assert plan["shapes"]["attention_mask"]["max"] == [8, 256] and plan["flags"] == ["fp16"]
    assert manifest["model"]["graph_ops"] == "standard"


def test_jetson_lm_bundle_records_its_rules_and_validates_at_the_profile_tolerance(workspace, tmp_path):
    """One compiler: a causal LM for jetson-orin goes through the profile's rewrite rules (the same
    fp16-safe-mask rule the encoders get) and is validated at the profile's fp32 tolerance."""
    from edgekit.profiles import resolve_profile

    out = tmp_path / "orin"
    result = CliRunner().invoke(main, ["compile", "--task", "causal-lm", "--profile", "jetson-orin",
                                       "--teacher", str(workspace / "teacher"), "--data", str(workspace / "corpus.txt"),
                                       "--recipe", str(workspace / "recipe.toml"), "--max-length", "32",
                                       "--threads", "1", "--layers", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["rewrite_rules"] == ["fp16-safe-mask"]
    tolerance = resolve_profile("jetson-orin").tolerance("fp32")
    validate = next(p for p in manifest["pass_log"] if p["name"] == "validate")["figures"]
    assert (validate["atol"], validate["rtol"]) == (tolerance.atol, tolerance.rtol)
    graph = onnx.load(str(out / "model.onnx"))
    constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.graph.node if n.op_type == "Constant"}
    constants.update({t.name: numpy_helper.to_array(t) for t in graph.graph.initializer})
    fills = {float(constants[n.input[2]]) for n in graph.graph.node if n.op_type == "Where"}
    assert fills == {-1e4}  # the rule's fill, not the export's -65504


def test_task_is_read_from_the_teacher_config(workspace, tmp_path):
    """`edgekit compile` with a *ForCausalLM teacher and no --task compiles a causal LM; a flag of the
    other task is refused naming it, before anything runs."""
    args = ["compile", "--profile", "x86-64-cpu", "--teacher", str(workspace / "teacher"),
            "--data", str(workspace / "corpus.txt"), "--max-length", "32", "--threads", "1"]
    result = CliRunner().invoke(main, [*args, "--heads", "2", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "--heads applies to --task sequence-classification only" in result.output
    result = CliRunner().invoke(main, [*args, "--recipe", str(workspace / "recipe.toml"), "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["task"]["name"] == "causal-lm" and manifest["recipe"]["task"] == "causal-lm"


@pytest.mark.slow
def test_kill_9_during_a_causal_lm_compile_then_resume_completes(workspace, tmp_path):
    """kill -9 once the distilled student is on disk; --resume reloads it (no second distillation)
    and writes the same graph an uninterrupted compile writes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "bundle"
    slow = tmp_path / "slow.toml"  # QAT long enough to be killed in
    slow.write_text((workspace / "recipe.toml").read_text().replace("[quantize]\nsteps = 5", "[quantize]\nsteps = 400"),
                    encoding="utf-8")
    args = [sys.executable, "-m", "edgekit.cli", "compile-lm", "--profile", "x86-64-cpu",
            "--teacher", str(workspace / "teacher"), "--data", str(workspace / "corpus.txt"), "--recipe", str(slow),
            "--max-length", "32", "--threads", "1", "--layers", "2", "--int8", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    checkpoint = tmp_path / ".bundle.work" / "student-distilled.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), proc.communicate()[0].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed: the distilled student reloaded" in resumed.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    names = [p["name"] for p in manifest["pass_log"]]
    assert names[-4:] == ["export", "check ops", "validate", "evaluate graph"] and "qat int8" in names
    fresh = tmp_path / "fresh"
    again = subprocess.run([*args[:-1], str(fresh)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "model.onnx").read_bytes() == (fresh / "model.onnx").read_bytes()


def test_a_causal_lm_compile_without_a_teacher_says_so(tmp_path):
    result = CliRunner().invoke(main, ["compile", "--task", "causal-lm", "--profile", "x86-64-cpu",
                                       "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "needs a teacher" in result.output and "--teacher DIR" in result.output
    assert not (tmp_path / "x").exists()
