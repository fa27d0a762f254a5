"""The retry policy Prefect tasks share: retry only what another attempt may fix."""

from __future__ import annotations

from prefect.tasks import exponential_backoff

from promptcycle.errors import StoreError, is_retryable

__all__ = ["retry_if_transient", "BACKOFF", "final_attempt"]

BACKOFF = exponential_backoff(backoff_factor=2)


def retry_if_transient(task, task_run, state) -> bool:
    """A plain function (Prefect ignores partials here): retry provider hiccups and store lock timeouts."""
    try:
        state.result(raise_on_failure=True)
    except Exception as exc:  # noqa: BLE001 - we classify, not handle
        return is_retryable(exc) or isinstance(exc, StoreError)
    return False


def final_attempt(retries: int) -> bool:
    """True on a task's last allowed attempt (so failures are recorded instead of deferred)."""
    from prefect.runtime import task_run

    run_count = task_run.run_count or 1
    return run_count >= retries + 1
