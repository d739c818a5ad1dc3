"""The causal-LM half of arm64_check.sh (it copies this file into the arm64 root).

    python arm64_generate.py run BUNDLE PROMPTS_FILE THREADS      # JSON on stdout
    python arm64_generate.py compare MANIFEST ARM64_JSON X86_JSON # PASS / FAIL, exit 0 / 1

``run``: greedy token ids for the first 4 prompts (24 new tokens, a left-padded batch and each
prompt alone) and each prompt's last prefill logits. Needs only the runtime (numpy, onnxruntime,
tokenizers). ``compare``: identical tokens, and logits within the bundle's own tolerance for its
precision (atol + rtol * |x86|, from the manifest's profile).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def run(bundle: str, prompts_file: str, threads: int) -> dict:
    import numpy as np

    from edgekit_runtime import load
    from edgekit_runtime.generation.decoder import kv_names, left_pad

    logging.getLogger("edgekit_runtime").setLevel(logging.ERROR)
    prompts = Path(prompts_file).read_text(encoding="utf-8").splitlines()[:4]
    with load(bundle, threads=threads) as model:
        batch = model.generate(prompts, max_new_tokens=24, chat=False)
        alone = model.generate(prompts, max_new_tokens=24, chat=False, batch_size=1)
        spec, gen = model.spec, model.generator
        logits = []
        for p in prompts:
            feeds = left_pad([model.encoder.encode(p, add_special_tokens=True)], spec.pad_token_id, gen.token_dtype)
            for past, _ in kv_names(spec.num_layers):
                feeds[past] = np.zeros((1, spec.num_kv_heads, 0, spec.head_dim), dtype=gen.kv_dtype)
            logits.append(model.backend.run(feeds)["logits"][0, -1].tolist())
        return {"backend": model.backend_name, "kv_cache": gen.kv_cache, "graph_ops": spec.graph_ops,
                "batch": [r.token_ids for r in batch], "alone": [r.token_ids for r in alone], "logits": logits}


def compare(manifest_path: str, arm_path: str, x86_path: str) -> int:
    manifest = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    arm, x86 = (json.loads(Path(p).read_text()) for p in (arm_path, x86_path))
    prof = manifest["profile"]
    tol = ((prof.get("data") or prof).get("tolerances") or {})[manifest["model"]["precision"]]
    problems = []
    for key in ("batch", "alone"):
        for i, (a, r) in enumerate(zip(arm[key], x86[key])):
            if a != r:
                at = next((k for k, (p, q) in enumerate(zip(a, r)) if p != q), min(len(a), len(r)))
                problems.append(f"prompt {i + 1} ({key}): tokens differ from position {at}")
    worst = 0.0
    for i, (a, r) in enumerate(zip(arm["logits"], x86["logits"])):
        for p, q in zip(a, r):
            d = abs(p - q)
            worst = max(worst, d)
            if d > tol["atol"] + tol["rtol"] * abs(q):
                problems.append(f"prompt {i + 1}: a logit differs by {d:.3g}")
                break
    same = lambda key: sum(a == r for a, r in zip(arm[key], x86[key]))  # noqa: E731
    print(f"   arm64: backend {arm['backend']}, kv cache {arm['kv_cache']}, graph ops {arm['graph_ops']}; "
          f"x86: backend {x86['backend']}, kv cache {x86['kv_cache']}")
    print(f"   greedy tokens identical: batch {same('batch')}/{len(x86['batch'])}, one by one "
          f"{same('alone')}/{len(x86['alone'])} ({len(x86['batch'][0])} new tokens each); max |prefill logit diff| "
          f"{worst:.3g} (allowed atol {tol['atol']:g} + rtol {tol['rtol']:g} * |x86|)")
    if problems:
        print("\nFAIL: " + "; ".join(problems[:10]))
        return 1
    print("\nPASS: on aarch64 (emulated) the runtime generated the same greedy tokens as x86 for every prompt, "
          "batched and alone, with prefill logits within tolerance.")
    return 0


if __name__ == "__main__":
    command, *args = sys.argv[1:] or ["help"]
    if command == "run" and len(args) == 3:
        print(json.dumps(run(args[0], args[1], int(args[2]))))
    elif command == "compare" and len(args) == 3:
        sys.exit(compare(*args))
    else:
        sys.exit(__doc__)
