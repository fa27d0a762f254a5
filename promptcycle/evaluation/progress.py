"""Process-wide progress events for long evaluations.

The domain reports finished calls here; the CLI draws a progress bar (on a terminal) or prints plain
lines (off one) and the flow updates a Prefect progress artifact. Listeners are plain callables
`(done: int, total: int | None) -> None`; `snapshot()` adds the phase's name and its errors. Notes
(one line saying what the process is doing, e.g. that it resumes a run) go to note listeners.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ProgressListener", "ProgressSnapshot", "add_listener", "remove_listener", "report_total", "report_done",
           "snapshot", "add_note_listener", "remove_note_listener", "report_note"]

ProgressListener = Callable[[int, "int | None"], None]

_lock = threading.Lock()
_listeners: list[ProgressListener] = []
_state: dict = {"done": 0, "total": None, "errors": 0, "phase": "calls"}


@dataclass(frozen=True)
class ProgressSnapshot:
    """Where the current measure of work stands."""

    phase: str
    done: int
    total: int | None
    errors: int

    def line(self) -> str:
        """A plain progress line, e.g. "screening on dev: 1,234/5,000 calls, 3 errors"."""
        total = f"/{self.total:,}" if self.total is not None else ""
        errors = f", {self.errors:,} error{'' if self.errors == 1 else 's'}"
        return f"{self.phase}: {self.done:,}{total} calls{errors}"


_note_listeners: list[Callable[[str], None]] = []


def add_listener(listener: ProgressListener) -> None:
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: ProgressListener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def report_total(total: int, phase: str = "calls") -> None:
    """Start a new measure of work: `total` units of the named phase (e.g. "screening on dev"), none done."""
    with _lock:
        _state.update(done=0, total=total, errors=0, phase=phase)
        listeners = list(_listeners)
    for listener in listeners:
        listener(0, total)


def report_done(n: int = 1, *, errors: int = 0) -> None:
    """`n` units finished, `errors` of them with a recorded terminal error."""
    with _lock:
        _state["done"] += n
        _state["errors"] += errors
        done, total = _state["done"], _state["total"]
        listeners = list(_listeners)
    for listener in listeners:
        listener(done, total)


def snapshot() -> ProgressSnapshot:
    with _lock:
        return ProgressSnapshot(phase=_state["phase"], done=_state["done"], total=_state["total"],
                                errors=_state["errors"])


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
