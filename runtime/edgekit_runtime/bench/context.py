"""What every run kind of a suite gets: the bundle, the loaded model, the suite and where results go."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Context:
    """One bundle under test: the loaded model and how it was loaded."""

    label: str
    bundle: str
    model: Any
    threads: int | None
    backend: str | None  # the backend asked for (None: the profile's first that works)
    progress: Callable[[str], None] = lambda line: None
    verbose: bool = False
    extra: dict = field(default_factory=dict)
