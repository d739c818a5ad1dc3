"""The TensorRT engine cache on the device: one engine per (GPU, compute capability, TensorRT
version, model, plan), keyed by ``engine_cache_key``, built once under a file lock and written
atomically with its metadata (``EngineCache``). The native backend (trt_engine.py) uses it."""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..bundle.format import atomic_write, canonical_json
from ..errors import BackendError

log = logging.getLogger("edgekit_runtime")

CACHE_FORMAT = 1  # bump when the engine cache's layout or metadata changes: every engine rebuilds


def engine_cache_key(*, gpu: str, compute_capability: str, tensorrt: str, model_sha256: str,
                     plan: Mapping[str, Any], workspace_mb: int) -> tuple[str, dict[str, Any]]:
    """(key, build record): the key is the sha256 of the canonical JSON of the record, which holds
    everything an engine depends on: GPU name, compute capability, TensorRT version, the model
    file's sha256, the plan and the workspace it was built with."""
    record = {"cache_format": CACHE_FORMAT, "gpu": gpu, "compute_capability": compute_capability,
              "tensorrt": tensorrt, "model_sha256": model_sha256, "plan": plan, "workspace_mb": int(workspace_mb)}
    record = json.loads(canonical_json(record))  # the form it has once read back from disk
    return hashlib.sha256(canonical_json(record)).hexdigest(), record


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two processes starting together build an engine once."""
    try:
        fh = open(path, "a+b")
    except (ImportError, OSError):  # no fcntl (Windows) or no write access: go on unlocked
        yield
        return
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class EngineCache:
    """Serialized engines under ``directory``: ``<key>.engine`` with ``<key>.json`` beside it.

    ``<key>.json`` holds the key, the build record (``engine_cache_key``) and the engine file's
    sha256 and size; it is written after the engine, so it is the commit mark. An engine is reused
    only when its metadata matches the expected record exactly and the engine file matches its
    recorded sha256 and size, and TensorRT loads it; anything else (no metadata, other record,
    truncated or corrupt file, TensorRT refusing it) rebuilds and replaces it. Files are written
    atomically. ``directory`` None, or one that cannot be created: build every time, cache nothing.
    """

    def __init__(self, directory: str | Path | None):
        self.directory = Path(directory) if directory is not None else None

    def _usable_dir(self) -> Path | None:
        if self.directory is None:
            return None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("TensorRT engine cache disabled: cannot create %s (%s); every start rebuilds the engine. "
                        "Fix: set EDGEKIT_CACHE_DIR to a writable directory.", self.directory, exc)
            return None
        return self.directory

    def get(self, adapter: Any, onnx_path: Path, plan: Mapping[str, Any], model_sha256: str,
            workspace: int) -> tuple[Any, str]:
        """(loaded engine runner, what happened: 'reused ...' or 'built ...')."""
        gpu, cc = adapter.device()
        key, record = engine_cache_key(gpu=gpu, compute_capability=cc, tensorrt=str(adapter.version),
                                       model_sha256=model_sha256, plan=plan, workspace_mb=workspace)
        directory = self._usable_dir()
        if directory is None:
            runner, _ = self._build(adapter, onnx_path, plan, workspace, None, "no engine cache")
            return runner, "built (engine cache disabled)"
        engine_path, meta_path = directory / f"{key}.engine", directory / f"{key}.json"
        with _locked(directory / f"{key}.lock"):
            runner, why = self._load(adapter, key, record, engine_path, meta_path)
            if runner is not None:
                log.info("TensorRT engine %s reused from the cache", engine_path.name)
                return runner, f"reused {engine_path}"
            timing_path = directory / f"timing-{hashlib.sha256(canonical_json([gpu, cc, str(adapter.version)])).hexdigest()[:16]}.cache"
            runner, blob = self._build(adapter, onnx_path, plan, workspace, timing_path, why)
            try:
                atomic_write(engine_path, blob)
                meta = {"key": key, "build": record, "engine_sha256": hashlib.sha256(blob).hexdigest(),
                        "engine_bytes": len(blob),
                        "created_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()}
                atomic_write(meta_path, canonical_json(meta))
            except OSError as exc:
                log.warning("TensorRT engine built but not cached: cannot write %s (%s); the next start rebuilds it. "
                            "Fix: free disk space or set EDGEKIT_CACHE_DIR to a writable directory.", engine_path, exc)
                return runner, f"built ({why}); not cached: {exc}"
            return runner, f"built ({why}) and cached as {engine_path}"

    @staticmethod
    def _load(adapter: Any, key: str, record: dict[str, Any], engine_path: Path,
              meta_path: Path) -> tuple[Any, str]:
        """(runner, '') for a valid cached engine, else (None, why it cannot be used)."""
        if not meta_path.exists():
            return None, ("an engine file without metadata (an interrupted write)" if engine_path.exists()
                          else "no cached engine")
        try:
            meta = json.loads(meta_path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, f"cache metadata unreadable ({type(exc).__name__})"
        if not isinstance(meta, dict) or meta.get("key") != key or meta.get("build") != record:
            stored = meta.get("build") if isinstance(meta, dict) else None
            differs = (sorted(k for k in record if not isinstance(stored, dict) or stored.get(k) != record[k])
                       or ["key"])
            return None, f"cache metadata does not match (differs in {', '.join(differs)})"
        try:
            blob = engine_path.read_bytes()
        except OSError as exc:
            return None, f"engine file unreadable ({type(exc).__name__})"
        if len(blob) != meta.get("engine_bytes") or hashlib.sha256(blob).hexdigest() != meta.get("engine_sha256"):
            return None, "engine file corrupt (size or sha256 differs from its metadata)"
        try:
            runner = adapter.load(blob)
        except Exception as exc:  # TensorRT refuses engines of other versions/devices in its own ways
            return None, f"TensorRT could not load the cached engine ({type(exc).__name__}: {exc})"
        if runner is None:
            return None, "TensorRT could not load the cached engine"
        return runner, ""

    @staticmethod
    def _build(adapter: Any, onnx_path: Path, plan: Mapping[str, Any], workspace: int,
               timing_path: Path | None, why: str) -> tuple[Any, bytes]:
        log.warning("building the TensorRT engine for %s (%s); this takes minutes on a Jetson and happens once "
                    "per device, TensorRT version and bundle", onnx_path.name, why)
        timing = None
        if timing_path is not None and timing_path.is_file():
            with contextlib.suppress(OSError):
                timing = timing_path.read_bytes()
        start = time.perf_counter()
        blob, new_timing = adapter.build(onnx_path, plan, int(workspace) << 20, timing)
        log.info("TensorRT engine built in %.1f s (%d bytes)", time.perf_counter() - start, len(blob))
        if timing_path is not None and new_timing:
            try:
                atomic_write(timing_path, bytes(new_timing))
            except OSError as exc:
                log.warning("TensorRT timing cache not saved to %s (%s)", timing_path, exc)
        runner = adapter.load(blob)
        if runner is None:
            raise BackendError(f"TensorRT built an engine for {onnx_path.name} that it cannot load")
        return runner, blob
