"""Which sections a bundle's page gets: one Report subclass per task, chosen by the manifest's task name.

A task's sections are one module of this package holding a subclass of page.Report whose ``task``
is the task's name (the word recipes and manifests use): sequence_classification.py, causal_lm.py.
A new task (token classification, QA) adds its module and its class to PAGES below. A manifest
whose task no page claims, or that names none, gets DEFAULT's page.
"""

from __future__ import annotations

from typing import Any

from .causal_lm import LMReport
from .page import Report
from .sequence_classification import SequenceClassificationReport

PAGES: dict[str, type[Report]] = {page.task: page for page in (SequenceClassificationReport, LMReport)}
DEFAULT = SequenceClassificationReport.task


def page_for(task: Any) -> type[Report]:
    """The Report subclass for a manifest's task name; DEFAULT's for an unknown or missing one."""
    return PAGES.get(task, PAGES[DEFAULT]) if isinstance(task, str) else PAGES[DEFAULT]
