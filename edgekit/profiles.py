"""The packaged device profiles: find, load and print them.

The schema and validation live in ``edgekit_runtime.profile``; this module only knows where the
packaged TOML files are and how `edgekit profiles` shows them.
"""

from __future__ import annotations

import os
from dataclasses import fields
from importlib import resources
from pathlib import Path

from edgekit_runtime.errors import ProfileError
from edgekit_runtime.profile import DeviceProfile, load_profile_file


def _profile_dir() -> Path:
    # pyproject maps device_profiles/ to the package edgekit.device_profiles; a plain source
    # checkout (no install) only has the folder beside the edgekit package.
    try:
        found = resources.files("edgekit.device_profiles")
    except ModuleNotFoundError:
        found = None
    if isinstance(found, Path) and found.is_dir():
        return found
    return Path(__file__).resolve().parent.parent / "device_profiles"


PROFILE_DIR = _profile_dir()


def profile_names() -> list[str]:
    """Names of the packaged profiles, sorted."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profiles() -> list[DeviceProfile]:
    """Every packaged profile, validated, sorted by name."""
    return [load_profile_file(PROFILE_DIR / f"{name}.toml") for name in profile_names()]


def _is_path(name_or_path: str) -> bool:
    seps = [os.sep] + ([os.altsep] if os.altsep else []) + ["/"]
    return name_or_path.endswith(".toml") or any(s in name_or_path for s in seps)


def resolve_profile(name_or_path: str) -> DeviceProfile:
    """A packaged profile by name, or a user's profile from a path to a .toml file."""
    if _is_path(name_or_path):
        return load_profile_file(Path(name_or_path).expanduser())
    names = profile_names()
    if name_or_path not in names:
        raise ProfileError(
            f"unknown device profile {name_or_path!r}. Fix: use one of {', '.join(names)}, "
            f"or pass a path to your own profile .toml (e.g. ./my-board.toml)."
        )
    return load_profile_file(PROFILE_DIR / f"{name_or_path}.toml")


def _sm(profile: DeviceProfile) -> str:
    return "sm_" + profile.compute_capability.replace(".", "") if profile.compute_capability else "-"


def format_profile_table(profiles: list[DeviceProfile]) -> str:
    """An aligned plain-text table of profiles, for `edgekit profiles`."""
    header = ("NAME", "DEVICE", "ARCH", "ACCEL", "BACKENDS", "DEFAULT", "PRECISIONS", "TOKENS", "TENSORRT", "SM")
    rows = [header] + [
        (p.name, p.device, p.architecture, p.accelerator, ",".join(p.backends), p.default_precision,
         ",".join(p.precisions), p.token_dtype, p.tensorrt or "-", _sm(p))
        for p in profiles
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ", ".join(value) if value else "(none)"
    if value is None:
        return "-"
    return str(value)


def format_profile(profile: DeviceProfile) -> str:
    """Every field of one profile, one per line, for `edgekit profiles show NAME`."""
    lines: list[tuple[str, str]] = []
    for f in fields(profile):
        value = getattr(profile, f.name)
        if f.name == "tolerances":
            for prec, tol in value.items():
                lines.append((f"tolerance {prec}", f"atol={tol.atol:g} rtol={tol.rtol:g}"))
        elif f.name == "compute_capability" and value:
            lines.append((f.name, f"{value} ({_sm(profile)})"))
        else:
            lines.append((f.name, _show(value)))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)
