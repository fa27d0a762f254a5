"""A circuit breaker per provider: stop calling a provider that keeps failing, probe it after a cool-down.

    closed ──(failure_threshold consecutive failed attempts)──▶ open
    open ──(reset_seconds elapsed)──▶ half-open: one probe attempt goes through, others are rejected
    half-open ──probe succeeds──▶ closed        half-open ──probe fails──▶ open (cool-down restarts)

While open, `check()` raises `CircuitOpenError` at once, carrying `retry_after` = the seconds left
until the breaker half-opens, so callers fail fast instead of queueing behind a dead endpoint.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from promptcycle.errors import CircuitOpenError

__all__ = ["CircuitBreaker", "BreakerState"]

BreakerState = Literal["closed", "open", "half_open"]

logger = logging.getLogger("promptcycle.providers")


class CircuitBreaker:
    """Counts consecutive failed attempts of one provider and rejects calls while it is open."""

    def __init__(self, failure_threshold: int, reset_seconds: float, *, name: str = ""):
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, found {failure_threshold!r}")
        if reset_seconds <= 0:
            raise ValueError(f"reset_seconds must be > 0, found {reset_seconds!r}")
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self.name = name
        self.failures = 0  # consecutive failed attempts
        self._opened_at: float | None = None
        self._probing = False
        self.last_failure = ""  # why the last failed attempt failed (already scrubbed of secrets by the caller)

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._probing or time.monotonic() - self._opened_at >= self.reset_seconds:
            return "half_open"
        return "open"

    def check(self) -> bool:
        """Allow one attempt or raise `CircuitOpenError`.

        Returns True when the allowed attempt is the half-open probe: the caller must then report its
        outcome with `record_success`, `record_failure` or (when it ended without one) `release_probe`.
        """
        opened_at = self._opened_at
        if opened_at is None:
            return False
        if opened_at + self.reset_seconds - time.monotonic() > 0:
            raise self.rejection()
        if self._probing:
            # Another attempt is probing; its outcome decides. Suggest a short wait, not the full cool-down.
            raise CircuitOpenError(f"{self.name}: circuit half-open, a probe request is in flight",
                                   provider=self.name or None, retry_after=min(1.0, self.reset_seconds))
        self._probing = True
        return True

    def rejection(self) -> CircuitOpenError:
        """The error a call meets while the breaker is open (it says why it opened)."""
        remaining = max(0.0, (self._opened_at or 0.0) + self.reset_seconds - time.monotonic())
        last = f"; last: {self.last_failure}" if self.last_failure else ""
        return CircuitOpenError(f"{self.name}: circuit open after {self.failures} consecutive failures; "
                                f"retry in {remaining:.1f} s{last}", provider=self.name or None,
                                retry_after=remaining)

    def record_success(self) -> None:
        """The provider answered: close the breaker and forget past failures."""
        self.failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self, reason: str = "") -> None:
        """An attempt failed in a way that says the provider is unhealthy; `reason` is kept for the
        errors raised while the breaker is open (so they say why it opened)."""
        self.failures += 1
        if reason:
            self.last_failure = reason[:300]
        if self._probing or self.failures >= self.failure_threshold:
            if self._opened_at is None or self._probing:  # a transition, not every failure while open
                logger.warning("%s: circuit breaker open after %d consecutive failed attempts; "
                               "next probe in %g s", self.name or "provider", self.failures, self.reset_seconds)
            self._opened_at = time.monotonic()
        self._probing = False

    def release_probe(self) -> None:
        """The probe ended with no verdict (e.g. it was cancelled): let the next attempt probe."""
        self._probing = False

    def __repr__(self) -> str:
        return (f"CircuitBreaker(name={self.name!r}, state={self.state!r}, failures={self.failures}, "
                f"failure_threshold={self.failure_threshold}, reset_seconds={self.reset_seconds:g})")
