"""Delivering pages: every pending delivery to its channel, retried, with its state recorded.

    report = deliver_pending(store, channels, now, pipeline="customer-insights")

A pass claims the deliveries due on its channels (pending, failed, or claimed by a pass that died),
tries each up to `attempts_per_pass` times with exponential back-off, and records the outcome right
after it: `sent` (with the time and what the channel said) or `failed` (attempts and the last
error), which the next pass retries. Nothing is lost: an undelivered page stays in the store until
a pass sends it. Nothing is sent twice: a delivery is marked sent straight after its send, claims
keep two passes off one delivery, and every message carries its delivery id as an idempotency key
for the rare send whose mark a crash cut off.

A channel that exhausts its attempts on one delivery is considered down for the rest of the pass:
its other deliveries are released for the next pass without waiting through their back-offs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from promptcycle.alerts.channels import Channel
from promptcycle.alerts.messages import AlertMessage
from promptcycle.errors import AlertDeliveryError

__all__ = ["DeliveryReport", "deliver_pending"]


@dataclass
class DeliveryReport:
    """What one pass did: deliveries sent, failed (retried by the next pass) and released untried."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    released: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.released

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "failed": self.failed, "released": self.released}

    def summary(self) -> str:
        return (f"{len(self.sent)} page(s) delivered, {len(self.failed)} failed and "
                f"{len(self.released)} put back for the next pass")


def _send(channel: Channel, message: AlertMessage, attempts: int, backoff: float, max_backoff: float,
          sleep: Callable[[float], None]) -> tuple[str | None, int, str | None]:
    """(detail, attempts made, last error): detail is None when every attempt failed."""
    error = None
    for attempt in range(1, attempts + 1):
        try:
            return channel.send(message), attempt, None
        except AlertDeliveryError as exc:
            error = str(exc)
            if not exc.retryable:
                return None, attempt, error
            wait = exc.retry_after if exc.retry_after is not None else backoff * 2 ** (attempt - 1)
        except Exception as exc:  # noqa: BLE001 - a failing channel must not lose the other pages
            error = f"{channel.kind} channel {channel.name!r}: {type(exc).__name__}: {exc}"
            wait = backoff * 2 ** (attempt - 1)
        if attempt < attempts:
            sleep(min(max_backoff, wait))
    return None, attempts, error


def deliver_pending(store: Any, channels: Sequence[Channel], now: datetime | None = None, *,
                    pipeline: str | None = None, attempts_per_pass: int = 3, backoff_seconds: float = 1.0,
                    max_backoff_seconds: float = 30.0, lease_seconds: float = 300.0,
                    sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], datetime] | None = None) -> DeliveryReport:
    """Send the pending and failed deliveries of `channels` (of `pipeline`'s alerts, or of every
    pipeline); record each outcome in `store` as it happens. `now` (or `clock`, read for each
    record) stamps the records; `sleep` waits between attempts (tests pass a no-op)."""
    clock = clock or ((lambda: now) if now is not None else (lambda: datetime.now(timezone.utc)))
    by_name = {c.name: c for c in channels}
    report = DeliveryReport()
    claimed = store.claim_deliveries(list(by_name), clock(), lease_seconds=lease_seconds, pipeline=pipeline)
    down: dict[str, str] = {}
    for row in claimed:
        channel = by_name[row["channel"]]
        entry = {"delivery_id": row["delivery_id"], "channel": channel.name, "alert_id": row["alert_id"],
                 "kind": row["kind"], "severity": row["severity"]}
        if channel.name in down:
            store.mark_delivery_failed(row["delivery_id"], 0, clock(), down[channel.name], clock())
            report.released.append(entry | {"error": down[channel.name]})
            continue
        detail, attempts, error = _send(channel, AlertMessage.from_claim(row), attempts_per_pass, backoff_seconds,
                                        max_backoff_seconds, sleep)
        if detail is not None:
            store.mark_delivery_sent(row["delivery_id"], attempts, clock(), detail)
            report.sent.append(entry | {"attempts": attempts, "detail": detail})
        else:
            store.mark_delivery_failed(row["delivery_id"], attempts, clock(), error or "failed", clock())
            report.failed.append(entry | {"attempts": attempts, "error": error})
            down[channel.name] = f"not tried: the channel was down earlier in this pass ({error})"
    return report
