"""Healing decisions and incidents in the metrics store.

`IncidentsTables` is a mixin of `MetricsStore`. An incident follows one paging alert through what promptcycle did
about it: alert → healing decision → optimization run → deployment → canary decision → resolved or escalated, each
step an `incident_events` row with its time, a one-line summary, a reference (alert id, run id, deployment id,
canary id) and its evidence. One incident is open per pipeline × model × spectrum at a time: a second paging alert
on the same series joins it.

`decide_healing` reads the facts the healing policy needs (running canary, the pipeline's last healing, healings
running across all pipelines, the last 24 hours' healing spend) and records the decision in ONE transaction, so two
monitor processes deciding at once cannot both take the last of `max_concurrent` slots (the transaction holds the
DuckDB file).
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from promptcycle.store.records import dump_json, from_db_time, to_db_time

if TYPE_CHECKING:  # imported where used: the package promptcycle.monitor loads scipy (~1 s), and every
    # process that opens the store (the data worker first, before a baseline's first model call) would pay it
    from promptcycle.monitor.healing import HealingDecision, HealingFacts, HealingRequest, HealingSettings

__all__ = ["IncidentsTables", "INCIDENT_STATUSES", "INCIDENT_EVENT_KINDS"]

INCIDENT_STATUSES = ("open", "healing", "resolved", "escalated")
INCIDENT_EVENT_KINDS = ("alert", "healing_decision", "optimization", "deployment", "canary", "resolved", "escalated",
                        "note")


def _rows(cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _incident(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["opened_at"], row["closed_at"] = from_db_time(row["opened_at"]), from_db_time(row["closed_at"])
    return row


class IncidentsTables:
    """Healing decisions, incidents and their timelines. Mixed into `MetricsStore`."""

    # -- healing decisions ---------------------------------------------------------------------

    def _healing_facts(self, con, pipeline: str, now: datetime) -> HealingFacts:
        from promptcycle.monitor.healing import HealingFacts

        canary = con.execute("SELECT canary_id FROM canaries WHERE pipeline = ? AND status = 'running' "
                             "ORDER BY started_at DESC LIMIT 1", [pipeline]).fetchone()
        last = con.execute("SELECT max(created_at) FROM healing_decisions WHERE pipeline = ? AND eligible",
                           [pipeline]).fetchone()[0]
        running = con.execute("SELECT count(*) FROM healing_decisions WHERE status = 'running'").fetchone()[0]
        calls, cost = con.execute("SELECT coalesce(sum(calls), 0), coalesce(sum(cost_usd), 0) FROM healing_decisions "
                                  "WHERE pipeline = ? AND eligible AND created_at > ?",
                                  [pipeline, to_db_time(now - timedelta(hours=24))]).fetchone()
        return HealingFacts(canary_running=canary[0] if canary else None, last_healing_at=from_db_time(last),
                            running=int(running), calls_24h=int(calls), cost_24h=float(cost))

    def decide_healing(self, request: HealingRequest, settings: HealingSettings, now: datetime) -> dict[str, Any]:
        """Apply the healing policy to `request` with the store's facts and record the decision, atomically.
        Returns the stored decision (see `healing_decision`); an eligible one is `running` until
        `finish_healing`."""
        from promptcycle.monitor.healing import decide_healing

        decision_id = f"heal-{request.pipeline}-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
        with self._transaction(f"decide a healing of {request.pipeline}") as con:
            decision: HealingDecision = decide_healing(request, self._healing_facts(con, request.pipeline, now),
                                                       settings, now)
            con.execute("INSERT INTO healing_decisions (decision_id, pipeline, incident_id, alert_id, model, spectrum, "
                        "severity, eligible, reason, status, evidence_json, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [decision_id, request.pipeline, request.incident_id, request.alert_id, request.model,
                         request.spectrum, request.severity, decision.eligible, decision.reason,
                         "running" if decision.eligible else "refused", dump_json(decision.to_dict()),
                         to_db_time(now)])
        return self.healing_decision(decision_id)

    def finish_healing(self, decision_id: str, outcome: str, now: datetime, *, calls: int = 0,
                       cost_usd: float = 0.0) -> None:
        """Close a running healing: its outcome (`healed`, `escalated`, `failed` …) and what it spent."""
        with self._transaction(f"finish healing {decision_id}") as con:
            con.execute("UPDATE healing_decisions SET status = 'finished', outcome = ?, calls = ?, cost_usd = ?, "
                        "finished_at = ? WHERE decision_id = ?",
                        [outcome, int(calls), float(cost_usd), to_db_time(now), decision_id])

    def healing_decision(self, decision_id: str) -> dict[str, Any] | None:
        rows = self.healing_decisions(decision_id=decision_id)
        return rows[0] if rows else None

    def healing_decisions(self, pipeline: str | None = None, *, decision_id: str | None = None,
                          status: str | None = None, limit: int | None = 100) -> list[dict[str, Any]]:
        """Healing decisions, newest first, with `evidence` parsed."""
        where, params = [], []
        for column, value in (("pipeline", pipeline), ("decision_id", decision_id), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = ("SELECT * FROM healing_decisions" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY created_at DESC, decision_id DESC" + ("" if limit is None else f" LIMIT {int(limit)}"))
        with self._connect("read healing decisions") as con:
            rows = _rows(con.execute(sql, params))
        for r in rows:
            r["evidence"] = json.loads(r.pop("evidence_json")) if r.get("evidence_json") else None
            r["created_at"], r["finished_at"] = from_db_time(r["created_at"]), from_db_time(r["finished_at"])
        return rows

    # -- incidents -----------------------------------------------------------------------------

    def open_incident(self, pipeline: str, model: str, spectrum: str, detector: str, severity: str, summary: str,
                      now: datetime, *, alert_id: int | None = None,
                      evidence: dict[str, Any] | None = None) -> tuple[dict[str, Any], bool]:
        """The series' open incident (or the one this alert opened), else a new one; (incident, created)."""
        with self._transaction(f"open an incident of {pipeline}") as con:
            # The series' open incident; or, while the alert that opened one is still open, that incident
            # (an escalated incident waits for a person, it is not reopened by the same alert).
            row = con.execute("SELECT incident_id FROM incidents WHERE pipeline = ? AND model = ? AND spectrum = ? "
                              "AND (status IN ('open', 'healing') OR (alert_id IS NOT NULL AND alert_id = ?)) "
                              "ORDER BY opened_at DESC LIMIT 1",
                              [pipeline, model, spectrum, alert_id]).fetchone()
            if row is not None:
                incident_id, created = row[0], False
            else:
                incident_id, created = f"inc-{pipeline}-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(2)}", True
                con.execute("INSERT INTO incidents (incident_id, pipeline, alert_id, model, spectrum, detector, "
                            "severity, status, summary, opened_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'open', ?, ?)",
                            [incident_id, pipeline, alert_id, model, spectrum, detector, severity, summary,
                             to_db_time(now)])
                self._add_event(con, incident_id, "alert", now, summary,
                                None if alert_id is None else str(alert_id), evidence)
        return self.incident(incident_id), created

    def _add_event(self, con, incident_id: str, kind: str, at: datetime, summary: str, ref: str | None,
                   evidence: dict[str, Any] | None) -> int:
        if kind not in INCIDENT_EVENT_KINDS:
            raise ValueError(f"incident event kind {kind!r} is not one of {', '.join(INCIDENT_EVENT_KINDS)}")
        seq = int(con.execute("SELECT coalesce(max(seq), 0) + 1 FROM incident_events WHERE incident_id = ?",
                              [incident_id]).fetchone()[0])
        con.execute("INSERT INTO incident_events (incident_id, seq, kind, occurred_at, summary, ref, evidence_json) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [incident_id, seq, kind, to_db_time(at), summary[:2000], ref, dump_json(evidence)])
        return seq

    def add_incident_event(self, incident_id: str, kind: str, at: datetime, summary: str, *, ref: str | None = None,
                           evidence: dict[str, Any] | None = None, status: str | None = None) -> int:
        """Append a step to the incident's timeline; with `status`, move the incident there too (resolved and
        escalated close it)."""
        if status is not None and status not in INCIDENT_STATUSES:
            raise ValueError(f"incident status {status!r} is not one of {', '.join(INCIDENT_STATUSES)}")
        with self._transaction(f"add a {kind} step to incident {incident_id}") as con:
            if con.execute("SELECT 1 FROM incidents WHERE incident_id = ?", [incident_id]).fetchone() is None:
                raise KeyError(f"no incident {incident_id!r}")
            seq = self._add_event(con, incident_id, kind, at, summary, ref, evidence)
            if status is not None:
                closed = to_db_time(at) if status in ("resolved", "escalated") else None
                con.execute("UPDATE incidents SET status = ?, closed_at = ? WHERE incident_id = ?",
                            [status, closed, incident_id])
        return seq

    def incident(self, incident_id: str) -> dict[str, Any] | None:
        found = self.incidents(incident_id=incident_id, limit=1)
        return found[0] if found else None

    def incidents(self, pipeline: str | None = None, *, status: str | None = None, incident_id: str | None = None,
                  limit: int | None = 50, timeline: bool = True) -> list[dict[str, Any]]:
        """Incidents, newest first, each with its `timeline` (oldest step first) when asked."""
        where, params = [], []
        for column, value in (("pipeline", pipeline), ("status", status), ("incident_id", incident_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = ("SELECT * FROM incidents" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY opened_at DESC, incident_id DESC" + ("" if limit is None else f" LIMIT {int(limit)}"))
        with self._connect("read incidents") as con:
            found = [_incident(r) for r in _rows(con.execute(sql, params))]
            if timeline and found:
                ids = [i["incident_id"] for i in found]
                events = _rows(con.execute(
                    f"SELECT * FROM incident_events WHERE incident_id IN ({', '.join('?' for _ in ids)}) "
                    "ORDER BY incident_id, seq", ids))
                by_id: dict[str, list] = {}
                for e in events:
                    e["at"] = from_db_time(e.pop("occurred_at"))
                    e["evidence"] = json.loads(e.pop("evidence_json")) if e.get("evidence_json") else None
                    by_id.setdefault(e.pop("incident_id"), []).append(e)
                for i in found:
                    i["timeline"] = by_id.get(i["incident_id"], [])
        return found
