"""The task adapter boundary: everything task-specific the generic stages need.

A new task (token classification, extractive QA, causal LM) is one new adapter here plus one
post-processor in ``edgekit_runtime.tasks``; nothing else in the pipeline branches on the task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

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
