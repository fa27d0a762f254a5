"""Prefect tasks of the healing phase, and the global concurrency limit a running healing holds.

`healing_slot` holds one slot of the Prefect global concurrency limit `promptcycle-healing` (created on first use
with `healing.max_concurrent` slots; an existing limit keeps the size it was given, e.g. by
`prefect gcl update promptcycle-healing --limit N`). Slots live on the Prefect server, so the limit holds across
processes and machines, for healings started by a monitor, a schedule or a person.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from promptcycle.errors import ConfigError
from promptcycle.evaluation.context import PipelineRef
from promptcycle.monitor.healing import HEALING_LIMIT_NAME
from promptcycle.monitor.response import close_incident, record_canary, record_deployment, record_optimization
from promptcycle.store.remote import open_store

__all__ = ["healing_slot", "ensure_healing_limit", "note_optimization", "note_deployment", "note_canary",
           "end_healing"]


def _store(ref: PipelineRef):
    return open_store(ref.load().store_path)


async def ensure_healing_limit(max_concurrent: int) -> None:
    """Create the `promptcycle-healing` global concurrency limit when it does not exist yet."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(HEALING_LIMIT_NAME)
        except ObjectNotFound:
            try:
                await client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=HEALING_LIMIT_NAME, limit=max_concurrent))
            except ObjectAlreadyExists:
                pass  # another process created it meanwhile


@asynccontextmanager
async def healing_slot(max_concurrent: int, timeout_seconds: float = 60.0) -> AsyncIterator[None]:
    """Hold one slot of `promptcycle-healing` while a healing runs (waits up to `timeout_seconds` for one)."""
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency

    await ensure_healing_limit(max_concurrent)
    try:
        async with concurrency(HEALING_LIMIT_NAME, occupy=1, strict=True, timeout_seconds=timeout_seconds):
            yield
    except ConcurrencySlotAcquisitionError as exc:
        raise ConfigError(f"cannot acquire a slot of the Prefect global concurrency limit {HEALING_LIMIT_NAME!r}: "
                          f"{exc}", path="healing.max_concurrent", found=HEALING_LIMIT_NAME,
                          expected="an existing global concurrency limit") from None


@task(name="note-optimization", cache_policy=NO_CACHE)
def note_optimization(ref: PipelineRef, incident_id: str, summary, now: datetime) -> None:
    record_optimization(_store(ref), incident_id, summary, now)


@task(name="note-deployment", cache_policy=NO_CACHE)
def note_deployment(ref: PipelineRef, incident_id: str, outcome: dict | None, error: str | None,
                    now: datetime) -> None:
    record_deployment(_store(ref), incident_id, outcome, error, now)


@task(name="note-canary", cache_policy=NO_CACHE)
def note_canary(ref: PipelineRef, incident_id: str, canary: dict | None, now: datetime) -> None:
    record_canary(_store(ref), incident_id, canary, now)


@task(name="end-healing", cache_policy=NO_CACHE)
def end_healing(ref: PipelineRef, decision_id: str, incident_id: str, outcome: str, summary: str, calls: int,
                cost_usd: float, now: datetime, alert_id: int | None = None) -> None:
    """Close the healing decision with its spend; close the incident (resolved or escalated) — an escalated
    one escalates its alert too (one severity up, paged to the escalation channels)."""
    store = _store(ref)
    store.finish_healing(decision_id, outcome, now, calls=calls, cost_usd=cost_usd)
    if outcome == "healed":
        close_incident(store, incident_id, "resolved", summary, now)
    elif outcome in ("escalated", "failed"):
        if alert_id is not None:
            from promptcycle.alerts import escalate_alert
            from promptcycle.catalog import load_config

            alert = store.get_alert(alert_id)
            if alert.status != "resolved":
                escalate_alert(store, load_config(ref.config_path), alert_id, summary[:300], actor="healing", now=now)
        close_incident(store, incident_id, "escalated", summary, now)
    elif outcome == "deferred":  # no slot: the incident waits for the next monitor run's decision
        store.add_incident_event(incident_id, "note", now, summary, status="open")
    else:  # the canary is still running: the incident stays in healing until `promptcycle canary` concludes it
        store.add_incident_event(incident_id, "note", now, summary)
