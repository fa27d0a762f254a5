"""What the report shows, read from the metrics store and shaped into plain rows (no plotting here).

`gather_report(store, pipeline, thresholds, models, spectrums)` reads, through the store's methods only:

- the latest completed baseline run's model × spectrum cells (its stored summary: what `baseline` printed);
- quality over time: every completed baseline's cells at the time it finished, and every monitor observation
  (production outcomes or the probe) per period;
- alert events (raised, repeated, escalated, recovered) and deployments, to mark on that time axis;
- the newest optimization that got as far as candidates, with each candidate's dev screening and, for those
  confirmed on test, the paired effect with its confidence interval;
- the newest canary and each of its looks (effect with its always-valid confidence sequence, split, requests);
- what every run paid, with its time and phase.

A section with nothing to show carries a sentence saying what is missing and which command produces it, so an empty
store gives a report that says so rather than an error. `simulated` says, per section, whether the figures come from
the built-in simulator (the runs' own flag, simulated production traffic, or a simulated monitor run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from promptcycle.config import Thresholds

__all__ = ["ReportData", "gather_report", "SECTIONS", "ALERT_MARKS"]

SECTIONS = ("heatmap", "quality", "candidates", "canary", "spend")
"""The report's figures, in page order."""

ALERT_MARKS = ("raised", "repeated", "escalated", "recovered")
"""Alert event kinds drawn on the quality-over-time figure (acknowledgements and suppressed repeats are not)."""


@dataclass
class ReportData:
    """Everything the report draws, as plain JSON-safe rows (times are timezone-aware UTC datetimes)."""

    pipeline: str
    generated_at: datetime
    thresholds: Thresholds
    models: list[str]
    spectrums: list[str]
    baseline: dict[str, Any] | None = None  # run_id, finished_at, prompt_hash, quality, level, cells, simulated
    quality: list[dict[str, Any]] = field(default_factory=list)  # at, model, spectrum, quality, source, n, ref
    alerts: list[dict[str, Any]] = field(default_factory=list)  # at, model, spectrum, kind, severity, message, …
    deployments: list[dict[str, Any]] = field(default_factory=list)  # at, kind, status, to_hash, from_hash, …
    optimization: dict[str, Any] | None = None  # run_id, outcome, reason, min_effect, …, candidates
    newer_optimizations: list[dict[str, Any]] = field(default_factory=list)  # newer runs without candidates
    canary: dict[str, Any] | None = None  # canary_id, status, reason, …, looks
    spend: list[dict[str, Any]] = field(default_factory=list)  # one row per paying run (HistoryTables.spend_by_run)
    simulated: dict[str, bool] = field(default_factory=dict)  # section -> figures come from the simulator
    missing: dict[str, str] = field(default_factory=dict)  # section -> what is missing and how to produce it

    @property
    def any_simulated(self) -> bool:
        return any(self.simulated.values())

    @property
    def empty(self) -> bool:
        """True when the store holds nothing at all for this pipeline."""
        return all(section in self.missing for section in SECTIONS)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _baseline_cells(run) -> list[dict[str, Any]]:
    summary = run.summary or {}
    return [{"model": c["model"], "spectrum": c["spectrum"], "quality": float(c["quality"]), "level": c["level"],
             "n": int(c["n"]), "errors": int(c["errors"])} for c in summary.get("cells", [])]


def _points(value: float | None) -> float | None:
    """Score units (0.01 = 1 point) to points."""
    return None if value is None else round(100.0 * float(value), 3)


def _candidates(summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for c in summary.get("candidates", []):
        name = f"{c['strategy']} {c['hash'][:8]}" + (f" ({c['scope']})" if c.get("scope") else "")
        out.append({"candidate": name, "hash": c["hash"], "strategy": c["strategy"], "scope": c.get("scope"),
                    "status": c["status"], "dev_quality": c.get("dev_quality"), "dev_delta": c.get("dev_delta"),
                    "test_quality": c.get("test_quality"), "decision": c.get("decision"),
                    "effect": _points(c.get("effect")), "ci_low": _points(c.get("ci_low")),
                    "ci_high": _points(c.get("ci_high")), "p_value": c.get("p_value"),
                    "adjusted_p_value": c.get("adjusted_p_value"), "reasons": list(c.get("reasons") or [])})
    return out


def _optimization(runs: list) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The newest optimization with candidates, and the newer ones that have none (failed before, or running)."""
    newer: list[dict[str, Any]] = []
    for run in reversed(runs):  # newest first
        summary = run.summary or {}
        if not summary.get("candidates"):
            newer.append({"run_id": run.run_id, "status": run.status, "reason": summary.get("reason"),
                          "at": _utc(run.finished_at or run.started_at)})
            continue
        ci_level = summary.get("ci_level")
        return ({"run_id": run.run_id, "status": run.status, "outcome": summary.get("outcome"),
                 "reason": summary.get("reason"), "simulated": bool(summary.get("simulated", run.simulated)),
                 "finished_at": _utc(run.finished_at), "min_effect": _points(summary.get("min_effect")),
                 "ci_level": ci_level, "alpha": summary.get("alpha"), "test": summary.get("test"),
                 "candidate_hash": summary.get("candidate_hash"), "effect": _points(summary.get("effect")),
                 "ci_low": _points(summary.get("ci_low")), "ci_high": _points(summary.get("ci_high")),
                 "current_dev_quality": summary.get("current_dev_quality"),
                 "spend": summary.get("spend") or {}, "candidates": _candidates(summary)}, newer)
    return None, newer


def _canary(store, pipeline: str) -> dict[str, Any] | None:
    found = store.canaries(pipeline, limit=1)
    if not found:
        return None
    c = found[0]
    looks = []
    for look in store.canary_looks(c.canary_id):
        d = look.get("decision") or {}
        looks.append({"look": int(look["look"]), "at": _utc(look["created_at"]), "split_pct": float(look["split_pct"]),
                      "next_split_pct": d.get("next_split_pct"), "n_control": int(look["n_control"]),
                      "n_treatment": int(look["n_treatment"]), "action": look["action"], "reason": look["reason"],
                      "effect": _points(d.get("effect")), "ci_low": _points(d.get("ci_low")),
                      "ci_high": _points(d.get("ci_high")), "p_value": d.get("p_value"),
                      "information_fraction": d.get("information_fraction"), "test": d.get("test")})
    settings = c.settings or {}
    plan = settings.get("plan") or {}
    return {"canary_id": c.canary_id, "status": c.status, "reason": c.reason, "scope": c.scope,
            "control_hash": c.control_hash, "treatment_hash": c.treatment_hash, "split_pct": c.split_pct,
            "started_at": _utc(c.started_at), "finished_at": _utc(c.finished_at), "mode": plan.get("mode", "split"),
            "min_effect": _points(settings.get("min_effect")), "horizon": plan.get("horizon"), "looks": looks}


def gather_report(store, pipeline: str, *, thresholds: Thresholds, models: list[str], spectrums: list[str],
                  now: datetime | None = None) -> ReportData:
    """Read the pipeline's state from `store` (a `MetricsStore` or the data worker's proxy of one)."""
    data = ReportData(pipeline=pipeline, generated_at=_utc(now or datetime.now(timezone.utc)), thresholds=thresholds,
                      models=list(models), spectrums=list(spectrums))
    runs = store.pipeline_runs(pipeline)
    baselines = [r for r in runs if r.kind == "baseline" and r.status == "completed" and (r.summary or {}).get("cells")]
    monitor_runs = store.monitor_runs(pipeline, limit=None)
    production_simulated = store.production_simulated(pipeline)

    # -- the heatmap: the latest completed baseline -----------------------------------------------------------
    if baselines:
        last = baselines[-1]
        summary = last.summary or {}
        data.baseline = {"run_id": last.run_id, "finished_at": _utc(last.finished_at), "prompt_hash": last.prompt_hash,
                         "quality": summary.get("quality"), "level": summary.get("level"),
                         "simulated": bool(last.simulated), "cells": _baseline_cells(last),
                         "case_limit": last.case_limit, "repeats": last.repeats}
        data.simulated["heatmap"] = bool(last.simulated)
    else:
        data.missing["heatmap"] = (f"no completed baseline run of {pipeline!r} yet: run `promptcycle baseline "
                                   f"--pipeline {pipeline}`")

    # -- quality over time, with alerts and deployments -------------------------------------------------------
    for run in baselines:
        for cell in _baseline_cells(run):
            data.quality.append({"at": _utc(run.finished_at), "model": cell["model"], "spectrum": cell["spectrum"],
                                 "quality": cell["quality"], "source": "baseline", "n": cell["n"], "ref": run.run_id})
    for o in store.observations(pipeline):
        data.quality.append({"at": _utc(o.observed_at), "model": o.model, "spectrum": o.spectrum,
                             "quality": float(o.value), "source": o.source, "n": int(o.n), "ref": o.monitor_run_id})
    data.quality.sort(key=lambda r: (r["at"], r["model"], r["spectrum"], r["source"]))
    simulated_runs = {r.run_id for r in runs if r.simulated}
    data.simulated["quality"] = (any(r.simulated for r in baselines) or production_simulated
                                 or any((m.get("summary") or {}).get("simulated") for m in monitor_runs)
                                 or any(r.kind == "probe" for r in runs if r.run_id in simulated_runs))
    alerts = {a.alert_id: a for a in store.alerts(pipeline, limit=None)}
    for e in store.alert_events(pipeline=pipeline, limit=None):
        a = alerts.get(e.alert_id)
        if a is None or e.kind not in ALERT_MARKS:
            continue
        data.alerts.append({"at": _utc(e.created_at), "alert_id": e.alert_id, "model": a.model, "spectrum": a.spectrum,
                            "detector": a.detector, "kind": e.kind, "severity": e.severity, "paged": bool(e.notify),
                            "message": e.message})
    data.alerts.sort(key=lambda r: (r["at"], r["alert_id"]))
    for d in store.deployments(pipeline, limit=None):
        data.deployments.append({"at": _utc(d.created_at), "deployment_id": d.deployment_id, "kind": d.kind,
                                 "status": d.status, "to_hash": d.to_hash, "from_hash": d.from_hash,
                                 "forced": bool(d.forced), "actor": d.actor, "reason": d.reason or "",
                                 "scope": d.scope})
    data.deployments.sort(key=lambda r: (r["at"], r["deployment_id"]))
    if not data.quality:
        data.missing["quality"] = (f"no quality measured over time for {pipeline!r} yet: run `promptcycle baseline` "
                                   f"and then `promptcycle monitor --pipeline {pipeline}` (or serve the monitor "
                                   "on its schedule)")

    # -- the last optimization's candidates -------------------------------------------------------------------
    optimizations = [r for r in runs if r.kind == "optimization"]
    data.optimization, data.newer_optimizations = _optimization(optimizations)
    if data.optimization is None:
        data.missing["candidates"] = (
            f"no optimization of {pipeline!r} has produced candidates yet: run `promptcycle optimize --pipeline "
            f"{pipeline}`" + (f" (the last one, {data.newer_optimizations[0]['run_id']}, ended "
                              f"{data.newer_optimizations[0]['status']})" if data.newer_optimizations else ""))
    else:
        data.simulated["candidates"] = data.optimization["simulated"]

    # -- the canary -------------------------------------------------------------------------------------------
    data.canary = _canary(store, pipeline)
    if data.canary is None:
        data.missing["canary"] = (f"no canary of {pipeline!r} yet: `promptcycle deploy --pipeline {pipeline} "
                                  "--canary` starts one (add `--simulate-traffic N` to run it on simulated traffic)")
    elif not data.canary["looks"]:
        data.missing["canary"] = (f"canary {data.canary['canary_id']} ({data.canary['status']}) has not looked yet: "
                                  f"`promptcycle canary --pipeline {pipeline}` takes a look")
    else:
        data.simulated["canary"] = store.production_simulated(pipeline, data.canary["canary_id"])

    # -- spend ------------------------------------------------------------------------------------------------
    data.spend = store.spend_by_run(pipeline)
    for row in data.spend:
        row["paid_at"], row["started_at"] = _utc(row["paid_at"]), _utc(row["started_at"])
    if not data.spend:
        data.missing["spend"] = f"no paid model calls recorded for {pipeline!r} yet"
    else:
        data.simulated["spend"] = any(r["simulated"] for r in data.spend)
    return data
