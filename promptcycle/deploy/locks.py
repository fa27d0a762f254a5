"""One deployment per pipeline at a time: a lock with a lease, kept in the metrics store.

    with deployment_lock(store, "customer-insights", holder=deployment_id, lease_seconds=900):
        ...  # validate, write the targets, move the labels

Taking the lock is one store transaction, and the store holds the file exclusively for it, so two
deployments — in two threads, two processes or two machines sharing the file — cannot both take
it: the second gets `DeploymentConflictError` naming the holder and when its lease ends. A holder
that dies does not block the pipeline forever: once its lease has expired the next deployment takes
the lock over. Long work renews the lease (`renew_lock`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from promptcycle.errors import DeploymentConflictError
from promptcycle.store import MetricsStore

__all__ = ["DeploymentConflictError", "take_lock", "renew_lock", "release_lock", "deployment_lock"]




def take_lock(store: MetricsStore, pipeline: str, holder: str, lease_seconds: float, *,
              wait_seconds: float = 0.0) -> dict[str, Any]:
    """Take the pipeline's deployment lock for `holder`, waiting up to `wait_seconds` for it to come free.

    Raises `DeploymentConflictError` naming the current holder when it does not.
    """
    deadline = time.monotonic() + wait_seconds
    delay = 0.05
    while True:
        row = store.acquire_deploy_lock(pipeline, holder, lease_seconds)
        if row["holder"] == holder:
            return row
        if time.monotonic() >= deadline:
            raise DeploymentConflictError(
                f"pipeline {pipeline!r} is being deployed by {row['holder']} (since "
                f"{row['acquired_at']:%Y-%m-%d %H:%M:%S} UTC, lease until {row['expires_at']:%H:%M:%S} UTC); "
                "this deployment was refused — wait for it to finish and try again")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def renew_lock(store: MetricsStore, pipeline: str, holder: str, lease_seconds: float) -> dict[str, Any]:
    """Extend `holder`'s lease; `DeploymentConflictError` if another deployment took the lock over meanwhile."""
    row = store.acquire_deploy_lock(pipeline, holder, lease_seconds)
    if row["holder"] != holder:
        raise DeploymentConflictError(f"the deployment lock of {pipeline!r} was taken over by {row['holder']} after "
                                      f"{holder}'s lease expired; this deployment stops here")
    return row


def release_lock(store: MetricsStore, pipeline: str, holder: str) -> bool:
    """Give the lock back (a no-op when `holder` no longer holds it)."""
    return store.release_deploy_lock(pipeline, holder)


@contextmanager
def deployment_lock(store: MetricsStore, pipeline: str, holder: str, lease_seconds: float, *,
                    wait_seconds: float = 0.0) -> Iterator[dict[str, Any]]:
    """Hold the pipeline's deployment lock for the duration of the block."""
    row = take_lock(store, pipeline, holder, lease_seconds, wait_seconds=wait_seconds)
    try:
        yield row
    finally:
        release_lock(store, pipeline, holder)
