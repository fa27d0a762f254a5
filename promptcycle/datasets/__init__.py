"""Test cases: the `Case` model, loading from the bundled dataset or files, and splits."""

from promptcycle.datasets.cases import SPLITS, Case
from promptcycle.datasets.loaders import (
    BUNDLED_PREFIX,
    SUPPORTED_EXTENSIONS,
    bundled_datasets,
    dataset_hash,
    limit_cases,
    load_cases,
)
from promptcycle.datasets.splits import assign_splits, split_counts

__all__ = [
    "Case",
    "SPLITS",
    "load_cases",
    "dataset_hash",
    "limit_cases",
    "bundled_datasets",
    "BUNDLED_PREFIX",
    "SUPPORTED_EXTENSIONS",
    "assign_splits",
    "split_counts",
]
