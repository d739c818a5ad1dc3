"""Labelled text data: loading and cleaning, splits, and the demo corpus."""

from edgekit.data.demo import demo_corpus_path, demo_teacher_path
from edgekit.data.loading import (
    SUPPORTED_FORMATS,
    DataError,
    LoadReport,
    TextDataset,
    clean_text,
    load_labelled,
    repair_mojibake,
)
from edgekit.data.split import Splits, cap, split_dataset

__all__ = [
    "SUPPORTED_FORMATS",
    "DataError",
    "LoadReport",
    "Splits",
    "TextDataset",
    "cap",
    "clean_text",
    "demo_corpus_path",
    "demo_teacher_path",
    "load_labelled",
    "repair_mojibake",
    "split_dataset",
]
