"""Every phase of every pipeline as a Prefect deployment: what `promptcycle serve` serves and what
`promptcycle deployments apply` registers on a work pool.

    pipelines.yaml → promptcycle.schedules.plan_deployments (names, schedules, parameters; no Prefect)
    → `flow.to_deployment(...)` per plan → `serve(...)` in this process, or `.apply(work_pool_name=…)`

A deployment is named after its pipeline (`promptcycle.phases.deployment_name`: "monitor/customer-insights");
its parameter form in the UI is the flow's signature (types, defaults, the docstring's descriptions), with the
pipeline and pipelines.yaml filled in.
"""

from __future__ import annotations

import importlib
from datetime import datetime, timedelta, timezone
from typing import Any

from promptcycle.schedules import DeploymentPlan

__all__ = ["FLOW_MODULES", "load_flow", "to_deployment", "served_deployment", "start_served_run"]

FLOW_MODULES = {phase: f"promptcycle_flows.{phase}" for phase in
                ("baseline", "optimization", "deployment", "canary", "monitor", "healing", "cycle")}
"""Phase -> the module holding its flow (the flow object has the phase's name)."""

# Interval schedules count from the Unix epoch in UTC, as the monitor's periods do (promptcycle/monitor/
# observations.py: monitor_period), so each scheduled cycle starts at the beginning of a period.
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def load_flow(phase: str) -> Any:
    """The Prefect flow of `phase`, imported on demand (the flows import the engine)."""
    return getattr(importlib.import_module(FLOW_MODULES[phase]), phase)


def _schedules(plan: DeploymentPlan) -> list:
    from prefect.schedules import Cron, Interval

    slug = f"promptcycle-{plan.phase}"  # a stable slug: serving again updates the schedule instead of adding one
    if plan.cron is not None:
        return [Cron(plan.cron, timezone=plan.timezone, parameters=plan.schedule_parameters, slug=slug)]
    if plan.interval_seconds is not None:
        return [Interval(timedelta(seconds=plan.interval_seconds), anchor_date=_EPOCH, timezone="UTC",
                         parameters=plan.schedule_parameters, slug=slug)]
    return []


def to_deployment(plan: DeploymentPlan, *, module_entrypoint: bool = False) -> Any:
    """The Prefect `RunnerDeployment` of `plan`.

    `module_entrypoint`: name the flow by module path (`promptcycle_flows.monitor.monitor`) instead of by file, so
    that a worker anywhere finds it where promptcycle is installed (work pools); `serve` runs the flow object it
    holds and needs neither."""
    from prefect.types.entrypoint import EntrypointType

    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    flow = load_flow(plan.phase)
    # A scheduled phase runs one at a time: a pass that starts while the last one still runs (a slow probe, a
    # long healing) is cancelled instead of queued, so no backlog of passes builds up; the next one comes anyway.
    limit = (ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
             if plan.scheduled else None)
    return flow.to_deployment(
        name=plan.name, schedules=_schedules(plan), parameters=dict(plan.parameters), tags=list(plan.tags),
        description=_description(plan, flow), paused=False, concurrency_limit=limit,
        entrypoint_type=EntrypointType.MODULE_PATH if module_entrypoint else EntrypointType.FILE_PATH)


def _description(plan: DeploymentPlan, flow: Any) -> str:
    summary = (flow.description or "").strip().split("\n\n")[0]
    return (f"{summary}\n\nPipeline `{plan.pipeline}` — schedule: {plan.schedule_text()}. Registered by promptcycle "
            f"from {plan.parameters.get('config_path')}.")


async def served_deployment(phase: str, pipeline: str) -> str | None:
    """The full name of `phase`'s deployment of `pipeline` when something runs it — a `promptcycle serve` process
    or a worker polled for its runs recently (Prefect's READY status) — else None (not registered, the server has
    no such deployment, or nothing serves it: a run started there would wait forever)."""
    from prefect import get_client
    from prefect.client.schemas.objects import DeploymentStatus
    from prefect.exceptions import ObjectNotFound

    from promptcycle.phases import deployment_name

    name = deployment_name(phase, pipeline)
    try:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None
    return name if deployment.status == DeploymentStatus.READY else None


async def start_served_run(name: str, parameters: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
    """Start a flow run of the deployment `name` and return at once (it runs wherever the deployment is served).

    The run is linked to the current flow run as its child in the UI. `idempotency_key` makes a repeated start
    (a monitor run re-run in the same period) return the run already started instead of a second one."""
    from prefect.deployments import run_deployment

    from promptcycle_tasks.runs import flow_run_url

    run = await run_deployment(name, parameters=parameters, timeout=0, idempotency_key=idempotency_key)
    return {"deployment": name, "flow_run_id": str(run.id), "flow_run_name": run.name,
            "flow_run_url": flow_run_url(run.id), "parameters": {k: v for k, v in parameters.items() if v is not None}}
