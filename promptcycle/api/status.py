"""`GET /v1/status`: where every pipeline stands, from the metrics store.

For each pipeline: its labels and running canary, last decisions and deployments (the same as
`promptcycle status`, `promptcycle.deploy.status.pipeline_status`), plus its open alerts and
incidents and its last runs of each kind. Everything is plain JSON-ready data.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from promptcycle.deploy.status import pipeline_status

__all__ = ["api_status", "RUN_KINDS"]

RUN_KINDS = ("baseline", "optimization", "probe", "smoke")
"""Kinds of run in the store's `runs` table, each reported with its latest run."""


def _run(run: Any) -> dict[str, Any] | None:
    if run is None:
        return None
    return {"run_id": run.run_id, "status": run.status, "prompt_version": run.prompt_hash,
            "simulated": run.simulated, "flow_run_id": run.flow_run_id, "started_at": run.started_at,
            "finished_at": run.finished_at}


def _monitor_run(row: dict[str, Any]) -> dict[str, Any]:
    keep = ("monitor_run_id", "status", "period", "started_at", "finished_at", "flow_run_id")
    return {k: row.get(k) for k in keep if k in row}


def api_status(store: Any, pipelines: list[str]) -> dict[str, Any]:
    """The status of each of `pipelines` in `store` (a MetricsStore)."""
    out = pipeline_status(store, pipelines, history=3, decisions=3)
    for name in pipelines:
        entry = out[name]
        entry["open_alerts"] = [a.to_dict() for a in store.alerts(name, open_only=True, limit=50)]
        entry["open_incidents"] = [i for i in store.incidents(name, limit=50, timeline=False)
                                   if i.get("status") != "resolved"]
        runs = {kind: _run(store.latest_run(name, kind, status=None)) for kind in RUN_KINDS}
        monitor = store.monitor_runs(name, limit=1)
        runs["monitor"] = _monitor_run(monitor[0]) if monitor else None
        entry["last_runs"] = runs
    return {"pipelines": out, "as_of": datetime.now(timezone.utc)}
