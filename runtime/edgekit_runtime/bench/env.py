"""The environment a benchmark ran in, read from the system; a field it cannot read is None.

Nothing is inferred from anything else: on a Jetson the L4T release comes from
/etc/nv_tegra_release, JetPack from the nvidia-jetpack package (dpkg), the power mode from
``nvpmodel -q``, TensorRT from the importable ``tensorrt`` module; each is None where its source is
missing (no JetPack guessed from L4T, no CPU model guessed from the architecture).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy

from .. import __version__

ENV_KEYS = ("cpu_model", "cpu_cores", "cpu_usable_cores", "memory_total_mb", "os", "os_release", "distro",
            "architecture", "python", "numpy", "onnxruntime", "onnxruntime_providers", "tokenizers",
            "edgekit_runtime", "tensorrt", "gpu", "git_commit", "jetson")
JETSON_KEYS = ("model", "l4t", "jetpack", "tensorrt", "power_mode")


def _read(root: Path, path: str) -> str | None:
    try:
        return (root / path.lstrip("/")).read_text(errors="replace")
    except OSError:
        return None


def _run(which: Callable[[str], str | None], *cmd: str, timeout: float = 5.0) -> str | None:
    """stdout of a command that exists and exits 0, else None."""
    exe = which(cmd[0])
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _cpu_model(root: Path, which) -> str | None:
    info = _read(root, "/proc/cpuinfo") or ""
    for key in ("model name", "Model Name", "Processor", "Hardware"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", info, re.MULTILINE)
        if m and m.group(1).strip():
            return m.group(1).strip()
    out = _run(which, "lscpu")
    if out:
        m = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
        if m and m.group(1).strip() not in ("", "-"):
            return m.group(1).strip()
    return None


def _meminfo_mb(root: Path) -> float | None:
    m = re.search(r"^MemTotal:\s*(\d+)\s*kB", _read(root, "/proc/meminfo") or "", re.MULTILINE)
    return round(int(m.group(1)) / 1024, 1) if m else None


def _distro(root: Path) -> str | None:
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', _read(root, "/etc/os-release") or "", re.MULTILINE)
    return m.group(1) if m else None


def _module_version(name: str) -> str | None:
    if name in sys.modules:
        return getattr(sys.modules[name], "__version__", None)
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        module = __import__(name)
    except Exception:  # an installed but broken package: say nothing rather than guess
        return None
    return getattr(module, "__version__", None)


def l4t_release(text: str | None) -> str | None:
    """'# R35 (release), REVISION: 4.1, ...' -> '35.4.1'."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def power_mode(text: str | None) -> dict[str, Any] | None:
    """`nvpmodel -q` output ('NV Power Mode: MAXN' then the mode id) -> {'name', 'id'}."""
    m = re.search(r"NV Power Mode:\s*(\S+)", text or "")
    if not m:
        return None
    mode_id = re.search(r"^\s*(\d+)\s*$", text[m.end():], re.MULTILINE)
    return {"name": m.group(1), "id": int(mode_id.group(1)) if mode_id else None}


def jetson_info(root: Path = Path("/"), which: Callable[[str], str | None] = shutil.which,
                tensorrt: str | None = None) -> dict[str, Any] | None:
    """None unless this is a Jetson (/etc/nv_tegra_release, or a device-tree model naming NVIDIA Jetson)."""
    release = _read(root, "/etc/nv_tegra_release")
    model = (_read(root, "/proc/device-tree/model") or "").replace("\x00", "").strip() or None
    if release is None and not (model and re.search(r"jetson|nvidia", model, re.IGNORECASE)):
        return None
    jetpack = _run(which, "dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack")
    return {"model": model, "l4t": l4t_release(release), "jetpack": (jetpack or "").strip() or None,
            "tensorrt": tensorrt, "power_mode": power_mode(_run(which, "nvpmodel", "-q"))}


def _gpu(which) -> list[str] | None:
    out = _run(which, "nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
    return [line.strip() for line in out.splitlines() if line.strip()] if out else None


def _git_commit(which) -> str | None:
    here = Path(__file__).resolve().parent
    out = _run(which, "git", "-C", str(here), "rev-parse", "--short", "HEAD")
    return out.strip() if out else None


def environment(root: str | Path = "/", which: Callable[[str], str | None] = shutil.which) -> dict[str, Any]:
    """The record every result carries (``ENV_KEYS``). ``root`` and ``which`` exist for tests."""
    import onnxruntime


    root = Path(root)
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    tensorrt = _module_version("tensorrt")
    return {
        "cpu_model": _cpu_model(root, which),
        "cpu_cores": os.cpu_count(),
        "cpu_usable_cores": usable,
        "memory_total_mb": _meminfo_mb(root),
        "os": platform.system() or None,
        "os_release": platform.release() or None,
        "distro": _distro(root),
        "architecture": platform.machine() or None,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": list(onnxruntime.get_available_providers()),
        "tokenizers": _module_version("tokenizers"),
        "edgekit_runtime": __version__,
        "tensorrt": tensorrt,
        "gpu": _gpu(which),
        "git_commit": _git_commit(which),
        "jetson": jetson_info(root, which, tensorrt),
    }
