"""The data-quality suites, run in the data worker process (see promptcycle/dataworker.py).

Great Expectations costs ~250 MB and 6-10 s to import; the pipeline process never imports it.
`warm_up()` starts that import early, in parallel with Prefect's start-up.
"""

from __future__ import annotations

from pathlib import Path

from promptcycle import dataworker
from promptcycle.quality.report import QualityReport

__all__ = ["warm_up", "validate_dataset", "validate_results", "validate_run_results"]

warm_up = dataworker.warm_up


def _validate_dataset(*args, **kwargs) -> QualityReport:
    from promptcycle.quality import suites

    return suites.validate_dataset(*args, **kwargs)


def _validate_results(*args, **kwargs) -> QualityReport:
    from promptcycle.quality import suites

    return suites.validate_results(*args, **kwargs)


def _validate_run_results(store_path: str, run_id: str, scorer_names: list[str], **kwargs) -> QualityReport:
    from promptcycle.quality import suites
    from promptcycle.store.remote import open_store

    frame = open_store(store_path).results_frame(run_id, scorers=scorer_names)
    return suites.validate_results(frame, scorer_names=scorer_names, **kwargs)


def validate_dataset(*args, **kwargs) -> QualityReport:
    """`promptcycle.quality.validate_dataset`, run in the data worker."""
    return dataworker.call(_validate_dataset, *args, **kwargs)


def validate_results(*args, **kwargs) -> QualityReport:
    """`promptcycle.quality.validate_results`, run in the data worker."""
    return dataworker.call(_validate_results, *args, **kwargs)


def validate_run_results(store_path: str | Path, run_id: str, *, scorer_names: list[str], **kwargs) -> QualityReport:
    """The results suite over a stored run, read and validated inside the data worker."""
    return dataworker.call(_validate_run_results, str(store_path), run_id, list(scorer_names), **kwargs)
