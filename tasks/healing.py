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
from promptcycle.monitor.repair import HealingPlan, finish_healing_incident, plan_healing
from promptcycle.monitor.response import record_canary, record_deployment, record_optimization
from promptcycle.store.remote import open_store

__all__ = ["healing_slot", "ensure_healing_limit", "prepare_healing", "note_optimization", "note_deployment",
           "note_canary", "end_healing"]


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
    """Hold one slot of `promptcycle-healing` while a healing runs (waits up to `timeout_seconds` for one).

    Raises TimeoutError, naming the limit, when no slot came free in time (flows/healing.py defers the healing);
    ConfigError when the limit cannot be used.
    """
    from prefect.concurrency.asyncio import AcquireConcurrencySlotTimeoutError, ConcurrencySlotAcquisitionError
    from prefect.concurrency.asyncio import concurrency

    await ensure_healing_limit(max_concurrent)
    acquired = False
    try:
        async with concurrency(HEALING_LIMIT_NAME, occupy=1, strict=True, timeout_seconds=timeout_seconds):
            acquired = True
            yield
    except (AcquireConcurrencySlotTimeoutError, ConcurrencySlotAcquisitionError) as exc:
        if acquired:  # raised by the healing inside the slot (e.g. a provider's limit): its own error, not ours
            raise
        if isinstance(exc, ConcurrencySlotAcquisitionError):
            raise ConfigError(f"cannot acquire a slot of the Prefect global concurrency limit "
                              f"{HEALING_LIMIT_NAME!r}: {exc}", path="healing.max_concurrent", found=HEALING_LIMIT_NAME,
                              expected="an existing global concurrency limit") from None
        raise TimeoutError(f"no slot of the Prefect global concurrency limit {HEALING_LIMIT_NAME!r} came free within "
                           f"{timeout_seconds:g} s: other healings hold them all (healing.max_concurrent: "
                           f"{max_concurrent}; `prefect gcl inspect {HEALING_LIMIT_NAME}` shows the limit)") from None


@task(name="prepare-healing", cache_policy=NO_CACHE)
def prepare_healing(ref: PipelineRef, model: str, decision_id: str) -> HealingPlan:
    """What the healing optimizes: the prompt serving `model` now, for that model alone, in its own epoch."""
    ctx = ref.load()
    return plan_healing(ctx, open_store(ctx.store_path), model, decision_id)


@task(name="note-optimization", cache_policy=NO_CACHE)
def note_optimization(ref: PipelineRef, incident_id: str, summary, now: datetime) -> None:
    record_optimization(_store(ref), incident_id, summary, now)


@task(name="note-deployment", cache_policy=NO_CACHE)
def note_deployment(ref: PipelineRef, incident_id: str, outcome: dict | None, error: str | None,
                    now: datetime) -> None:
    record_deployment(_store(ref), incident_id, outcome, error, now)


@task(name="note-canary", cache_policy=NO_CACHE)
def note_canary(ref: PipelineRef, incident_id: str, canary: dict | None, now: datetime,
                canary_id: str | None = None) -> None:
    record_canary(_store(ref), incident_id, canary, now, canary_id)


@task(name="end-healing", cache_policy=NO_CACHE)
def end_healing(ref: PipelineRef, decision_id: str, incident_id: str, outcome: str, summary: str, calls: int,
                cost_usd: float, now: datetime, alert_id: int | None = None) -> None:
    """Close the healing decision with its spend; close the incident (resolved or escalated) — an escalated
    one escalates its alert too (one severity up, paged to the escalation channels). A canary still running
    keeps the incident in healing until it concludes (promptcycle/monitor/repair.py, `after_canary`)."""
    ctx = ref.load()
    finish_healing_incident(open_store(ctx.store_path), ctx.config, decision_id, incident_id, outcome, summary, now,
                            calls=calls, cost_usd=cost_usd, alert_id=alert_id)
