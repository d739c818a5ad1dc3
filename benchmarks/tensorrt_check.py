"""TensorRT on an NVIDIA GPU: build the engine from a bundle's QDQ graph, run it, compare with ONNX Runtime.

For a machine with an NVIDIA GPU, the `tensorrt` Python package and CUDA (cuda-python or
libcudart). Loads the bundle twice with the runtime's native TensorRT backend (the first load
builds the engine and caches it, the second must reuse it: both load times are printed), once
with ONNX Runtime's CPU provider, runs the same texts through both and reports argmax agreement
and the largest logit difference against the bundle profile's tolerance for its precision.
Exit status 0 only when every text's label matches and every logit is within tolerance.

    python benchmarks/tensorrt_check.py BUNDLE [--texts FILE] [--cache DIR]

NOT RUN YET: written on a machine without a GPU (no TensorRT installs there). The TensorRT
calls it relies on live in runtime/edgekit_runtime/backends/tensorrt.py and were tested with fakes only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import edgekit_runtime

DEFAULT_TEXTS = [
    "The battery lasts two days and the screen is gorgeous.",
    "Worst purchase this year, it broke after a week.",
    "It arrived on Tuesday.",
    "not bad at all, would buy again :)",
    "The nurse was kind but the wait was far too long.",
    "meh",
    "Absolutely love it!!! best phone ever",
    "I am not sure how I feel about the new update. " * 20,  # truncated to the bundle's max length
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--texts", type=Path, help="one text per line (default: 8 built-in texts)")
    ap.add_argument("--cache", type=Path, help="engine cache directory (default: a fresh temporary one, so the "
                                               "first load really builds)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    texts = (args.texts.read_text(encoding="utf-8").splitlines() if args.texts else DEFAULT_TEXTS)
    texts = [t for t in texts if t.strip()]
    cache = args.cache or Path(tempfile.mkdtemp(prefix="edgekit-trt-"))
    os.environ["EDGEKIT_CACHE_DIR"] = str(cache)

    loads = []
    for attempt in ("build", "reuse"):
        start = time.perf_counter()
        model = edgekit_runtime.load(args.bundle, backend="tensorrt")
        loads.append(round(time.perf_counter() - start, 2))
        trt_logits = model.logits(texts)
        model.close()
    with edgekit_runtime.load(args.bundle, backend="ort-cpu") as ort_model:
        ort_logits = ort_model.logits(texts)
        precision = ort_model.manifest["model"]["precision"]
        tol = ort_model.profile.tolerance(precision)

    diff = np.abs(trt_logits.astype(np.float64) - ort_logits)
    allowed = tol.atol + tol.rtol * np.abs(ort_logits)
    agree = float((trt_logits.argmax(-1) == ort_logits.argmax(-1)).mean())
    ok = agree == 1.0 and bool((diff <= allowed).all())
    result = {"bundle": str(args.bundle), "texts": len(texts), "precision": precision,
              "load_seconds": {"first (build)": loads[0], "second (cache)": loads[1]},
              "argmax_agreement": agree, "max_abs_logit_diff": float(diff.max()),
              "tolerance": {"atol": tol.atol, "rtol": tol.rtol}, "passed": ok, "engine_cache": str(cache)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
