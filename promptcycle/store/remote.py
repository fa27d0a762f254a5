"""The metrics store as the pipeline process sees it: a proxy to the store in the data worker.

`open_store(path)` returns an object with MetricsStore's methods; each call runs in the data worker
process (see promptcycle/dataworker.py) and returns its (picklable) result. Exceptions, StoreError
included, come back as raised by the worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from promptcycle import dataworker

__all__ = ["RemoteStore", "open_store"]

_stores: dict[str, Any] = {}  # in the worker: one MetricsStore per path


def _store(path: str) -> Any:
    store = _stores.get(path)
    if store is None:
        from promptcycle.store.metrics import MetricsStore

        store = _stores[path] = MetricsStore(path)
    return store


def _call_store(path: str, method: str, args: tuple, kwargs: dict) -> Any:
    return getattr(_store(path), method)(*args, **kwargs)


class RemoteStore:
    """MetricsStore's interface, served by the data worker."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        def remote(*args: Any, **kwargs: Any) -> Any:
            return dataworker.call(_call_store, str(self.path), method, args, kwargs)

        remote.__name__ = method
        return remote

    def __repr__(self) -> str:
        return f"RemoteStore({str(self.path)!r})"


def open_store(path: str | Path):
    """The store at `path`: in this process when PROMPTCYCLE_DATA_IN_PROCESS=1, else in the data worker."""
    if dataworker.in_process():
        return _store(str(Path(path).resolve()))
    return RemoteStore(path)
