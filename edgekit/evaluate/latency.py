"""Side-by-side latency on this host: the PyTorch teacher vs the bundle in the runtime.

Interleaved (A, B, A, B, ...) after a warm-up, batch 1, real texts, tokenization included.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from ..compiler.state import CompileState


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms)
    return {"median_ms": round(float(np.median(arr)), 3), "p90_ms": round(float(np.percentile(arr, 90)), 3),
            "samples": int(arr.size)}


def interleaved(systems: dict[str, Callable[[str], Any]], texts: Sequence[str], warmup: int = 5,
                rounds: int = 1, block: int = 10) -> dict[str, dict[str, float]]:
    """Time every system on every text, interleaved in blocks: each system runs ``block`` texts
    in a row (after one untimed call) and the systems take turns, the order rotated per block.

    Not one call each in turn: torch's OpenMP threads and onnxruntime's intra-op threads spin for
    a while after a call, and on 2 cores they slowed whichever system ran next (see
    benchmarks/ort_latency.py, where that inflated onnxruntime figures 2-3x)."""
    names, texts = list(systems), list(texts)
    for text in texts[:warmup]:
        for name in names:
            systems[name](text)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for b, start_at in enumerate(range(0, len(texts), block)):
            chunk = texts[start_at:start_at + block]
            k = (b + r) % len(names)
            for name in names[k:] + names[:k]:
                systems[name](chunk[0])  # the previous system's threads may still spin: not timed
                for text in chunk:
                    start = time.perf_counter()
                    systems[name](text)
                    times[name].append((time.perf_counter() - start) * 1e3)
    return {n: percentiles(t) for n, t in times.items()}


def latency_pair(state: "CompileState", runtime_model, n_texts: int = 60) -> dict[str, Any]:
    texts = list(state.splits.test.texts[:n_texts])
    model, adapter, tok, max_len = state.teacher, state.adapter, state.tokenizer, state.recipe.max_length

    @torch.no_grad()
    def teacher(text: str):
        batch = adapter.collate(tok, [text], None, max_len)
        return model(**adapter.model_inputs(model, batch))

    result = interleaved({"teacher_pytorch": teacher, "bundle_runtime": lambda t: runtime_model.logits([t])}, texts)
    result["threads"] = torch.get_num_threads()
    result["speedup"] = round(result["teacher_pytorch"]["median_ms"] / result["bundle_runtime"]["median_ms"], 2)
    return result


def environment(threads: int) -> dict[str, Any]:
    """What a benchmark figure depends on: machine, versions, commit and command line."""

    import onnxruntime
    import transformers

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": threads,
            "os": f"{platform.system()} {platform.release()}", "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__, "commit": commit,
            "command": " ".join(sys.argv)}
