"""The deployment phase: validate a prompt version, gate it, and put it in production — or start a canary.

    take the pipeline's deployment lock → pick the version (the candidate, or --version; the
    configured prompt on a first deployment) → syntax → content → integration (smoke evaluation)
    → quality (the optimization evidence) → gate → write every target and move the labels
    (all or nothing), or start a canary → release the lock

A failing stage blocks the deployment with its reason (the later stages are reported as not run);
`force=True` pushes past it and the deployment is recorded as forced. Every stage report, the gate
decision and the targets' outcomes are stored with the deployment and published as artifacts.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from promptcycle.deploy.results import DeploymentResult, StageOutcome
from promptcycle.errors import GateError
from promptcycle.evaluation.context import PipelineRef
from promptcycle.store.records import STAGES
from promptcycle_tasks.deployment import (
    finish_deployment,
    flow_actor,
    gate_deployment,
    prepare_deployment,
    release_deployment,
    start_canary,
    validate_stage,
)
from promptcycle_tasks.runs import is_simulated, run_name, tag_flow_run

__all__ = ["deployment"]


@flow(name="deployment", flow_run_name=run_name("deploy"))
async def deployment(pipeline: str = "customer-insights", config_path: str = "pipelines.yaml",
                     store_path: str | None = None, version: str | None = None, canary: bool = False,
                     force: bool = False, simulate_traffic: int | None = None, traffic_seed: int = 0,
                     actor: str | None = None) -> DeploymentResult:
    """Deploy a prompt version of the pipeline through the four validation stages and the gate.

    Args:
        pipeline: the pipeline's name in pipelines.yaml.
        config_path: path to pipelines.yaml.
        store_path: the DuckDB file (default: the config's `store`).
        version: the prompt version to deploy (default: the `candidate` label; on a first deployment,
            the configured prompt).
        canary: start a canary instead of switching all traffic at once.
        force: deploy even when a stage fails (recorded as forced).
        simulate_traffic: with `canary`, run the canary flow on this many simulated requests.
        traffic_seed: seed of the simulated traffic.
        actor: who deploys (default: the user and this flow run).
    """
    actor = actor or flow_actor("deployment")
    await tag_flow_run(pipeline, "deployment", is_simulated(config_path, pipeline))
    ref = PipelineRef(config_path=config_path, pipeline=pipeline, store_path=store_path)
    plan = prepare_deployment(ref, version, canary, force, actor, flow_run.get_id())
    error = None
    try:
        reports = []
        blocked_by = None
        for stage in STAGES:
            skip = f"not run: the {blocked_by} stage failed" if blocked_by else None
            report = await validate_stage(ref, plan, stage, skip)
            reports.append(report)
            if report.status == "failed" and not force and blocked_by is None:
                blocked_by = stage
        gate = gate_deployment(ref, plan, reports)
        if gate.blocked:
            raise GateError(f"deployment of version {plan.version} to {pipeline!r} was {gate.reason} "
                            f"(deployment {plan.deployment_id}; `promptcycle status` shows the reports)")
        if plan.canary:
            done = start_canary(ref, plan, gate)
        else:
            done = release_deployment(ref, plan, gate)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        finish_deployment(ref, plan, error)
    result = DeploymentResult(deployment_id=plan.deployment_id, pipeline=pipeline, kind=plan.kind,
                              version=plan.version, production_before=plan.production, gate=gate,
                              stages={r.stage: StageOutcome(status=r.status, reason=r.reason) for r in reports},
                              **done.model_dump(exclude={"deployment_id", "version"}))
    if plan.canary and simulate_traffic:
        from promptcycle_flows.canary import canary as canary_flow

        result.canary = await canary_flow(pipeline=pipeline, config_path=config_path, store_path=store_path,
                                          simulate_traffic=simulate_traffic, seed=traffic_seed, actor=actor)
    return result
