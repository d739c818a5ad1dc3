"""Load a bundle in this fresh process and print what it cost, as one JSON line on stdout.

    python .../edgekit_runtime/bench/memprobe.py BUNDLE [--threads N] [--backend B] [--batch-size N]

Run by the memory suite kind, one process per measurement, so import, load and first-inference
figures are those of a cold process. RSS is read from /proc/self/status (VmRSS, VmHWM: Linux);
the peak also from getrusage (ru_maxrss), which is the only one on macOS. A figure this OS does
not give is null. Run as a file, not with -m: -m would import the runtime (onnxruntime,
numpy, tokenizers) before the first reading.
"""

from __future__ import annotations

import sys
import time

T0 = time.perf_counter()
if sys.path and sys.path[0] and __file__.startswith(sys.path[0]):  # this directory is no package root
    sys.path.pop(0)

import argparse  # noqa: E402
import json  # noqa: E402


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 2)  # kB
    except OSError:
        pass
    return None


def _maxrss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 2)  # bytes on macOS, kB else


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="memprobe.py")
    ap.add_argument("bundle")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--batch-size", type=int, default=1)
    args = ap.parse_args(argv)
    out = {"rss_start_mb": _status_mb("VmRSS")}
    t = time.perf_counter()
    import numpy  # noqa: F401  the runtime's own imports, timed apart from loading the bundle
    import onnxruntime  # noqa: F401
    import tokenizers  # noqa: F401

    from edgekit_runtime import load
    from edgekit_runtime.bench.data import BUILTIN_TEXTS

    out["import_s"] = time.perf_counter() - t
    out["rss_after_import_mb"] = _status_mb("VmRSS")
    t = time.perf_counter()
    model = load(args.bundle, threads=args.threads, backend=args.backend)
    out["load_s"] = time.perf_counter() - t
    out["rss_after_load_mb"] = _status_mb("VmRSS")
    texts = [BUILTIN_TEXTS[i % len(BUILTIN_TEXTS)] for i in range(args.batch_size)]
    t = time.perf_counter()
    model.predict(texts, batch_size=args.batch_size)
    out["first_inference_s"] = time.perf_counter() - t
    t = time.perf_counter()
    model.predict(texts, batch_size=args.batch_size)
    out["second_inference_s"] = time.perf_counter() - t
    out["rss_after_first_inference_mb"] = _status_mb("VmRSS")
    out["peak_rss_mb"] = _status_mb("VmHWM")
    out["peak_rss_getrusage_mb"] = _maxrss_mb()
    out["process_s"] = time.perf_counter() - T0
    out["backend"] = model.backend_name
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
