"""Shared config plumbing: the recipe error, value checks, and nested-dataclass building."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

from edgekit_runtime.errors import EdgekitError


class RecipeError(EdgekitError):
    """A recipe value is invalid."""


def require(ok: bool, section: str, key: str, value: Any, reason: str, fix: str) -> None:
    if not ok:
        raise RecipeError(f"recipe [{section}] {key} = {value!r}: {reason}. Fix: {fix}")


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass type inside ``hint`` (``X``, ``X | None``), if any."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def build_config(cls: type, section: str, values: Mapping[str, Any]):
    """Build dataclass ``cls`` from plain data, recursing into nested config tables."""
    if isinstance(values, cls):
        return values
    if not isinstance(values, Mapping):
        raise RecipeError(f"recipe [{section}] must be a table, got {values!r}. Fix: write it as [{section}] "
                          f"with keys under it.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise RecipeError(f"recipe [{section}]: unknown key '{unknown[0]}'. Fix: use one of {sorted(names)}.")
    kwargs = {}
    for key, value in values.items():
        sub = _dataclass_in(hints.get(key))
        child = key if section == "recipe" else f"{section}.{key}"
        kwargs[key] = build_config(sub, child, value) if sub and isinstance(value, Mapping) else value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise RecipeError(f"recipe [{section}]: {exc}. Fix: check the value types.") from None
