"""Bundle signatures on the device: a signed bundle loads; a changed, unsigned, wrongly keyed or
corrupt one is refused, naming manifest.sig and the fix; without the flags nothing changes."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import textwrap

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

import edgekit_runtime as rt
from edgekit_runtime.bundle.format import _manifest_digest, canonical_json
from edgekit_runtime.cli.main import main

INSTALL = 'pip install "edgekit-runtime[signing]"'


def _pem_pair(directory, name):
    key = ed25519.Ed25519PrivateKey.generate()
    public = directory / f"{name}.pub.pem"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, public


@pytest.fixture
def keys(tmp_path):
    """(signing key, its public PEM path, another key pair's public PEM path)."""
    key, public = _pem_pair(tmp_path, "ours")
    _, other = _pem_pair(tmp_path, "other")
    return key, public, other


@pytest.fixture
def signed(bundle_copy, keys):
    rt.sign_bundle(bundle_copy, keys[0])
    return bundle_copy


def _rewrite_manifest(bundle, mutate):
    """Change manifest.json the way an attacker would: canonical bytes, manifest_sha256 recomputed."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    mutate(manifest)
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    (bundle / "manifest.json").write_bytes(canonical_json(manifest))


# ---------------------------------------------------------------- API

def test_signing_adds_only_manifest_sig_and_the_signed_bundle_loads(bundle_copy, keys, tmp_path):
    key, public, _ = keys
    before = {p.name: p.read_bytes() for p in bundle_copy.iterdir()}
    record = rt.sign_bundle(bundle_copy, key)
    after = {p.name: p.read_bytes() for p in bundle_copy.iterdir()}
    assert set(after) == set(before) | {"manifest.sig"}
    assert all(after[name] == data for name, data in before.items())  # manifest.json and files untouched
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    raw_public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    saved = json.loads((bundle_copy / "manifest.sig").read_text())
    assert saved["algorithm"] == "ed25519" and saved["key_id"] == hashlib.sha256(raw_public).hexdigest()
    key.public_key().verify(base64.b64decode(saved["signature"]), before["manifest.json"])  # over the exact bytes
    assert rt.verify_signature(bundle_copy, public)["key_id"] == record["key_id"]
    rt.verify_bundle(bundle_copy)  # manifest.sig is not an unexpected file
    with rt.load(bundle_copy, public_key=public, require_signature=True) as model:
        assert len(model.predict(["great movie"])) == 1


@pytest.mark.parametrize("change", ["label", "model-and-its-hash"])
def test_manifest_changed_after_signing_is_refused(signed, keys, change):
    def mutate(manifest):
        if change == "label":
            manifest["task"]["labels"][0] = "positive"
        else:  # swap the model and fix its hash: verify_bundle alone would accept this bundle
            path = signed / "model.onnx"
            path.write_bytes(path.read_bytes() + b"\0")
            manifest["files"]["model.onnx"] = {"sha256": rt.bundle.format.sha256_file(path), "bytes": path.stat().st_size}

    _rewrite_manifest(signed, mutate)
    rt.verify_bundle(signed)  # the integrity check alone passes: only the signature catches this
    with pytest.raises(rt.SignatureError, match=r"manifest\.sig: signature check FAILED: manifest\.json changed "
                                                r"after it was signed\. Fix: re-copy"):
        rt.load(signed, public_key=keys[1])


def test_unsigned_bundle_refused_only_when_required(bundle_copy, keys, caplog):
    with pytest.raises(rt.SignatureError, match=r"unsigned \(no manifest\.sig\)\. Fix: sign it on the host"):
        rt.load(bundle_copy, public_key=keys[1], require_signature=True)
    with caplog.at_level("WARNING", logger="edgekit_runtime"):
        rt.load(bundle_copy, public_key=keys[1]).close()
    assert "unsigned" in caplog.text
    rt.load(bundle_copy).close()  # no flags: unchanged


def test_wrong_key_refused(signed, keys):
    with pytest.raises(rt.SignatureError, match="signed by another key .* Fix: pass the public key"):
        rt.load(signed, public_key=keys[2], require_signature=True)


@pytest.mark.parametrize("damage", ["flipped-signature-byte", "not-json"])
def test_corrupt_signature_refused(signed, keys, damage):
    path = signed / "manifest.sig"
    if damage == "not-json":
        path.write_text("garbage")
        expected = r"manifest\.sig: corrupt \(not valid JSON"
    else:
        record = json.loads(path.read_text())
        sig = bytearray(base64.b64decode(record["signature"]))
        sig[10] ^= 0x01
        record["signature"] = base64.b64encode(bytes(sig)).decode()
        path.write_text(json.dumps(record))
        expected = r"manifest\.sig: signature check FAILED: the signature is corrupt"
    with pytest.raises(rt.SignatureError, match=expected):
        rt.load(signed, public_key=keys[1])


def test_key_argument_errors(bundle_copy, keys, tmp_path):
    with pytest.raises(rt.SignatureError, match="needs a public key"):
        rt.load(bundle_copy, require_signature=True)
    with pytest.raises(rt.SignatureError, match="keep verify=True"):
        rt.load(bundle_copy, verify=False, public_key=keys[1])
    with pytest.raises(rt.SignatureError, match=r"nope\.pem: no such file"):
        rt.load(bundle_copy, public_key=tmp_path / "nope.pem")
    private = tmp_path / "private.pem"
    private.write_bytes(keys[0].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    with pytest.raises(rt.SignatureError, match="this is a PRIVATE key"):
        rt.load(bundle_copy, public_key=private)


def test_signed_archive_carries_the_signature(signed, keys, tmp_path):
    archive = rt.archive_bundle(signed, tmp_path / "signed.tar")
    with tarfile.open(archive) as tar:
        assert f"{signed.name}/manifest.sig" in tar.getnames()
    assert rt.verify_signature(archive, keys[1])["algorithm"] == "ed25519"
    rt.load(archive, public_key=keys[1], require_signature=True).close()
    with pytest.raises(rt.SignatureError, match="signed by another key"):
        rt.load(archive, public_key=keys[2])
    assert main(["verify", str(archive), "--public-key", str(keys[1]), "--require-signature"]) == 0


def test_missing_cryptography_names_the_extra(signed, keys, monkeypatch, capsys):
    for name in ("cryptography.hazmat.primitives", "cryptography.hazmat.primitives.asymmetric"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import` fail as if not installed
    missing = r"'cryptography' package, which is not installed.*" + re.escape(INSTALL)
    with pytest.raises(rt.SignatureError, match=missing):
        rt.load(signed, public_key=keys[1])
    assert main(["verify", str(signed), "--public-key", str(keys[1])]) == 1
    assert INSTALL in capsys.readouterr().err
    assert main(["verify", str(signed)]) == 0  # no flags: no cryptography needed


def test_no_flags_never_imports_cryptography(signed, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from edgekit_runtime.cli.main import main
        assert main(["verify", {str(signed)!r}]) == 0
        assert "cryptography" not in sys.modules, "cryptography was imported"
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- CLI

def test_cli_verify_reports_and_checks_the_signature(tiny_bundle, signed, keys, capsys):
    assert main(["verify", str(tiny_bundle)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("; unsigned")
    assert main(["verify", str(signed)]) == 0
    assert "manifest.sig present, NOT checked" in capsys.readouterr().out
    assert main(["verify", str(signed), "--public-key", str(keys[1]), "--require-signature"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK ") and "signature OK (ed25519, key id" in out
    assert main(["verify", str(tiny_bundle), "--public-key", str(keys[1])]) == 0
    assert "unsigned, so --public-key checked nothing" in capsys.readouterr().out


def test_cli_refusals_exit_1_on_one_line(tiny_bundle, signed, keys, capsys):
    assert main(["verify", str(signed), "--public-key", str(keys[2])]) == 1
    err = capsys.readouterr().err
    assert "manifest.sig: signature check FAILED: signed by another key" in err and "Fix:" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["verify", str(tiny_bundle), "--public-key", str(keys[1]), "--require-signature"]) == 1
    assert "unsigned (no manifest.sig)" in capsys.readouterr().err
    assert main(["predict", str(tiny_bundle), "good", "--public-key", str(keys[1]), "--require-signature"]) == 1
    assert "unsigned (no manifest.sig)" in capsys.readouterr().err
    # serve refuses before it listens (port 0 would otherwise bind and block)
    assert main(["serve", str(tiny_bundle), "--port", "0", "--public-key", str(keys[1]), "--require-signature"]) == 1
    assert "unsigned (no manifest.sig)" in capsys.readouterr().err
    assert main(["serve", str(signed), "--port", "0", "--public-key", str(keys[2])]) == 1
    assert "signed by another key" in capsys.readouterr().err
    _rewrite_manifest(signed, lambda m: m["task"]["labels"].reverse())
    assert main(["predict", str(signed), "good", "--public-key", str(keys[1])]) == 1
    assert "manifest.json changed after it was signed" in capsys.readouterr().err


def test_cli_predict_with_a_good_signature(signed, keys, capsys):
    assert main(["predict", str(signed), "--public-key", str(keys[1]), "--require-signature", "great film"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["verify", "predict", "serve"])
def test_cli_require_signature_without_key_is_a_usage_error(tiny_bundle, command, capsys):
    assert main([command, str(tiny_bundle), "--require-signature", *(["good"] if command == "predict" else [])]) == 2
    err = capsys.readouterr().err
    assert "--require-signature needs --public-key PEM: a bundle cannot vouch for itself" in err
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--public-key PEM" in out and "--require-signature" in out and INSTALL in out
