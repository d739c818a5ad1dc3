"""Choosing the next token from logits: greedy, or sampling with temperature, top-k and top-p.

The order is transformers' (temperature, then top-k, then top-p), so a setting means the same
here as in ``model.generate``. Each batch row draws from its own numpy Generator, spawned from
the seed and the prompt's index: a row's tokens depend on its seed and its logits only, never on
which other prompts shared its batch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def row_generators(seed: int | None, indices: Sequence[int]) -> list[np.random.Generator]:
    """One Generator per prompt index; the same (seed, index) always gives the same stream.
    Without a seed every row gets fresh entropy (two equal prompts then sample differently)."""
    if seed is None:
        return [np.random.default_rng() for _ in indices]
    root = np.random.SeedSequence(seed)
    return [np.random.Generator(np.random.PCG64(np.random.SeedSequence(root.entropy, spawn_key=(int(i),))))
            for i in indices]


def filter_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Logits below the k-th largest of each row set to -inf (ties with it kept); k=0 keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[..., -k, None]
    return np.where(logits < kth, -np.inf, logits)


def filter_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep, per row, the smallest set of most likely tokens whose probabilities sum to >= p
    (at least one token); the rest set to -inf. p >= 1 keeps all."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, axis=-1, kind="stable")
    ranked = np.take_along_axis(logits, order, axis=-1).astype(np.float64)
    probs = np.exp(ranked - ranked[..., :1])
    probs /= probs.sum(axis=-1, keepdims=True)
    before = np.cumsum(probs, axis=-1) - probs  # mass of the tokens ranked above each one
    drop_ranked = before >= p  # a token is kept while the mass above it is still short of p
    drop_ranked[..., 0] = False
    drop = np.zeros_like(drop_ranked)
    np.put_along_axis(drop, order, drop_ranked, axis=-1)
    return np.where(drop, -np.inf, logits)


def sample(logits: np.ndarray, rngs: Sequence[np.random.Generator], *, temperature: float, top_k: int,
           top_p: float) -> np.ndarray:
    """One token id per row of ``logits`` (B, V), drawn after temperature, top-k and top-p.
    Each row consumes exactly one uniform draw from its own Generator."""
    scaled = logits.astype(np.float64) / temperature
    scaled = filter_top_p(filter_top_k(scaled, top_k), top_p)
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    cdf = np.cumsum(probs, axis=-1)
    draws = np.array([rng.random() for rng in rngs]) * cdf[:, -1]
    picked = np.array([np.searchsorted(row, u, side="right") for row, u in zip(cdf, draws)])
    # u * total < total always, so searchsorted lands on a token; the clip only guards rounding.
    return np.minimum(picked, logits.shape[-1] - 1).astype(np.int64)


def greedy(logits: np.ndarray) -> np.ndarray:
    """The most likely token of each row (the first one on a tie, as torch.argmax)."""
    return logits.argmax(axis=-1).astype(np.int64, copy=False)
