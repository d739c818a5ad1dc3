"""The bundle format, owned by the runtime: a directory with model.onnx, tokenizer files and
manifest.json. The host writes bundles through ``write_bundle``; the device checks them with
``verify_bundle`` before anything is loaded.

manifest.json is stored in canonical form (sorted keys, 2-space indent, trailing newline) and
carries ``manifest_sha256``, the sha256 of the canonical manifest without that key. So any
changed byte in any file, manifest included, is detected and the file is named.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any, Mapping

from ..errors import BundleError

SCHEMA_VERSION = 1
FORMAT = "edgekit-bundle"
MANIFEST = "manifest.json"
# Files that may sit in a bundle without a sha256 entry (the manifest, its future signature).
UNHASHED = frozenset({MANIFEST, "manifest.sig"})
REQUIRED_KEYS = ("schema_version", "format", "edgekit_version", "profile", "task", "model",
                 "tokenizer", "recipe", "pass_log", "figures", "files")


def canonical_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def atomic_write(path: str | Path, data: bytes, *, mode: int | None = None, tmp_dir: str | Path | None = None
                 ) -> None:
    """Write ``data`` to a temporary file, fsync, then rename over ``path``: a reader sees the old file
    or the new one, never half of one. ``mode`` creates the file with exactly those permissions (a
    private key is never readable by others, not even briefly); ``tmp_dir`` puts the partial file
    elsewhere on the same filesystem (e.g. beside a bundle rather than in it)."""
    path = Path(path)
    tmp = Path(tmp_dir or path.parent) / f".{path.name}.partial-{os.getpid()}-{time.time_ns()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)  # the umask could only narrow it; say it outright
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _manifest_digest(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def write_bundle(out_dir: str | Path, files: Mapping[str, str | Path | bytes], manifest: Mapping[str, Any],
                 *, overwrite: bool = False) -> Path:
    """Write a bundle atomically: build it in a sibling temp dir, then rename into place.

    ``files`` maps a bundle-relative name to a source path or bytes. ``manifest`` holds every
    required key except ``files`` (filled here with sha256 and size of each file). A failure or
    a kill leaves either the old bundle or the new one at ``out_dir``, never half of one.
    """
    out_dir = Path(out_dir).resolve()
    missing = [k for k in REQUIRED_KEYS if k not in manifest and k not in ("files", "schema_version", "format")]
    if missing:
        raise BundleError(f"manifest lacks {missing}: the host must fill every section before writing")
    if out_dir.exists() and not overwrite:
        raise BundleError(f"{out_dir} already exists. Fix: pass --force to replace it, or choose another --out.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would leave the bundle unreadable to the service
    # account that runs it on the device. mkdir honours the umask like any other directory.
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir()
    try:
        entries: dict[str, dict[str, Any]] = {}
        for name, src in sorted(files.items()):
            if name in UNHASHED or Path(name).is_absolute() or ".." in Path(name).parts:
                raise BundleError(f"bundle file name {name!r} is reserved or escapes the bundle")
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, bytes):
                dest.write_bytes(src)
            else:
                shutil.copyfile(src, dest)
            entries[name] = {"sha256": sha256_file(dest), "bytes": dest.stat().st_size}
        full = dict(manifest)
        full.update(schema_version=SCHEMA_VERSION, format=FORMAT, files=entries)
        full["manifest_sha256"] = _manifest_digest(full)
        with open(tmp / MANIFEST, "wb") as fh:
            fh.write(canonical_json(full))
            fh.flush()
            os.fsync(fh.fileno())
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{time.time_ns()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """Parse and self-check manifest.json (canonical bytes + manifest_sha256); no file hashes."""
    path = Path(bundle) / MANIFEST
    if not Path(bundle).is_dir():
        raise BundleError(f"{bundle}: not a bundle directory. Fix: pass the directory `edgekit compile` wrote "
                          f"(or extract the .tar archive first).")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: missing. Fix: this is not an edgekit bundle, or it is incomplete; re-copy it.") from None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: modified or corrupt (not valid JSON: {exc}). Fix: re-copy the bundle.") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: modified or corrupt (not a JSON object). Fix: re-copy the bundle.")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}. Fix: pass an edgekit bundle.")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"{path}: schema_version {version!r}, this runtime reads {SCHEMA_VERSION}. "
                          f"Fix: install the edgekit-runtime version that matches the compiler that wrote it.")
    if canonical_json(manifest) != raw:
        raise BundleError(f"{path}: modified (its bytes are not the canonical form the compiler wrote). "
                          f"Fix: re-copy the bundle from the host.")
    recorded = manifest.get("manifest_sha256")
    if recorded != _manifest_digest(manifest):
        raise BundleError(f"{path}: modified (manifest_sha256 does not match its content). Fix: re-copy the bundle.")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{path}: lacks required sections {missing}. Fix: recompile with a matching edgekit.")
    return manifest


def _file_entries(manifest: Mapping[str, Any], where: Path) -> dict[str, dict[str, Any]]:
    """The manifest's ``files`` table, checked: safe relative names, a sha256 and a size each.

    manifest_sha256 protects against accidents, not against someone who rewrites the manifest,
    so a crafted table must not send the check outside the bundle or crash it.
    """
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{where}: key 'files' is {files!r}, expected a table of file name -> sha256 and bytes. "
                          f"Fix: recompile the bundle; the host writes this table.")
    for name, entry in files.items():
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts or name in UNHASHED:
            raise BundleError(f"{where}: files entry {name!r} is absolute, escapes the bundle or is reserved. "
                              f"Fix: recompile the bundle; do not edit its manifest.")
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get("bytes"), int) or isinstance(entry.get("bytes"), bool)):
            raise BundleError(f"{where}: files entry {name!r} is {entry!r}, expected {{'sha256': str, 'bytes': int}}. "
                              f"Fix: recompile the bundle; do not edit its manifest.")
    return files


_TYPE_WORDS = {str: "a string", int: "an integer", list: "a list", dict: "a table", float: "a number"}


def manifest_value(manifest: Mapping[str, Any], key: str, typ: type) -> Any:
    """The value at a dotted key ('tokenizer.max_length'), type-checked; BundleError names the key."""
    node: Any = manifest
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise BundleError(f"{MANIFEST}: key '{key}' is missing. Fix: recompile the bundle with an edgekit "
                              f"that writes schema_version {SCHEMA_VERSION}.")
        node = node[part]
    # bool is an int in Python; `max_length: true` is still a broken manifest.
    if not isinstance(node, typ) or (isinstance(node, bool) and typ is not bool):
        raise BundleError(f"{MANIFEST}: key '{key}' is {node!r}, expected {_TYPE_WORDS.get(typ, typ.__name__)}. "
                          f"Fix: recompile the bundle.")
    return node


def verify_bundle(bundle: str | Path) -> dict[str, Any]:
    """Check the manifest and the sha256 of every file; return the manifest or raise BundleError.

    Every problem is collected, so one run names every modified, missing or unexpected file.
    """
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    problems: list[str] = []
    listed = _file_entries(manifest, bundle / MANIFEST)
    for name, entry in sorted(listed.items()):
        path = bundle / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{name}: modified (sha256 mismatch)")
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle).as_posix()
        if rel not in listed and rel not in UNHASHED:
            problems.append(f"{rel}: unexpected file, not in the manifest")
    if problems:
        raise BundleError(f"{bundle}: integrity check failed:\n  " + "\n  ".join(problems)
                          + "\nFix: re-copy the bundle from the host; do not edit files inside it.")
    return manifest


def archive_bundle(bundle: str | Path, dest: str | Path | None = None) -> Path:
    """Pack a bundle directory into one .tar file (written atomically)."""
    bundle = Path(bundle).resolve()
    read_manifest(bundle)  # refuse to pack something that is not a bundle
    # Not with_suffix: a bundle named "sst2-v1.2" must give "sst2-v1.2.tar", not "sst2-v1.tar".
    dest = Path(dest) if dest else bundle.with_name(bundle.name + ".tar")
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w") as tar:
            for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
                tar.add(path, arcname=f"{bundle.name}/{path.relative_to(bundle).as_posix()}")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest
