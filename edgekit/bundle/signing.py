"""Host side of bundle signing: make an ed25519 key pair; sign a bundle directory or .tar.

The signature file and its check belong to the runtime (edgekit_runtime.bundle.signing), like the rest
of the bundle format; this module adds what only the build host does.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

from edgekit_runtime import archive_bundle
from edgekit_runtime.bundle.archive import open_bundle
from edgekit_runtime.bundle.format import atomic_write
from edgekit_runtime.bundle.signing import SIGNATURE, key_id, load_private_key, sign_bundle
from edgekit_runtime.errors import SignatureError

PRIVATE_KEY_FILE = "private.pem"
PUBLIC_KEY_FILE = "public.pem"


def generate_keys(out_dir: str | Path, *, force: bool = False) -> tuple[Path, Path, str]:
    """Write a new ed25519 pair: private.pem (mode 0600) and public.pem. Returns both paths and the key id."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    out_dir = Path(out_dir)
    private_path, public_path = out_dir / PRIVATE_KEY_FILE, out_dir / PUBLIC_KEY_FILE
    existing = [str(p) for p in (private_path, public_path) if p.exists() or p.is_symlink()]
    if existing and not force:
        raise SignatureError(f"{' and '.join(existing)} already exist; a new pair would replace them, and devices "
                             f"that trust the old public key would refuse bundles signed with the new one. "
                             f"Fix: choose another --out, or pass --force to replace the pair.")
    if out_dir.exists() and not out_dir.is_dir():
        raise SignatureError(f"--out {out_dir}: a file, not a directory. Fix: pass a directory for the key pair.")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(private_path, private_pem, mode=0o600)
    atomic_write(public_path, public_pem, mode=0o644)
    return private_path, public_path, key_id(key.public_key())


def sign(bundle: str | Path, private_key: Any) -> dict[str, Any]:
    """Verify, then sign a bundle in place: a directory gets manifest.sig; a .tar is re-packed carrying it.

    ``private_key`` is a PEM path, PEM bytes or an Ed25519PrivateKey. Returns the signature record.
    """
    key = load_private_key(private_key)  # a bad key fails before a large archive is extracted
    path = Path(bundle)
    if path.is_dir():
        return sign_bundle(path, key)

    with open_bundle(path) as bundle_dir:  # a missing path or a non-archive fails here, with its fix
        record = sign_bundle(bundle_dir, key)
        archive_bundle(bundle_dir, path)  # written beside, then renamed over the old archive
    return record


def stale_archive(bundle: str | Path) -> Path | None:
    """BUNDLE.tar beside a signed bundle directory when it does not carry the same manifest.sig."""

    path = Path(bundle).resolve()
    archive = path.with_name(path.name + ".tar")
    if not (path.is_dir() and archive.is_file()):
        return None
    try:
        with tarfile.open(archive) as tar:
            member = next((m for m in tar.getmembers() if m.isfile() and m.name.endswith(SIGNATURE)
                           and m.name.count("/") <= 1), None)
            carried = tar.extractfile(member).read() if member is not None else None
    except tarfile.TarError:
        return archive
    return None if carried == (path / SIGNATURE).read_bytes() else archive
