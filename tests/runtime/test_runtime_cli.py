"""edgekit-run: exit codes, JSON output, one-line errors, and no input text in the output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgekit_runtime.cli.main import main

from runtime_fixtures import LABELS

SECRET = "patient john doe loved the great film"


def test_verify_ok(tiny_bundle, capsys):
    assert main(["verify", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK ") and "2 files" in out and "x86-64-cpu" in out


def test_verify_tampered_exits_1_naming_the_file(bundle_copy, capsys):
    path = bundle_copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main(["verify", str(bundle_copy)]) == 1
    err = capsys.readouterr().err
    assert "model.onnx: modified" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_info_human_and_json(tiny_bundle, capsys):
    assert main(["info", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    for word in ("x86-64-cpu", "sequence-classification", "negative", "input_ids int64", "fp32",
                 "max length 32", "max_abs_diff", "gelu-tanh", "export 0.42s"):
        assert word in out, word
    assert main(["info", str(tiny_bundle), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["labels"] == LABELS and info["tokenizer"]["max_length"] == 32
    assert [p["name"] for p in info["pass_log"]] == ["export", "validate"]
    assert info["figures"]["validation"]["max_abs_diff"] == pytest.approx(2.1e-6)


def test_predict_human_output_is_in_order_and_never_echoes_text(tiny_bundle, capsys):
    texts = [SECRET, "boring", "i hate it"]
    assert main(["predict", str(tiny_bundle), *texts, "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        label, score = line.split("  ")
        assert label in LABELS and 0.0 < float(score) <= 1.0
    assert SECRET not in captured.out and SECRET not in captured.err


def test_predict_json_from_file(tiny_bundle, tmp_path, capsys):
    src = tmp_path / "texts.txt"
    src.write_text("great film\n" + "the movie was great " * 30 + "\n")
    assert main(["predict", str(tiny_bundle), "--file", str(src), "--json"]) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert len(results) == 2
    assert results[1]["truncated"] is True and results[0]["truncated"] is False
    assert sum(results[0]["probabilities"].values()) == pytest.approx(1.0)
    assert "truncated" in captured.err


def test_predict_usage_errors_exit_2(tiny_bundle, tmp_path, capsys):
    assert main(["predict", str(tiny_bundle), "good", ""]) == 2
    assert "text 1 is empty" in capsys.readouterr().err
    src = tmp_path / "t.txt"
    src.write_text("good\n\nbad\n")
    assert main(["predict", str(tiny_bundle), "--file", str(src)]) == 2
    assert "line 2" in capsys.readouterr().err
    assert main(["predict", str(tiny_bundle), "good", "--batch-size", "0"]) == 2
    assert main(["predict", str(tiny_bundle), "--file", str(tmp_path / "nope.txt")]) == 2
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err


def test_predict_missing_bundle_exits_1(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope"), "good"]) == 1
    assert "no such bundle" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["verify", "info", "predict"])
def test_help_teaches_with_an_example(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "example" in out and f"edgekit-run {command}" in out


def test_cli_in_a_subprocess_reads_stdin_and_tar(tiny_bundle, tmp_path):
    from edgekit_runtime import archive_bundle

    archive = archive_bundle(tiny_bundle, tmp_path / "tiny.tar")
    run = [sys.executable, "-m", "edgekit_runtime.cli"]
    proc = subprocess.run([*run, "predict", str(archive)], input="great film\nboring\n",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 2 and "great film" not in proc.stdout
    proc = subprocess.run([*run, "verify", str(archive)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("OK"), proc.stderr
