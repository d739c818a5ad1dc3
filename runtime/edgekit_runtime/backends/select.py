"""Inference backends and the choice between them.

The profile lists backends in preference order. ``select_backend`` tries each: a backend whose
provider this machine lacks is skipped, one that fails to build a session or to run a smoke
inference falls back to the next, and every skip is logged with its reason. If none works the
error lists every reason. A session that onnxruntime silently moved to another provider counts
as a failure: a Jetson profile must not quietly become a CPU run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from ..errors import BackendError, BundleError
from ..profile import DeviceProfile
from .base import ORT_PROVIDERS, Backend, Skip, log
from .ort import OrtBackend, smoke_feeds
from .tensorrt import TensorRTBackend, workspace_mb


def _create(word: str, model_path: Path, available: Sequence[str], threads: int | None, quantized: bool, *,
            engine_plan: Mapping | None = None, model_sha256: str | None = None,
            memory_budget_mb: int | None = None) -> Backend:
    if word == "tensorrt":

        return TensorRTBackend(model_path, engine_plan, model_sha256=model_sha256, memory_budget_mb=memory_budget_mb)
    if word not in ORT_PROVIDERS:
        raise Skip(f"unknown backend word; this runtime knows ['tensorrt', {', '.join(map(repr, ORT_PROVIDERS))}]")
    provider = ORT_PROVIDERS[word]
    if provider not in available:
        raise Skip(f"{provider} is not available in this onnxruntime (available: {list(available)}); "
                    f"install the onnxruntime build that has it (onnxruntime-gpu, or the JetPack wheel on a Jetson)")
    workspace = None
    if provider == "TensorrtExecutionProvider" and memory_budget_mb:

        workspace = workspace_mb(memory_budget_mb)
    return OrtBackend(word, model_path, threads=threads, available_providers=available, quantized=quantized,
                      engine_plan=engine_plan, model_sha256=model_sha256, workspace_mb=workspace)


def select_backend(model_path: str | Path, profile: DeviceProfile, available_providers: Sequence[str] | None = None,
                   threads: int | None = None, *, backends: Sequence[str] | None = None,
                   feed_builder: Callable[[Backend], Mapping[str, np.ndarray]] | None = None,
                   quantized: bool = False, engine_plan: Mapping | None = None,
                   model_sha256: str | None = None) -> tuple[Backend, list[str]]:
    """The first of the profile's backends (or ``backends``) that builds and passes a smoke run.

    Returns the backend and the reasons the earlier ones were passed over. ``feed_builder``
    makes the smoke feed from the backend (default: ``smoke_feeds``); a BundleError it raises
    is the bundle's fault, not the backend's, and is not turned into a fallback. ``quantized``
    says the graph is QDQ int8 (the manifest's model.precision), which changes onnxruntime's CPU
    session options (see ``ort_session``). ``engine_plan`` (the manifest's, checked) drives the
    TensorRT backends: precision flags, min/opt/max shapes, workspace; ``model_sha256`` (the
    manifest's for the model file; default: hashed from the file) keys their engine caches.
    """
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads <= 0):
        raise BackendError(f"threads={threads!r}: expected a positive integer. Fix: pass e.g. threads=4, or None "
                           f"for onnxruntime's default.")
    model_path = Path(model_path)
    available = list(ort.get_available_providers() if available_providers is None else available_providers)
    order = tuple(profile.backends if backends is None else backends)
    reasons: list[str] = []
    for word in order:
        try:
            backend = _create(word, model_path, available, threads, quantized, engine_plan=engine_plan,
                              model_sha256=model_sha256, memory_budget_mb=profile.memory_budget_mb)
            feeds = feed_builder(backend) if feed_builder else smoke_feeds(backend.inputs)
            outputs = backend.run(feeds)
            for name, value in outputs.items():
                if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                    raise BackendError(f"smoke inference gave NaN or inf in output {name!r}")
        except BundleError:
            raise
        except Skip as exc:
            reason = f"{word}: skipped: {exc}"
        except Exception as exc:  # session creation and inference errors come in many types
            reason = f"{word}: failed: {type(exc).__name__}: {exc}"
        else:
            log.info("backend %s selected for %s (profile %s)", word, model_path.name, profile.name)
            return backend, reasons
        log.warning("%s", reason)
        reasons.append(reason)
    raise BackendError(f"{model_path}: none of the backends {list(order)} of profile '{profile.name}' can run here:\n  "
                       + "\n  ".join(reasons)
                       + "\nFix: install the onnxruntime build with the needed provider, or run a bundle compiled "
                         "for a profile that matches this machine.")
