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
