"""Opening a bundle given as a directory or an archive: a .tar (or .tar.gz / .bz2 / .xz) is extracted
to a temporary directory, refusing absolute paths, "..", links and special files."""

from __future__ import annotations

import contextlib
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Iterator

from ..errors import BundleError
from .format import MANIFEST


def safe_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        parts = PurePosixPath(m.name).parts
        if PurePosixPath(m.name).is_absolute() or ".." in parts or m.name.startswith("\\"):
            raise BundleError(f"{archive}: member {m.name!r} has an absolute path or '..' and would be written "
                              f"outside the extraction directory; refusing to extract. Fix: pack the bundle with "
                              f"`archive_bundle` (or tar from the bundle's parent directory).")
        if not (m.isfile() or m.isdir()):
            kind = "link" if (m.issym() or m.islnk()) else "special file"
            raise BundleError(f"{archive}: member {m.name!r} is a {kind}; a bundle archive holds only regular files. "
                              f"Fix: pack the bundle with `archive_bundle`.")
    return members


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract a bundle archive into ``dest`` safely; return the bundle directory inside it."""
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = safe_members(tar, archive)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: a second, independent guard
                tar.extractall(dest, members=members, filter="data")
            else:
                tar.extractall(dest, members=members)
    except tarfile.TarError as exc:
        raise BundleError(f"{archive}: not a readable tar archive ({exc}). Fix: re-copy the archive.") from None
    if (dest / MANIFEST).is_file():
        return dest
    tops = list(dest.iterdir())
    if len(tops) == 1 and (tops[0] / MANIFEST).is_file():
        return tops[0]
    raise BundleError(f"{archive}: holds no bundle: expected {MANIFEST} at the top or inside its single top-level "
                      f"directory, found {sorted(p.name for p in tops)[:10]}. Fix: pack it with `archive_bundle`.")


def materialize(path: str | Path) -> tuple[Path, Path | None]:
    """(bundle directory, temporary directory to remove or None) for a directory or an archive."""
    path = Path(path)
    if path.is_dir():
        return path, None
    if not path.exists():
        raise BundleError(f"{path}: no such bundle. Fix: pass the directory `edgekit compile` wrote, or its .tar.")
    if not tarfile.is_tarfile(path):
        raise BundleError(f"{path}: neither a bundle directory nor a tar archive. Fix: pass the bundle directory "
                          f"or the .tar that `edgekit compile --archive` wrote.")
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-bundle-"))
    try:
        return extract_archive(path, tmp), tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def open_bundle(path: str | Path) -> Iterator[Path]:
    """The bundle directory for ``path``; an archive is extracted and removed on exit."""
    bundle_dir, tmp = materialize(path)
    try:
        yield bundle_dir
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
