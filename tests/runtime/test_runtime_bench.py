"""edgekit-run bench: suite files are validated with errors that say what to fix, every kind runs
on the tiny bundle and gives a valid result (correctness only: no timing is asserted), the result
schema round-trips, the A/B verdict separates a real difference from noise, the custom mix follows
its documented rule, and the environment record reads a Jetson's files without guessing."""

from __future__ import annotations

import copy
import json
import stat
from pathlib import Path

import pytest

from edgekit_runtime import load
from edgekit_runtime.bench import report
from edgekit_runtime.bench.data import Labelled, build_mix, insert_terms
from edgekit_runtime.bench.env import ENV_KEYS, environment, jetson_info
from edgekit_runtime.bench.runner import SCHEMA, VERSION, fixed_feeds, long_feeds
from edgekit_runtime.bench.suite import GENERATION_KINDS, SuiteError, load_suite
from edgekit_runtime.bench.suite import KINDS as ALL_KINDS
from edgekit_runtime.cli.main import main

from runtime_fixtures import LABELS, REPO

SUITES = sorted((REPO / "benchmarks" / "suites").glob("*.toml"))
ROWS = [("the movie was great", "positive"), ("i hate it", "negative"), ("it was ok", "neutral"),
        ("loved the acting and the music", "positive"), ("boring plot", "negative"), ("a story", "neutral"),
        ("very good fun", "positive"), ("terrible , slow and bad", "negative"), ("the film", "neutral"),
        ("i love it", "positive"), ("not good", "negative"), ("it was a movie", "neutral")]


def write_rows(path: Path) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in ROWS))
    return path


def tiny_suite_text(data: Path, server: str = "in-process") -> str:
    """Every kind at the smallest sizes that still exercise it."""
    return f"""
[suite]
name = "tiny"
threads = 1
[[run]]
kind = "latency"
warmup = 1
iterations = 3
batch_sizes = [1, 2]
sequence_lengths = [8, 999]
real_texts = 4
[[run]]
kind = "throughput"
warmup = 0
batch_sizes = [1, 4]
items = 6
rounds = 2
[[run]]
kind = "memory"
processes = 1
[[run]]
kind = "accuracy"
data = "{data}"
[[run]]
kind = "stress"
server = "{server}"
clients = 2
rate = 20
duration_s = 0.5
warmup_requests = 1
[[run]]
kind = "custom_mix"
data = "{data}"
long_fraction = 0.25
domain_fraction = 0.25
domain_terms = ["firmware", "lidar"]
"""


KINDS = tuple(k for k in ALL_KINDS if k not in GENERATION_KINDS)  # what a classifier bundle runs


# ---------------------------------------------------------------- suite files

@pytest.mark.parametrize("path", SUITES, ids=[p.name for p in SUITES])
def test_shipped_suites_are_valid(path):
    suite = load_suite(path)
    assert suite.runs and suite.sha256 and all(r.kind in ALL_KINDS for r in suite.runs)


def test_standard_suite_covers_every_classifier_kind():
    assert {r.kind for r in load_suite(REPO / "benchmarks/suites/standard.toml").runs} == set(KINDS)
    assert {r.kind for r in load_suite(REPO / "benchmarks/suites/generation.toml").runs} == set(GENERATION_KINDS)


BAD_SUITES = [
    # (TOML, fragments the one error must hold)
    ('[suite]\nname="s"\n[[run]]\nkind="latency"\niteratons=5\n',
     ["key 'iteratons' = 5", "unknown key", "did you mean 'iterations'", "Fix:"]),
    ('[suite]\nname="s"\n[[run]]\nkind="latency"\niterations="50"\n',
     ["key 'iterations' = \"50\"", "expected an integer, got string", "Fix: write it as iterations = 50"]),
    ('[suite]\nname="s"\n[[run]]\nkind="latency"\niterations=true\n',
     ["key 'iterations' = true", "expected an integer, got boolean"]),
    ('[suite]\nname="s"\n[[run]]\nkind="latency"\niterations=0\n',
     ["key 'iterations' = 0", "must be >= 1", "Fix: set e.g. iterations = 50"]),
    ('[suite]\nname="s"\n[[run]]\nkind="latency"\nbatch_sizes=[1, -2]\n',
     ["key 'batch_sizes' = [1, -2]", "must be >= 1 (every entry)"]),
    ('[suite]\nname="s"\n[[run]]\nkind="accuracy"\n',
     ["key 'data' = (missing)", "required key is missing", "Fix: add data ="]),
    ('[suite]\nname="s"\n[[run]]\nkind="latncy"\n',
     ["key 'kind' = \"latncy\"", "unknown run kind", "did you mean 'latency'"]),
    ('[suite]\nname="s"\n[[run]]\nkind="stress"\nserver="docker"\n',
     ["key 'server' = \"docker\"", "must be one of ['subprocess', 'in-process']"]),
    ('[suite]\nname="s"\n[[run]]\nkind="latency"\n[[run]]\nkind="latency"\n',
     ["[[run]] #2 (latency) key 'name' = \"latency\"", "another run has this name"]),
    ('[suite]\nname="s"\n', ["key 'run' = (missing)", "the suite has no runs", "[[run]]"]),
    ('[[run]]\nkind="latency"\n', ["key 'suite' = (missing)", "the [suite] table is missing"]),
    ('runs=[]\n[suite]\nname="s"\n', ["key 'runs'", "unknown top-level key"]),
    ('[suite]\nname="s"\nthreads=0\n[[run]]\nkind="memory"\n', ["[suite] key 'threads' = 0", "must be >= 1"]),
    ('[suite]\nname="s"\n[[run]]\nkind="custom_mix"\ndata="rows.jsonl"\ndomain_terms=["x"]\nlong_fraction=0.6\n'
     'domain_fraction=0.5\n', ["key 'domain_fraction' = 0.5", "cannot overlap"]),
    ('[suite]\nname="s"\n[[run]]\nkind="accuracy"\ndata="missing.jsonl"\n',
     ["key 'data' = \"missing.jsonl\"", "no such file", "relative to the suite file"]),
    ('[suite]\nname="s"\n[[run]]\nkind="accuracy"\ndata="rows.parquet"\n',
     ["key 'data' = \"rows.parquet\"", "unknown file type '.parquet'"]),
    ('[suite\nname="s"\n', ["not valid TOML", "Fix: correct the syntax"]),
]


@pytest.mark.parametrize("text,fragments", BAD_SUITES, ids=[f"bad{i}" for i in range(len(BAD_SUITES))])
def test_bad_suite_is_one_clear_error(tmp_path, text, fragments):
    write_rows(tmp_path / "rows.jsonl")
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message and "Fix:" in message
    for fragment in fragments:
        assert fragment in message, message


def test_cli_bad_suite_exits_2_before_loading(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[suite]\nname="s"\n[[run]]\nkind="latency"\niteratons=5\n')
    assert main(["bench", str(tmp_path / "no-such-bundle"), "--suite", str(path)]) == 2
    err = capsys.readouterr().err
    assert "key 'iteratons'" in err and "bad.toml" in err and "no such bundle" not in err


# ---------------------------------------------------------------- the custom mix rule

def test_insert_terms_positions():
    # 6 words, 2 terms: before word 6*1//3 = 2, then before word 6*2//3 + 1 = 5
    assert insert_terms("a b c d e f", ["X", "Y"]) == "a b X c d Y e f"
    assert insert_terms("one", ["X"]) == "X one"


def test_build_mix_is_deterministic_and_follows_the_rule():
    data = Labelled(tuple(t for t, _ in ROWS), tuple(LABELS.index(y) for _, y in ROWS), 0, "rows", "0")

    def is_long(text: str) -> bool:
        return len(text.split()) > 9

    kwargs = dict(long_fraction=0.25, domain_fraction=0.25, domain_terms=["T1", "T2", "T3"], terms_per_text=2,
                  seed=0, is_long=is_long)
    items = build_mix(data, **kwargs)
    assert items == build_mix(data, **kwargs)
    assert [it.group for it in items].count("long") == 3 and [it.group for it in items].count("domain") == 3
    assert build_mix(data, **{**kwargs, "seed": 1}) != items
    for it in items:
        assert it.label == data.labels[it.row]
        source = data.texts[it.row]
        if it.group == "long":
            assert is_long(it.text) and it.text.startswith(source)
            joined = it.text[len(source):].strip()
            same = {data.texts[i] for i in range(len(ROWS)) if data.labels[i] == it.label}
            assert joined and all(part in " ".join(sorted(same)) for part in joined.split())
        elif it.group == "domain":
            i = it.row
            terms = [["T1", "T2", "T3"][(i * 2 + j) % 3] for j in range(2)]
            assert it.text == insert_terms(source, terms)
        else:
            assert it.text == source


def test_fixed_shape_feeds_keep_the_special_tokens(tiny_bundle):
    with load(tiny_bundle) as model:
        full = long_feeds(model, "the movie was great")
        feeds = fixed_feeds(full, 3, 8)
        assert full["input_ids"].shape == (1, model.encoder.max_length)
        assert {k: v.shape for k, v in feeds.items()} == {k: (3, 8) for k in full}
        ids = feeds["input_ids"]
        assert (ids[:, 0] == full["input_ids"][0, 0]).all() and (ids[:, -1] == full["input_ids"][0, -1]).all()
        assert (feeds["attention_mask"] == 1).all()


# ---------------------------------------------------------------- a whole suite on the tiny bundle

def test_bench_runs_every_kind_and_writes_a_valid_result(tiny_bundle, tmp_path, capsys):
    data = write_rows(tmp_path / "rows.jsonl")
    suite = tmp_path / "tiny.toml"
    suite.write_text(tiny_suite_text(data))
    out, md = tmp_path / "result.json", tmp_path / "result.md"
    code = main(["bench", str(tiny_bundle), "--suite", str(suite), "--json", str(out), "--markdown", str(md)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = report.read_result(out)
    assert (doc["schema"], doc["version"]) == (SCHEMA, VERSION)
    assert set(ENV_KEYS) <= set(doc["environment"])
    assert doc["bundle"]["backend"] == "ort-cpu" and doc["bundle"]["threads"] == 1
    assert doc["bundle"]["ort_intra_op_num_threads"] == 1
    runs = {r["name"]: r for r in doc["runs"]}
    assert set(runs) == set(KINDS) and all(r["status"] == "ok" for r in runs.values()), runs
    m = {name: {k: v["value"] for k, v in r["metrics"].items()} for name, r in runs.items()}
    assert {"b1xs8.p50_ms", "b2xs8.p99_ms", "real_b1.p50_ms"} <= set(m["latency"])
    assert [s["shape"] for s in runs["latency"]["details"][0]["skipped"]] == ["b1xs999", "b2xs999"]
    assert m["throughput"]["b4.items_per_s"] > 0
    assert m["memory"]["rss.peak_mb"] > 0 and m["memory"]["load.seconds"] > 0
    assert m["accuracy"]["data.n"] == len(ROWS) and 0 <= m["accuracy"]["bundle.accuracy"] <= 1
    assert m["accuracy"]["majority_baseline.accuracy"] == pytest.approx(1 / 3)
    # every request sent was answered, right; a request whose slot passed while both clients were busy
    # (a slow machine) is counted as not sent: no timing is asserted
    assert m["stress"]["requests.ok"] == m["stress"]["requests.sent"] >= 1
    assert m["stress"]["requests.sent"] + m["stress"]["requests.not_sent"] == 10
    assert m["stress"]["requests.errors"] == m["stress"]["requests.wrong"] == m["stress"]["requests.lost"] == 0
    assert runs["custom_mix"]["details"][0]["composition"] == {"all": 12, "plain": 6, "long": 3, "domain": 3}
    assert runs["custom_mix"]["details"][0]["truncated"]["long"] == 3
    text = md.read_text()
    assert all(f"## {kind} ({kind})" in text for kind in KINDS) and text in captured.out
    for secret, _ in ROWS:  # progress and report never show input text
        assert secret not in captured.err and secret not in text
    assert "edgekit-run bench: [6/6] custom_mix" in captured.err


def test_a_failing_run_is_recorded_and_the_rest_still_run(tiny_bundle, tmp_path, capsys):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"text": "great", "label": "superb"}\n')
    suite = tmp_path / "s.toml"
    suite.write_text(f'[suite]\nname="s"\n[[run]]\nkind="accuracy"\ndata="{bad}"\n'
                     f'[[run]]\nkind="throughput"\nbatch_sizes=[2]\nitems=4\nrounds=1\nwarmup=0\n')
    out = tmp_path / "r.json"
    assert main(["bench", str(tiny_bundle), "--suite", str(suite), "--json", str(out), "--quiet"]) == 1
    doc = report.read_result(out)
    assert [r["status"] for r in doc["runs"]] == ["error", "ok"]
    assert "label 'superb' is not one of the bundle's labels" in doc["runs"][0]["error"]
    assert "1 run(s) failed: accuracy" in capsys.readouterr().err


# ---------------------------------------------------------------- schema and A/B

def synthetic(values: dict[str, tuple[list[float], str]], label: str = "A") -> dict:
    """A minimal valid result: one run 'r' with the given per-repeat samples and directions."""
    metrics = {key: {"value": sorted(s)[len(s) // 2], "unit": "ms", "better": better, "samples": s}
               for key, (s, better) in values.items()}
    n = len(next(iter(values.values()))[0])
    return {"schema": SCHEMA, "version": VERSION, "created_utc": "2026-01-01T00:00:00Z", "finished_utc": None,
            "command": ["edgekit-run", "bench"], "suite": {"name": "s", "sha256": "x" * 64},
            "bundle": {"path": f"bundle-{label}", "backend": "ort-cpu"}, "environment": {"cpu_model": None},
            "repeats": n, "runs": [{"name": "r", "kind": "latency", "config": {}, "status": "ok", "error": None,
                                   "seconds": [1.0] * n, "metrics": metrics, "details": [{}] * n}]}


def test_verdict_real_difference_vs_noise():
    a = synthetic({"lat.p50_ms": ([10.0, 10.4, 10.9], "lower"), "thr.items_per_s": ([100.0, 102.0, 101.0], "higher"),
                   "noisy.p50_ms": ([10.0, 12.0, 11.0], "lower"), "acc.accuracy": ([0.8, 0.8, 0.8], "higher"),
                   "data.n": ([60, 60, 60], None)})
    b = synthetic({"lat.p50_ms": ([8.0, 8.3, 8.1], "lower"), "thr.items_per_s": ([90.0, 91.0, 92.5], "higher"),
                   "noisy.p50_ms": ([10.5, 11.5, 12.5], "lower"), "acc.accuracy": ([0.8, 0.8, 0.8], "higher"),
                   "data.n": ([60, 60, 60], None)}, "B")
    doc = report.compare(a, b, same_run=True)
    rows = {r["metric"]: r for r in doc["rows"]}
    lat = rows["lat.p50_ms"]
    assert (lat["better"], lat["beyond_noise"], lat["p_separation"]) == ("B", True, pytest.approx(0.1))
    assert lat["ratio"] == pytest.approx(8.1 / 10.4)
    assert (rows["thr.items_per_s"]["better"], rows["thr.items_per_s"]["beyond_noise"]) == ("A", True)
    noisy = rows["noisy.p50_ms"]  # B's median is higher, but the ranges overlap
    assert (noisy["better"], noisy["beyond_noise"]) == ("A", False) and "overlap" in noisy["why"]
    assert (rows["acc.accuracy"]["better"], rows["acc.accuracy"]["beyond_noise"]) == ("same", False)
    assert (rows["data.n"]["better"], rows["data.n"]["beyond_noise"]) == (None, None)
    md = report.compare_markdown(doc)
    assert "| r | lat.p50_ms | 10.40 | 8.10 | 0.779 | B | yes |" in md
    assert "| r | noisy.p50_ms | 11.00 | 11.50 | 1.045 | A | no |" in md
    assert "B better on 1 metrics, A better on 1" in md
    report.check_compare(json.loads(json.dumps(doc)))


def test_verdict_needs_three_repeats_per_side():
    a = synthetic({"lat.p50_ms": ([10.0, 10.2], "lower")})
    b = synthetic({"lat.p50_ms": ([5.0, 5.1], "lower")}, "B")
    row = report.compare(a, b)["rows"][0]
    assert row["better"] == "B" and row["beyond_noise"] is None and "needs 3" in row["why"]


def test_result_schema_round_trip_and_refusals(tmp_path):
    doc = synthetic({"lat.p50_ms": ([1.0, 2.0, 3.0], "lower")})
    path = tmp_path / "r.json"
    report.write_json(doc, path)
    assert report.read_result(path) == doc and report.is_result_file(path)
    for change, fragment in ((lambda d: d.update(schema="other"), "schema: is 'other'"),
                             (lambda d: d.update(version=2), "version: is 2; this runtime reads version 1"),
                             (lambda d: d.pop("runs"), "runs: missing"),
                             (lambda d: d["runs"][0]["metrics"]["lat.p50_ms"].update(better="up"),
                              "metric 'lat.p50_ms'")):
        bad = copy.deepcopy(doc)
        change(bad)
        with pytest.raises(report.ResultError, match="Fix:") as info:
            report.check_result(bad, "bad.json")
        assert fragment in str(info.value) and str(info.value).startswith("bad.json: ")


def test_cli_compare_two_result_files(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    report.write_json(synthetic({"lat.p50_ms": ([10.0, 10.1, 10.2], "lower")}), a)
    report.write_json(synthetic({"lat.p50_ms": ([20.0, 20.1, 20.2], "lower")}, "B"), b)
    out = tmp_path / "cmp.json"
    assert main(["bench", "--compare", str(a), str(b), "--json", str(out)]) == 0
    doc = report.check_compare(json.loads(out.read_text()))
    assert doc["rows"][0]["better"] == "A" and doc["rows"][0]["beyond_noise"] is True
    assert "separate runs" in doc["notes"][0]
    assert "| r | lat.p50_ms | 10.10 | 20.10 | 1.990 | A | yes |" in capsys.readouterr().out
    assert main(["bench", "--compare", str(a), str(tmp_path)]) == 2  # a result and a non-result
    assert "is a result file and" in capsys.readouterr().err


def test_cli_compare_two_bundles_interleaved(tiny_bundle, tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text('[suite]\nname="s"\nthreads=1\n[[run]]\nkind="latency"\nwarmup=0\niterations=2\n'
                     'sequence_lengths=[8]\nreal_texts=2\n')
    out = tmp_path / "cmp.json"
    assert main(["bench", "--compare", str(tiny_bundle), str(tiny_bundle), "--suite", str(suite), "--json", str(out),
                 "--repeats", "3"]) == 0
    err = capsys.readouterr().err
    doc = report.check_compare(json.loads(out.read_text()))
    assert doc["same_run"] and doc["results"]["a"]["repeats"] == 3
    assert all(len(r["metrics"]["b1xs8.p50_ms"]["samples"]) == 3 for side in "ab" for r in doc["results"][side]["runs"])
    order = [line.rsplit(" ", 2)[-2].rstrip(":") for line in err.splitlines() if line.endswith(": start")]
    assert order == ["A", "B", "B", "A", "A", "B"]  # repeats alternate which bundle goes first


# ---------------------------------------------------------------- environment

def test_environment_on_this_host_has_every_key_and_no_guesses(tmp_path):
    env = environment(root=tmp_path, which=lambda name: None)  # an empty root, no tools
    assert set(env) == set(ENV_KEYS)
    assert env["cpu_model"] is None and env["memory_total_mb"] is None and env["distro"] is None
    assert env["jetson"] is None and env["gpu"] is None and env["git_commit"] is None
    assert env["onnxruntime"] and "CPUExecutionProvider" in env["onnxruntime_providers"] and env["python"]


def test_environment_reads_a_jetson(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref\n")
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text("NVIDIA Jetson AGX Orin Developer Kit\x00")
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nCPU part\t: 0xd42\n")
    nvpmodel = tmp_path / "nvpmodel"
    nvpmodel.write_text("#!/bin/sh\nprintf 'NV Power Mode: MAXN\\n0\\n'\n")
    nvpmodel.chmod(nvpmodel.stat().st_mode | stat.S_IEXEC)
    tools = {"nvpmodel": str(nvpmodel)}
    info = jetson_info(tmp_path, tools.get, tensorrt=None)
    assert info == {"model": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "35.4.1", "jetpack": None,
                    "tensorrt": None, "power_mode": {"name": "MAXN", "id": 0}}
    env = environment(root=tmp_path, which=tools.get)
    assert env["jetson"]["l4t"] == "35.4.1" and env["cpu_model"] is None  # 'CPU part' is no model name
    assert jetson_info(tmp_path, lambda name: None)["power_mode"] is None  # no nvpmodel: null, not guessed
