"""The alert policy: what a finding does to the alert of its key, and whether anyone is paged.

Pure: no store, no clock of its own (every decision takes `now`), so hours of operation run in
seconds in tests. One alert is open at a time per key (pipeline, model, spectrum, detector).

    decision = decide(finding, state, settings, now)     # one finding against its key's state
    decision = escalation_due(state, settings, now)      # an unattended alert, checked every pass

The rules, in order:
- a finding back in control resolves the open alert; the recovery is notified once, and only when
  the alert had paged someone (a page nobody received needs no all-clear);
- a finding out of control opens an alert (``raised``) or repeats the open one (``repeated`` when it
  pages again, ``suppressed`` when it does not);
- a page goes out when the severity rose above the key's last page (a rise bypasses the cooldown),
  or when the alert has not paged yet and the cooldown since the key's last page has passed, or
  when `renotify` is set and that long has passed since the last page;
- a snoozed key pages nobody until the snooze ends; everything is still recorded;
- an alert still unacknowledged `escalate_after` after it first paged (or last escalated) escalates
  one severity up (and reaches the escalation channels); `escalate` does the same on request (e.g.
  healing found nothing to deploy). An escalated severity holds until the alert resolves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

__all__ = [
    "SEVERITIES",
    "EVENT_KINDS",
    "ALERT_STATUSES",
    "severity_rank",
    "raise_severity",
    "AlertKey",
    "Finding",
    "PolicySettings",
    "KeyState",
    "Decision",
    "decide",
    "escalation_due",
    "escalate",
]

SEVERITIES = ("info", "low", "medium", "high", "critical")
# What can happen to an alert; `notify` on the event says whether it pages.
EVENT_KINDS = ("raised", "repeated", "suppressed", "escalated", "acknowledged", "snoozed", "recovered")
ALERT_STATUSES = ("open", "acknowledged", "snoozed", "resolved")


def severity_rank(severity: str) -> int:
    """0 for info … 4 for critical; ValueError names the five severities."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, not {severity!r}") from None


def raise_severity(severity: str, steps: int = 1) -> str:
    """`steps` severities up, capped at critical."""
    return SEVERITIES[min(len(SEVERITIES) - 1, severity_rank(severity) + steps)]


@dataclass(frozen=True, order=True)
class AlertKey:
    """What deduplicates alerts: one open alert per key."""

    pipeline: str
    model: str
    spectrum: str
    detector: str

    def __str__(self) -> str:
        return f"{self.pipeline}/{self.model}/{self.spectrum}/{self.detector}"


@dataclass(frozen=True)
class Finding:
    """One detector's verdict on one series (pipeline × model × spectrum), as the monitor hands it over.

    `severity` is the detector's suggestion (info, low, medium, high, critical); `in_control` False
    means the series is out of control. `model` or `spectrum` may be "*" for a finding about the
    whole pipeline (e.g. stale data)."""

    detector: str
    pipeline: str
    model: str
    spectrum: str
    severity: str
    in_control: bool
    statistic: float | None = None
    message: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        severity_rank(self.severity)
        for name in ("detector", "pipeline", "model", "spectrum"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"a finding's {name} must be a non-empty string, not {value!r}")

    @property
    def key(self) -> AlertKey:
        return AlertKey(self.pipeline, self.model, self.spectrum, self.detector)


@dataclass(frozen=True)
class PolicySettings:
    """The knobs of the policy (from `alerts:` in pipelines.yaml)."""

    cooldown: timedelta = timedelta(minutes=15)
    renotify: timedelta | None = None       # None: an open alert pages once (plus rises and escalations)
    escalate_after: timedelta | None = None  # None: only explicit escalation
    escalation_steps: int = 1


@dataclass(frozen=True)
class KeyState:
    """What the policy needs to know about one key, read from the store.

    `alert_*` describe the key's open alert (None when it has none); `last_page_*` the key's last
    page of any alert (recoveries excluded), for the cooldown; `snoozed_until` the key's snooze."""

    alert_id: str | None = None
    severity: str | None = None
    status: str | None = None
    first_seen: datetime | None = None
    first_paged_at: datetime | None = None
    last_paged_severity: str | None = None   # of the open alert
    acknowledged: bool = False
    escalated_at: datetime | None = None
    last_page_at: datetime | None = None
    last_page_severity: str | None = None
    snoozed_until: datetime | None = None

    @property
    def has_open_alert(self) -> bool:
        return self.alert_id is not None

    def snoozed(self, now: datetime) -> bool:
        return self.snoozed_until is not None and now < self.snoozed_until


@dataclass(frozen=True)
class Decision:
    """What to record (an event of `kind` at `severity`) and whether it pages (`notify`), and why."""

    kind: str
    severity: str
    notify: bool
    reason: str
    opens: bool = False     # a new alert
    resolves: bool = False  # the open alert is resolved


def _page_due(severity: str, state: KeyState, settings: PolicySettings, now: datetime) -> tuple[bool, str]:
    if state.snoozed(now):
        return False, f"snoozed until {state.snoozed_until:%Y-%m-%d %H:%M} UTC"
    last = state.last_page_severity
    if last is None or severity_rank(severity) > severity_rank(last):
        return True, "first page of this key" if last is None else f"severity rose above the last page ({last})"
    paged_this_alert = state.has_open_alert and state.first_paged_at is not None
    since = now - state.last_page_at if state.last_page_at is not None else None
    if not paged_this_alert:
        if since is not None and since < settings.cooldown:
            left = settings.cooldown - since
            return False, f"cooldown: the key paged {_minutes(since)} ago (next page in {_minutes(left)})"
        return True, "not paged yet and the cooldown has passed"
    if settings.renotify is not None and since is not None and since >= settings.renotify:
        return True, f"still out of control {_minutes(since)} after the last page"
    return False, f"already paged at {state.last_paged_severity or last}"


def _minutes(delta: timedelta) -> str:
    minutes = delta.total_seconds() / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def decide(finding: Finding, state: KeyState, settings: PolicySettings, now: datetime) -> Decision | None:
    """The event one finding makes on its key, or None when there is nothing to record (in control,
    no open alert)."""
    if finding.in_control:
        if not state.has_open_alert:
            return None
        paged = state.first_paged_at is not None
        notify = paged and not state.snoozed(now)
        reason = ("back in control" + ("" if paged else "; it never paged, so no notice")
                  + ("; snoozed, so no notice" if paged and not notify else ""))
        return Decision("recovered", state.severity or finding.severity, notify, reason, resolves=True)
    severity = finding.severity
    if state.escalated_at is not None and severity_rank(state.severity or "info") > severity_rank(severity):
        severity = state.severity  # an escalation holds until the alert resolves
    notify, why = _page_due(severity, state, settings, now)
    if not state.has_open_alert:
        return Decision("raised", severity, notify, why, opens=True)
    # An acknowledged alert pages again only when it gets worse.
    acknowledged_at = state.last_paged_severity or state.severity or severity
    if state.acknowledged and notify and severity_rank(severity) <= severity_rank(acknowledged_at):
        return Decision("suppressed", severity, False, "acknowledged; pages again only if it gets worse")
    return Decision("repeated" if notify else "suppressed", severity, notify, why)


def escalation_due(state: KeyState, settings: PolicySettings, now: datetime) -> Decision | None:
    """An `escalated` decision when the open alert has gone unacknowledged `escalate_after` since it
    first paged (or since its last escalation), else None. Snoozed alerts wait for the snooze."""
    if (settings.escalate_after is None or not state.has_open_alert or state.acknowledged
            or state.first_paged_at is None or state.snoozed(now) or state.severity == SEVERITIES[-1]):
        return None
    since = state.escalated_at or state.first_paged_at
    if now - since < settings.escalate_after:
        return None
    return escalate(state, settings, f"unacknowledged for {_minutes(now - since)}")


def escalate(state: KeyState, settings: PolicySettings, reason: str) -> Decision:
    """Escalate the open alert on request: one severity up (by `escalation_steps`), paging even when
    it is already critical — an explicit escalation is news."""
    severity = raise_severity(state.severity or "info", settings.escalation_steps)
    return Decision("escalated", severity, True, reason)
