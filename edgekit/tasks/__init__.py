"""Task adapters, by the task word recipes use."""

from __future__ import annotations

from edgekit_runtime.errors import EdgekitError

from ..compiler.adapter import ExportIO, TaskAdapter
from .causal_lm import CausalLM
from .sequence_classification import SequenceClassification

TASKS: dict[str, TaskAdapter] = {SequenceClassification.name: SequenceClassification(), CausalLM.name: CausalLM()}


def get_task(name: str) -> TaskAdapter:
    try:
        return TASKS[name]
    except KeyError:
        raise EdgekitError(f"unknown task {name!r}. Fix: use one of {sorted(TASKS)}.") from None


__all__ = ["ExportIO", "TaskAdapter", "TASKS", "get_task"]
