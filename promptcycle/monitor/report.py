"""Typed results of the monitor and healing flows, and their readable forms (artifacts, the CLI)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from promptcycle.monitor.watch import SeriesAssessment

__all__ = ["MonitorSummary", "HealingResult", "trend_markdown", "alerts_markdown", "incident_markdown",
           "incident_lines"]


class HealingResult(BaseModel):
    decision_id: str
    incident_id: str
    pipeline: str
    model: str
    spectrum: str
    outcome: str  # healed | escalated | canary_running | failed
    reason: str
    optimization_run_id: str | None = None
    optimization_outcome: str | None = None
    candidate: str | None = None
    candidate_scope: str | None = None
    deployment_id: str | None = None
    canary_id: str | None = None
    canary_status: str | None = None
    calls: int = 0
    cost_usd: float = 0.0
    simulated: bool = False


class MonitorSummary(BaseModel):
    pipeline: str
    monitor_run_id: str
    period: int
    now: datetime
    resumed: bool
    simulated: bool
    observations: list[dict[str, Any]]
    series: list[SeriesAssessment]
    alert_events: list[dict[str, Any]]
    deliveries: dict[str, Any] | None = None
    healings: list[HealingResult] = []
    refused_healings: list[dict[str, Any]] = []
    started_healings: list[dict[str, Any]] = []  # started through the served healing deployment
    probe_run_id: str | None = None
    probe_calls: int = 0

    @property
    def pages(self) -> int:
        """Pages at a paging severity (high, critical): raised, repeated on a rise, or escalated."""
        return sum(1 for e in self.alert_events if e.get("notify") and e.get("severity") in ("high", "critical")
                   and e.get("kind") in ("raised", "repeated", "escalated"))


def _band(value: float | None, thresholds) -> str:
    """The level of `value`, named as everywhere else (Thresholds.level: critical below 85, warning below 90…)."""
    return "–" if value is None else thresholds.level(value)


def trend_markdown(pipeline: str, series: list[SeriesAssessment], history: dict[tuple[str, str], list[float]],
                   thresholds, simulated: bool) -> str:
    """Quality trend per model × spectrum: the last observations, the threshold band, the baseline and the state of
    each paging detector."""
    lines = [f"# {pipeline} — quality trend{' (SIMULATED)' if simulated else ''}", "",
             f"Bands: critical < {thresholds.critical:g} ≤ warning < {thresholds.warning:g} ≤ ok < "
             f"{thresholds.target:g} ≤ target < {thresholds.excellent:g} ≤ excellent (points).", "",
             "| model | spectrum | latest | band | baseline | last runs (oldest → newest) | cusum | ewma | level | "
             "trend | stale |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in series:
        by = {f["detector"]: f for f in s.findings}

        def cell(name: str) -> str:
            f = by.get(name)
            if f is None:
                return "–"
            mark = "ok" if f["in_control"] else f"**{f['severity']}**"
            return mark if f["statistic"] is None else f"{mark} ({f['statistic']:.2f})"

        runs = " ".join(f"{v:.1f}" for v in history.get((s.model, s.spectrum), [])[-8:])
        lines.append(f"| {s.model} | {s.spectrum} | {'–' if s.value is None else f'{s.value:.1f}'} "
                     f"({s.source or 'none'}, n={s.n}) | {_band(s.value, thresholds)} | "
                     f"{'collecting' if not s.baseline_ready else f'{s.baseline_mean:.1f}'} | {runs} | "
                     f"{cell('cusum')} | {cell('ewma')} | {cell('level')} | {cell('trend')} | {cell('stale')} |")
    return "\n".join(lines)


def alerts_markdown(pipeline: str, alerts: list) -> str:
    lines = [f"# {pipeline} — open alerts", ""]
    if not alerts:
        return "\n".join(lines + ["No open alert."])
    lines += ["| id | severity | status | series | detector | since | pages | message |", "|---|---|---|---|---|---|---|---|"]
    for a in alerts:
        lines.append(f"| {a.alert_id} | {a.severity} | {a.status} | {a.model} × {a.spectrum} | {a.detector} | "
                     f"{a.first_seen:%Y-%m-%d %H:%M} | {a.pages} | {a.message[:120]} |")
    return "\n".join(lines)


def incident_lines(incident: dict[str, Any]) -> list[str]:
    """An incident and its timeline, one line per step."""
    closed = f" → {incident['status']} {incident['closed_at']:%Y-%m-%d %H:%M}" if incident.get("closed_at") else ""
    head = (f"{incident['incident_id']}  {incident['status'].upper()}  {incident['model']} × {incident['spectrum']}  "
            f"opened {incident['opened_at']:%Y-%m-%d %H:%M}{closed}")
    steps = [f"  {e['at']:%Y-%m-%d %H:%M:%S}  {e['kind']:<16} {e['summary']}" + (f"  [{e['ref']}]" if e.get("ref")
                                                                                 else "")
             for e in incident.get("timeline", [])]
    return [head, *steps]


def incident_markdown(pipeline: str, incidents: list[dict[str, Any]]) -> str:
    lines = [f"# {pipeline} — incidents", ""]
    if not incidents:
        return "\n".join(lines + ["No incident."])
    for inc in incidents:
        lines += [f"## {inc['incident_id']} — {inc['status']}", "", "| time (UTC) | step | what | ref |",
                  "|---|---|---|---|"]
        for e in inc.get("timeline", []):
            lines.append(f"| {e['at']:%Y-%m-%d %H:%M:%S} | {e['kind']} | {e['summary'].replace('|', '/')} | "
                         f"{e.get('ref') or ''} |")
        lines.append("")
    return "\n".join(lines)
