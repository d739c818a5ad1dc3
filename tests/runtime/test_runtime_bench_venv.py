"""The suites run where only the runtime is installed: a fresh virtual environment (no system
site-packages) holding the runtime wheel and its three dependencies, installed with --no-deps,
so torch, transformers, onnx and scikit-learn cannot be there."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from edgekit_runtime.bench import report

from runtime_fixtures import REPO
from test_runtime_bench import KINDS, ROWS, tiny_suite_text, write_rows

DEPS = ("numpy", "onnxruntime", "tokenizers")
ABSENT = ("torch", "transformers", "onnx", "sklearn")


def _pip(python: Path, *args: str, cwd: Path | None = None) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="session")
def runtime_venv(request, tmp_path_factory) -> Path:
    """A venv with the three dependencies at the host's versions, cached under the pytest cache
    (keyed by Python and those versions; a lock keeps two sessions from building it at once; a
    'ready' marker, written last, tells a finished one from an interrupted one). The runtime
    wheel itself is rebuilt and reinstalled every session, so the test sees the current code."""
    pins = [f"{name}=={version(name)}" for name in DEPS]
    key = hashlib.sha256(json.dumps([sys.version, pins]).encode()).hexdigest()[:16]
    root = Path(request.config.cache.mkdir("edgekit-runtime-venv"))
    venv = root / f"venv-{key}"
    python = venv / "bin" / "python"
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / "ready").is_file():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
            _pip(python, "install", "--no-deps", *pins)
            (venv / "ready").write_text("\n".join(pins) + "\n")
        src = tmp_path_factory.mktemp("runtime-src")  # build from a copy: no build/ left in the repo
        shutil.copytree(REPO / "runtime" / "edgekit_runtime", src / "edgekit_runtime",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(REPO / "runtime" / name, src / name)
        wheels = tmp_path_factory.mktemp("wheel")
        _pip(Path(sys.executable), "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src))
        [wheel] = wheels.glob("edgekit_runtime-*.whl")
        _pip(python, "install", "--no-deps", "--no-index", "--force-reinstall", str(wheel))
    return python


@pytest.mark.slow
def test_suites_run_with_only_the_runtime_installed(runtime_venv, tiny_bundle, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    probe = subprocess.run([str(runtime_venv), "-c", "import importlib.util, json; print(json.dumps("
                            f"[n for n in {list(ABSENT)!r} if importlib.util.find_spec(n)]))"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert probe.returncode == 0 and json.loads(probe.stdout) == [], probe.stdout + probe.stderr
    data = write_rows(tmp_path / "rows.jsonl")
    suite = tmp_path / "tiny.toml"
    suite.write_text(tiny_suite_text(data, server="subprocess"))  # `edgekit-run serve` from the venv too
    out = tmp_path / "result.json"
    proc = subprocess.run([str(runtime_venv), "-m", "edgekit_runtime.cli", "bench", str(tiny_bundle), "--suite",
                           str(suite), "--json", str(out)], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = report.read_result(out)
    assert [r["name"] for r in doc["runs"]] == list(KINDS) and all(r["status"] == "ok" for r in doc["runs"])
    assert doc["environment"]["onnxruntime"] == version("onnxruntime")
    stress = {k: v["value"] for k, v in doc["runs"][4]["metrics"].items()}
    assert stress["requests.ok"] == stress["requests.sent"] and stress["requests.wrong"] == 0
    assert not any(text in proc.stderr for text, _ in ROWS)
