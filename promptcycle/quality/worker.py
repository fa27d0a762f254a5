"""Running the data-quality suites in a worker process.

Great Expectations costs ~250 MB of memory and 6-10 s to import. The pipeline process does not need
it for anything else, so the suites run in one long-lived worker process (spawned on first use and
reused for every later suite of this process). `warm_up()` starts the import early, in parallel
with other start-up work. Set PROMPTCYCLE_QUALITY_IN_PROCESS=1 to run the suites in-process.
"""

from __future__ import annotations

import atexit
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context

from promptcycle.quality.report import QualityReport

__all__ = ["warm_up", "validate_dataset", "validate_results"]

_lock = threading.Lock()
_executor: ProcessPoolExecutor | None = None


def _in_process() -> bool:
    return os.environ.get("PROMPTCYCLE_QUALITY_IN_PROCESS", "").lower() in {"1", "true", "yes"}


def _pool() -> ProcessPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))
            atexit.register(_executor.shutdown, wait=False, cancel_futures=True)
        return _executor


def _import_suites() -> None:
    import logging

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    from promptcycle.quality import suites

    suites._get_batch_definition()  # imports GX and builds the context once in the worker


def warm_up() -> Future | None:
    """Start importing Great Expectations in the worker now; later suites then start at once."""
    if _in_process():
        return None
    return _pool().submit(_import_suites)


def validate_dataset(*args, **kwargs) -> QualityReport:
    """`promptcycle.quality.validate_dataset`, run in the worker process."""
    from promptcycle.quality import suites

    if _in_process():
        return suites.validate_dataset(*args, **kwargs)
    return _pool().submit(suites.validate_dataset, *args, **kwargs).result()


def validate_results(*args, **kwargs) -> QualityReport:
    """`promptcycle.quality.validate_results`, run in the worker process."""
    from promptcycle.quality import suites

    if _in_process():
        return suites.validate_results(*args, **kwargs)
    return _pool().submit(suites.validate_results, *args, **kwargs).result()
