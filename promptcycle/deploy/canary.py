"""The canary: a new version serves a growing share of production traffic until a sequential test decides.

    canary = begin_canary(store, pipeline="customer-insights", control_hash=production, treatment_hash=version,
                          config=pipe.deployment.canary, actor="deployment flow run …")
    ...                                      # the application serves requests (resolve_prompt) and
                                             # reports outcomes (log_production_result)
    look = look_at_canary(store, canary.canary_id)
    look.action                              # "promote" | "rollback" | "continue"

Before the first request, `begin_canary` plans the canary (`promptcycle.stats.sequential.plan_canary`):
from the score variance of production's recent outcomes (the upper 90% confidence bound; with fewer than
`MIN_HISTORY` scored outcomes, the largest variance a score in [0, 1] can have) it states the horizon and the
requests it needs for `power` at `min_effect`. The plan is frozen in the canary's settings and its reason.

The split follows the configured schedule (e.g. 10% → 50% → 100%): after each look that continues
— no guardrail breached, no decision yet — the split moves to the next step once the treatment has
served `step_min_requests` requests at the current one. The last step, 100%, is the promotion
itself: it takes a "promote" decision, and only from the step before it — when the test favours the
new version earlier, the split moves to the next step at once and the canary goes on (the test stays
valid: promoting at a later crossing of the boundary is a subset of crossing it at some look). A
rollback — harm, the horizon, a guardrail — ends the canary at any step. Each look runs
`promptcycle.stats.sequential.decide_canary` on every outcome reported so far (its error rates hold
however often it looks, whatever the split), and is recorded in the store with its evidence.

Both arms are compared over the same period: each outcome belongs to the split step it was reported
in (steps begin at the looks that moved the split), and the test compares arms only within a step.
A drift of the traffic during the canary therefore moves both sides of every comparison alike.

Outcomes belong to the canary when they were served by one of its two versions and were reported
with its id, or without an id while it ran. The canary's settings are frozen when it starts, so
editing pipelines.yaml mid-canary does not change the test under way.

In shadow mode (`mode: shadow`) production serves every request and the new version also answers
`shadow_pct` percent of them unserved; each look compares the two answers of every shadowed request
(`decide_shadow`: the same boundary on paired differences), and a promotion goes straight to
production. Guardrails watch served traffic only, so they do not apply in shadow mode.

One canary per pipeline: `begin_canary` refuses a second while one runs. Canaries of different
pipelines share nothing but the store.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

from promptcycle.deploy.locks import DeploymentConflictError
from promptcycle.errors import PromptcycleError
from promptcycle.stats.sequential import (
    MAX_VARIANCE,
    CanaryDecision,
    CanaryPlan,
    Guardrails,
    decide_canary,
    decide_shadow,
    history_variance,
    plan_canary,
)
from promptcycle.store import MetricsStore
from promptcycle.store.records import CanaryRecord

__all__ = ["CanaryArms", "CanaryLook", "MIN_HISTORY", "HISTORY_REQUESTS", "begin_canary", "plan_for", "read_arms",
           "read_pairs", "look_at_canary", "new_canary_id"]

MIN_HISTORY = 100  # scored production outcomes needed to trust their variance
HISTORY_REQUESTS = 5000  # the most recent production outcomes the plan reads


def new_canary_id(pipeline: str) -> str:
    return f"canary-{pipeline}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"


def begin_canary(store: MetricsStore, *, pipeline: str, control_hash: str, treatment_hash: str, config: Any,
                 actor: str, scope: str = "", deployment_id: str | None = None) -> CanaryRecord:
    """Start a canary of `treatment_hash` against production `control_hash` at the schedule's first step.

    `config` is the pipeline's `CanaryConfig`. Raises `DeploymentConflictError` when the pipeline
    already has a running canary.
    """
    settings = config.model_dump()
    plan = plan_for(store, pipeline=pipeline, scope=scope, control_hash=control_hash, config=config)
    settings["plan"] = plan.to_dict()
    record, created = store.start_canary(CanaryRecord(
        canary_id=new_canary_id(pipeline), pipeline=pipeline, scope=scope, deployment_id=deployment_id,
        control_hash=control_hash, treatment_hash=treatment_hash, actor=actor, step=0,
        split_pct=0.0 if config.mode == "shadow" else float(config.schedule[0]), settings=settings,
        reason=f"canary of {treatment_hash} against production {control_hash}: {plan.describe()}"))
    if not created:
        raise DeploymentConflictError(
            f"pipeline {pipeline!r} already has a running canary {record.canary_id} ({record.control_hash} -> "
            f"{record.treatment_hash} at {record.split_pct:g}%); one canary per pipeline at a time — wait for it "
            f"to end (`promptcycle canary --pipeline {pipeline}`) or roll it back (`promptcycle rollback`)")
    return record


def plan_for(store: MetricsStore, *, pipeline: str, scope: str, control_hash: str, config: Any) -> CanaryPlan:
    """The canary's plan from production history: the horizon for `config.power` at `config.min_effect`."""
    rows = store.production_results(pipeline, prompt_hashes=[control_hash], scope=scope)
    scores = [r.score for r in rows[-HISTORY_REQUESTS:] if r.score is not None and not r.error]
    if len(scores) >= MIN_HISTORY:
        _, variance = history_variance(scores)
        source = f"upper 90% bound over {len(scores)} recent production outcomes"
    else:
        variance = MAX_VARIANCE
        source = (f"no production history ({len(scores)} scored outcomes, {MIN_HISTORY} needed): the largest "
                  "variance of a score in [0, 1]")
    look_size = config.look_size
    if config.mode == "shadow":
        # a paired difference has variance 2 sigma^2 (1 - rho); rho >= 0 for answers to the same request, so
        # 2 sigma^2 is a safe bound until the canary's own pairs are seen
        variance, source = 2 * variance, f"2 x the production variance ({source}; assumes no correlation)"
        look_size = max(1, round(look_size * config.shadow_pct / 100))
    return plan_canary(max(variance, 0.05**2), min_effect=config.min_effect, alpha=config.alpha,
                       alpha_harm=config.alpha_harm, power=config.power, schedule=config.schedule,
                       step_min_requests=config.step_min_requests, look_size=look_size,
                       variance_source=source, max_requests=config.max_requests, mode=config.mode)


@dataclass(frozen=True)
class CanaryArms:
    """Each arm's outcomes in arrival order, aligned request by request (NaN: no score / latency), with the split
    step each was reported in."""

    control_ids: list[str]
    control_scores: np.ndarray
    control_errors: np.ndarray
    control_latencies: np.ndarray
    control_steps: np.ndarray
    treatment_ids: list[str]
    treatment_scores: np.ndarray
    treatment_errors: np.ndarray
    treatment_latencies: np.ndarray
    treatment_steps: np.ndarray


def _step_starts(store: MetricsStore, canary: CanaryRecord) -> list[Any]:
    """When each step after the first began: the times of the looks that moved the split."""
    return [look["created_at"] for look in store.canary_looks(canary.canary_id)
            if (look.get("decision") or {}).get("advanced")]


def read_arms(store: MetricsStore, canary: CanaryRecord) -> CanaryArms:
    """The outcomes of `canary` so far, split into control (production) and treatment (the new version), each
    labelled with the split step it was reported in."""
    rows = store.production_results(canary.pipeline, prompt_hashes=[canary.control_hash, canary.treatment_hash],
                                    scope=canary.scope, since=canary.started_at, until=canary.finished_at,
                                    canary_id=canary.canary_id)
    arms: dict[bool, list] = {False: [], True: []}
    for r in rows:
        if r.arm != "shadow":
            arms[r.prompt_hash == canary.treatment_hash].append(r)

    starts = _step_starts(store, canary)

    def step(at: Any) -> int:
        return sum(1 for s in starts if at is not None and at >= s)

    def columns(items: list) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        nan = float("nan")
        return ([r.request_id for r in items],
                np.array([nan if r.score is None or r.error else float(r.score) for r in items], dtype=float),
                np.array([bool(r.error) for r in items], dtype=bool),
                np.array([nan if r.latency_ms is None else float(r.latency_ms) for r in items], dtype=float),
                np.array([step(r.created_at) for r in items], dtype=int))

    c, t = columns(arms[False]), columns(arms[True])
    return CanaryArms(*c, *t)


@dataclass(frozen=True)
class CanaryLook:
    """One look: what to do ("promote", "rollback" or "continue") and why, the test's decision with its
    evidence, and what happened to the split."""

    canary_id: str
    pipeline: str
    look: int
    action: str
    reason: str
    split_pct: float  # the split the outcomes were served under (the current step)
    next_split_pct: float  # the split from now on
    advanced: bool
    requests_control: int  # every request reported, errors included
    requests_treatment: int
    decision: CanaryDecision

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["decision"] = self.decision.to_dict()
        return data


def _guardrails(settings: dict[str, Any]) -> Guardrails:
    g = settings.get("guardrails") or {}
    return Guardrails(max_error_rate=g.get("max_error_rate"), max_error_rate_increase=g.get("max_error_rate_increase"),
                      max_p95_latency_ms=g.get("max_p95_latency_ms"),
                      max_p95_latency_increase_ms=g.get("max_p95_latency_increase_ms"),
                      min_requests=int(g.get("min_requests", 20)), alpha=float(settings["alpha"]))


def read_pairs(store: MetricsStore, canary: CanaryRecord) -> tuple[np.ndarray, np.ndarray]:
    """Shadow mode: (production score, new version's score) of each request both answered, in arrival order
    (NaN where an answer errored or was not scored)."""
    rows = store.production_results(canary.pipeline, prompt_hashes=[canary.control_hash, canary.treatment_hash],
                                    scope=canary.scope, since=canary.started_at, until=canary.finished_at,
                                    canary_id=canary.canary_id)
    nan = float("nan")
    served = {r.request_id: r for r in rows if r.arm != "shadow" and r.prompt_hash == canary.control_hash}
    production, candidate, seen = [], [], set()
    for r in rows:
        origin = (r.metadata or {}).get("shadow_of")
        if r.arm != "shadow" or r.prompt_hash != canary.treatment_hash or origin not in served or origin in seen:
            continue
        seen.add(origin)
        p = served[origin]
        production.append(nan if p.score is None or p.error else float(p.score))
        candidate.append(nan if r.score is None or r.error else float(r.score))
    return np.array(production, dtype=float), np.array(candidate, dtype=float)


def _look_at_shadow(store: MetricsStore, canary: CanaryRecord) -> CanaryLook:
    s = canary.settings
    production, candidate = read_pairs(store, canary)
    decision = decide_shadow(production, candidate, horizon=float(s["plan"]["horizon"]), alpha=float(s["alpha"]),
                             alpha_harm=float(s["alpha_harm"]), min_effect=float(s["min_effect"]),
                             min_pairs=int(s["min_per_arm"]), plan=s["plan"])
    look = canary.looks + 1
    store.write_canary_look(canary.canary_id, look, split_pct=0.0, n_control=decision.n_control,
                            n_treatment=decision.n_treatment, action=decision.action, reason=decision.reason,
                            decision={**decision.to_dict(), "requests_control": int(production.size),
                                      "requests_treatment": int(candidate.size), "next_split_pct": 0.0,
                                      "advanced": False, "step": 0})
    store.update_canary(canary.canary_id, looks=look, decision=decision.to_dict(), reason=decision.reason)
    return CanaryLook(canary_id=canary.canary_id, pipeline=canary.pipeline, look=look, action=decision.action,
                      reason=decision.reason, split_pct=0.0, next_split_pct=0.0, advanced=False,
                      requests_control=int(production.size), requests_treatment=int(candidate.size),
                      decision=decision)


def _upgraded_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings of a canary started before canaries had plans: today's defaults for the new keys, a positive
    min_effect, and a plan at the largest variance a score can have (safe, long)."""
    from promptcycle.config import CanaryConfig

    known = {k: v for k, v in settings.items() if k in CanaryConfig.model_fields and k != "min_effect"}
    config = CanaryConfig(**known, min_effect=settings.get("min_effect") or 0.03)
    upgraded = config.model_dump()
    upgraded["plan"] = plan_canary(MAX_VARIANCE, min_effect=config.min_effect, alpha=config.alpha,
                                   alpha_harm=config.alpha_harm, power=config.power, schedule=config.schedule,
                                   step_min_requests=config.step_min_requests, look_size=config.look_size,
                                   variance_source="started before canary plans: the largest variance of a "
                                   "score in [0, 1]").to_dict()
    return upgraded


def look_at_canary(store: MetricsStore, canary_id: str) -> CanaryLook:
    """Decide the running canary on the outcomes reported so far, record the look, move the split if due
    (shadow mode: decide on the pairs so far; a promotion goes straight to production)."""
    canary = store.get_canary(canary_id)
    if canary is None:
        raise PromptcycleError(f"no canary {canary_id!r} in {store.path}")
    if canary.status != "running":
        raise PromptcycleError(f"canary {canary_id} is {canary.status}, not running; nothing to look at")
    if "plan" not in canary.settings:
        canary = replace(canary, settings=_upgraded_settings(canary.settings))
    if canary.settings.get("mode") == "shadow":
        return _look_at_shadow(store, canary)
    s = canary.settings
    arms = read_arms(store, canary)
    plan = s["plan"]
    decision = decide_canary(
        arms.control_scores, arms.treatment_scores, control_ids=arms.control_ids, treatment_ids=arms.treatment_ids,
        control_strata=arms.control_steps, treatment_strata=arms.treatment_steps,
        alpha=float(s["alpha"]), alpha_harm=float(s["alpha_harm"]), min_effect=float(s["min_effect"]),
        horizon=float(plan["horizon"]), plan=plan, min_per_arm=int(s["min_per_arm"]), guardrails=_guardrails(s),
        control_errors=arms.control_errors, treatment_errors=arms.treatment_errors,
        control_latencies_ms=arms.control_latencies, treatment_latencies_ms=arms.treatment_latencies)
    n_treatment = len(arms.treatment_ids)
    schedule = [float(x) for x in s["schedule"]]
    step, split, step_start = canary.step, canary.split_pct, canary.step_start_treatment
    last_step = len(schedule) - 2  # the step before 100%: the only one a promotion leaves from
    action, reason, advanced = decision.action, decision.reason, False
    if action == "promote" and step < last_step:
        action = "continue"
        reason = (f"Continue at {schedule[step + 1]:g}%: the test favours the new version, but the schedule "
                  f"promotes only from {schedule[last_step]:g}%. " + decision.reason)
        advanced = True
    elif action == "continue" and step < last_step and n_treatment - step_start >= int(s["step_min_requests"]):
        advanced = True
    if advanced:
        step, split, step_start = step + 1, schedule[step + 1], n_treatment
    look = canary.looks + 1
    store.write_canary_look(canary_id, look, split_pct=canary.split_pct, n_control=decision.n_control,
                            n_treatment=decision.n_treatment, action=action, reason=reason,
                            decision={**decision.to_dict(), "requests_control": len(arms.control_ids),
                                      "requests_treatment": n_treatment, "next_split_pct": split,
                                      "advanced": advanced, "step": canary.step})
    store.update_canary(canary_id, looks=look, step=step, split_pct=split, step_start_treatment=step_start,
                        decision=decision.to_dict(), reason=reason)
    return CanaryLook(canary_id=canary_id, pipeline=canary.pipeline, look=look, action=action, reason=reason,
                      split_pct=canary.split_pct, next_split_pct=split, advanced=advanced,
                      requests_control=len(arms.control_ids), requests_treatment=n_treatment, decision=decision)
