"""Prefect tasks of the monitor phase: thin wrappers over promptcycle/monitor (one unit of durable work each)."""

from __future__ import annotations

from datetime import datetime

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from promptcycle.evaluation.context import PipelineRef
from promptcycle.monitor.report import MonitorSummary, alerts_markdown, incident_markdown, trend_markdown
from promptcycle.monitor.response import HealingStart, respond
from promptcycle.monitor.watch import (
    MonitorPlan,
    SeriesAssessment,
    assess_series,
    collect_observations,
    plan_monitor,
    probe_cell_spec,
)
from promptcycle.store.remote import open_store
from promptcycle_tasks.cells import run_cell
from promptcycle_tasks.reports import artifact_key
from promptcycle_tasks.retry import BACKOFF, retry_if_transient

__all__ = ["prepare_monitor", "probe_cell", "record_observations", "assess_monitor", "respond_to_findings",
           "finish_monitor", "publish_monitor_report"]

PROBE_RETRIES = 3


def _ctx(ref: PipelineRef):
    ctx = ref.load()
    return ctx, open_store(ctx.store_path)


@task(name="prepare-monitor", cache_policy=NO_CACHE)
def prepare_monitor(ref: PipelineRef, now: datetime, flow_run_id: str | None = None) -> MonitorPlan:
    """The period of `now`, its production series, and which series the probe observes."""
    ctx, store = _ctx(ref)
    return plan_monitor(ctx, store, now, flow_run_id=flow_run_id)


@task(name="probe-cell", task_run_name="probe {model} × {spectrum}", cache_policy=NO_CACHE, retries=PROBE_RETRIES,
      retry_delay_seconds=BACKOFF, retry_jitter_factor=0.5, retry_condition_fn=retry_if_transient)
async def probe_cell(ref: PipelineRef, plan: MonitorPlan, model: str, spectrum: str) -> dict:
    """The production prompt of `model` on the monitoring sample of `spectrum`, this period's repeats."""
    ctx, store = _ctx(ref)
    outcome = await run_cell(ctx, probe_cell_spec(ctx, store, plan, model, spectrum), retries=PROBE_RETRIES)
    return outcome.__dict__ | {"error_messages": outcome.error_messages[:3]}


@task(name="record-observations", cache_policy=NO_CACHE)
def record_observations(ref: PipelineRef, plan: MonitorPlan) -> list[dict]:
    ctx, store = _ctx(ref)
    return [o.to_dict() for o in collect_observations(ctx, store, plan)]


@task(name="assess-series", cache_policy=NO_CACHE)
def assess_monitor(ref: PipelineRef, plan: MonitorPlan) -> list[SeriesAssessment]:
    """The detectors on every series, continuing from their stored state; the new states stored."""
    ctx, store = _ctx(ref)
    return assess_series(ctx, store, plan)


@task(name="respond-to-findings", cache_policy=NO_CACHE)
def respond_to_findings(ref: PipelineRef, series: list[SeriesAssessment], now: datetime) -> list[HealingStart]:
    """Incidents opened, joined or resolved; healing decisions made and stored."""
    ctx, store = _ctx(ref)
    return respond(store, ref.pipeline, ctx.pipeline.healing, series, now)


@task(name="finish-monitor", cache_policy=NO_CACHE)
def finish_monitor(ref: PipelineRef, summary: MonitorSummary) -> None:
    ctx, store = _ctx(ref)
    store.finish_monitor_run(summary.monitor_run_id, "completed", summary.now,
                             {"pages": summary.pages, "healings": [h.outcome for h in summary.healings],
                              "observations": len(summary.observations), "probe_calls": summary.probe_calls})


@task(name="publish-monitor-report", cache_policy=NO_CACHE)
def publish_monitor_report(ref: PipelineRef, summary: MonitorSummary) -> None:
    """Artifacts: the quality trend per model × spectrum with threshold bands and detector state, the open alerts,
    the incidents' timelines."""
    ctx, store = _ctx(ref)
    history: dict[tuple[str, str], list[float]] = {}
    for o in store.observations(ref.pipeline, limit=2000):
        history.setdefault((o.model, o.spectrum), []).append(o.value)
    create_markdown_artifact(key=artifact_key("monitor-trend", ref.pipeline),
                             markdown=trend_markdown(ref.pipeline, summary.series, history, ctx.pipeline.thresholds,
                                                     summary.simulated),
                             description=f"Quality per model × spectrum after monitor run {summary.monitor_run_id}")
    create_markdown_artifact(key=artifact_key("monitor-alerts", ref.pipeline),
                             markdown=alerts_markdown(ref.pipeline, store.alerts(ref.pipeline, open_only=True)),
                             description="Open alerts")
    create_markdown_artifact(key=artifact_key("incidents", ref.pipeline),
                             markdown=incident_markdown(ref.pipeline, store.incidents(ref.pipeline, limit=10)),
                             description="The latest incidents and their timelines")
