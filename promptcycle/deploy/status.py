"""Where every pipeline stands: its labels, its running canary, its latest decisions and deployments.

Everything here is read from the metrics store; the same tables answer ad-hoc questions in DuckDB:

    SELECT created_at, kind, status, from_hash, to_hash, forced, actor, reason
    FROM deployments WHERE pipeline = 'customer-insights' ORDER BY seq DESC LIMIT 500;
"""

from __future__ import annotations

from typing import Any

from promptcycle.store import MetricsStore

__all__ = ["pipeline_status", "deployment_history"]


def _deployment_row(d: Any) -> dict[str, Any]:
    return {"deployment_id": d.deployment_id, "seq": d.seq, "kind": d.kind, "status": d.status, "scope": d.scope,
            "from": d.from_hash, "to": d.to_hash, "forced": d.forced, "actor": d.actor, "reason": d.reason,
            "targets": d.targets, "created_at": d.created_at, "finished_at": d.finished_at}


def deployment_history(store: MetricsStore, pipeline: str | None = None, limit: int | None = 500) -> list[dict]:
    """Deployment events, newest first, as plain dicts."""
    return [_deployment_row(d) for d in store.deployments(pipeline, limit=limit)]


def pipeline_status(store: MetricsStore, pipelines: list[str], *, history: int = 5,
                    decisions: int = 5) -> dict[str, Any]:
    """For each pipeline: labels (per scope), the running canary, the last decisions and deployments."""
    out: dict[str, Any] = {}
    for name in pipelines:
        labels: dict[str, dict[str, Any]] = {}
        for row in store.labels(name):
            labels.setdefault(row["scope"] or "", {})[row["label"]] = {
                "version": row["prompt_hash"], "updated_at": row["updated_at"], "updated_by": row["updated_by"]}
        canary = store.active_canary(name)
        running = None
        if canary is not None:
            last = canary.decision or {}
            running = {"canary_id": canary.canary_id, "control": canary.control_hash,
                       "treatment": canary.treatment_hash, "split_pct": canary.split_pct, "looks": canary.looks,
                       "n_control": last.get("n_control"), "n_treatment": last.get("n_treatment"),
                       "effect": last.get("effect"), "last_reason": canary.reason, "started_at": canary.started_at}
        recent = [d for d in store.decisions(pipeline=name) if d.kind in ("gate", "canary")][-decisions:][::-1]
        out[name] = {
            "labels": labels,
            "canary": running,
            "decisions": [{"kind": d.kind, "decision": d.decision, "version": d.prompt_hash,
                           "against": d.baseline_hash, "run_id": d.run_id, "created_at": d.created_at,
                           "reason": (d.evidence or {}).get("reason")} for d in recent],
            "deployments": deployment_history(store, name, limit=history),
        }
    return out
