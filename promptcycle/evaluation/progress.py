"""Process-wide progress events for long evaluations.

The domain reports finished calls here; the CLI draws a progress bar (on a terminal) or prints plain
lines (off one) and the flow updates a Prefect progress artifact. Listeners are plain callables
`(done: int, total: int | None) -> None`; `snapshot()` adds the phase's name and its errors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ProgressListener", "ProgressSnapshot", "add_listener", "remove_listener", "report_total", "report_done",
           "snapshot"]

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
