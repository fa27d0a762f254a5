"""The monitor phase: watch a deployed pipeline's quality, page once when it really degrades, maybe heal.

    observe (production outcomes — reported, or read from LangSmith; the probe where feedback is thin) → assess (detectors continue from their stored
    state) → record → alert (policy, then delivery) → incidents and healing decisions → eligible healings run

One run per `monitor.interval_minutes` (default 30; `promptcycle cycle` is what a schedule runs). A run killed and
re-run in the same period resumes: its probe calls are in the ledger and its assessment sees nothing new twice.
How a decided healing starts: when the pipeline's `healing/<pipeline>` deployment is served (a `promptcycle serve`
process or a worker polls for it), through `run_deployment` — a flow run of its own, on whatever runs that
deployment, that this monitor does not wait for (docs/production.md says why not an automation). Otherwise —
the embedded default, no server, nothing serving — as a subflow in this process, to its end.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from promptcycle.evaluation.context import PipelineRef
from promptcycle.evaluation.lease import release_pipeline
from promptcycle.evaluation.pool import close_providers
from promptcycle.monitor.report import MonitorSummary
from promptcycle_flows.served import served_deployment, start_served_run
from promptcycle_tasks.alerts import deliver_alerts, record_alerts
from promptcycle_tasks.feedback import read_langsmith_feedback
from promptcycle_tasks.monitor import (
    assess_monitor,
    finish_monitor,
    prepare_monitor,
    probe_cell,
    publish_monitor_report,
    record_observations,
    respond_to_findings,
)
from promptcycle_tasks.runs import run_name, tag_flow_run

__all__ = ["monitor"]


@flow(name="monitor", flow_run_name=run_name("monitor"))
async def monitor(pipeline: str = "customer-insights", config_path: str = "pipelines.yaml",
                  store_path: str | None = None, now: datetime | None = None, heal: bool = True) -> MonitorSummary:
    """One monitor pass over the pipeline's serving models × spectrums.

    Args:
        pipeline: the pipeline's name in pipelines.yaml.
        config_path: path to pipelines.yaml.
        store_path: the DuckDB file (default: the config's `store`).
        now: the monitor's clock (default: now). Passing it runs hours of scheduled operation in seconds.
        heal: run eligible healings (off: decisions are still made and recorded, nothing runs).
    """
    logger = get_run_logger()
    now = now or datetime.now(timezone.utc)
    ref = PipelineRef(config_path=config_path, pipeline=pipeline, store_path=store_path)
    read_langsmith_feedback(config_path, pipeline, store_path, now)  # when observe.langsmith names a project
    plan = prepare_monitor(ref, now, flow_run.get_id())
    await tag_flow_run(pipeline, "monitor", plan.simulated)
    logger.info("monitor period %s of %s: %d series from production, %d probed%s", plan.period, pipeline,
                len(plan.production_points), len(plan.probe_cells), " (resumed)" if plan.resumed else "")
    probe_calls = 0
    if plan.probe_cells:
        try:
            outcomes = await asyncio.gather(*(probe_cell(ref, plan, m, s) for m, s in plan.probe_cells))
            probe_calls = sum(o["called"] for o in outcomes)
        finally:
            await close_providers()
            release_pipeline(pipeline)
    observations = record_observations(ref, plan)
    series = assess_monitor(ref, plan)
    events = record_alerts(ref, _findings(pipeline, series), now)
    deliveries = deliver_alerts(ref, now)
    starts = respond_to_findings(ref, series, now)
    summary = MonitorSummary(pipeline=pipeline, monitor_run_id=plan.monitor_run_id, period=plan.period, now=now,
                             resumed=plan.resumed, simulated=plan.simulated, observations=observations, series=series,
                             alert_events=[e.to_dict() for e in events], deliveries=deliveries,
                             probe_run_id=plan.probe_run_id, probe_calls=probe_calls)
    if heal:
        from promptcycle_flows.healing import healing

        served = await served_deployment("healing", pipeline) if starts else None
        for start in starts:
            params = dict(pipeline=pipeline, decision_id=start.decision_id, incident_id=start.incident_id,
                          model=start.model, spectrum=start.spectrum, config_path=config_path, store_path=store_path,
                          alert_id=start.alert_id, now=now)
            if served:
                summary.started_healings.append(await start_served_run(served, params, f"healing-{start.decision_id}"))
            else:
                summary.healings.append(await healing(**params))
    else:
        summary.refused_healings = [s.model_dump() | {"note": "decided, not run (heal=False)"} for s in starts]
    finish_monitor(ref, summary)
    publish_monitor_report(ref, summary)
    return summary


def _findings(pipeline: str, series) -> list:
    from promptcycle.monitor.watch import alert_findings

    return alert_findings(pipeline, series)
