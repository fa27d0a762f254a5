"""The data-quality suites, run in the data worker process (see promptcycle/dataworker.py).

Great Expectations costs ~250 MB and 6-10 s to import; the pipeline process never imports it.
`warm_up()` starts the worker early and, unless `gx=False`, that import in a thread of the worker.
"""

from __future__ import annotations

from pathlib import Path

from promptcycle import dataworker
from promptcycle.quality.report import QualityReport

__all__ = ["warm_up", "validate_dataset", "validate_results", "validate_run_results"]

warm_up = dataworker.warm_up


def _validate_dataset(cases, splits, *, spectrums, min_cases_per_spectrum, recorded_splits=None,
                      reuse_verdict: bool = True) -> QualityReport:
    from promptcycle.quality import suites, verdicts

    key = verdicts.dataset_key(cases, splits, spectrums=spectrums, min_cases_per_spectrum=min_cases_per_spectrum,
                               recorded_splits=recorded_splits)
    if reuse_verdict and verdicts.enabled() and (known := verdicts.load(key)) is not None:
        return known  # identical input passed this same suite before (see promptcycle/quality/verdicts.py)
    report = suites.validate_dataset(cases, splits, spectrums=spectrums, min_cases_per_spectrum=min_cases_per_spectrum,
                                     recorded_splits=recorded_splits)
    verdicts.save(key, report)
    return report


def _validate_results(*args, **kwargs) -> QualityReport:
    from promptcycle.quality import suites

    return suites.validate_results(*args, **kwargs)


def _validate_run_results(store_path: str, run_id: str, scorer_names: list[str], **kwargs) -> QualityReport:
    from promptcycle.quality import suites
    from promptcycle.store.remote import open_store

    frame = open_store(store_path).results_frame(run_id, scorers=scorer_names, text=False)  # the suite reads no text
    return suites.validate_results(frame, scorer_names=scorer_names, **kwargs)


def validate_dataset(*args, **kwargs) -> QualityReport:
    """`promptcycle.quality.validate_dataset`, run in the data worker.

    A passing verdict on identical input is reused (promptcycle/quality/verdicts.py) unless
    `reuse_verdict=False`; every verdict computed here is kept for that."""
    return dataworker.call(_validate_dataset, *args, **kwargs)


def validate_results(*args, **kwargs) -> QualityReport:
    """`promptcycle.quality.validate_results`, run in the data worker."""
    return dataworker.call(_validate_results, *args, **kwargs)


def validate_run_results(store_path: str | Path, run_id: str, *, scorer_names: list[str], **kwargs) -> QualityReport:
    """The results suite over a stored run, read and validated inside the data worker."""
    return dataworker.call(_validate_run_results, str(store_path), run_id, list(scorer_names), **kwargs)
