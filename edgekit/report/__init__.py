"""`edgekit report` (one self-contained HTML page about a bundle) and the summary a compile prints.

    writer.py      write_report: check the bundle, pick the task's page, render it, write the file
    registry.py    PAGES / page_for: the manifest's task name -> that task's Report subclass
    page.py        Report: the page around the sections, the shared facts, the environment section
    sequence_classification.py, causal_lm.py
                   one section set per task (a Report subclass each)
    training.py, latency.py
                   section mixins an encoder task's page reuses (loss curves; latency, trade-off)
    parts.py       section list, colours, HTML primitives (every string escaped)
    plots.py       matplotlib (Agg) helpers, PNGs inlined as data URIs
    inputs.py      readers of training/*.jsonl and `edgekit-run bench` results; the task's metric order
    summary.py     format_summary / format_lm_summary: the terminal table after a compile

Imports run one way: parts <- plots, inputs <- page, training, latency <- the task pages <- registry
<- writer (summary stands alone); no module of the package imports this __init__.
"""

from __future__ import annotations

from .causal_lm import LMReport
from .inputs import latency_samples, read_bench
from .page import Report
from .parts import NOT_RECORDED, SECTIONS
from .registry import DEFAULT, PAGES, page_for
from .sequence_classification import SequenceClassificationReport
from .summary import format_lm_summary, format_summary
from .writer import write_report

__all__ = ["DEFAULT", "LMReport", "NOT_RECORDED", "PAGES", "Report", "SECTIONS", "SequenceClassificationReport",
           "format_lm_summary", "format_summary", "latency_samples", "page_for", "read_bench", "write_report"]
