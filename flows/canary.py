"""The canary phase: look at the running canary until the sequential test (or a guardrail) decides.

    find the pipeline's running canary → [send simulated traffic] → look: decide on every outcome so
    far, move the split when due → … → promote (targets, then labels) or roll back (production
    restored on every target)

Against real traffic the flow looks once (a schedule runs it, e.g. every few minutes) or, with
`watch`, every `look_interval_seconds` until the canary ends; the application reports outcomes with
`log_production_result`, or as a JSONL file the flow ingests first (`ingest_path`). Offline, `simulate_traffic=N` sends N
simulated production requests, `look_size` before each look, so a whole canary runs end to end.
Each look is stored with its evidence; the progress artifact shows how much of the test's horizon
has been observed, and the markdown artifact every look so far.

Outcomes are machine-readable: a decided canary ends in the state `Completed` named `Promoted` or
`RolledBack` (a canary still running ends plain `Completed`), and emits the Prefect event
`promptcycle.canary.promoted` / `promptcycle.canary.rolled_back` about the resource
`promptcycle.pipeline.<name>` with the canary, deployment and versions in its payload.
"""

from __future__ import annotations

import asyncio

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.states import Completed

from promptcycle.errors import DeploymentError
from promptcycle.deploy.results import CanaryResult
from promptcycle.evaluation.context import PipelineRef
from promptcycle_tasks.deployment import (
    conclude_canary_task,
    find_canary,
    flow_actor,
    ingest_outcomes,
    look_canary,
    send_simulated_traffic,
)
from promptcycle_tasks.reports import artifact_key
from promptcycle_tasks.runs import is_simulated, run_name, tag_flow_run

__all__ = ["canary", "FINAL_STATES"]

FINAL_STATES = {"promoted": "Promoted", "rolled_back": "RolledBack"}


@flow(name="canary", flow_run_name=run_name("canary"))
async def canary(pipeline: str = "customer-insights", config_path: str = "pipelines.yaml",
                 store_path: str | None = None, simulate_traffic: int | None = None, seed: int = 0,
                 watch: bool = False, max_looks: int | None = None, error_rates: dict[str, float] | None = None,
                 ingest_path: str | None = None, actor: str | None = None, if_running: bool = False) -> CanaryResult:
    """Look at the pipeline's running canary, and promote or roll it back when the test decides.

    Args:
        pipeline: the pipeline's name in pipelines.yaml.
        config_path: path to pipelines.yaml.
        store_path: the DuckDB file (default: the config's `store`).
        simulate_traffic: send this many simulated production requests (`look_size` per look).
        seed: seed of the simulated traffic.
        watch: keep looking every `look_interval_seconds` until the canary ends (real traffic).
        max_looks: stop after this many looks (default: the canary's `max_looks`).
        error_rates: simulated failure rate per arm, e.g. {"treatment": 0.2} (exercises the guardrails).
        ingest_path: a JSONL file of production outcomes to record before the first look.
        actor: who concludes (default: the user and this flow run).
        if_running: with no canary running, end at once as `NoCanary` instead of failing (what the
            schedule's looks set: most of the time no canary runs).
    """
    actor = actor or flow_actor("canary")
    await tag_flow_run(pipeline, "canary", bool(simulate_traffic) or is_simulated(config_path, pipeline))
    ref = PipelineRef(config_path=config_path, pipeline=pipeline, store_path=store_path)
    if if_running:
        try:
            running = find_canary.fn(ref)  # no task run: nothing to look at is no failure
        except DeploymentError as exc:
            return Completed(name="NoCanary", message=str(exc), data={"pipeline": pipeline, "status": "none"})
    else:
        running = find_canary(ref)
    settings = running.settings
    canary_id = running.canary_id
    ingested = ingest_outcomes(ref, ingest_path) if ingest_path else None
    progress_id = await create_progress_artifact(progress=0.0, key=artifact_key("canary-progress", pipeline),
                                                 description=f"Share of the horizon observed by canary {canary_id}")
    sent, looks, last, outcome = 0, 0, None, None
    for i in range(max_looks or settings["max_looks"]):
        if simulate_traffic:
            batch = min(settings["look_size"], simulate_traffic - sent)
            if batch <= 0:
                break
            await send_simulated_traffic(ref, batch, seed * 100_003 + running.looks + i, error_rates)
            sent += batch
        elif i > 0:
            if not watch:
                break
            await asyncio.sleep(settings["look_interval_seconds"])
        last = look_canary(ref, canary_id)
        looks += 1
        fraction = last.decision.information_fraction or 0.0
        await update_progress_artifact(progress_id, progress=100.0 if last.action != "continue"
                                       else min(99.0, 100.0 * fraction))
        if last.action != "continue":
            outcome = conclude_canary_task(ref, last, actor)
            break
    result = CanaryResult(canary_id=canary_id, pipeline=pipeline, control=running.control, simulated=bool(sent),
                          treatment=running.treatment, looks=looks, simulated_requests=sent,
                          action=last.action if last else None, reason=last.reason if last else None,
                          split_pct=last.next_split_pct if last else running.split_pct,
                          decision=last.decision.to_dict() if last else None, outcome=outcome, ingested=ingested,
                          status=("promoted" if outcome and outcome.kind == "promote" else
                                  "rolled_back" if outcome else "running"))
    # Automations tell the outcomes apart by the final state's name (and by the event conclude emits).
    if result.status == "running":
        return result
    return Completed(name=FINAL_STATES[result.status], message=f"{result.status}: {result.reason}", data=result)
