"""What a healing repairs, and what it leaves behind: its plan, the end of its incident, and what learning keeps.

    plan = plan_healing(ctx, store, model, decision_id)     # the prompt to beat, the scope, the epoch, strategies
    ... flows/healing.py: baseline(plan) → optimization(plan) → deployment as a canary ...
    finish_healing_incident(store, config, decision_id, incident_id, outcome, summary, ...)
    after_canary(store, config, canary_id, now)             # any concluded canary: learning, and a handed-over incident

The healing goes where the diagnosis points: the monitor's finding names one serving model × spectrum, so the
optimization searches a prompt **for that model alone** (a model-scoped candidate, evaluated on that model only),
against **the prompt serving that model now** (its model-scoped `production` label, else the pipeline's) — not
the configured prompt, which may be long replaced. Its evaluations run in a ledger **epoch** of their own
(`healing:<decision id>`; promptcycle.evaluation.ledger.call_keys): the answers paid before the drift were given by
the world before it, and are not evidence about the world now. Its strategies are `healing.strategies` — by default
`auto`, the learned posteriors of the diagnosed context (promptcycle/optimize/learning.py).

A healing owns its incident while it runs. When it ends with its canary still running (no simulated traffic, or the
test needs more), it hands the incident over: the canary's conclusion (`promptcycle canary`, a schedule, the API —
every path ends in `after_canary`) closes it — resolved when the canary promoted, escalated when it rolled back.

Learning hears from production too: when a canary concludes, the candidate's strategy outcome takes the effect the
canary measured on production traffic in place of its test-split effect, so a strategy whose wins do not hold up in
production loses its posterior weight.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from promptcycle.monitor.response import close_incident, record_canary
from promptcycle.monitor.watch import production_prompt

__all__ = ["HealingPlan", "plan_healing", "finish_healing_incident", "after_canary", "learn_from_canary"]

HANDED_OVER = "canary_running"  # a healing's outcome when its canary outlives it


class HealingPlan(BaseModel):
    """What one healing's optimization runs."""

    model: str  # the degraded serving model: the candidate's scope
    version: str | None  # the prompt serving it now (None: the configured prompt, never deployed)
    epoch: str  # the ledger epoch of every evaluation of the healing
    strategies: list[str]  # for the optimization flow (["auto"]: the learned posteriors)
    max_calls: int | None = None


def plan_healing(ctx: Any, store: Any, model: str, decision_id: str) -> HealingPlan:
    """The plan of healing `decision_id` of `model` (see the module docstring)."""
    version, _ = production_prompt(ctx, store, model)
    settings = ctx.pipeline.healing
    strategies = ["auto"] if settings.strategies == "auto" else list(settings.strategies)
    return HealingPlan(model=model, version=version if store.get_prompt_version(version) is not None else None,
                       epoch=f"healing:{decision_id}", strategies=strategies, max_calls=settings.max_calls)


def finish_healing_incident(store: Any, config: Any, decision_id: str, incident_id: str, outcome: str, summary: str,
                            now: datetime, *, calls: int = 0, cost_usd: float = 0.0,
                            alert_id: int | None = None) -> None:
    """Close the healing decision with its spend; close the incident (resolved or escalated) — an escalated one
    escalates its alert too (one severity up, paged to the escalation channels)."""
    store.finish_healing(decision_id, outcome, now, calls=calls, cost_usd=cost_usd)
    if outcome == "healed":
        close_incident(store, incident_id, "resolved", summary, now)
    elif outcome in ("escalated", "failed"):
        if alert_id is not None:
            from promptcycle.alerts import escalate_alert

            alert = store.get_alert(alert_id)
            if alert.status != "resolved":
                escalate_alert(store, config, alert_id, summary[:300], actor="healing", now=now)
        close_incident(store, incident_id, "escalated", summary, now)
    elif outcome == "deferred":  # no slot: the incident waits for the next monitor run's decision
        store.add_incident_event(incident_id, "note", now, summary, status="open")
    else:  # the canary is still running: the incident stays in healing until the canary concludes
        store.add_incident_event(incident_id, "note", now, summary)


def learn_from_canary(store: Any, canary: Any) -> bool:
    """Replace the treatment's newest strategy outcome's effect by the effect the concluded canary measured
    (points). Returns whether an outcome was updated (a version no optimization proposed has none)."""
    effect = (canary.decision or {}).get("effect")
    if effect is None or canary.status not in ("promoted", "rolled_back"):
        return False
    rows = [r for r in store.strategy_outcomes(canary.pipeline) if r["candidate"] == canary.treatment_hash
            and (r["scope"] or "") == (canary.scope or "")]
    if not rows:
        return False
    row = dict(rows[-1])
    row["test_effect"] = 100.0 * float(effect)
    row["success"] = row["test_effect"] >= (row.get("min_effect") or 0.0)
    store.record_strategy_outcomes([row])
    return True


def _handed_over(store: Any, canary: Any) -> dict[str, Any] | None:
    """The finished healing decision that left this canary running, if any."""
    if canary.deployment_id is None:
        return None
    for decision in store.healing_decisions(canary.pipeline, status="finished", limit=None):
        if decision.get("outcome") != HANDED_OVER or not decision.get("incident_id"):
            continue
        incident = store.incident(decision["incident_id"])
        if incident is None or incident["status"] != "healing":
            continue
        if any(e["kind"] == "deployment" and e.get("ref") == canary.deployment_id for e in incident["timeline"]):
            return decision
    return None


def after_canary(store: Any, config: Any, canary_id: str, now: datetime) -> str | None:
    """After canary `canary_id` concluded: feed its measured effect to learning, and when a healing handed its
    incident over to this canary, record the decision on the incident and close it. Returns the incident's id
    when one was closed."""
    canary = store.get_canary(canary_id)
    if canary is None or canary.status not in ("promoted", "rolled_back"):
        return None
    learn_from_canary(store, canary)
    decision = _handed_over(store, canary)
    if decision is None:
        return None
    incident_id = decision["incident_id"]
    record_canary(store, incident_id, {"canary_id": canary.canary_id, "status": canary.status,
                                       "looks": canary.looks, "reason": canary.reason,
                                       "decision": canary.decision, "split_pct": canary.split_pct}, now)
    promoted = canary.status == "promoted"
    summary = (f"the canary promoted {canary.treatment_hash}: {canary.reason}" if promoted else
               f"the canary rolled {canary.treatment_hash} back: {canary.reason}")
    finish_healing_incident(store, config, decision["decision_id"], incident_id,
                            "healed" if promoted else "escalated", summary, now, calls=int(decision.get("calls") or 0),
                            cost_usd=float(decision.get("cost_usd") or 0.0), alert_id=decision.get("alert_id"))
    return incident_id
