"""Deterministic, stratified train/validation/test splits and capped subsamples of a TextDataset."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgekit.data.loading import DataError, TextDataset

SPLIT_NAMES = ("train", "validation", "test")


@dataclass(frozen=True)
class Splits:
    """Three disjoint datasets that together hold every row of the source."""

    train: TextDataset
    validation: TextDataset
    test: TextDataset


def _allocate(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Split n into counts proportional to fractions (largest remainder), each within 1 of n * f."""
    exact = [n * f for f in fractions]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"seed={seed!r} must be a non-negative integer; pass e.g. seed=0.")


def _groups(ds: TextDataset, stratify: bool) -> list[np.ndarray]:
    labels = np.asarray(ds.labels, dtype=np.int64)
    if not stratify:
        return [np.arange(len(ds))]
    return [np.flatnonzero(labels == k) for k in range(len(ds.label_names))]


def split_dataset(
    ds: TextDataset, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0, stratify: bool = True
) -> Splits:
    """Split into train/validation/test by `fractions`, stratified by label; the same seed gives the same split everywhere."""
    fractions = tuple(fractions)
    if len(fractions) != 3:
        raise DataError(
            f"fractions={fractions!r} has {len(fractions)} values; pass three (train, validation, test), e.g. (0.8, 0.1, 0.1)."
        )
    if any(not isinstance(f, (int, float)) or not f > 0 for f in fractions):
        raise DataError(f"fractions={fractions!r} must all be positive numbers; give each split a share, e.g. (0.8, 0.1, 0.1).")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise DataError(f"fractions={fractions!r} sum to {sum(fractions):g}, not 1; scale them so they add up to 1.")
    _check_seed(seed)

    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for group in _groups(ds, stratify):
        shuffled = rng.permutation(group)
        start = 0
        for part, count in zip(parts, _allocate(len(shuffled), fractions)):
            part.extend(shuffled[start : start + count].tolist())
            start += count

    empty = [name for name, part in zip(SPLIT_NAMES, parts) if not part]
    if empty:
        raise DataError(
            f"{len(ds)} rows from {ds.source!r} leave the {' and '.join(empty)} split empty with fractions={fractions!r}; "
            "use more rows or larger fractions for those splits."
        )
    train, validation, test = (ds.subset(sorted(part)) for part in parts)
    return Splits(train=train, validation=validation, test=test)


def cap(ds: TextDataset, n: int, seed: int = 0) -> TextDataset:
    """At most n rows, drawn deterministically and in proportion to each class; rows keep their original order."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise DataError(f"cap n={n!r} must be a positive integer; pass the largest number of rows to keep.")
    _check_seed(seed)
    if n >= len(ds):
        return ds
    rng = np.random.default_rng(seed)
    groups = _groups(ds, stratify=True)
    counts = _allocate(n, tuple(len(g) / len(ds) for g in groups))
    keep: list[int] = []
    for group, count in zip(groups, counts):
        keep.extend(rng.permutation(group)[:count].tolist())
    return ds.subset(sorted(keep))
