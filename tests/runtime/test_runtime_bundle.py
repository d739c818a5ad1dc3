"""Integrity: verify_bundle and load refuse any changed, missing or extra file, naming it."""

from __future__ import annotations

import json
import os
import stat
import tarfile

import pytest

import edgekit_runtime as rt
from edgekit_runtime.bundle.format import canonical_json, _manifest_digest


def test_fresh_bundle_verifies(tiny_bundle):
    manifest = rt.verify_bundle(tiny_bundle)
    assert set(manifest["files"]) == {"model.onnx", "tokenizer.json"}
    assert manifest["profile"]["name"] == "x86-64-cpu"


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json", "manifest.json"])
def test_one_flipped_byte_in_any_file_fails_verify_and_load(bundle_copy, name):
    path = bundle_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(rt.BundleError, match=name.replace(".", r"\.")):
        rt.verify_bundle(bundle_copy)
    with pytest.raises(rt.BundleError, match=name.replace(".", r"\.")):
        rt.load(bundle_copy)


def test_extra_file_fails(bundle_copy):
    (bundle_copy / "notes.txt").write_text("hello")
    with pytest.raises(rt.BundleError, match=r"notes\.txt: unexpected file"):
        rt.verify_bundle(bundle_copy)


def test_missing_file_fails(bundle_copy):
    (bundle_copy / "tokenizer.json").unlink()
    with pytest.raises(rt.BundleError, match=r"tokenizer\.json: missing"):
        rt.verify_bundle(bundle_copy)
    with pytest.raises(rt.BundleError, match=r"tokenizer\.json: missing"):
        rt.load(bundle_copy)


def test_rehashed_manifest_cannot_point_outside_the_bundle(bundle_copy):
    # manifest_sha256 is not a signature: someone can rewrite it, so the files table is checked too.
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["files"]["../outside.txt"] = {"sha256": "0" * 64, "bytes": 1}
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    (bundle_copy / "manifest.json").write_bytes(canonical_json(manifest))
    with pytest.raises(rt.BundleError, match=r"\.\./outside\.txt"):
        rt.verify_bundle(bundle_copy)


def test_write_bundle_leaves_a_readable_directory(tiny_bundle):
    # write_bundle used mkdtemp (mode 0700): another user on the device could not read the bundle.
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(tiny_bundle.stat().st_mode) == 0o777 & ~umask


def test_archive_name_keeps_dots(tmp_path, tiny_bundle):
    import shutil

    bundle = shutil.copytree(tiny_bundle, tmp_path / "sst2-v1.2")
    archive = rt.archive_bundle(bundle)
    assert archive.name == "sst2-v1.2.tar"
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["sst2-v1.2/manifest.json", "sst2-v1.2/model.onnx", "sst2-v1.2/tokenizer.json"]
