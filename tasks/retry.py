"""The retry policy Prefect tasks share: retry only what another attempt may fix."""

from __future__ import annotations

from prefect.tasks import exponential_backoff

from promptcycle.errors import StoreError, StorePathError, is_retryable

__all__ = ["retry_if_transient", "BACKOFF", "final_attempt"]

BACKOFF = exponential_backoff(backoff_factor=2)


def _exception_of(state) -> BaseException | None:
    # Prefect hands the engine's exception over as Failed(data=exc). `state.result()` is not the way
    # to get it: inside an async task it returns a coroutine, and the check would silently say "no".
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return data
    result = state.result(raise_on_failure=False, _sync=True)
    return result if isinstance(result, BaseException) else None


def retry_if_transient(task, task_run, state) -> bool:
    """A plain function (Prefect ignores partials here): retry provider hiccups and store lock timeouts."""
    exc = _exception_of(state)
    return exc is not None and (is_retryable(exc) or (isinstance(exc, StoreError)
                                                       and not isinstance(exc, StorePathError)))


def final_attempt(retries: int) -> bool:
    """True on a task's last allowed attempt (so failures are recorded instead of deferred)."""
    from prefect.runtime import task_run

    run_count = task_run.run_count or 1
    return run_count >= retries + 1
