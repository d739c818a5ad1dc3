"""Optional ed25519 signatures of bundles: manifest.sig next to manifest.json.

The manifest pins the sha256 of every other file, so a signature over the exact manifest.json
bytes signs the whole bundle once ``verify_bundle`` has checked the files against it. Signing
never touches manifest.json or a hashed file; manifest.sig is the one file the manifest does not
list. ``cryptography`` (the ``signing`` extra) is imported only when a signature is made or
checked, so a runtime without it runs unsigned bundles as before.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from ..errors import BundleError, SignatureError
from .archive import open_bundle
from .format import MANIFEST, atomic_write, canonical_json, verify_bundle

SIGNATURE = "manifest.sig"
SIGNATURE_FORMAT = "edgekit-signature"
SIGNATURE_VERSION = 1
ALGORITHM = "ed25519"
INSTALL_HINT = 'pip install "edgekit-runtime[signing]"'


def _crypto():
    """(ed25519, serialization) from cryptography, or a SignatureError that says how to install it."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SignatureError(f"bundle signatures need the 'cryptography' package, which is not installed here. "
                             f"Fix: {INSTALL_HINT}") from None
    return ed25519, serialization


def key_id(public_key) -> str:
    """The sha256 (hex) of the raw 32-byte ed25519 public key: what manifest.sig records."""
    _, serialization = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _read_pem(source: str | Path | bytes, what: str) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, f"the {what} given as bytes"
    try:
        return Path(source).read_bytes(), str(source)
    except FileNotFoundError:
        raise SignatureError(f"{what} {source}: no such file. Fix: pass the path of the PEM file "
                             f"`edgekit keygen` wrote.") from None
    except OSError as exc:
        raise SignatureError(f"{what} {source}: cannot read it ({exc.strerror}). Fix: check the path and its "
                             f"permissions.") from None


def load_public_key(source):
    """An ed25519 public key from a PEM path, PEM bytes, or an Ed25519PublicKey (returned as is)."""
    ed25519, serialization = _crypto()
    if isinstance(source, ed25519.Ed25519PublicKey):
        return source
    data, name = _read_pem(source, "public key")
    if b"PRIVATE KEY" in data:
        raise SignatureError(f"public key {name}: this is a PRIVATE key. A device needs only the public key; keep "
                             f"the private one on the signing host. Fix: pass public.pem, the file `edgekit keygen` "
                             f"wrote beside it.")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"public key {name}: not a PEM public key ({exc}). Fix: pass public.pem as "
                             f"`edgekit keygen` wrote it.") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SignatureError(f"public key {name}: a {type(key).__name__}, not an ed25519 key; bundles are signed "
                             f"with ed25519 only. Fix: make a key pair with `edgekit keygen`.")
    return key


def load_private_key(source):
    """An ed25519 private key from an unencrypted PEM path or PEM bytes (or an Ed25519PrivateKey)."""
    ed25519, serialization = _crypto()
    if isinstance(source, ed25519.Ed25519PrivateKey):
        return source
    data, name = _read_pem(source, "private key")
    if b"PRIVATE KEY" not in data:
        raise SignatureError(f"private key {name}: no PEM private key in it (a public key, or another file?). "
                             f"Fix: pass private.pem, the file `edgekit keygen` wrote with mode 0600.")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying "encrypted, and no password given"
        raise SignatureError(f"private key {name}: it is encrypted with a passphrase, which edgekit does not "
                             f"read. Fix: use a key from `edgekit keygen` (protected by file mode 0600).") from None
    except ValueError as exc:
        raise SignatureError(f"private key {name}: not a readable PEM private key ({exc}). Fix: pass private.pem "
                             f"as `edgekit keygen` wrote it.") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"private key {name}: a {type(key).__name__}, not an ed25519 key; bundles are signed "
                             f"with ed25519 only. Fix: make a key pair with `edgekit keygen`.")
    return key


def sign_bundle(bundle: str | Path, private_key) -> dict[str, Any]:
    """Verify a bundle directory, then write manifest.sig over its manifest.json (atomically).

    ``private_key`` is a PEM path, PEM bytes or an Ed25519PrivateKey. Returns the signature record.
    A signature already there is replaced.
    """
    key = load_private_key(private_key)
    bundle = Path(bundle).resolve()
    try:
        manifest = verify_bundle(bundle)  # never sign something that does not match its manifest
    except BundleError as exc:
        raise BundleError(f"refusing to sign: {exc}") from None
    raw = (bundle / MANIFEST).read_bytes()
    if raw != canonical_json(manifest):
        raise SignatureError(f"{bundle / MANIFEST}: changed while it was being signed. Fix: sign again once "
                             f"nothing writes to the bundle.")
    record = {
        "format": SIGNATURE_FORMAT, "version": SIGNATURE_VERSION, "algorithm": ALGORITHM,
        "key_id": key_id(key.public_key()), "signed_file": MANIFEST,
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),  # not signed itself: tells "changed" from "corrupt"
        "signature": base64.b64encode(key.sign(raw)).decode("ascii"),
    }
    # The partial file sits beside the bundle, not in it: a kill must not leave an unexpected file inside.
    atomic_write(bundle / SIGNATURE, canonical_json(record), tmp_dir=bundle.parent)
    return record


def read_signature(bundle: str | Path) -> dict[str, Any] | None:
    """The parsed manifest.sig of a bundle directory, or None when the bundle is unsigned (not verified)."""
    path = Path(bundle) / SIGNATURE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureError(f"{path}: corrupt (not valid JSON: {exc}). Fix: re-copy the bundle from the host, "
                             f"or sign it again with `edgekit sign`.") from None
    found = record.get("format") if isinstance(record, dict) else None
    if found != SIGNATURE_FORMAT:
        raise SignatureError(f"{path}: not an edgekit signature (format {found!r}, expected {SIGNATURE_FORMAT!r}). "
                             f"Fix: re-copy the bundle, or sign it again with `edgekit sign`.")
    return record


def verify_signature(bundle: str | Path, public_key, *, manifest: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check a bundle's (directory or .tar) manifest.sig against ``public_key``; return its record.

    ``public_key`` is a PEM path, PEM bytes or an Ed25519PublicKey. This checks manifest.json only;
    ``verify_bundle`` checks the files against it (``load`` does both). Pass the verified
    ``manifest`` to also require that it is the one that was signed. Raises SignatureError when
    the bundle is unsigned or the signature does not verify.
    """
    key = load_public_key(public_key)
    from cryptography.exceptions import InvalidSignature  # present: load_public_key imported cryptography
    bundle = Path(bundle)
    if bundle.is_file():  # a .tar from archive_bundle: check the manifest.sig it carries

        with open_bundle(bundle) as bundle_dir:
            return verify_signature(bundle_dir, key, manifest=manifest)
    path = bundle / SIGNATURE
    record = read_signature(bundle)
    if record is None:
        raise SignatureError(f"{bundle}: unsigned (no {SIGNATURE}). Fix: sign it on the host with `edgekit sign "
                             f"BUNDLE --key private.pem` (or compile with --sign-key), then copy it again.")
    if record.get("algorithm") != ALGORITHM or record.get("signed_file") != MANIFEST:
        raise SignatureError(f"{path}: algorithm {record.get('algorithm')!r} over {record.get('signed_file')!r}; "
                             f"this runtime checks {ALGORITHM!r} over {MANIFEST!r}. Fix: sign the bundle again with "
                             f"`edgekit sign`, or install the edgekit-runtime that matches the host.")
    try:
        signature = base64.b64decode(str(record.get("signature")), validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    try:
        raw = (bundle / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise SignatureError(f"{bundle / MANIFEST}: missing, so there is nothing the signature could cover. "
                             f"Fix: re-copy the bundle.") from None
    want, have = key_id(key), record.get("key_id")
    try:
        if len(signature) != 64:
            raise ValueError("not 64 bytes")
        key.verify(signature, raw)
    except (InvalidSignature, ValueError):  # ValueError: the length check above
        if have != want:
            reason = (f"signed by another key (key id {str(have)[:16]}...), not the public key given "
                      f"(key id {want[:16]}...)")
            fix = "pass the public key of the key pair that signed it, or re-sign the bundle with your key"
        elif record.get("manifest_sha256") != hashlib.sha256(raw).hexdigest():
            reason = f"{MANIFEST} changed after it was signed"
            fix = "re-copy the bundle from the host; if the change is yours, sign it again with `edgekit sign`"
        else:
            reason = "the signature is corrupt (it does not verify over the manifest it names)"
            fix = "re-copy the bundle from the host, or sign it again with `edgekit sign`"
        raise SignatureError(f"{path}: signature check FAILED: {reason}. Fix: {fix}.") from None
    if manifest is not None and canonical_json(manifest) != raw:
        raise SignatureError(f"{bundle / MANIFEST}: changed between the integrity check and the signature check. "
                             f"Fix: load again once nothing writes to the bundle.")
    return {**record, "key_id": want}


def signature_key(public_key=None, require: bool = False):
    """The public key a check will use (loaded), or None for no check; refuses ``require`` without a key."""
    if require and public_key is None:
        raise SignatureError("a required signature needs a public key to check it against: the key id inside a "
                             "bundle can be rewritten by whoever changed the bundle, so a bundle cannot vouch for "
                             "itself. Fix: pass the public key you trust (edgekit-run: --public-key public.pem; "
                             "Python: public_key=...).")
    return None if public_key is None else load_public_key(public_key)


def check_signature(bundle: str | Path, public_key=None, *, require: bool = False,
                    manifest: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The signature policy of ``load`` and ``edgekit-run``: the record when checked, None when not.

    With ``public_key`` a present signature must verify; with ``require`` an unsigned bundle is
    refused too. Neither: nothing is checked and cryptography is not imported.
    """
    key = signature_key(public_key, require)
    if key is None or (not require and not (Path(bundle) / SIGNATURE).is_file()):
        return None
    return verify_signature(bundle, key, manifest=manifest)
