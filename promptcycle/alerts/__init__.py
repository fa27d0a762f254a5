"""Alerts: the policy that turns detector findings into pages, the channels they go to, their delivery.

    events = process_findings(store, config, "customer-insights", findings, now)   # policy + store
    report = deliver_pending(store, build_channels(config, "customer-insights"), now,
                             pipeline="customer-insights")                          # send what is due

`process_findings` stores alerts, events and pending deliveries before anything is sent;
`deliver_pending` sends them and records each outcome. The monitor flow calls both (tasks/alerts.py
passes a Prefect bridge so notification blocks, Prefect events and credentials blocks work).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from promptcycle.alerts.channels import Channel, ChannelBridge, channel_kinds
from promptcycle.alerts.delivery import DeliveryReport, deliver_pending as _deliver_pending
from promptcycle.alerts.messages import AlertMessage
from promptcycle.alerts.policy import SEVERITIES, AlertKey, Finding, PolicySettings

__all__ = [
    "SEVERITIES",
    "AlertKey",
    "AlertMessage",
    "Finding",
    "PolicySettings",
    "Channel",
    "ChannelBridge",
    "DeliveryReport",
    "channel_kinds",
    "policy_settings",
    "channel_routes",
    "build_channels",
    "process_findings",
    "escalate_alert",
    "deliver_pending",
    "deliver_alerts",
]


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    return now if now.tzinfo is not None else now.replace(tzinfo=timezone.utc)


def policy_settings(alerts: Any) -> PolicySettings:
    """The policy's settings from an `AlertsConfig`."""
    return PolicySettings(
        cooldown=timedelta(minutes=alerts.cooldown_minutes),
        renotify=timedelta(minutes=alerts.renotify_minutes) if alerts.renotify_minutes else None,
        escalate_after=(timedelta(minutes=alerts.escalation.after_minutes)
                        if alerts.escalation.after_minutes else None),
        escalation_steps=alerts.escalation.steps)


def channel_routes(alerts: Any) -> list:
    """Which events each configured channel receives (names, minimum severities, escalation-only)."""
    from promptcycle.store.alerts import ChannelRoute

    return [ChannelRoute(c.label, c.min_severity, c.escalation_only) for c in alerts.channels]


def build_channels(config: Any, pipeline: str, *, bridge: ChannelBridge | None = None) -> list[Channel]:
    """The channels of the pipeline's effective `alerts.channels` (relative paths resolve against the
    config file). `bridge` connects the Prefect-delivered kinds and credentials blocks."""
    from pathlib import Path

    from promptcycle.config import effective_alerts

    base_dir = config.source_path.parent if config.source_path else Path.cwd()
    built = []
    for entry in effective_alerts(config, pipeline).channels:
        cls = channel_kinds.get(entry.kind)
        built.append(cls(entry.label, cls.Options.model_validate(entry.options), base_dir=base_dir, bridge=bridge))
    return built


def process_findings(store: Any, config: Any, pipeline: str, findings: Sequence[Finding],
                     now: datetime | None = None) -> list:
    """Apply the alert policy to one monitor pass's findings of `pipeline` (in control or not), and
    escalate its open alerts that are due; store alerts, events and pending deliveries in one
    transaction. Returns the events (`AlertEventRecord`: kind, severity, notify, reason, deliveries).

    `now` is the pass's time (default: the clock); hours of operation run in seconds by passing it."""
    from promptcycle.config import effective_alerts

    alerts = effective_alerts(config, pipeline)
    return store.record_findings(pipeline, list(findings), policy_settings(alerts), channel_routes(alerts),
                                 _now(now))


def escalate_alert(store: Any, config: Any, alert_id: int | str, reason: str, *, actor: str = "promptcycle",
                   now: datetime | None = None):
    """Escalate an open alert on request — e.g. healing found no prompt that fixes it: one severity up
    (`alerts.escalation.steps`), paged to its channels and the escalation-only ones."""
    alert = store.get_alert(alert_id)
    alerts = _effective_for(config, alert.pipeline)
    return store.escalate_alert(alert_id, reason, actor, policy_settings(alerts), channel_routes(alerts), _now(now))


def _effective_for(config: Any, pipeline: str) -> Any:
    from promptcycle.config import effective_alerts

    return effective_alerts(config, pipeline) if pipeline in config.pipelines else config.alerts


def deliver_pending(store: Any, channels: Sequence[Channel], now: datetime | None = None, *,
                    pipeline: str | None = None, **options: Any) -> DeliveryReport:
    """Send every due delivery of `channels` and record each outcome (see promptcycle/alerts/delivery.py)."""
    return _deliver_pending(store, channels, _now(now) if now is not None else None, pipeline=pipeline, **options)


def deliver_alerts(store: Any, config: Any, pipeline: str, now: datetime | None = None, *,
                   bridge: ChannelBridge | None = None, sleep: Any = None) -> DeliveryReport:
    """`deliver_pending` with the pipeline's configured channels and retry settings."""
    from promptcycle.config import effective_alerts

    delivery = effective_alerts(config, pipeline).delivery
    extra = {"sleep": sleep} if sleep is not None else {}
    return deliver_pending(store, build_channels(config, pipeline, bridge=bridge), now, pipeline=pipeline,
                           attempts_per_pass=delivery.attempts_per_pass, backoff_seconds=delivery.backoff_seconds,
                           max_backoff_seconds=delivery.max_backoff_seconds, lease_seconds=delivery.lease_seconds,
                           **extra)
