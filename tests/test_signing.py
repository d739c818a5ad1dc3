"""Host signing: `edgekit keygen`, `edgekit sign` and `edgekit compile --sign-key` (no compile runs)."""

from __future__ import annotations

import stat
import tarfile

import pytest
from click.testing import CliRunner

import edgekit_runtime as rt
from edgekit.cli import main
from tests.runtime.runtime_fixtures import cpu_profile_dict, tiny_manifest


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def keys(tmp_path):
    out = tmp_path / "keys"
    result = run("keygen", "--out", out)
    assert result.exit_code == 0, result.output
    return out / "private.pem", out / "public.pem"


@pytest.fixture
def bundle(tmp_path):
    """A verifiable bundle (placeholder model bytes: signing never loads the model)."""
    files = {"model.onnx": b"placeholder graph", "tokenizer.json": b"{}"}
    return rt.write_bundle(tmp_path / "bundles" / "tiny", files, tiny_manifest(cpu_profile_dict()))


def test_keygen_writes_a_private_key_only_its_owner_can_read(keys):
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) & 0o022 == 0
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    assert not [p for p in private.parent.iterdir() if ".partial" in p.name]
    key = rt.bundle.signing.load_private_key(private)
    assert rt.bundle.signing.key_id(key.public_key()) == rt.bundle.signing.key_id(rt.bundle.signing.load_public_key(public))


def test_keygen_refuses_to_overwrite_without_force(keys):
    private, public = keys
    before = private.read_bytes(), public.read_bytes()
    result = run("keygen", "--out", private.parent)
    assert result.exit_code == 1
    assert "already exist" in result.output and "--force" in result.output and str(private) in result.output
    assert (private.read_bytes(), public.read_bytes()) == before
    result = run("keygen", "--out", private.parent, "--force")
    assert result.exit_code == 0, result.output
    assert private.read_bytes() != before[0] and stat.S_IMODE(private.stat().st_mode) == 0o600


def test_sign_then_verify_round_trip(bundle, keys):
    private, public = keys
    manifest_before = (bundle / "manifest.json").read_bytes()
    result = run("sign", bundle, "--key", private)
    assert result.exit_code == 0, result.output
    assert "signed" in result.output and "key id" in result.output
    assert (bundle / "manifest.json").read_bytes() == manifest_before
    rt.verify_bundle(bundle)
    assert rt.verify_signature(bundle, public)["key_id"] == rt.bundle.signing.key_id(rt.bundle.signing.load_public_key(public))
    from edgekit_runtime.cli.main import main as run_main

    assert run_main(["verify", str(bundle), "--public-key", str(public), "--require-signature"]) == 0


def test_sign_refuses_a_tampered_bundle(bundle, keys):
    (bundle / "model.onnx").write_bytes(b"swapped graph")
    result = run("sign", bundle, "--key", keys[0])
    assert result.exit_code == 1
    assert "refusing to sign" in result.output and "model.onnx: modified" in result.output
    assert not (bundle / "manifest.sig").exists()


def test_sign_refuses_a_public_key_as_the_private_key(bundle, keys):
    result = run("sign", bundle, "--key", keys[1])
    assert result.exit_code == 1 and "no PEM private key" in result.output and "Fix:" in result.output
    assert not (bundle / "manifest.sig").exists()


def test_sign_an_archive_repacks_it_with_the_signature(bundle, keys):
    archive = rt.archive_bundle(bundle)
    result = run("sign", bundle, "--key", keys[0])
    assert result.exit_code == 0 and f"note: {archive} does not carry this signature" in result.output
    result = run("sign", archive, "--key", keys[0])
    assert result.exit_code == 0, result.output
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["tiny/manifest.json", "tiny/manifest.sig", "tiny/model.onnx",
                                          "tiny/tokenizer.json"]
    rt.verify_signature(archive, keys[1])
    assert "note:" not in run("sign", bundle, "--key", keys[0]).output  # the archive now carries the same one


@pytest.mark.parametrize("bad", ["missing", "garbage"])
def test_compile_rejects_a_bad_sign_key_before_anything_runs(tmp_path, monkeypatch, bad):
    import edgekit.compiler.run as pipeline

    def must_not_start(*args, **kwargs):
        raise AssertionError("the compile started despite a bad --sign-key")

    monkeypatch.setattr(pipeline, "start_state", must_not_start)
    key = tmp_path / "key.pem"
    if bad == "garbage":
        key.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    result = run("compile", "--profile", "x86-64-cpu", "--out", tmp_path / "b", "--sign-key", key)
    assert result.exit_code == 1, result.output
    assert str(key) in result.output and "Fix:" in result.output
    assert ("no such file" if bad == "missing" else "not a readable PEM private key") in result.output
    assert not (tmp_path / "b").exists() and not (tmp_path / ".b.work").exists()


def test_compile_passes_a_good_sign_key_through_the_preflight(tmp_path, keys, monkeypatch):
    import edgekit.compiler.run as pipeline
    from edgekit_runtime.errors import EdgekitError

    def stop(*args, **kwargs):
        raise EdgekitError("stopped at start_state")

    monkeypatch.setattr(pipeline, "start_state", stop)
    result = run("compile", "--profile", "x86-64-cpu", "--out", tmp_path / "b", "--sign-key", keys[0])
    assert result.exit_code == 1 and "stopped at start_state" in result.output
