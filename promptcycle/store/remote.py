"""The metrics store as the pipeline process sees it: a proxy to the store in the data worker.

`open_store(path)` returns an object with MetricsStore's methods; each call runs in the data worker
process (see promptcycle/dataworker.py) and returns its (picklable) result. Exceptions, StoreError
included, come back as raised by the worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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


_holds: dict[str, list[contextlib.ExitStack]] = {}  # in the worker: the open holds per path, innermost last


def _hold(path: str) -> None:
    stack = contextlib.ExitStack()
    stack.enter_context(_store(path).held_open())
    _holds.setdefault(path, []).append(stack)


def _unhold(path: str) -> None:
    holds = _holds.get(path)
    if holds:
        holds.pop().close()


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

    @contextlib.contextmanager
    def held_open(self) -> Iterator[None]:
        """`MetricsStore.held_open` in the worker: the file stays open across the calls made inside (from
        this process), so a burst of them costs one open, not one each. Hold it for a burst, not for long:
        other processes cannot open the file meanwhile."""
        dataworker.call(_hold, str(self.path))
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):  # the error that ended the burst is the one to report
                dataworker.call(_unhold, str(self.path))
            raise
        dataworker.call(_unhold, str(self.path))

    def __repr__(self) -> str:
        return f"RemoteStore({str(self.path)!r})"


def open_store(path: str | Path):
    """The store at `path`: in this process when PROMPTCYCLE_DATA_IN_PROCESS=1, else in the data worker."""
    if dataworker.in_process():
        return _store(str(Path(path).resolve()))
    return RemoteStore(path)
