"""`edgekit report`: one self-contained HTML page, every section, escaped, honest about gaps."""

from __future__ import annotations

import copy
import json
import re

import pytest
from click.testing import CliRunner

import edgekit_runtime
from edgekit.cli import main
from edgekit.report import NOT_RECORDED, SECTIONS, SequenceClassificationReport as Report, latency_samples, read_bench
from edgekit_runtime.bench.runner import SCHEMA, VERSION
from tests.test_pipeline import LOOSE_GATE, QAT, STUDENT, _compile
from tests.tiny_models import make_model_dir

EVIL = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny compiled bundle with every stage: fine-tune, prune + distill, QAT int8, gate."""
    bert = make_model_dir(tmp_path_factory.mktemp("bert"), "bert")
    state = _compile(tmp_path_factory.mktemp("compile"), bert, "x86-64-cpu",
                     **{**STUDENT, **QAT, "quantize": {**QAT["quantize"], **LOOSE_GATE}})
    return state.bundle_path


@pytest.fixture(scope="module")
def manifest(bundle):
    return edgekit_runtime.verify_bundle(bundle)


def bench_doc(label="tiny", real=(3.0, 3.5, 4.0, 9.0), shape=(1.0, 1.2, 1.1)):
    return {"schema": SCHEMA, "version": VERSION, "created_utc": "2026-01-01T00:00:00Z", "command": ["edgekit-run"],
            "suite": {"name": "t"}, "bundle": {"label": label, "backend": "ort-cpu"}, "environment": {},
            "repeats": 1,
            "runs": [{"name": "latency", "kind": "latency", "status": "ok", "metrics": {},
                      "details": [{"timings_ms": {"real_b1": list(real), "b1xs8": list(shape)}}]}]}


def check_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    lowered = page.lower()
    for ref in ("http://", "https://", "file:", "<link", "<script", "@import", "url("):
        assert ref not in lowered, ref
    srcs = re.findall(r'\bsrc="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert len(re.findall(r"<img\b", page)) == len(srcs)  # every <img> has a data: src
    for sid, title in SECTIONS:
        assert f'<section id="{sid}"><h2>{title}</h2>' in page


def test_cli_writes_a_self_contained_report(bundle, manifest, tmp_path):
    out = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", str(bundle), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    check_self_contained(page)
    assert "verified: manifest and the sha256 of every file match" in page
    # summary: quality of teacher / student / bundle vs the majority baseline, and the gate
    for text in ("teacher (PyTorch)", "student (PyTorch)", "majority-class baseline", "argmax agreement with the fp32",
                 "macro_f1", "int8 method qat"):
        assert text in page, text
    # loss curves from the JSONL files of distillation and QAT, and the fine-tune's eval history
    assert "training/student_loss_curve.jsonl" in page and "training/qat_loss_curve.jsonl" in page
    assert "Teacher fine-tune" in page and "Quantization-aware training" in page
    # without --bench the latency section says where its figures come from
    assert "Source: the manifest&#x27;s latency figures" in page
    # substitutions and the pass log
    assert "all rules + simplify (the shipped graph)" in page
    assert all(p["name"] in page for p in manifest["pass_log"])
    # the student has no latency figure: named as missing, not drawn
    assert f"student (PyTorch fp32): latency {NOT_RECORDED}" in page
    assert len(re.findall(r"<img\b", page)) >= 5  # 3 training, 1 latency, 1 trade-off
    assert out.stat().st_size < 1_500_000  # plots are modest PNGs, not megapixel images


def test_manifest_strings_are_escaped(manifest, bundle):
    m = copy.deepcopy(manifest)
    m["task"]["labels"] = [EVIL, "b&c", "$x$"]
    m["figures"]["quality"]["majority_label"] = EVIL
    m["figures"]["quality"]["backend"] = EVIL + " costs $5 $"  # drawn in a plot label: no mathtext
    m["figures"]["substitutions"][EVIL] = {"fired": 1, "max_abs_logit_diff": 0.0, "argmax_agreement": 1.0,
                                           "samples": 3, "skipped": [EVIL]}
    m["pass_log"][0]["notes"] = [EVIL]
    m["recipe"]["teacher"] = EVIL
    page = Report(m, bundle).render()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "b&amp;c" in page
    check_self_contained(page)


@pytest.mark.parametrize("drop", ["figures", "latency", "quality", "substitutions", "quant_gate", "compression",
                                  "pass_log", "validation"])
def test_missing_figures_are_named_not_crashed(manifest, drop):
    m = copy.deepcopy(manifest)
    if drop in ("figures", "pass_log"):
        m.pop(drop)
    else:
        m["figures"].pop(drop)
    page = Report(m, None).render()  # no bundle directory: no JSONL curves either
    assert "could not be drawn" not in page
    assert NOT_RECORDED in page
    for sid, _ in SECTIONS:
        assert f'<section id="{sid}">' in page
    if drop == "latency":
        assert "latency figures: " + NOT_RECORDED in page
        assert f"latency {NOT_RECORDED}" in page  # the trade-off's latency axis
    if drop == "quant_gate":
        assert "the quantized gate&#x27;s figures: " + NOT_RECORDED in page


def test_empty_manifest_still_renders_every_section():
    page = Report({}, None).render()
    for sid, _ in SECTIONS:
        assert f'<section id="{sid}">' in page
    assert "could not be drawn" not in page and NOT_RECORDED in page


def test_fp32_teacher_only_bundle_says_what_does_not_apply(manifest):
    m = copy.deepcopy(manifest)
    m["model"]["precision"], m["model"]["int8"] = "fp32", None
    for key in ("quant_gate", "compression"):
        m["figures"].pop(key)
    m["figures"]["quality"].pop("student_pytorch")
    m["recipe"]["student"]["enabled"] = False
    m["pass_log"] = [p for p in m["pass_log"] if p["name"] not in ("prune", "distill", "evaluate-student", "qat")]
    page = Report(m, None).render()
    assert "No quantized gate: this bundle is fp32" in page
    assert "No student" in page and "student (PyTorch fp32)" not in page


def test_bench_results_drive_the_latency_plots(manifest, bundle, tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps(bench_doc()))
    cmp_doc = {"schema": "edgekit-bench-compare", "version": 1, "a": {"bundle": "peer"}, "b": {"bundle": "demo"},
               "rows": [], "results": {"a": bench_doc("peer"), "b": bench_doc("demo", real=(1.0, 2.0))}}
    two = tmp_path / "cmp.json"
    two.write_text(json.dumps(cmp_doc))
    assert [label for label, _ in read_bench(two)] == ["A: peer", "B: demo"]
    wrapped = tmp_path / "reference.json"  # benchmarks/reference.py's document holds the comparison
    wrapped.write_text(json.dumps({"schema": "edgekit-reference", "version": 1, "compare": cmp_doc}))
    assert [label for label, _ in read_bench(wrapped)] == ["A: peer", "B: demo"]
    assert latency_samples(bench_doc())["real_b1"] == [3.0, 3.5, 4.0, 9.0]
    out = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", str(bundle), "--bench", str(one), "--bench", str(two),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    check_self_contained(page)
    assert "Source: edgekit-run bench results" in page and "A: peer" in page and "B: demo" in page
    assert 'alt="latency histogram and CDF of real_b1"' in page and 'alt="latency CDF per shape"' in page
    assert "NO: this result is of another model" in page  # the hand-made results name no model sha256


def test_real_bench_result_is_read(bundle, tmp_path):
    from edgekit_runtime.cli.main import main as run_main

    suite = tmp_path / "lat.toml"
    suite.write_text('[suite]\nname = "lat"\nthreads = 1\n[[run]]\nkind = "latency"\nwarmup = 1\niterations = 5\n'
                     'batch_sizes = [1]\nsequence_lengths = [8, 16]\nreal_texts = 0\n')
    out = tmp_path / "res.json"
    assert run_main(["bench", str(bundle), "--suite", str(suite), "--json", str(out), "--quiet"]) == 0
    [(label, doc)] = read_bench(out)
    assert set(latency_samples(doc)) == {"b1xs8", "b1xs16"}
    page = Report(edgekit_runtime.read_manifest(bundle), bundle, [(label, doc)]).render()
    check_self_contained(page)
    assert "bundle model sha256 matches</th><td>yes" in page


def test_bad_bench_file_is_one_clear_error(bundle, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "something-else"}')
    result = CliRunner().invoke(main, ["report", str(bundle), "--bench", str(bad), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 1 and "error:" in result.output and "schema" in result.output


def test_causal_lm_report_renders_every_section_from_nothing():
    from edgekit.report import LMReport

    page = LMReport({"task": {"name": "causal-lm"}}, None).render()
    for sid, _ in SECTIONS:
        assert f'<section id="{sid}">' in page
    assert "could not be drawn" not in page and "quality figures: not recorded in this bundle" in page
