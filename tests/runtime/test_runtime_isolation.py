"""The runtime runs where torch and transformers are not installed: it never imports them."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_runtime_does_not_import_torch_or_transformers(tiny_bundle, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import edgekit_runtime
        from edgekit_runtime import cli  # the CLI module counts too
        model = edgekit_runtime.load({str(tiny_bundle)!r})
        results = model.predict(["great movie", "boring plot"])
        assert len(results) == 2, results
        assert "torch" not in sys.modules, "torch was imported"
        assert "transformers" not in sys.modules, "transformers was imported"
        print("clean")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "clean"


def test_runtime_leaves_no_onnxruntime_telemetry_on_the_device(tiny_bundle, tmp_path):
    """onnxruntime's Linux telemetry writes a device id and queued events under $HOME and uploads
    them; importing edgekit_runtime first turns that off, so a predict leaves nothing in $HOME."""
    import os

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"} | {"HOME": str(home)}
    script = f"import edgekit_runtime; edgekit_runtime.load({str(tiny_bundle)!r}).predict(['great movie'])"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [p for p in home.rglob("*")] == []
    # the control: onnxruntime on its own does write there (so the check above can fail)
    proc = subprocess.run([sys.executable, "-c", "import onnxruntime as o; o.InferenceSession("
                           f"{str(tiny_bundle / 'model.onnx')!r}, providers=['CPUExecutionProvider'])"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    if not any(p.is_file() for p in home.rglob("*")):  # e.g. an onnxruntime build without telemetry, or CI
        import pytest

        pytest.skip("onnxruntime on its own wrote no telemetry here either, so this check proves nothing")
