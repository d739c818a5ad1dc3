"""The task adapter boundary: everything task-specific the one compiler and its stages need.

A new task (token classification, extractive QA) is one adapter module in edgekit/tasks/ (its
pass list, built from the stages' handlers, and the model-side hooks below) plus one
post-processor in the runtime; the run loop, preflight and bundle writer never branch on the task.
A leaf module: the stages import it for their type hints, it imports no stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class ExportIO:
    """Names and dynamic axes of the exported graph, in the model's forward order."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]


class TaskAdapter(Protocol):
    name: str  # the task word used in recipes and in the manifest
    context_name: str  # the recipe key that bounds a sequence (max_length, max_context), for errors
    context_flag: str  # where the user sets it, for errors
    PASSES: dict[str, Callable[[Any], Any]]  # pass name -> handler (CompileState -> PassResult)

    # -- the compile --------------------------------------------------------------------------------

    def pass_names(self, recipe: Any) -> list[str]:
        """The passes this recipe runs, in order."""

    def max_context(self, recipe: Any, profile: Any) -> int:
        """The bundle's sequence limit; preflight checks it against the profile."""

    def preflight(self, recipe: Any, profile: Any) -> None:
        """This task's checks before any training (the shared ones are in compiler.target)."""

    def default_out(self, profile: Any) -> Path:
        """The bundle directory when the recipe names none."""

    def bundle_files(self, state: Any) -> dict[str, Any]:
        """Bundle name -> path or bytes."""

    def manifest(self, state: Any) -> dict[str, Any]:
        """Every manifest section except ``files``."""

    def extra_ops(self, target: Any) -> frozenset[tuple[str, str]]:
        """(domain, op) pairs beyond the ONNX domain this task's graph may use on the target."""

    def plan(self, state: Any) -> str:
        """`--plan`: what the compile would cut, before anything is trained."""

    # -- the model ----------------------------------------------------------------------------------

    def load_model(self, path: str, label_names: Sequence[str]) -> torch.nn.Module:
        """Load the model with this task's head (eager attention: opset 13 needs it)."""

    def collate(self, tokenizer: Any, texts: Sequence[str], labels: Sequence[int] | None,
                max_length: int) -> dict[str, torch.Tensor]:
        """Tokenize a batch (dynamic padding); includes ``labels`` when given."""

    def model_inputs(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The subset of ``batch`` the model's forward and the graph take."""

    def loss(self, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The supervised task loss."""

    def predictions(self, outputs: Any) -> torch.Tensor:
        """The raw output compared across PyTorch and ONNX (e.g. logits)."""

    def metrics(self, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Quality figures; the first key is the headline metric."""

    def export_io(self, model: torch.nn.Module, tokenizer: Any) -> ExportIO:
        """Graph inputs/outputs for export."""

    def manifest_task(self, label_names: Sequence[str]) -> dict[str, Any]:
        """The manifest's ``task`` section that the runtime's post-processor reads."""
