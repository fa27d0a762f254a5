"""Deployments with their stage reports, the deployment lock, and canaries with their looks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from promptcycle.errors import StoreError
from promptcycle.store.connection import (
    StoreConnection,
    _dump_evidence,
    _load_json,
    _require_text,
    _rows,
)
from promptcycle.store.records import (
    CANARY_STATUSES,
    DEPLOYMENT_KINDS,
    DEPLOYMENT_STATUSES,
    STAGES,
    CanaryRecord,
    DeploymentRecord,
    from_db_time,
    to_db_time,
    utc_now,
)

__all__ = ["DeploymentsTables"]

_DEPLOYMENT_COLUMNS = ("deployment_id", "seq", "pipeline", "scope", "kind", "status", "from_hash", "to_hash",
                       "forced", "actor", "reason", "targets_json", "evidence_json", "flow_run_id", "created_at",
                       "finished_at")
_CANARY_COLUMNS = ("canary_id", "pipeline", "scope", "deployment_id", "control_hash", "treatment_hash", "status",
                   "step", "split_pct", "step_start_treatment", "looks", "settings_json", "decision_json", "reason",
                   "actor", "started_at", "updated_at", "finished_at")
_CANARY_UPDATABLE = ("status", "step", "split_pct", "step_start_treatment", "looks", "decision", "reason")


def _deployment_from_row(row: dict[str, Any]) -> DeploymentRecord:
    row = dict(row)
    row["targets"] = _load_json(row.pop("targets_json")) or []
    row["evidence"] = _load_json(row.pop("evidence_json")) or {}
    for name in ("created_at", "finished_at"):
        row[name] = from_db_time(row[name])
    return DeploymentRecord(**row)


def _canary_from_row(row: dict[str, Any]) -> CanaryRecord:
    row = dict(row)
    row["settings"] = _load_json(row.pop("settings_json")) or {}
    row["decision"] = _load_json(row.pop("decision_json"))
    for name in ("started_at", "updated_at", "finished_at"):
        row[name] = from_db_time(row[name])
    return CanaryRecord(**row)


class DeploymentsTables(StoreConnection):
    """Deployments, their stage reports and lock, and canaries with their looks."""

    # -- deployments ---------------------------------------------------------------------------

    def create_deployment(self, deployment: DeploymentRecord) -> DeploymentRecord:
        """Record a deployment event; return it as stored (with its `seq` and time). The id must be new."""
        if deployment.kind not in DEPLOYMENT_KINDS:
            raise ValueError(f"a deployment kind is one of {', '.join(DEPLOYMENT_KINDS)}, not {deployment.kind!r}")
        if deployment.status not in DEPLOYMENT_STATUSES:
            raise ValueError(f"a deployment status is one of {', '.join(DEPLOYMENT_STATUSES)}, "
                             f"not {deployment.status!r}")
        for name in ("deployment_id", "pipeline", "to_hash", "actor"):
            _require_text(getattr(deployment, name), f"a deployment's {name}")
        what = f"deployment {deployment.deployment_id} of {deployment.pipeline}"
        targets_json = _dump_evidence(deployment.targets or [], f"the targets of {what}")
        evidence_json = _dump_evidence(deployment.evidence or {}, f"the evidence of {what}")
        created_at = to_db_time(deployment.created_at or utc_now())
        with self._transaction(f"record {what}") as con:
            if con.execute("SELECT 1 FROM deployments WHERE deployment_id = ?",
                           [deployment.deployment_id]).fetchone():
                raise StoreError(f"{what} is already recorded; deployment ids must be unique")
            seq = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM deployments").fetchone()[0]
            con.execute(f"INSERT INTO deployments ({', '.join(_DEPLOYMENT_COLUMNS)}) "
                        f"VALUES ({', '.join('?' for _ in _DEPLOYMENT_COLUMNS)})",
                        [deployment.deployment_id, seq, deployment.pipeline, deployment.scope or "", deployment.kind,
                         deployment.status, deployment.from_hash, deployment.to_hash, bool(deployment.forced),
                         deployment.actor, deployment.reason, targets_json, evidence_json, deployment.flow_run_id,
                         created_at, to_db_time(deployment.finished_at)])
        return replace(deployment, seq=seq, created_at=from_db_time(created_at))

    def update_deployment(self, deployment_id: str, *, status: str | None = None, reason: str | None = None,
                          targets: list[dict[str, Any]] | None = None, evidence: dict[str, Any] | None = None,
                          forced: bool | None = None, finished: bool = False) -> DeploymentRecord:
        """Change what a deployment record says (only the fields given); `finished` stamps its end time."""
        if status is not None and status not in DEPLOYMENT_STATUSES:
            raise ValueError(f"a deployment status is one of {', '.join(DEPLOYMENT_STATUSES)}, not {status!r}")
        sets: list[str] = []
        params: list[Any] = []
        for column, value in (("status", status), ("reason", reason), ("forced", forced),
                              ("targets_json", None if targets is None else _dump_evidence(targets, "targets")),
                              ("evidence_json", None if evidence is None else _dump_evidence(evidence, "evidence"))):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        if finished:
            sets.append("finished_at = ?")
            params.append(to_db_time(utc_now()))
        with self._transaction(f"update deployment {deployment_id}") as con:
            if sets:
                con.execute(f"UPDATE deployments SET {', '.join(sets)} WHERE deployment_id = ?",
                            [*params, deployment_id])
            rows = _rows(con.execute(f"SELECT {', '.join(_DEPLOYMENT_COLUMNS)} FROM deployments "
                                     "WHERE deployment_id = ?", [deployment_id]))
        if not rows:
            raise StoreError(f"cannot update deployment {deployment_id!r}: no such deployment in {self.path}")
        return _deployment_from_row(rows[0])

    def get_deployment(self, deployment_id: str) -> DeploymentRecord | None:
        with self._connect(f"read deployment {deployment_id}") as con:
            rows = _rows(con.execute(f"SELECT {', '.join(_DEPLOYMENT_COLUMNS)} FROM deployments "
                                     "WHERE deployment_id = ?", [deployment_id]))
        return _deployment_from_row(rows[0]) if rows else None

    def deployments(self, pipeline: str | None = None, limit: int | None = 500) -> list[DeploymentRecord]:
        """Deployment events, newest first (of one pipeline, or all), at most `limit` (None: all)."""
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative integer or None, not {limit!r}")
        where, params = ("WHERE pipeline = ?", [pipeline]) if pipeline is not None else ("", [])
        limit_sql = "" if limit is None else f" LIMIT {int(limit)}"
        with self._connect("read the deployment history") as con:
            rows = _rows(con.execute(f"SELECT {', '.join(_DEPLOYMENT_COLUMNS)} FROM deployments {where} "
                                     f"ORDER BY seq DESC{limit_sql}", params))
        return [_deployment_from_row(r) for r in rows]

    def write_stage_report(self, deployment_id: str, stage: str, status: str, reason: str,
                           report: dict[str, Any]) -> None:
        """Record a validation stage's report for a deployment (writing it again replaces it)."""
        if stage not in STAGES:
            raise ValueError(f"a validation stage is one of {', '.join(STAGES)}, not {stage!r}")
        report_json = _dump_evidence(report, f"the {stage} report of deployment {deployment_id}")
        with self._transaction(f"write the {stage} report of deployment {deployment_id}") as con:
            con.execute("INSERT OR REPLACE INTO stage_reports (deployment_id, stage, status, reason, report_json, "
                        "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                        [deployment_id, stage, status, reason, report_json, to_db_time(utc_now())])

    def stage_reports(self, deployment_id: str) -> list[dict[str, Any]]:
        """The deployment's stage reports in stage order: dicts with stage, status, reason, report, created_at."""
        with self._connect(f"read the stage reports of deployment {deployment_id}") as con:
            rows = _rows(con.execute("SELECT stage, status, reason, report_json, created_at FROM stage_reports "
                                     "WHERE deployment_id = ?", [deployment_id]))
        out = [{"stage": r["stage"], "status": r["status"], "reason": r["reason"],
                "report": _load_json(r["report_json"]), "created_at": from_db_time(r["created_at"])} for r in rows]
        return sorted(out, key=lambda r: STAGES.index(r["stage"]))

    # -- deployment locks ----------------------------------------------------------------------

    def acquire_deploy_lock(self, pipeline: str, holder: str, lease_seconds: float) -> dict[str, Any]:
        """Take (or, for the same holder, extend) the pipeline's deployment lock for `lease_seconds`.

        Returns the lock row as it stands after the call: its `holder` is `holder` when the lock was
        taken, else the other holder whose lease has not expired (nothing is changed then).
        """
        _require_text(holder, "a deployment lock's holder")
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be > 0, not {lease_seconds!r}")
        from datetime import timedelta

        now = utc_now()
        with self._transaction(f"take the deployment lock of {pipeline}") as con:
            found = _rows(con.execute("SELECT pipeline, holder, acquired_at, expires_at FROM deploy_locks "
                                      "WHERE pipeline = ?", [pipeline]))
            if found and found[0]["holder"] != holder and from_db_time(found[0]["expires_at"]) > now:
                row = found[0]
            else:
                acquired = found[0]["acquired_at"] if found and found[0]["holder"] == holder else to_db_time(now)
                row = {"pipeline": pipeline, "holder": holder, "acquired_at": acquired,
                       "expires_at": to_db_time(now + timedelta(seconds=float(lease_seconds)))}
                con.execute("INSERT OR REPLACE INTO deploy_locks (pipeline, holder, acquired_at, expires_at) "
                            "VALUES (?, ?, ?, ?)", [pipeline, holder, row["acquired_at"], row["expires_at"]])
        return {**row, "acquired_at": from_db_time(row["acquired_at"]), "expires_at": from_db_time(row["expires_at"])}

    def release_deploy_lock(self, pipeline: str, holder: str) -> bool:
        """Give the lock back; True if `holder` held it (a lock taken over after its lease is not touched)."""
        with self._transaction(f"release the deployment lock of {pipeline}") as con:
            found = con.execute("SELECT holder FROM deploy_locks WHERE pipeline = ?", [pipeline]).fetchone()
            if found is None or found[0] != holder:
                return False
            con.execute("DELETE FROM deploy_locks WHERE pipeline = ? AND holder = ?", [pipeline, holder])
        return True

    # -- canaries ------------------------------------------------------------------------------

    def start_canary(self, canary: CanaryRecord) -> tuple[CanaryRecord, bool]:
        """Record a new running canary unless the pipeline already has one.

        Returns (the running canary, True) when `canary` was recorded, or (the canary already
        running for the pipeline, False) — one canary per pipeline at a time.
        """
        _require_text(canary.canary_id, "a canary's id")
        _require_text(canary.actor, "a canary's actor")
        now = to_db_time(canary.started_at or utc_now())
        settings_json = _dump_evidence(canary.settings or {}, f"the settings of canary {canary.canary_id}")
        with self._transaction(f"start canary {canary.canary_id} of {canary.pipeline}") as con:
            running = _rows(con.execute(f"SELECT {', '.join(_CANARY_COLUMNS)} FROM canaries WHERE pipeline = ? "
                                        "AND status = 'running' ORDER BY started_at LIMIT 1", [canary.pipeline]))
            if running:
                return _canary_from_row(running[0]), False
            con.execute(f"INSERT INTO canaries ({', '.join(_CANARY_COLUMNS)}) "
                        f"VALUES ({', '.join('?' for _ in _CANARY_COLUMNS)})",
                        [canary.canary_id, canary.pipeline, canary.scope or "", canary.deployment_id,
                         canary.control_hash, canary.treatment_hash, "running", canary.step, float(canary.split_pct),
                         canary.step_start_treatment, canary.looks, settings_json,
                         _dump_evidence(canary.decision, "a canary decision"), canary.reason, canary.actor, now, now,
                         None])
        return replace(canary, status="running", started_at=from_db_time(now), updated_at=from_db_time(now)), True

    def update_canary(self, canary_id: str, *, finished: bool = False, **changes: Any) -> CanaryRecord:
        """Change a canary's status, step, split, counters, decision or reason; `finished` stamps its end."""
        unknown = sorted(set(changes) - set(_CANARY_UPDATABLE))
        if unknown:
            raise ValueError(f"cannot update canary field(s) {', '.join(unknown)}; "
                             f"updatable: {', '.join(_CANARY_UPDATABLE)}")
        if "status" in changes and changes["status"] not in CANARY_STATUSES:
            raise ValueError(f"a canary status is one of {', '.join(CANARY_STATUSES)}, not {changes['status']!r}")
        if "decision" in changes:
            changes["decision_json"] = _dump_evidence(changes.pop("decision"), f"the decision of canary {canary_id}")
        now = to_db_time(utc_now())
        changes["updated_at"] = now
        if finished:
            changes["finished_at"] = now
        with self._transaction(f"update canary {canary_id}") as con:
            con.execute(f"UPDATE canaries SET {', '.join(f'{c} = ?' for c in changes)} WHERE canary_id = ?",
                        [*changes.values(), canary_id])
            rows = _rows(con.execute(f"SELECT {', '.join(_CANARY_COLUMNS)} FROM canaries WHERE canary_id = ?",
                                     [canary_id]))
        if not rows:
            raise StoreError(f"cannot update canary {canary_id!r}: no such canary in {self.path}")
        return _canary_from_row(rows[0])

    def get_canary(self, canary_id: str) -> CanaryRecord | None:
        with self._connect(f"read canary {canary_id}") as con:
            rows = _rows(con.execute(f"SELECT {', '.join(_CANARY_COLUMNS)} FROM canaries WHERE canary_id = ?",
                                     [canary_id]))
        return _canary_from_row(rows[0]) if rows else None

    def canaries(self, pipeline: str | None = None, status: str | None = None,
                 limit: int | None = 50) -> list[CanaryRecord]:
        """Canaries matching the filters, newest first, at most `limit` (None: all)."""
        filters = [(c, v) for c, v in (("pipeline", pipeline), ("status", status)) if v is not None]
        where = ("WHERE " + " AND ".join(f"{c} = ?" for c, _ in filters)) if filters else ""
        limit_sql = "" if limit is None else f" LIMIT {int(limit)}"
        with self._connect("read canaries") as con:
            rows = _rows(con.execute(f"SELECT {', '.join(_CANARY_COLUMNS)} FROM canaries {where} "
                                     f"ORDER BY started_at DESC, canary_id DESC{limit_sql}", [v for _, v in filters]))
        return [_canary_from_row(r) for r in rows]

    def active_canary(self, pipeline: str) -> CanaryRecord | None:
        """The pipeline's running canary, or None."""
        running = self.canaries(pipeline, status="running", limit=1)
        return running[0] if running else None

    def write_canary_look(self, canary_id: str, look: int, *, split_pct: float, n_control: int, n_treatment: int,
                          action: str, reason: str, decision: dict[str, Any]) -> None:
        """Record one look of a canary (writing the same look again replaces it)."""
        decision_json = _dump_evidence(decision, f"look {look} of canary {canary_id}")
        with self._transaction(f"write look {look} of canary {canary_id}") as con:
            con.execute("INSERT OR REPLACE INTO canary_looks (canary_id, look, split_pct, n_control, n_treatment, "
                        "action, reason, decision_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [canary_id, int(look), float(split_pct), int(n_control), int(n_treatment), action, reason,
                         decision_json, to_db_time(utc_now())])

    def canary_looks(self, canary_id: str) -> list[dict[str, Any]]:
        """The canary's looks, first to last: dicts with look, split_pct, n_control, n_treatment, action,
        reason, decision (parsed) and created_at."""
        with self._connect(f"read the looks of canary {canary_id}") as con:
            rows = _rows(con.execute("SELECT look, split_pct, n_control, n_treatment, action, reason, decision_json, "
                                     "created_at FROM canary_looks WHERE canary_id = ? ORDER BY look", [canary_id]))
        for row in rows:
            row["decision"] = _load_json(row.pop("decision_json"))
            row["created_at"] = from_db_time(row["created_at"])
        return rows
