"""The healing policy: whether a paging finding may start a healing now. It decides; it never runs anything.

    decision = decide_healing(request, facts, settings, now)

A healing is eligible only when all of these hold (checked in this order, the first that fails is the reason):

1. the finding's severity is at or above `healing.min_severity` (default high);
2. healing is enabled for the pipeline;
3. no canary is running for the pipeline (a healing deploys as a canary: one at a time);
4. the pipeline is outside its cooldown — no healing started in the last `healing.cooldown_minutes` (default 120);
5. fewer than `healing.max_concurrent` healings (default 3) are running, across all pipelines;
6. the pipeline's healings of the last 24 hours stayed within `healing.daily_max_calls` paid calls and
   `healing.daily_max_cost_usd`.

`facts` are read from the store inside the transaction that records the decision
(`MetricsStore.decide_healing`), so two monitor processes cannot both take the last slot. The store-side count is the
decision's record; the healing task additionally holds a slot of the Prefect global concurrency limit
`promptcycle-healing` while it runs, so the limit holds across processes even for healings started some other way.
Time comes from the caller (`now`): tests and drills run hours of operation in seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

__all__ = ["HEALING_LIMIT_NAME", "HealingFacts", "HealingRequest", "HealingDecision", "HealingSettings",
           "decide_healing", "healing_settings"]

HEALING_LIMIT_NAME = "promptcycle-healing"  # the Prefect global concurrency limit held by a running healing

_SEVERITIES = ("info", "low", "medium", "high", "critical")


@dataclass(frozen=True)
class HealingSettings:
    enabled: bool = True
    min_severity: str = "high"
    cooldown: timedelta = timedelta(hours=2)
    max_concurrent: int = 3
    daily_max_calls: int | None = None
    daily_max_cost_usd: float | None = None


def healing_settings(config: Any) -> HealingSettings:
    """The policy's settings from a `HealingConfig`."""
    return HealingSettings(enabled=config.enabled, min_severity=config.min_severity,
                           cooldown=timedelta(minutes=config.cooldown_minutes), max_concurrent=config.max_concurrent,
                           daily_max_calls=config.daily_max_calls, daily_max_cost_usd=config.daily_max_cost_usd)


@dataclass(frozen=True)
class HealingRequest:
    """What asks for a healing: the worst paging finding of a monitor run."""

    pipeline: str
    model: str
    spectrum: str
    detector: str
    severity: str
    alert_id: int | None = None
    incident_id: str | None = None


@dataclass(frozen=True)
class HealingFacts:
    """What the store knows when the decision is made."""

    canary_running: str | None = None  # the running canary's id
    last_healing_at: datetime | None = None  # the pipeline's latest healing that started
    running: int = 0  # healings running now, all pipelines
    calls_24h: int = 0  # paid calls of the pipeline's healings in the last 24 hours
    cost_24h: float = 0.0


@dataclass(frozen=True)
class HealingDecision:
    eligible: bool
    reason: str
    request: HealingRequest
    facts: HealingFacts
    decided_at: datetime
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decided_at"] = self.decided_at.isoformat()
        if self.facts.last_healing_at is not None:
            d["facts"]["last_healing_at"] = self.facts.last_healing_at.isoformat()
        return d


def decide_healing(request: HealingRequest, facts: HealingFacts, settings: HealingSettings,
                   now: datetime) -> HealingDecision:
    """Eligible or not, with the reason (see the module docstring for the order of the checks)."""

    def no(reason: str) -> HealingDecision:
        return HealingDecision(False, reason, request, facts, now)

    if _SEVERITIES.index(request.severity) < _SEVERITIES.index(settings.min_severity):
        return no(f"severity {request.severity} is below healing.min_severity ({settings.min_severity})")
    if not settings.enabled:
        return no("healing is disabled for the pipeline (healing.enabled: false)")
    if facts.canary_running:
        return no(f"canary {facts.canary_running} is already running for the pipeline")
    if facts.last_healing_at is not None and now - facts.last_healing_at < settings.cooldown:
        until = facts.last_healing_at + settings.cooldown
        return no(f"in cooldown: the last healing started at {facts.last_healing_at:%Y-%m-%d %H:%M} UTC; "
                  f"the next may start after {until:%Y-%m-%d %H:%M} UTC")
    if facts.running >= settings.max_concurrent:
        return no(f"{facts.running} healings are running (healing.max_concurrent: {settings.max_concurrent})")
    if settings.daily_max_calls is not None and facts.calls_24h >= settings.daily_max_calls:
        return no(f"daily budget spent: {facts.calls_24h} paid calls in 24 h "
                  f"(healing.daily_max_calls: {settings.daily_max_calls})")
    if settings.daily_max_cost_usd is not None and facts.cost_24h >= settings.daily_max_cost_usd:
        return no(f"daily budget spent: ${facts.cost_24h:.4f} in 24 h "
                  f"(healing.daily_max_cost_usd: {settings.daily_max_cost_usd:g})")
    return HealingDecision(True, f"{request.detector} found {request.model} × {request.spectrum} out of control "
                           f"({request.severity}); healing may start", request, facts, now)
