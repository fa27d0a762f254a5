"""Process-wide progress events for long evaluations.

The domain reports finished calls here; the CLI draws a progress bar and the flow updates a Prefect
progress artifact. Listeners are plain callables `(done: int, total: int | None) -> None`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["ProgressListener", "add_listener", "remove_listener", "report_total", "report_done"]

ProgressListener = Callable[[int, "int | None"], None]

_lock = threading.Lock()
_listeners: list[ProgressListener] = []
_state = {"done": 0, "total": None}


def add_listener(listener: ProgressListener) -> None:
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: ProgressListener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def report_total(total: int) -> None:
    """Start a new measure of work: `total` units, none done."""
    with _lock:
        _state["done"], _state["total"] = 0, total
        listeners = list(_listeners)
    for listener in listeners:
        listener(0, total)


def report_done(n: int = 1) -> None:
    with _lock:
        _state["done"] += n
        done, total = _state["done"], _state["total"]
        listeners = list(_listeners)
    for listener in listeners:
        listener(done, total)
