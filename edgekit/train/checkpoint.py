"""What a training pass leaves in the work directory so that ``--resume`` after a crash (kill -9
included) continues from it: written to a temporary name, then renamed, so a file that exists is whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def save_module(path: Path, module: torch.nn.Module, figures: dict[str, Any]) -> None:
    """The whole module (a pruned model's shapes differ from its config's defaults) and its pass figures."""
    tmp = path.with_suffix(".tmp")
    torch.save({"module": module, "figures": figures}, tmp)
    tmp.replace(path)


def load_module(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A module this compile saved itself into its own work directory (so unpickling it is trusted)."""
    saved = torch.load(path, weights_only=False)
    return saved["module"], saved["figures"]
