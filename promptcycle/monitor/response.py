"""What a monitor pass does about its findings beyond alerting: incidents, and the healing decision.

    starts = respond(store, pipeline, healing_config, series, now)     # incidents opened/resolved, decisions stored

For each series with a finding at or above `healing.min_severity` that is out of control, the series' incident is
opened (or joined) and — while nothing is healing it yet — a healing decision is made and stored
(promptcycle/monitor/healing.py; the store applies it atomically). Each eligible decision is returned for the flow
to run. A series back in control closes its open incident as resolved ("recovered without healing").

And what a healing records on the incident as it goes (`record_*`): the optimization, the deployment, the canary's
decision, and the end — resolved when the canary promoted the new prompt, escalated otherwise.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from promptcycle.monitor.healing import HealingRequest, healing_settings
from promptcycle.monitor.watch import QUALITY_KEY

__all__ = ["HealingStart", "respond", "record_optimization", "record_deployment", "record_canary", "close_incident"]

_RANK = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}


class HealingStart(BaseModel):
    """An eligible healing decision, for the flow to run."""

    decision_id: str
    incident_id: str
    pipeline: str
    model: str
    spectrum: str
    detector: str
    severity: str
    alert_id: int | None = None


def _worst(findings: list[dict[str, Any]], min_severity: str) -> dict[str, Any] | None:
    out = [f for f in findings if not f["in_control"] and _RANK[f["severity"]] >= _RANK[min_severity]]
    return max(out, key=lambda f: _RANK[f["severity"]]) if out else None


def respond(store, pipeline: str, healing, series: list, now: datetime) -> list[HealingStart]:
    """Open, join or resolve the incidents of the pass's series and decide healings (see the module docstring)."""
    settings = healing_settings(healing)
    open_alerts = {(a.model, a.spectrum, a.detector): a for a in store.alerts(pipeline, open_only=True)}
    incidents = {(i["model"], i["spectrum"]): i for i in store.incidents(pipeline, limit=None, timeline=True)
                 if i["status"] in ("open", "healing")}
    starts: list[HealingStart] = []
    for s in series:
        worst = _worst(s.findings, healing.min_severity)
        held = incidents.get((s.model, s.spectrum))
        if worst is None:
            if held is not None and held["status"] == "open" and s.in_control and s.value is not None:
                store.add_incident_event(held["incident_id"], "resolved", now,
                                         f"{s.model} × {s.spectrum} back in control without healing "
                                         f"({s.value:.1f} points)", status="resolved")
            continue
        alert = (open_alerts.get((s.model, s.spectrum, QUALITY_KEY))
                 or open_alerts.get((s.model, s.spectrum, worst["detector"])))
        alert_id = alert.alert_id if alert is not None else None
        incident, _ = store.open_incident(
            pipeline, s.model, s.spectrum, worst["detector"], worst["severity"],
            f"{worst['detector']} ({worst['severity']}): {worst['message']}", now, alert_id=alert_id,
            evidence=worst.get("evidence"))
        if incident["status"] != "open":
            continue  # a healing is already under way for it
        decision = store.decide_healing(HealingRequest(pipeline, s.model, s.spectrum, worst["detector"],
                                                       worst["severity"], alert_id, incident["incident_id"]),
                                        settings, now)
        previous = [e for e in incident.get("timeline", []) if e["kind"] == "healing_decision"]
        if decision["eligible"] or not previous or previous[-1]["summary"] != _decision_line(decision):
            store.add_incident_event(incident["incident_id"], "healing_decision", now, _decision_line(decision),
                                     ref=decision["decision_id"], evidence=decision["evidence"],
                                     status="healing" if decision["eligible"] else None)
        if decision["eligible"]:
            starts.append(HealingStart(decision_id=decision["decision_id"], incident_id=incident["incident_id"],
                                       pipeline=pipeline, model=s.model, spectrum=s.spectrum,
                                       detector=worst["detector"], severity=worst["severity"], alert_id=alert_id))
    return starts


def _decision_line(decision: dict[str, Any]) -> str:
    return ("healing started: " if decision["eligible"] else "no healing: ") + decision["reason"]


def record_optimization(store, incident_id: str, summary: Any, now: datetime) -> None:
    spend = summary.spend or {}
    store.add_incident_event(
        incident_id, "optimization", now,
        f"optimization {summary.outcome.replace('_', ' ')}: {summary.reason}"[:500], ref=summary.run_id,
        evidence={"outcome": summary.outcome, "candidate": summary.candidate_hash,
                  "candidate_scope": summary.candidate_scope, "effect": summary.effect, "p_value": summary.p_value,
                  "calls": spend.get("calls"), "cost_usd": spend.get("cost_usd")})


def record_deployment(store, incident_id: str, outcome: dict[str, Any] | None, error: str | None,
                      now: datetime) -> None:
    if outcome is None:
        store.add_incident_event(incident_id, "deployment", now, f"deployment refused: {error}"[:500])
        return
    store.add_incident_event(incident_id, "deployment", now,
                             f"deployment {outcome['deployment_id']} of {outcome['version']} started as a canary "
                             f"(gate: {outcome['gate'].get('reason', '')})"[:500], ref=outcome["deployment_id"],
                             evidence={"stages": outcome.get("stages"), "gate": outcome.get("gate")})


def record_canary(store, incident_id: str, canary: dict[str, Any] | None, now: datetime,
                  canary_id: str | None = None) -> None:
    if canary is None:
        store.add_incident_event(incident_id, "canary", now, "canary started; waiting for production traffic "
                                 "(`promptcycle canary` looks at it)", ref=canary_id)
        return
    store.add_incident_event(incident_id, "canary", now,
                             f"canary {canary['canary_id']}: {canary['status']} after {canary['looks']} look(s) — "
                             f"{canary.get('reason') or ''}"[:500], ref=canary["canary_id"],
                             evidence={"decision": canary.get("decision"), "split_pct": canary.get("split_pct")})


def close_incident(store, incident_id: str, status: str, summary: str, now: datetime) -> None:
    """End the incident: `resolved` or `escalated`."""
    store.add_incident_event(incident_id, status, now, summary, status=status)
