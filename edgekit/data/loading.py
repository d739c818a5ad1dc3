"""Load a labelled text file (csv, tsv, jsonl) into a TextDataset, cleaning texts and reporting what was dropped."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from edgekit_runtime.errors import EdgekitError

SUPPORTED_FORMATS = ("csv", "tsv", "jsonl")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Tried in order when no encoding is given; latin-1 decodes any byte string, so it always ends the search.
_FALLBACK_ENCODINGS = ("cp1252", "latin-1")


class DataError(EdgekitError):
    """A dataset file cannot be read, or its contents cannot make a labelled dataset."""


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels indexing `label_names`; `source` says where the rows came from."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    label_names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DataError(
                f"TextDataset from {self.source!r} has {len(self.texts)} texts but {len(self.labels)} labels; "
                "pass one label per text."
            )
        bad_names = [n for n in self.label_names if not isinstance(n, str)]
        if bad_names:
            raise DataError(
                f"label names {bad_names!r} are not strings; pass label_names as strings, e.g. {[str(n) for n in bad_names]!r}."
            )
        if len(set(self.label_names)) != len(self.label_names):
            dupes = sorted(n for n, c in Counter(self.label_names).items() if c > 1)
            raise DataError(f"label names {dupes!r} appear more than once in {self.label_names!r}; list each class once.")
        bad = sorted({y for y in self.labels if not (isinstance(y, int) and 0 <= y < len(self.label_names))})
        if bad:
            raise DataError(
                f"labels {bad[:5]!r} in {self.source!r} are outside 0..{len(self.label_names) - 1} "
                f"for label names {self.label_names!r}; each label must index label_names."
            )

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Iterable[int]) -> TextDataset:
        """The rows at `indices`, in that order, with the same label names and source."""
        idx = [int(i) for i in indices]
        out_of_range = [i for i in idx if not 0 <= i < len(self)]
        if out_of_range:
            raise DataError(
                f"subset indices {out_of_range[:5]!r} are outside 0..{len(self) - 1} for {self.source!r}; "
                "pass row positions within the dataset."
            )
        return TextDataset(
            texts=tuple(self.texts[i] for i in idx),
            labels=tuple(self.labels[i] for i in idx),
            label_names=self.label_names,
            source=self.source,
        )

    def label_counts(self) -> dict[str, int]:
        """Rows per class, in label order, including classes with no rows."""
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(self.label_names)}


@dataclass(frozen=True)
class LoadReport:
    """What `load_labelled` read, which encoding it used, and why rows were dropped or texts changed."""

    path: str
    format: str
    encoding: str
    rows_read: int
    rows_kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    texts_repaired: int = 0  # texts changed in any way by clean_text
    mojibake_fixed: int = 0  # of those, texts whose UTF-8-read-as-cp1252/latin-1 mojibake was reversed

    def summary(self) -> str:
        """One line for logs and the CLI."""
        drops = ", ".join(f"{k}: {v}" for k, v in self.dropped.items()) or "none"
        return (
            f"{self.path} ({self.format}, {self.encoding}): read {self.rows_read}, kept {self.rows_kept}; "
            f"dropped {drops}; repaired {self.texts_repaired} texts ({self.mojibake_fixed} mojibake)"
        )


# ---------------------------------------------------------------- text cleaning

# C0 and C1 controls plus DEL; tab, newline and carriage return are handled as whitespace.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_WHITESPACE = re.compile(r"\s+")
# Characters that UTF-8 bytes turn into when read as cp1252 or latin-1: C1 controls, the replacement
# character, the usual lead characters (Â Ã â) and cp1252's 0x80-0x9F punctuation.
_SUSPICIOUS = set("\ufffd\u00c2\u00c3\u00e2") | {chr(c) for c in range(0x80, 0xA0)} | set(
    bytes(range(0x80, 0xA0)).decode("cp1252", errors="ignore")
)


def _suspicious(s: str) -> int:
    return sum(ch in _SUSPICIOUS for ch in s)


def repair_mojibake(s: str) -> str:
    """Undo UTF-8 text that was decoded as cp1252 or latin-1, only when that round trip is exact and reduces suspicious characters."""
    if s.isascii():
        return s
    before = _suspicious(s)
    if before == 0:
        return s
    for enc in ("cp1252", "latin-1"):
        try:
            fixed = s.encode(enc).decode("utf-8")
        except UnicodeError:
            continue
        if _suspicious(fixed) < before:
            return fixed
    return s


def _clean(s: str) -> tuple[str, bool]:
    unescaped = html.unescape(s)
    s = repair_mojibake(unescaped)
    fixed = s != unescaped
    s = s.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    s = _CONTROL.sub("", s)
    s = unicodedata.normalize("NFC", s)
    return _WHITESPACE.sub(" ", s).strip(), fixed


def clean_text(s: str) -> str:
    """Unescape HTML entities, repair reversible mojibake, drop control characters, NFC-normalise and collapse whitespace."""
    return _clean(s)[0]


# ---------------------------------------------------------------- reading files


def resolve_format(path: Path, fmt: str | None) -> str:
    """The file format: ``fmt`` checked, or (None) the one ``path``'s extension names."""
    if fmt is None:
        fmt = _EXTENSIONS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(
                f"cannot tell the format of {str(path)!r} from its extension {path.suffix!r}; supported formats are "
                f"{', '.join(SUPPORTED_FORMATS)} (extensions {', '.join(_EXTENSIONS)}). Pass --format / format= explicitly."
            )
        return fmt
    fmt = fmt.lower().lstrip(".")
    if fmt not in SUPPORTED_FORMATS:
        raise DataError(
            f"format {fmt!r} is not supported; supported formats are {', '.join(SUPPORTED_FORMATS)}. "
            "Pass one of them as --format / format=."
        )
    return fmt


def decode_text(path: Path, data: bytes, encoding: str | None) -> tuple[str, str]:
    """(text, encoding used): ``encoding`` when given, else UTF-8 (BOM aware), then the fallbacks."""
    if encoding is not None:
        try:
            return data.decode(encoding), encoding
        except LookupError:
            raise DataError(
                f"encoding {encoding!r} is unknown to Python; pass a codec name such as 'utf-8', 'cp1252' or 'latin-1', "
                "or omit --encoding to detect it."
            ) from None
        except UnicodeDecodeError as e:
            raise DataError(
                f"{str(path)!r} is not valid {encoding}: byte {data[e.start:e.start + 1]!r} at offset {e.start} ({e.reason}); "
                "omit --encoding to detect it, or pass the file's real encoding."
            ) from None
    try:
        if data.startswith(b"\xef\xbb\xbf"):
            return data.decode("utf-8-sig"), "utf-8-sig"
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    for enc in _FALLBACK_ENCODINGS:
        try:
            return data.decode(enc), enc
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes every byte string")  # unreachable


def missing_column(kind: str, name: str, flag: str, columns: Sequence[str], path: Path) -> DataError:
    """The error for a missing ``kind`` column: the columns found, a near match, the flag to pass."""
    found = ", ".join(repr(c) for c in columns) or "none"
    close = [c for c in columns if c.strip().lower() == name.strip().lower()]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return DataError(
        f"{kind} column {name!r} not found in {str(path)!r}{hint}; columns found: {found}. "
        f"Pass {flag} with one of them ({flag.lstrip('-').replace('-', '_')}= in Python)."
    )


def read_delimited(path: Path, text: str, delimiter: str) -> tuple[list[str], list[dict]]:
    """(columns, rows) of csv / tsv ``text``, which must have a header row."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    except csv.Error as e:
        raise DataError(
            f"{str(path)!r} is not valid {'tsv' if delimiter == chr(9) else 'csv'} near line {reader.line_num}: {e}; "
            "fix the quoting on that line, or pass --format if the file uses another delimiter."
        ) from None
    if not columns:
        raise DataError(f"{str(path)!r} has no header row; add a first line naming the columns (e.g. text,label).")
    return columns, rows


def read_jsonl(path: Path, text: str) -> tuple[list[str], list[dict]]:
    """(columns in first-seen order, rows) of JSON-lines ``text``: one object per non-blank line."""
    columns: dict[str, None] = {}
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"line {line_no} of {str(path)!r} is not valid JSON ({e.msg}); each line must be one JSON object. Fix or remove that line."
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"line {line_no} of {str(path)!r} is a JSON {type(obj).__name__}, not an object; "
                'each line must look like {"text": "...", "label": "..."}.'
            )
        columns.update(dict.fromkeys(obj))
        rows.append(obj)
    return list(columns), rows


def _as_str(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _is_number(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def _order_labels(present: Iterable[str]) -> tuple[str, ...]:
    names = sorted(set(present))
    if names and all(_is_number(n) for n in names):
        names.sort(key=lambda n: (float(n), n))
    return tuple(names)


def load_labelled(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    *,
    format: str | None = None,
    encoding: str | None = None,
    label_names: Sequence[str] | None = None,
    min_chars: int = 1,
    drop_duplicates: bool = True,
) -> tuple[TextDataset, LoadReport]:
    """Read a csv/tsv/jsonl file of texts and labels, clean the texts and drop unusable rows; return the dataset and a report."""
    path = Path(path)
    if not isinstance(min_chars, int) or min_chars < 1:
        raise DataError(f"min_chars={min_chars!r} must be an integer >= 1; pass 1 to keep every non-empty text.")
    fmt = resolve_format(path, format)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise DataError(f"dataset file {str(path)!r} {what}; pass the path of a {fmt} file with a header of column names.")
    raw, used_encoding = decode_text(path, path.read_bytes(), encoding)

    if fmt == "jsonl":
        columns, rows = read_jsonl(path, raw)
    else:
        columns, rows = read_delimited(path, raw, "," if fmt == "csv" else "\t")
    if text_column not in columns:
        raise missing_column("text", text_column, "--text-column", columns, path)
    if label_column not in columns:
        raise missing_column("label", label_column, "--label-column", columns, path)

    dropped: Counter[str] = Counter()
    repaired = mojibake = 0
    kept: list[tuple[str, str]] = []
    first_label: dict[str, str] = {}
    for row in rows:
        original = _as_str(row.get(text_column)) or ""
        cleaned, fixed = _clean(original)
        repaired += cleaned != original
        mojibake += fixed
        label = (_as_str(row.get(label_column)) or "").strip()
        if not cleaned:
            dropped["empty text"] += 1
        elif len(cleaned) < min_chars:
            dropped[f"shorter than {min_chars} chars"] += 1
        elif not label:
            dropped["missing label"] += 1
        elif drop_duplicates and cleaned in first_label:
            key = "duplicate" if first_label[cleaned] == label else "duplicate with a different label"
            dropped[key] += 1
        else:
            first_label[cleaned] = label
            kept.append((cleaned, label))

    present = _order_labels(label for _, label in kept)
    if label_names is None:
        names = present
    else:
        names = tuple(str(n) for n in label_names)
        unknown = sorted(set(present) - set(names))
        if unknown:
            raise DataError(
                f"labels {unknown!r} in {str(path)!r} are not among the given label names {names!r}; "
                "add them to --label-names / label_names=, or omit it to use the labels found."
            )
    if len(present) < 2:
        raise DataError(
            f"{str(path)!r} has {len(present)} class(es) in column {label_column!r} after cleaning "
            f"({', '.join(repr(p) for p in present) or 'none'}; {len(kept)} rows kept); a classifier needs at least 2. "
            "Check --label-column, or add rows of the other classes."
        )
    index = {name: i for i, name in enumerate(names)}
    dataset = TextDataset(
        texts=tuple(t for t, _ in kept),
        labels=tuple(index[label] for _, label in kept),
        label_names=names,
        source=str(path),
    )
    report = LoadReport(
        path=str(path),
        format=fmt,
        encoding=used_encoding,
        rows_read=len(rows),
        rows_kept=len(kept),
        dropped=dict(dropped),
        texts_repaired=repaired,
        mojibake_fixed=mojibake,
    )
    return dataset, report
