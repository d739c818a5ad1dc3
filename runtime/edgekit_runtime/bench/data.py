"""Texts and labelled rows for the suites, and the custom-mix test set.

Readers take .txt (one text per line), .csv, .tsv and .jsonl (UTF-8). Errors name the file,
the row and the column, never a text. Rows whose text is empty or blank are dropped and counted
(the runtime cannot classify them).

The custom mix (``build_mix``) is a deterministic function of the labelled rows, the suite's
settings and the bundle's tokenizer:

1. Rank the rows by sha256(f"{seed}:{row index}") (hex, ascending); ties cannot happen. The first
   round(long_fraction * n) rows of that ranking become *long* items, the next
   round(domain_fraction * n) *domain* items, the rest stay *plain* (unchanged).
2. A long item is its text followed by the texts of the other rows with the same label, in file
   order starting after it and wrapping around (itself again if it is its label's only row),
   joined with single spaces, until the bundle's tokenizer makes more tokens of it than the
   bundle's max_length (so it is truncated: the case a long review hits). Label unchanged.
3. A domain item gets ``terms_per_text`` terms from ``domain_terms``: term j (0-based) of row i
   is domain_terms[(i * terms_per_text + j) % len(domain_terms)], inserted before word
   floor(w * (j + 1) / (terms_per_text + 1)) of the text's w whitespace-separated words
   (counting the words already inserted). Label unchanged: the terms are meant to be label-neutral
   jargon the model may not know.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .suite import DATA_EXTENSIONS, SuiteError

# Fixed, synthetic review-like texts of mixed length (also benchmarks/serve_load.py's): used where a run names no data.
BUILTIN_TEXTS = (
    "great screen", "it broke in a week", "the battery lasts all day and the camera is sharp",
    "ok for the price", "terrible support, they never answered my emails", "would buy again",
    "the sound is thin and the bass is missing entirely, which is a shame for a speaker this size",
    "arrived late", "love it", "not what the photos showed",
    "setup took five minutes and it has worked every day since, no complaints at all",
    "meh", "the strap snapped on the second day", "fast shipping, well packed",
    "it does the job but the app is slow and crashes when I open the settings page", "five stars",
    "the charger gets very hot", "comfortable, light and quiet", "returned it", "better than expected",
    "the manual is useless and the buttons are confusing, I had to look up a video to turn it on",
    "solid build", "stopped charging after a month", "perfect gift for my dad",
)


class DataFileError(SuiteError):
    """A data file named by a suite cannot be read as the suite says."""


@dataclass(frozen=True)
class Labelled:
    texts: tuple[str, ...]
    labels: tuple[int, ...]  # indices into the bundle's labels
    dropped_blank: int
    source: str
    sha256: str


def _read(path: Path) -> tuple[str, str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read it ({exc.strerror or exc}). Fix: check the path.") from None
    try:
        return raw.decode("utf-8-sig"), hashlib.sha256(raw).hexdigest()
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not UTF-8 (byte {exc.start}). Fix: convert the file to UTF-8.") from None


def _rows(path: Path, text: str) -> tuple[list[str], list[dict[str, Any]]]:
    kind = DATA_EXTENSIONS.get(path.suffix.lower())
    if kind in ("csv", "tsv"):
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="," if kind == "csv" else "\t")
        try:
            rows = list(reader)
        except csv.Error as exc:
            raise DataFileError(f"{path}: line {reader.line_num}: not valid {kind.upper()} ({exc}). "
                                f"Fix: quote fields that contain the delimiter or newlines.") from None
        return list(reader.fieldnames or []), rows
    if kind == "jsonl":
        rows, columns = [], {}
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFileError(f"{path}: line {n}: not JSON ({exc.msg} at column {exc.colno}). "
                                    f"Fix: one JSON object per line.") from None
            if not isinstance(row, dict):
                raise DataFileError(f"{path}: line {n}: a JSON {type(row).__name__}, expected an object. "
                                    f'Fix: write each row as {{"text": ..., "label": ...}}.')
            rows.append(row)
            columns.update(dict.fromkeys(row))
        return list(columns), rows
    raise DataFileError(f"{path}: cannot read {path.suffix!r} files as rows. Fix: use .csv, .tsv or .jsonl.")


def _column(path: Path, columns: list[str], rows: list[dict], name: str, what: str, key: str) -> list[Any]:
    if name not in columns:
        raise DataFileError(f"{path}: no {what} column {name!r} (columns: {columns[:20]}). Fix: set {key} = "
                            f"one of those in the suite.")
    return [row.get(name) for row in rows]


def read_texts(path: str | Path | None, text_column: str = "text", limit: int | None = None) -> tuple[list[str], dict]:
    """Texts from a file (or the built-in ones for None) and what was read (source, sha256, dropped)."""
    if path is None:
        texts = list(BUILTIN_TEXTS)
        return texts[:limit] if limit else texts, {"source": "built-in", "sha256": None, "dropped_blank": 0}
    path = Path(path)
    text, digest = _read(path)
    if path.suffix.lower() == ".txt":
        values: list[Any] = text.splitlines()
    else:
        columns, rows = _rows(path, text)
        values = _column(path, columns, rows, text_column, "text", "text_column")
    texts, dropped = [], 0
    for i, value in enumerate(values):
        if value is not None and not isinstance(value, str):
            raise DataFileError(f"{path}: row {i + 1}: {text_column!r} is a {type(value).__name__}, expected a "
                                f"string. Fix: quote the text.")
        if value is None or not value.strip():
            dropped += 1
            continue
        texts.append(value)
    if limit:
        texts = texts[:limit]
    if not texts:
        raise DataFileError(f"{path}: no non-blank texts in column {text_column!r}. Fix: point the suite at a file "
                            f"with texts.")
    return texts, {"source": str(path), "sha256": digest, "dropped_blank": dropped}


def read_labelled(path: str | Path, labels: Sequence[str], *, text_column: str = "text", label_column: str = "label",
                  label_map: Mapping[str, str] | None = None, limit: int | None = None) -> Labelled:
    """Rows with their label as an index into ``labels`` (the bundle's), by name (after ``label_map``)."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        raise DataFileError(f"{path}: a .txt file has no labels. Fix: use a .csv/.tsv/.jsonl file with "
                            f"{text_column!r} and {label_column!r} columns.")
    text, digest = _read(path)
    columns, rows = _rows(path, text)
    texts_raw = _column(path, columns, rows, text_column, "text", "text_column")
    labels_raw = _column(path, columns, rows, label_column, "label", "label_column")
    index = {name: i for i, name in enumerate(labels)}
    label_map = dict(label_map or {})
    bad_map = {k: v for k, v in label_map.items() if v not in index}
    if bad_map:
        raise DataFileError(f"label_map maps to {sorted(set(bad_map.values()))}, which are not the bundle's labels "
                            f"{list(labels)}. Fix: map every file label to one of the bundle's labels.")
    texts, ys, dropped = [], [], 0
    for i, (t, y) in enumerate(zip(texts_raw, labels_raw)):
        if t is not None and not isinstance(t, str):
            raise DataFileError(f"{path}: row {i + 1}: {text_column!r} is a {type(t).__name__}, expected a string. "
                                f"Fix: quote the text.")
        if t is None or not t.strip():
            dropped += 1
            continue
        name = y if isinstance(y, str) else (json.dumps(y) if y is not None else None)
        name = label_map.get(name, name)
        if name not in index:
            raise DataFileError(f"{path}: row {i + 1}: label {y!r} is not one of the bundle's labels {list(labels)}"
                                + (f" (after label_map {label_map})" if label_map else "")
                                + ". Fix: add label_map = { \"" + str(y) + "\" = \"" + labels[0] + "\", ... } to the run, "
                                  "or relabel the file.")
        texts.append(t)
        ys.append(index[name])
        if limit and len(texts) >= limit:
            break
    if not texts:
        raise DataFileError(f"{path}: no labelled rows with text. Fix: point the suite at a labelled file.")
    return Labelled(tuple(texts), tuple(ys), dropped, str(path), digest)


@dataclass(frozen=True)
class MixItem:
    text: str
    label: int
    group: str  # plain | long | domain
    row: int  # index of the source row


def _rank_key(seed: int, i: int) -> str:
    return hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()


def insert_terms(text: str, terms: Sequence[str]) -> str:
    """Rule 3 of the module docstring for one text: terms[j] before word floor(w (j+1) / (k+1))."""
    words = text.split()
    w, k = len(words), len(terms)
    for j, term in enumerate(terms):
        words.insert(w * (j + 1) // (k + 1) + j, term)
    return " ".join(words)


def build_mix(data: Labelled, *, long_fraction: float, domain_fraction: float, domain_terms: Sequence[str],
              terms_per_text: int, seed: int, is_long: Callable[[str], bool], max_parts: int = 10_000) -> list[MixItem]:
    """The custom-mix test set (module docstring); ``is_long(text)``: True if the bundle truncates it."""
    n = len(data.texts)
    order = sorted(range(n), key=lambda i: _rank_key(seed, i))
    n_long = round(long_fraction * n)
    n_domain = min(round(domain_fraction * n), n - n_long)
    group = {i: "plain" for i in range(n)}
    group.update({i: "long" for i in order[:n_long]})
    group.update({i: "domain" for i in order[n_long:n_long + n_domain]})
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(data.labels):
        by_label.setdefault(y, []).append(i)
    items = []
    for i, (text, y) in enumerate(zip(data.texts, data.labels)):
        if group[i] == "long":
            same = by_label[y]
            start = same.index(i)
            parts = [text]
            k = 1
            while not is_long(" ".join(parts)):
                if k > max_parts:
                    raise DataFileError(f"{data.source}: row {i + 1}: {max_parts} texts joined are still within the "
                                        f"bundle's max_length. Fix: lower long_fraction to 0, or use longer texts.")
                parts.append(data.texts[same[(start + k) % len(same)]])
                k += 1
            text = " ".join(parts)
        elif group[i] == "domain":
            terms = [domain_terms[(i * terms_per_text + j) % len(domain_terms)] for j in range(terms_per_text)]
            text = insert_terms(text, terms)
        items.append(MixItem(text, y, group[i], i))
    return items
