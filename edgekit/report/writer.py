"""`edgekit report`'s writer: check the bundle, read its manifest and the bench results, render the
page of the bundle's task (registry.py) and write it to a file."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import edgekit_runtime
from edgekit_runtime.errors import BundleError

from .inputs import read_bench
from .parts import get
from .registry import page_for


def write_report(bundle: str | Path, out: str | Path, bench_paths: Sequence[str | Path] = (),
                 command: str | None = None) -> Path:
    """Check the bundle, read its manifest (and the bench results), write the HTML page to ``out``."""
    bundle = Path(bundle)
    manifest = edgekit_runtime.read_manifest(bundle)
    try:
        edgekit_runtime.verify_bundle(bundle)
        integrity = "verified: manifest and the sha256 of every file match"
    except BundleError as exc:
        integrity = "FAILED: " + str(exc).replace("\n", " ")
    bench = [item for path in bench_paths for item in read_bench(path)]
    kind = page_for(get(manifest, "task", "name"))
    page = kind(manifest, bundle, bench, integrity=integrity, command=command,
                bench_files=[str(p) for p in bench_paths]).render()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
