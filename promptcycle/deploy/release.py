"""Moving production: deploy a version, start a canary, promote or roll it back, roll production back.

Every function here records a deployment event (the `deployments` table): who or which flow, when,
from which version to which, why, the evidence, and what each target did. Labels move only after
every target took the new version, and all of a deployment's label moves happen in one store
transaction: a deployment is all or nothing across targets and labels.

Labels: `production` is what serves; `previous` is what production pointed at before its latest
move (what `roll_back` restores); `candidate` is the version proposed by optimization or under canary.

    plan = plan_release(config, "customer-insights", store, actor="ana")   # takes the pipeline's lock
    ... run the stages, decide the gate ...
    release_version(config, store, plan, gate)                          # targets, then labels
    release_lock(store, plan.pipeline, plan.deployment_id)
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from promptcycle.deploy.canary import CanaryLook, begin_canary
from promptcycle.deploy.gate import GateDecision
from promptcycle.deploy.locks import DeploymentConflictError, deployment_lock, take_lock
from promptcycle.deploy.targets import DeployedPrompt, SecretLookup, TargetError, apply_targets, build_targets
from promptcycle.errors import ConfigError, DeploymentError
from promptcycle.store import MetricsStore
from promptcycle.store.records import (
    STAGES,
    CanaryRecord,
    DecisionRecord,
    DeploymentRecord,
    PromptVersionRecord,
    utc_now,
)

__all__ = [
    "DeploymentError",
    "ReleasePlan",
    "new_deployment_id",
    "resolve_version",
    "plan_release",
    "record_gate",
    "release_version",
    "start_release_canary",
    "conclude_canary",
    "roll_back",
]




def new_deployment_id(pipeline: str, kind: str = "deploy") -> str:
    return f"{kind}-{pipeline}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class ReleasePlan:
    """What a deployment flow is about to do, decided before any stage runs."""

    deployment_id: str
    pipeline: str
    scope: str
    kind: str  # "initial" | "deploy" | "canary"
    version: str
    production: str | None
    stages: tuple[str, ...]  # the stages that run; the others are skipped with a reason
    canary: bool
    force: bool
    actor: str
    lease_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_version(store: MetricsStore, pipeline: str, version: str, *,
                    option: str = "--version") -> PromptVersionRecord:
    """The recorded version `version` of `pipeline`; `ConfigError` (bad input, naming `option`) when unknown
    or another pipeline's."""
    record = store.get_prompt_version(version)
    if record is None:
        known = [v.prompt_hash for v in store.prompt_versions(pipeline)][-5:]
        raise ConfigError(f"unknown prompt version {version!r} for pipeline {pipeline!r}; recent versions: "
                          f"{', '.join(known) or '(none recorded)'}", path=option, found=version,
                          expected=f"a recorded version of {pipeline}")
    if record.pipeline != pipeline:
        raise ConfigError(f"prompt version {version!r} belongs to pipeline {record.pipeline!r}, not {pipeline!r}",
                          path=option, found=version, expected=f"a recorded version of {pipeline}")
    return record


def _configured_version(config: Any, pipeline: str, store: MetricsStore) -> PromptVersionRecord:
    prompt = config.pipeline(pipeline).prompt.to_template()
    record = PromptVersionRecord(prompt_hash=prompt.hash, pipeline=pipeline, system=prompt.system,
                                 template=prompt.template, variables=prompt.variables, strategy="baseline",
                                 rationale="The pipeline's configured prompt.", created_at=utc_now())
    store.write_prompt_version(record)
    return store.get_prompt_version(prompt.hash) or record


def plan_release(config: Any, pipeline: str, store: MetricsStore, *, version: str | None = None,
                 canary: bool = False, force: bool = False, actor: str,
                 flow_run_id: str | None = None) -> ReleasePlan:
    """Take the pipeline's deployment lock, decide what goes out, and record the deployment as validating.

    No production yet: an "initial" deployment of `version` or the configured prompt, through the
    syntax and content stages. Otherwise `version` or the `candidate` label, through all four stages,
    directly or (`canary`) as a canary. The caller releases the lock (`release_lock`).
    """
    pipe = config.pipeline(pipeline)
    deployment_id = new_deployment_id(pipeline)
    lease = pipe.deployment.lock_lease_seconds
    take_lock(store, pipeline, deployment_id, lease)
    try:
        running = store.active_canary(pipeline)
        if running is not None:
            raise DeploymentConflictError(
                f"pipeline {pipeline!r} has a running canary {running.canary_id} ({running.treatment_hash} at "
                f"{running.split_pct:g}%); a deployment waits until it ends — or roll it back first")
        record = resolve_version(store, pipeline, version) if version else None
        scope = (record.scope or "") if record else ""
        # A prompt for one model replaces what serves that model now: its own production label, else the
        # pipeline's (serving falls back the same way, promptcycle/deploy/serving.py).
        production = store.get_label(pipeline, "production", scope) or (
            store.get_label(pipeline, "production") if scope else None)
        if production is None:
            if canary:
                raise DeploymentError(f"pipeline {pipeline!r} has nothing in production to run a canary against; "
                                      "the first deployment goes out directly (drop --canary)")
            record = record or _configured_version(config, pipeline, store)
            kind, stages = "initial", ("syntax", "content")
        else:
            if record is None:
                candidate = store.get_label(pipeline, "candidate", scope)
                if candidate is None:
                    raise DeploymentError(f"pipeline {pipeline!r} has no candidate version: run the optimization "
                                          "phase, or name one with --version")
                record = resolve_version(store, pipeline, candidate)
            if record.prompt_hash == production:
                raise DeploymentError(f"version {production} is already in production for {pipeline!r}")
            kind, stages = ("canary" if canary else "deploy"), STAGES
        plan = ReleasePlan(deployment_id=deployment_id, pipeline=pipeline, scope=scope, kind=kind,
                           version=record.prompt_hash, production=production, stages=tuple(stages), canary=canary,
                           force=force, actor=actor, lease_seconds=lease)
        store.create_deployment(DeploymentRecord(
            deployment_id=deployment_id, pipeline=pipeline, scope=scope, kind=kind, status="validating",
            from_hash=production, to_hash=record.prompt_hash, forced=False, actor=actor, flow_run_id=flow_run_id,
            reason=f"{kind} of {record.prompt_hash}" + (f" replacing {production}" if production else "")))
        return plan
    except BaseException:
        store.release_deploy_lock(pipeline, deployment_id)
        raise


def record_gate(store: MetricsStore, plan: ReleasePlan, gate: GateDecision, reports: Sequence[Any]) -> None:
    """Store the gate's decision with its evidence; a blocked deployment ends here as 'blocked'."""
    evidence = {"reason": gate.reason, "failed_stages": gate.failed_stages, "forced": gate.decision == "forced",
                "stages": {r.stage: {"status": r.status, "reason": r.reason} for r in reports}}
    store.write_decision(DecisionRecord(run_id=plan.deployment_id, pipeline=plan.pipeline, kind="gate",
                                        prompt_hash=plan.version, baseline_hash=plan.production,
                                        decision=gate.decision, evidence=evidence))
    if gate.blocked:
        store.update_deployment(plan.deployment_id, status="blocked", reason=gate.reason, evidence={"gate": evidence},
                                finished=True)
    else:
        store.update_deployment(plan.deployment_id, forced=gate.decision == "forced", evidence={"gate": evidence})


def _prompt(store: MetricsStore, version: str | None, scope: str) -> DeployedPrompt | None:
    if version is None:
        return None
    record = store.get_prompt_version(version)
    if record is None:
        raise DeploymentError(f"prompt version {version} is not recorded in {store.path}")
    return DeployedPrompt.of(record, scope)


def _push(config: Any, store: MetricsStore, deployment_id: str, pipeline: str, scope: str, to_hash: str,
          from_hash: str | None, moves: list[tuple[str, str]], *, actor: str, reason: str, evidence: dict[str, Any],
          forced: bool, block_secret: SecretLookup | None) -> DeploymentRecord:
    """Targets first (all or nothing), then the label moves in one transaction; record the outcome."""
    targets = build_targets(config, pipeline, block_secret=block_secret)
    try:
        rollout = apply_targets(targets, _prompt(store, to_hash, scope), previous=_prompt(store, from_hash, scope))
    except TargetError as exc:
        store.update_deployment(deployment_id, status="failed", reason=str(exc),
                                targets=[o.to_dict() for o in exc.outcomes], finished=True)
        raise
    try:
        events = store.move_labels(pipeline, moves, scope=scope, actor=actor, reason=reason,
                                   evidence={"deployment_id": deployment_id, **evidence}, forced=forced)
    except BaseException as exc:
        undone = rollout.undo()
        store.update_deployment(deployment_id, status="failed", reason=f"labels could not move ({exc}); targets "
                                "restored", targets=[o.to_dict() for o in undone], finished=True)
        raise
    return store.update_deployment(
        deployment_id, status="deployed", targets=[o.to_dict() for o in rollout.outcomes],
        evidence={**evidence, "labels": [{"label": e.label, "from": e.from_hash, "to": e.to_hash} for e in events]},
        finished=True)


def release_version(config: Any, store: MetricsStore, plan: ReleasePlan, gate: GateDecision | None, *,
                    block_secret: SecretLookup | None = None) -> DeploymentRecord:
    """Write `plan.version` to every target and make it production (the old production becomes previous)."""
    moves = ([("previous", plan.production)] if plan.production else []) + [("production", plan.version)]
    reason = (f"{plan.kind} deployment {plan.deployment_id}" + (f" ({gate.reason})" if gate else ""))
    evidence = {"gate": gate.to_dict()} if gate else {}
    return _push(config, store, plan.deployment_id, plan.pipeline, plan.scope, plan.version, plan.production, moves,
                 actor=plan.actor, reason=reason, evidence=evidence,
                 forced=bool(gate and gate.decision == "forced"), block_secret=block_secret)


def start_release_canary(config: Any, store: MetricsStore, plan: ReleasePlan, gate: GateDecision) -> CanaryRecord:
    """Start the canary of `plan.version`: it becomes the candidate; production and the targets stay put."""
    canary = begin_canary(store, pipeline=plan.pipeline, scope=plan.scope, control_hash=plan.production,
                          treatment_hash=plan.version, config=config.pipeline(plan.pipeline).deployment.canary,
                          actor=plan.actor, deployment_id=plan.deployment_id)
    store.move_label(plan.pipeline, "candidate", plan.version, scope=plan.scope, actor=plan.actor,
                     reason=f"under canary {canary.canary_id}", evidence={"deployment_id": plan.deployment_id},
                     forced=gate.decision == "forced")
    store.update_deployment(plan.deployment_id, status="canary", reason=f"canary {canary.canary_id} started at "
                            f"{canary.split_pct:g}% ({gate.reason})", evidence={"gate": gate.to_dict(),
                                                                              "canary_id": canary.canary_id},
                            finished=True)
    return canary


def conclude_canary(config: Any, store: MetricsStore, look: CanaryLook, *, actor: str,
                    block_secret: SecretLookup | None = None, wait_seconds: float = 30.0) -> DeploymentRecord:
    """Act on a look that decided: promote (targets, then labels) or roll back (production restored everywhere)."""
    canary = store.get_canary(look.canary_id)
    if canary is None or canary.status != "running":
        raise DeploymentError(f"canary {look.canary_id} is not running")
    decision = look.decision
    if look.action not in ("promote", "rollback"):
        raise ValueError(f"look {look.look} of {look.canary_id} decided {look.action!r}; nothing to conclude")
    evidence = {**decision.to_dict(), "canary_id": canary.canary_id, "look": look.look, "split_pct": look.split_pct}
    store.write_decision(DecisionRecord(run_id=canary.canary_id, pipeline=canary.pipeline, kind="canary",
                                        prompt_hash=canary.treatment_hash, baseline_hash=canary.control_hash,
                                        decision=look.action, evidence=evidence))
    promote = look.action == "promote"
    deployment_id = new_deployment_id(canary.pipeline, "promote" if promote else "canary-rollback")
    with deployment_lock(store, canary.pipeline, deployment_id, config.pipeline(canary.pipeline).deployment
                         .lock_lease_seconds, wait_seconds=wait_seconds):
        store.create_deployment(DeploymentRecord(
            deployment_id=deployment_id, pipeline=canary.pipeline, scope=canary.scope,
            kind="promote" if promote else "canary_rollback", status="validating",
            from_hash=canary.control_hash, to_hash=canary.treatment_hash if promote else canary.control_hash,
            actor=actor, reason=look.reason, evidence={"canary": evidence}))
        if promote:
            try:
                record = _push(config, store, deployment_id, canary.pipeline, canary.scope, canary.treatment_hash,
                               canary.control_hash,
                               [("previous", canary.control_hash), ("production", canary.treatment_hash)],
                               actor=actor, reason=f"canary {canary.canary_id} promoted: {look.reason}",
                               evidence={"canary": evidence}, forced=False, block_secret=block_secret)
            except BaseException as exc:
                store.update_canary(canary.canary_id, status="failed", reason=f"promotion failed: {exc}",
                                    finished=True)
                raise
            store.update_canary(canary.canary_id, status="promoted", split_pct=100.0, reason=look.reason,
                                finished=True)
            return record
        # Traffic returns to production the moment the canary stops running; then the targets are
        # re-written with production (they should hold it already), so every target is known-good.
        store.update_canary(canary.canary_id, status="rolled_back", split_pct=0.0, reason=look.reason,
                            finished=True)
        return _push(config, store, deployment_id, canary.pipeline, canary.scope, canary.control_hash,
                     canary.control_hash, [], actor=actor, reason=f"canary {canary.canary_id} rolled back",
                     evidence={"canary": evidence}, forced=False, block_secret=block_secret)


def roll_back(config: Any, pipeline: str, store: MetricsStore, *, to: str | None = None, scope: str = "",
              actor: str, reason: str | None = None, block_secret: SecretLookup | None = None) -> DeploymentRecord:
    """Make `to` (default: the `previous` label) production again on every target, byte for byte.

    The version must have been in production before. A running canary of the pipeline ends (rolled
    back). Raises `DeploymentError` when there is nothing to roll back to.
    """
    pipe = config.pipeline(pipeline)
    deployment_id = new_deployment_id(pipeline, "rollback")
    with deployment_lock(store, pipeline, deployment_id, pipe.deployment.lock_lease_seconds):
        production = store.get_label(pipeline, "production", scope)
        if production is None:
            raise DeploymentError(f"pipeline {pipeline!r} has nothing in production to roll back")
        if to is None:
            to = store.get_label(pipeline, "previous", scope)
            if to is None:
                raise DeploymentError(f"pipeline {pipeline!r} has no previous version to roll back to (production "
                                      f"{production} is its first); name one with --to VERSION")
        resolve_version(store, pipeline, to, option="--to")
        if to == production:
            raise DeploymentError(f"version {to} is already in production for {pipeline!r}")
        served = {e.to_hash for e in store.label_history(pipeline, "production", limit=None, scope=scope)}
        if to not in served:
            raise DeploymentError(f"version {to} was never in production for {pipeline!r}; a rollback only restores "
                                  "earlier production versions — deploy it instead (it goes through the gate)")
        running = store.active_canary(pipeline)
        if running is not None:
            store.update_canary(running.canary_id, status="rolled_back", split_pct=0.0,
                                reason=f"ended by rollback {deployment_id}", finished=True)
        why = reason or f"rollback to {to}"
        store.create_deployment(DeploymentRecord(
            deployment_id=deployment_id, pipeline=pipeline, scope=scope, kind="rollback", status="validating",
            from_hash=production, to_hash=to, actor=actor, reason=why))
        return _push(config, store, deployment_id, pipeline, scope, to, production,
                     [("previous", production), ("production", to)], actor=actor, reason=why,
                     evidence={"ended_canary": running.canary_id if running else None}, forced=False,
                     block_secret=block_secret)
