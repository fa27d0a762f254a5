"""Monitoring in the metrics store: monitor runs, the quality observations of each series, and the detectors' state.

`MonitoringTables` is a mixin of `MetricsStore`: its methods use the store's short-lived connections (`_connect`,
`_transaction`). A series is one pipeline x serving model x spectrum. An observation is keyed by (series, source,
monitor period), so a monitor run that is killed and re-run in the same period writes the same rows again and
changes nothing. The detectors' state (a JSON-safe dict from `promptcycle.monitor.assess`) is stored per series
together with the run that produced it: the next run — in this process or another — continues from it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from promptcycle.store.records import dump_json, from_db_time, to_db_time

__all__ = ["MonitoringTables", "ObservationRecord", "MONITOR_SOURCES"]

MONITOR_SOURCES = ("production", "probe")


@dataclass(frozen=True)
class ObservationRecord:
    """One monitor period's quality of one series: `value` in points (0-100) over `n` outcomes, with the per-case
    variance (points²) when known and how many outcomes were errors (counted in `n` as 0 points)."""

    pipeline: str
    model: str
    spectrum: str
    source: str  # production | probe
    period: int
    observed_at: datetime
    value: float
    n: int
    case_var: float | None
    errors: int
    monitor_run_id: str
    prompt_hash: str | None = None
    run_id: str | None = None  # the probe's evaluation run

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["observed_at"] = self.observed_at.isoformat()
        return d


_OBS_COLUMNS = ("pipeline", "model", "spectrum", "source", "period", "observed_at", "value", "n", "case_var",
                "errors", "prompt_hash", "run_id", "monitor_run_id")


def _rows(cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


class MonitoringTables:
    """Monitor runs, observations and detector states. Mixed into `MetricsStore`."""

    # -- monitor runs --------------------------------------------------------------------------

    def start_monitor_run(self, monitor_run_id: str, pipeline: str, period: int, now: datetime, *,
                          production_hash: str | None = None, flow_run_id: str | None = None) -> bool:
        """Record a monitor run as running; True if new. Starting the same id again (a resumed run) marks it
        running again and keeps its start time."""
        with self._transaction(f"start monitor run {monitor_run_id}") as con:
            known = con.execute("SELECT 1 FROM monitor_runs WHERE monitor_run_id = ?", [monitor_run_id]).fetchone()
            if known:
                con.execute("UPDATE monitor_runs SET status = 'running', flow_run_id = coalesce(?, flow_run_id) "
                            "WHERE monitor_run_id = ?", [flow_run_id, monitor_run_id])
                return False
            con.execute("INSERT INTO monitor_runs (monitor_run_id, pipeline, period, production_hash, status, "
                        "started_at, flow_run_id) VALUES (?, ?, ?, ?, 'running', ?, ?)",
                        [monitor_run_id, pipeline, int(period), production_hash, to_db_time(now), flow_run_id])
            return True

    def finish_monitor_run(self, monitor_run_id: str, status: str, now: datetime,
                           summary: dict[str, Any] | None = None) -> None:
        with self._transaction(f"finish monitor run {monitor_run_id}") as con:
            con.execute("UPDATE monitor_runs SET status = ?, finished_at = ?, summary_json = ? WHERE monitor_run_id = ?",
                        [status, to_db_time(now), dump_json(summary), monitor_run_id])

    def monitor_runs(self, pipeline: str | None = None, limit: int | None = 50) -> list[dict[str, Any]]:
        """Monitor runs, newest first: dicts with the columns of `monitor_runs` and `summary` parsed."""
        where, params = ("WHERE pipeline = ?", [pipeline]) if pipeline else ("", [])
        limit_sql = "" if limit is None else f" LIMIT {int(limit)}"
        with self._connect("read monitor runs") as con:
            rows = _rows(con.execute(f"SELECT * FROM monitor_runs {where} ORDER BY started_at DESC, "
                                     f"monitor_run_id DESC{limit_sql}", params))
        for r in rows:
            r["summary"] = json.loads(r.pop("summary_json")) if r.get("summary_json") else None
            r["started_at"], r["finished_at"] = from_db_time(r["started_at"]), from_db_time(r["finished_at"])
        return rows

    # -- observations --------------------------------------------------------------------------

    def write_observations(self, observations: Sequence[ObservationRecord]) -> int:
        """Record observations in one transaction (the same series, source and period again replaces the row)."""
        if not observations:
            return 0
        with self._transaction(f"write {len(observations)} monitor observations") as con:
            placeholders = ", ".join("?" for _ in _OBS_COLUMNS)
            for o in observations:
                con.execute(f"INSERT OR REPLACE INTO monitor_observations ({', '.join(_OBS_COLUMNS)}) "
                            f"VALUES ({placeholders})",
                            [o.pipeline, o.model, o.spectrum, o.source, int(o.period), to_db_time(o.observed_at),
                             float(o.value), int(o.n), None if o.case_var is None else float(o.case_var),
                             int(o.errors), o.prompt_hash, o.run_id, o.monitor_run_id])
        return len(observations)

    def observations(self, pipeline: str, *, model: str | None = None, spectrum: str | None = None,
                     since: datetime | None = None, limit: int | None = None) -> list[ObservationRecord]:
        """Observations of the pipeline, oldest first (the last `limit` when given)."""
        where, params = ["pipeline = ?"], [pipeline]
        for column, value in (("model", model), ("spectrum", spectrum)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("observed_at > ?")
            params.append(to_db_time(since))
        inner = (f"SELECT {', '.join(_OBS_COLUMNS)} FROM monitor_observations WHERE {' AND '.join(where)} "
                 f"ORDER BY observed_at DESC, source" + ("" if limit is None else f" LIMIT {int(limit)}"))
        with self._connect(f"read the monitor observations of {pipeline}") as con:
            rows = _rows(con.execute(f"SELECT * FROM ({inner}) ORDER BY observed_at, source", params))
        for r in rows:
            r["observed_at"] = from_db_time(r["observed_at"])
        return [ObservationRecord(**r) for r in rows]

    # -- detector states -----------------------------------------------------------------------

    def detector_states(self, pipeline: str) -> dict[tuple[str, str], dict[str, Any]]:
        """(model, spectrum) -> {"state", "findings", "monitor_run_id", "updated_at"} of the pipeline's series."""
        with self._connect(f"read the detector states of {pipeline}") as con:
            rows = _rows(con.execute("SELECT * FROM detector_states WHERE pipeline = ?", [pipeline]))
        return {(r["model"], r["spectrum"]): {
            "state": json.loads(r["state_json"]), "findings": json.loads(r["findings_json"] or "[]"),
            "monitor_run_id": r["monitor_run_id"], "updated_at": from_db_time(r["updated_at"])} for r in rows}

    def write_detector_states(self, pipeline: str, states: dict[tuple[str, str], dict[str, Any]],
                              monitor_run_id: str, now: datetime) -> None:
        """Store each series' new state (and the findings it gave) in one transaction: a run's states land whole."""
        with self._transaction(f"write the detector states of {pipeline}") as con:
            for (model, spectrum), value in states.items():
                con.execute("INSERT OR REPLACE INTO detector_states (pipeline, model, spectrum, state_json, "
                            "findings_json, monitor_run_id, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [pipeline, model, spectrum, dump_json(value["state"]), dump_json(value.get("findings")),
                             monitor_run_id, to_db_time(now)])
