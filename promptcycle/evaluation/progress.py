"""Process-wide progress events for long evaluations.

The domain reports finished calls here; the CLI draws a progress bar and the flow updates a Prefect
progress artifact. Listeners are plain callables `(done: int, total: int | None) -> None`. Notes
(one line saying what the process is doing, e.g. that it resumes a run) go to note listeners.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["ProgressListener", "add_listener", "remove_listener", "report_total", "report_done",
           "add_note_listener", "remove_note_listener", "report_note"]

ProgressListener = Callable[[int, "int | None"], None]

_lock = threading.Lock()
_listeners: list[ProgressListener] = []
_state = {"done": 0, "total": None}
_note_listeners: list[Callable[[str], None]] = []


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


def add_note_listener(listener: Callable[[str], None]) -> None:
    with _lock:
        _note_listeners.append(listener)


def remove_note_listener(listener: Callable[[str], None]) -> None:
    with _lock:
        if listener in _note_listeners:
            _note_listeners.remove(listener)


def report_note(text: str) -> None:
    with _lock:
        listeners = list(_note_listeners)
    for listener in listeners:
        listener(text)
