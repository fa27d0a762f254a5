"""Prefect tasks of the deployment and canary phases: thin wrappers over `promptcycle.deploy`.

Each task loads the pipeline from its reference (`PipelineRef`), does one unit of work in the domain, stores
what it found and publishes it as an artifact. Clients and locks are never passed between tasks.
"""

from __future__ import annotations

import getpass
from datetime import datetime, timezone
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from promptcycle.deploy.canary import CanaryLook, look_at_canary
from promptcycle.deploy.gate import GateDecision, decide_gate
from promptcycle.deploy.locks import release_lock, renew_lock
from promptcycle.deploy.release import (
    DeploymentError,
    ReleasePlan,
    conclude_canary,
    plan_release,
    record_gate,
    release_version,
    start_release_canary,
)
from promptcycle.deploy.results import CanaryConclusion, CanaryStart, IngestedOutcomes, ReleaseOutcome, RunningCanary
from promptcycle.deploy.stages import run_stage
from promptcycle.deploy.validation import StageReport
from promptcycle.errors import ConfigError
from promptcycle.evaluation.context import PipelineRef
from promptcycle.monitor.repair import after_canary
from promptcycle.store import MetricsStore
from promptcycle_tasks.reports import artifact_key
from promptcycle_tasks.retry import BACKOFF, retry_if_transient
from promptcycle_tasks.runs import emit_outcome, flow_run_url
from promptcycle_tasks.secrets import aresolve_api_keys

__all__ = ["flow_actor", "block_secret", "prepare_deployment", "validate_stage", "gate_deployment",
           "release_deployment", "start_canary", "finish_deployment", "find_canary", "send_simulated_traffic",
           "ingest_outcomes", "look_canary", "conclude_canary_task"]


def flow_actor(phase: str) -> str:
    """Who moves labels from a flow: the user and the flow run (recorded with every deployment event)."""
    from prefect.runtime import flow_run

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = "unknown user"
    return f"{user} via {phase} flow run {flow_run.get_name() or flow_run.get_id() or '(local)'}"


def block_secret(block_type: str, name: str) -> SecretStr:
    """The secret of the credentials block `name` of `block_type` ('Webhook Credentials': its token; 'LangSmith
    Credentials': its API key), read with Prefect's synchronous loader (the deployment's tasks are sync)."""
    from promptcycle_blocks.credentials import LangSmithCredentials, WebhookCredentials

    if block_type == "LangSmith Credentials":
        block_class, option, make = LangSmithCredentials, "api_key_block", "LangSmithCredentials(api_key=...)"
    else:
        block_class, option, make = WebhookCredentials, "credentials_block", "WebhookCredentials(token=...)"
    try:
        block = block_class.load(name, _sync=True)
    except ValueError:
        raise ConfigError(f"no {block_type} block named {name!r} (create it in the Prefect UI or with "
                          f"{make}.save(name))", path=f"deployment.targets.options.{option}", found=name,
                          expected="an existing block name") from None
    return block.get_api_key() if isinstance(block, LangSmithCredentials) else block.get_token()


@task(name="prepare-deployment", cache_policy=NO_CACHE)
def prepare_deployment(ref: PipelineRef, version: str | None, canary: bool, force: bool, actor: str,
                       flow_run_id: str | None = None) -> ReleasePlan:
    """Take the pipeline's deployment lock, pick the version, and record the deployment."""
    ctx = ref.load()
    return plan_release(ctx.config, ref.pipeline, MetricsStore(ctx.store_path), version=version, canary=canary,
                        force=force, actor=actor, flow_run_id=flow_run_id)


@task(name="validate-stage", task_run_name="{stage}", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=BACKOFF,
      retry_jitter_factor=0.5, retry_condition_fn=retry_if_transient)
async def validate_stage(ref: PipelineRef, plan: ReleasePlan, stage: str,
                         skip_reason: str | None = None) -> StageReport:
    """Run one validation stage on the plan's version; store its report and publish it."""
    from promptcycle.evaluation.pool import close_providers

    ctx = ref.load()
    store = MetricsStore(ctx.store_path)
    renew_lock(store, ref.pipeline, plan.deployment_id, plan.lease_seconds)
    # Only the integration stage calls models; its keys are loaded here, with Prefect's async block loader.
    calls_models = stage == "integration" and skip_reason is None and stage in plan.stages
    keys = await aresolve_api_keys(ctx.config, ctx.providers_used()) if calls_models else {}
    try:
        report = await run_stage(ctx, store, plan, stage, key_of=keys.__getitem__, skip_reason=skip_reason)
    finally:
        await close_providers()
    await create_markdown_artifact(key=artifact_key("deploy", ref.pipeline, stage), markdown=report.to_markdown(),
                                   description=f"The {stage} stage of deployment {plan.deployment_id} "
                                               f"(version {plan.version})")
    return report


@task(name="gate-deployment", cache_policy=NO_CACHE)
def gate_deployment(ref: PipelineRef, plan: ReleasePlan, reports: list[StageReport]) -> GateDecision:
    """Decide the gate over the four stage reports and store the decision with its evidence."""
    ctx = ref.load()
    gate = decide_gate(reports, force=plan.force)
    record_gate(MetricsStore(ctx.store_path), plan, gate, reports)
    lines = [f"# Gate — `{ref.pipeline}` version `{plan.version}`", "",
             f"**{gate.decision.upper()}** — {gate.reason}", "",
             f"Deployment `{plan.deployment_id}` ({plan.kind}), production now `{plan.production or 'none'}`.", "",
             "| stage | status | reason |", "|---|---|---|"]
    lines += [f"| {r.stage} | {r.status} | {r.reason.replace('|', '/')} |" for r in reports]
    lines += _version_markdown(MetricsStore(ctx.store_path), plan, reports)
    create_markdown_artifact(key=artifact_key("deploy-gate", ref.pipeline), markdown="\n".join(lines),
                             description=f"The gate decision of deployment {plan.deployment_id}")
    return gate


def _version_markdown(store: MetricsStore, plan: ReleasePlan, reports: list[StageReport]) -> list[str]:
    """The runs behind the evidence (linked to their flow runs), the version's text and its diff against
    production."""
    from promptcycle.promptdiff import diff_markdown, prompt_markdown

    lines: list[str] = []
    quality = next((r for r in reports if r.stage == "quality"), None)
    runs = [x for x in [(quality.details or {}).get("run_id") if quality else None] if x]
    for run_id in runs:
        record = store.get_run(run_id)
        url = flow_run_url(record.flow_run_id) if record and record.flow_run_id else None
        shown = f"[`{run_id}`]({url})" if url else f"`{run_id}`" + (
            f" (flow run `{record.flow_run_id}`)" if record and record.flow_run_id else "")
        lines += ["", f"Evidence: optimization run {shown}."]
    version = store.get_prompt_version(plan.version)
    if version is None:
        return lines
    lines += ["", f"## Version `{plan.version}`", "", prompt_markdown(version.system, version.template)]
    production = store.get_prompt_version(plan.production) if plan.production else None
    if production is not None:
        lines += ["", f"## Diff against production `{plan.production}`", "",
                  diff_markdown((production.system, production.template), (version.system, version.template),
                                f"production {plan.production}", f"version {plan.version}")]
    else:
        lines += ["", "No version is in production yet: this is the first deployment."]
    return lines


@task(name="release-deployment", cache_policy=NO_CACHE)
def release_deployment(ref: PipelineRef, plan: ReleasePlan, gate: GateDecision) -> ReleaseOutcome:
    """Write the version to every target (all or nothing) and move the labels."""
    ctx = ref.load()
    store = MetricsStore(ctx.store_path)
    renew_lock(store, ref.pipeline, plan.deployment_id, plan.lease_seconds)
    record = release_version(ctx.config, store, plan, gate, block_secret=block_secret)
    create_table_artifact(key=artifact_key("deploy-targets", ref.pipeline), table=record.targets or
                          [{"target": "(none)", "status": "no targets configured", "detail": "labels only"}],
                          description=f"Targets of deployment {plan.deployment_id}: version {plan.version}")
    return ReleaseOutcome(deployment_id=record.deployment_id, status=record.status, targets=record.targets,
                          version=plan.version, previous=plan.production)


@task(name="start-canary", cache_policy=NO_CACHE)
def start_canary(ref: PipelineRef, plan: ReleasePlan, gate: GateDecision) -> CanaryStart:
    """Start the canary of the plan's version (production and the targets stay as they are)."""
    ctx = ref.load()
    canary = start_release_canary(ctx.config, MetricsStore(ctx.store_path), plan, gate)
    return CanaryStart(canary_id=canary.canary_id, split_pct=canary.split_pct, control=canary.control_hash,
                       treatment=canary.treatment_hash, plan=canary.settings.get("plan"), reason=canary.reason)


@task(name="finish-deployment", cache_policy=NO_CACHE)
def finish_deployment(ref: PipelineRef, plan: ReleasePlan, error: str | None = None) -> None:
    """Give the deployment lock back; a deployment that stopped on an error is recorded as failed."""
    ctx = ref.load()
    store = MetricsStore(ctx.store_path)
    try:
        record = store.get_deployment(plan.deployment_id)
        if error is not None and record is not None and record.status == "validating":
            store.update_deployment(plan.deployment_id, status="failed", reason=error[:2000], finished=True)
    finally:
        release_lock(store, ref.pipeline, plan.deployment_id)


# -- canary -----------------------------------------------------------------------------------------------------

@task(name="find-canary", cache_policy=NO_CACHE)
def find_canary(ref: PipelineRef) -> RunningCanary:
    """The pipeline's running canary (id, arms, split, settings); `DeploymentError` when none runs."""
    ctx = ref.load()
    canary = MetricsStore(ctx.store_path).active_canary(ref.pipeline)
    if canary is None:
        raise DeploymentError(f"pipeline {ref.pipeline!r} has no running canary; start one with "
                              f"`promptcycle deploy --pipeline {ref.pipeline} --canary`")
    return RunningCanary(canary_id=canary.canary_id, control=canary.control_hash, treatment=canary.treatment_hash,
                         split_pct=canary.split_pct, looks=canary.looks, settings=canary.settings)


@task(name="send-simulated-traffic", cache_policy=NO_CACHE)
async def send_simulated_traffic(ref: PipelineRef, requests: int, seed: int,
                                 error_rates: dict[str, float] | None = None) -> dict[str, Any]:
    """Simulated production requests through resolve_prompt, the simulated models and the scorers."""
    from promptcycle.deploy.traffic import simulate_traffic

    ctx = ref.load()
    summary = await simulate_traffic(ctx, requests=requests, seed=seed, error_rates=error_rates)
    return summary.to_dict()


@task(name="ingest-outcomes", cache_policy=NO_CACHE)
def ingest_outcomes(ref: PipelineRef, path: str) -> IngestedOutcomes:
    """Record the production outcomes of a JSONL file (all or nothing; a request id is recorded once)."""
    from promptcycle.deploy.serving import ingest_production_results

    ctx = ref.load()
    report = ingest_production_results(ctx.config.resolve_path(path), pipeline=ref.pipeline, store=ctx.store_path)
    return IngestedOutcomes(path=report.path, lines=report.lines, new=report.new, duplicates=report.duplicates)


@task(name="look-canary", task_run_name="look at {canary_id}", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=BACKOFF, retry_jitter_factor=0.5, retry_condition_fn=retry_if_transient)
def look_canary(ref: PipelineRef, canary_id: str) -> CanaryLook:
    """One look of the sequential test on every outcome so far; moves the split when due."""
    ctx = ref.load()
    store = MetricsStore(ctx.store_path)
    look = look_at_canary(store, canary_id)
    _publish_looks(store, ref.pipeline, canary_id)
    return look


@task(name="conclude-canary", cache_policy=NO_CACHE)
def conclude_canary_task(ref: PipelineRef, look: CanaryLook, actor: str) -> CanaryConclusion:
    """Promote (targets, then labels) or roll back (production restored on every target)."""
    ctx = ref.load()
    store = MetricsStore(ctx.store_path)
    record = conclude_canary(ctx.config, store, look, actor=actor, block_secret=block_secret)
    after_canary(store, ctx.config, look.canary_id, datetime.now(timezone.utc))  # learning; a healing's incident
    _publish_looks(store, ref.pipeline, look.canary_id)
    canary = store.get_canary(look.canary_id)
    outcome = "promoted" if record.kind == "promote" else "rolled_back"
    emit_outcome(f"promptcycle.canary.{outcome}", ref.pipeline, {
        "canary_id": look.canary_id, "deployment_id": record.deployment_id, "status": record.status,
        "control": canary.control_hash, "treatment": canary.treatment_hash, "production": record.to_hash,
        "reason": look.reason, "looks": look.look})
    return CanaryConclusion(deployment_id=record.deployment_id, kind=record.kind, status=record.status,
                            version=record.to_hash, targets=record.targets)


def _look_row(look: dict[str, Any]) -> dict[str, Any]:
    d = look["decision"] or {}

    def fmt(x: Any) -> str:
        return f"{x:+.4f}" if isinstance(x, (int, float)) else "—"

    fraction, spent = d.get("information_fraction"), d.get("alpha_spent")
    return {"look": look["look"], "split %": look["split_pct"], "control": look["n_control"],
            "treatment": look["n_treatment"], "effect": fmt(d.get("effect")),
            "CI": f"{fmt(d.get('ci_low'))} … {fmt(d.get('ci_high'))}",
            "horizon": f"{fraction:.0%}" if isinstance(fraction, (int, float)) else "—",
            "alpha spent": f"{spent:.3g}" if isinstance(spent, (int, float)) else "—", "action": look["action"]}


def _plan_line(plan: dict[str, Any]) -> str:
    if not plan:
        return "—"
    return (f"{plan['test']}; {plan['power']:.0%} power at a {plan['min_effect'] * 100:.1f}-point gain by "
            f"{plan['requests']:.0f} requests (horizon {plan['horizon']:.0f} effective pairs; score variance "
            f"{plan['variance']:.4f}, {plan['variance_source']}); alpha {plan['alpha']:g}, harm {plan['alpha_harm']:g}")


def _publish_looks(store: MetricsStore, pipeline: str, canary_id: str) -> None:
    """The canary's looks so far as a markdown artifact (a new version per look)."""
    canary = store.get_canary(canary_id)
    rows = [_look_row(x) for x in store.canary_looks(canary_id)]
    header = list(rows[0]) if rows else []
    lines = [f"# Canary `{canary_id}` — {canary.status}", "",
             f"`{canary.control_hash}` (production) vs `{canary.treatment_hash}` (new) · split now "
             f"{canary.split_pct:g}% · schedule {', '.join(f'{x:g}%' for x in canary.settings['schedule'])}", "",
             f"Plan: {_plan_line(canary.settings.get('plan') or {})}", "",
             f"Last look: {canary.reason}", ""]
    if rows:
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    create_markdown_artifact(key=artifact_key("canary", pipeline), markdown="\n".join(lines),
                             description=f"Looks of canary {canary_id}")
