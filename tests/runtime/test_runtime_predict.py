"""Loading and predicting: results match a direct onnxruntime run, order, truncation, errors."""

from __future__ import annotations

import io
import re
import tarfile
import tempfile

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

import edgekit_runtime as rt
from edgekit_runtime.tasks import softmax
from edgekit_runtime.tokenizer import TextEncoder

from runtime_fixtures import LABELS, MAX_LENGTH

TEXTS = ["the movie was great!", "i hate it", "boring plot but good music", "ok", "a very slow, terrible story"]
LONG = " ".join(["the movie was very good and the acting was great"] * 10)


@pytest.fixture(scope="module")
def model(tiny_bundle):
    with rt.load(tiny_bundle) as m:
        yield m


def _direct_probabilities(bundle, texts):
    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tok.enable_truncation(MAX_LENGTH)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    encs = tok.encode_batch(texts)
    feeds = {"input_ids": np.array([e.ids for e in encs], dtype=np.int64),
             "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
             "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64)}
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], feeds)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_load_exposes_the_manifest(model):
    assert model.labels == LABELS
    assert model.backend_name == "ort-cpu"
    assert model.profile.name == "x86-64-cpu"
    assert model.manifest["task"]["name"] == "sequence-classification"


def test_predict_matches_direct_onnxruntime(model, tiny_bundle):
    results = model.predict(TEXTS)
    expected = _direct_probabilities(tiny_bundle, TEXTS)
    assert len(results) == len(TEXTS)
    for r, p in zip(results, expected):
        probs = np.array([r["probabilities"][label] for label in LABELS])
        assert abs(probs.sum() - 1.0) < 1e-6
        np.testing.assert_allclose(probs, p, atol=1e-5)
        assert r["label"] == LABELS[int(p.argmax())]
        assert r["score"] == pytest.approx(float(p.max()), abs=1e-5)
        assert r["truncated"] is False
    # The texts must give different answers, or the order test below proves nothing.
    assert len({round(r["score"], 4) for r in results}) > 1


def test_batching_preserves_input_order(model):
    whole = model.logits(TEXTS, batch_size=32)
    small = model.logits(TEXTS, batch_size=2)
    one_by_one = np.concatenate([model.logits([t]) for t in TEXTS])
    np.testing.assert_allclose(small, whole, atol=1e-5)
    np.testing.assert_allclose(one_by_one, whole, atol=1e-5)
    assert [r["label"] for r in model.predict(TEXTS, batch_size=2)] == [r["label"] for r in model.predict(TEXTS)]


def test_long_text_is_flagged_truncated(model):
    results = model.predict(["good", LONG, "bad"], batch_size=2)
    assert [r["truncated"] for r in results] == [False, True, False]
    feeds, n_truncated = model.encoder.encode(["good", LONG])
    assert n_truncated == 1
    assert feeds["input_ids"].shape == (2, MAX_LENGTH)


def test_empty_text_is_an_error_naming_its_index(model):
    with pytest.raises(rt.InputError, match="text 1 is empty") as info:
        model.predict(["good", "", "bad"])
    assert info.value.index == 1
    with pytest.raises(rt.InputError, match="single string"):
        model.predict("good")
    with pytest.raises(rt.InputError, match="batch_size"):
        model.predict(["good"], batch_size=0)
    assert model.predict([]) == []


def test_softmax_is_stable_for_huge_logits():
    p = softmax(np.array([[1000.0, 0.0, -1000.0], [-5e4, -5e4, -5e4]]))
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(-1), 1.0)
    assert p[0, 0] == pytest.approx(1.0)


def test_encoder_feeds_exactly_the_manifest_inputs_and_dtypes(tiny_bundle):
    enc = TextEncoder(tiny_bundle / "tokenizer.json", [("input_ids", "int32"), ("attention_mask", "int32")],
                      max_length=8, pad_token_id=0, padding_side="left")
    feeds, n_truncated = enc.encode(["good", "the movie was great and the story was fun"])
    assert set(feeds) == {"input_ids", "attention_mask"}
    assert all(v.dtype == np.int32 for v in feeds.values())
    assert feeds["input_ids"].shape == (2, 8) and n_truncated == 1
    assert feeds["attention_mask"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]  # left padding


def test_an_input_the_runtime_cannot_feed_is_a_bundle_error(tiny_bundle):
    with pytest.raises(rt.BundleError, match="pixel_values"):
        TextEncoder(tiny_bundle / "tokenizer.json", [("pixel_values", "int64")], max_length=8, pad_token_id=0)


def test_unknown_task_lists_known_tasks(remake_bundle):
    bundle = remake_bundle(lambda m: m["task"].update(name="summarization"))
    with pytest.raises(rt.BundleError, match="summarization.*sequence-classification"):
        rt.load(bundle)


def test_manifest_io_must_match_the_graph(remake_bundle):
    bundle = remake_bundle(lambda m: m["model"]["inputs"].pop())  # drop token_type_ids from the spec
    with pytest.raises(rt.BundleError, match="do not match the graph"):
        rt.load(bundle)


def test_tar_archive_loads_and_cleans_up(tiny_bundle, tmp_path):
    archive = rt.archive_bundle(tiny_bundle, tmp_path / "tiny.tar")
    model = rt.load(archive)
    extracted = model.bundle_dir
    assert extracted.is_dir()
    assert model.predict(["great film"])[0]["label"] in LABELS
    model.close()
    assert not extracted.exists()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_unsafe_tar_members_are_refused_and_nothing_is_left(tmp_path, monkeypatch, kind):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where load extracts archives
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        name = {"dotdot": "../escaped.txt", "absolute": "/tmp/escaped.txt", "symlink": "bundle/link"}[kind]
        info = tarfile.TarInfo(name)
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(rt.BundleError, match=re.escape(repr(name))):
        rt.load(archive)
    assert list(scratch.iterdir()) == []  # no escaped file, no leftover extraction directory


def test_failed_load_of_an_archive_removes_its_extraction(bundle_copy, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    (bundle_copy / "model.onnx").write_bytes(b"not a model")
    archive = tarfile.open(tmp_path / "bad.tar", "w")
    for path in sorted(bundle_copy.iterdir()):
        archive.add(path, arcname=f"b/{path.name}")
    archive.close()
    with pytest.raises(rt.BundleError, match=r"model\.onnx: modified"):
        rt.load(tmp_path / "bad.tar")
    assert list(scratch.iterdir()) == []
