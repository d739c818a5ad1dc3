"""The ``generation`` run kind, for causal-LM bundles: greedy ``generate`` of the first ``prompts``
texts at each batch size, and the runtime's own timings (time to first token, prefill tokens/s,
decode tokens/s per row and, for batch > 1, for the whole batch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .data import read_texts
from .stats import Metric, latency_stats

if TYPE_CHECKING:
    from .context import Context
    from .suite import RunSpec


def run_generation(ctx: Context, spec: RunSpec) -> tuple[dict[str, Metric], dict[str, Any]]:
    model = ctx.model
    texts, source = read_texts(spec["data"], spec["text_column"], limit=spec["prompts"])
    new = spec["max_new_tokens"]
    options = {"max_new_tokens": new, "min_new_tokens": new if spec["fixed_length"] else 0,
               "chat": spec["chat"], "do_sample": False}
    metrics: dict[str, Metric] = {}
    info: dict[str, Any] = {"prompts": {**source, "n": len(texts)}, "kv_cache": model.generator.kv_cache,
                            "graph_ops": model.spec.graph_ops, "tokens": {}}
    for b in spec["batch_sizes"]:
        group = f"b{b}"
        batches = [texts[i:i + b] for i in range(0, len(texts), b)]
        for i in range(spec["warmup"]):
            model.generate(batches[i % len(batches)], batch_size=b, **options)
        ctx.progress(f"{group}: {len(texts)} prompts in {len(batches)} generate call(s), {new} new tokens each")
        ttft, prefill, row_decode, batch_decode, produced = [], [], [], [], 0
        for batch in batches:
            results = model.generate(batch, batch_size=b, **options)
            timings = [r.timings for r in results]
            ttft.append(timings[0]["time_to_first_token_s"])
            prefill.append(timings[0]["prefill_tokens_per_s"])
            row_decode += [t["decode_tokens_per_s"] for t in timings if t["decode_tokens_per_s"]]
            span = max(t["decode_s"] for t in timings)
            steps = sum(len(r.token_ids) - 1 for r in results)
            if span > 0:
                batch_decode.append(steps / span)
            produced += sum(len(r.token_ids) for r in results)
        metrics.update(latency_stats(f"{group}.time_to_first_token", ttft))
        metrics[f"{group}.prefill_tokens_per_s"] = (float(np.median(prefill)), "tokens/s", "higher")
        metrics[f"{group}.decode_tokens_per_s"] = (float(np.median(row_decode)) if row_decode else None,
                                                   "tokens/s", "higher")
        if b > 1:
            metrics[f"{group}.batch_decode_tokens_per_s"] = (float(np.median(batch_decode)) if batch_decode
                                                             else None, "tokens/s", "higher")
        info["tokens"][group] = produced
    return metrics, info
