"""A pipeline's history as the report reads it: its runs over time, and what each run paid.

`HistoryTables` is a mixin of `MetricsStore` that only reads: the runs of a pipeline (every kind: baseline,
optimization and its screen/confirm arms, smoke, probe) with their parsed summaries, and the spend of each run from
the paid-call ledger, with the run's time, so that spend can be drawn over time and per phase.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from promptcycle.store.connection import StoreConnection, _rows
from promptcycle.store.records import RunRecord, from_db_time

__all__ = ["HistoryTables", "PHASE_OF_KIND"]

PHASE_OF_KIND = {"baseline": "baseline", "screen": "optimization", "confirm": "optimization",
                 "optimization": "optimization", "smoke": "deployment", "probe": "monitor"}
"""The phase that paid for a run of each kind (a run kind not listed is its own phase)."""


class HistoryTables(StoreConnection):
    """Runs over time and what each one paid. Mixed into `MetricsStore`."""

    def pipeline_runs(self, pipeline: str, *, kinds: Sequence[str] | None = None, status: str | None = None,
                      limit: int | None = None) -> list[RunRecord]:
        """The pipeline's runs, oldest first (the newest `limit` of them when given), of `kinds` (None: all) and
        `status` (None: any); `RunRecord.summary` parses each one's summary."""
        where, params = ["pipeline = ?"], [pipeline]
        if kinds is not None:
            where.append("list_contains(?, kind)")
            params.append(list(kinds))
        if status is not None:
            where.append("status = ?")
            params.append(status)
        limit_sql = "" if limit is None else f" LIMIT {int(limit)}"
        inner = (f"SELECT * FROM runs WHERE {' AND '.join(where)} "
                 f"ORDER BY coalesce(finished_at, started_at) DESC NULLS LAST, run_id DESC{limit_sql}")
        with self._connect(f"read the runs of {pipeline}") as con:
            rows = _rows(con.execute(f"SELECT * FROM ({inner}) "
                                     "ORDER BY coalesce(finished_at, started_at) NULLS FIRST, run_id", params))
        out = []
        for row in rows:
            row["models"] = list(row["models"] or [])
            row["started_at"], row["finished_at"] = from_db_time(row["started_at"]), from_db_time(row["finished_at"])
            out.append(RunRecord(**row))
        return out

    def spend_by_run(self, pipeline: str) -> list[dict[str, Any]]:
        """What each of the pipeline's runs paid, oldest first: dicts with run_id, kind, phase (`PHASE_OF_KIND`),
        status, simulated, started_at, paid_at (its last paid call, else its start), calls (every request sent,
        as `MetricsStore.spend` counts them), answered, cost_usd, input_tokens and output_tokens. Runs that paid
        nothing are left out."""
        with self._connect(f"sum the spend of the runs of {pipeline}") as con:
            rows = _rows(con.execute(
                """
                WITH paid AS (
                    SELECT run_id, count(*) AS answered, sum(coalesce(attempts, 1)) AS attempts,
                           coalesce(sum(cost_usd), 0) AS cost_usd, coalesce(sum(input_tokens), 0) AS input_tokens,
                           coalesce(sum(output_tokens), 0) AS output_tokens, max(created_at) AS last_paid
                    FROM responses WHERE run_id IN (SELECT run_id FROM runs WHERE pipeline = ?) GROUP BY run_id),
                failed AS (
                    SELECT run_id, coalesce(sum(attempts), 0) AS attempts, max(created_at) AS last_paid
                    FROM results WHERE error IS NOT NULL AND run_id IN (SELECT run_id FROM runs WHERE pipeline = ?)
                    GROUP BY run_id)
                SELECT u.run_id, u.kind, u.status, coalesce(u.simulated, false) AS simulated, u.started_at,
                       coalesce(greatest(p.last_paid, f.last_paid), p.last_paid, f.last_paid, u.started_at) AS paid_at,
                       coalesce(p.attempts, 0) + coalesce(f.attempts, 0) AS calls, coalesce(p.answered, 0) AS answered,
                       coalesce(p.cost_usd, 0) AS cost_usd, coalesce(p.input_tokens, 0) AS input_tokens,
                       coalesce(p.output_tokens, 0) AS output_tokens
                FROM runs u LEFT JOIN paid p USING (run_id) LEFT JOIN failed f USING (run_id)
                WHERE u.pipeline = ? AND (p.run_id IS NOT NULL OR f.run_id IS NOT NULL)
                ORDER BY paid_at, u.run_id
                """, [pipeline, pipeline, pipeline]))
        for row in rows:
            row["phase"] = PHASE_OF_KIND.get(row["kind"], row["kind"])
            row["started_at"], row["paid_at"] = from_db_time(row["started_at"]), from_db_time(row["paid_at"])
            for name in ("calls", "answered", "input_tokens", "output_tokens"):
                row[name] = int(row[name])
            row["cost_usd"], row["simulated"] = float(row["cost_usd"]), bool(row["simulated"])
        return rows

    def production_simulated(self, pipeline: str, canary_id: str | None = None) -> bool:
        """Whether any production outcome of the pipeline (of one canary, when given) came from simulated traffic
        (its metadata says so)."""
        where, params = "pipeline = ?", [pipeline]
        if canary_id is not None:
            where, params = where + " AND canary_id = ?", [*params, canary_id]
        with self._connect(f"read the production outcomes of {pipeline}") as con:
            (found,) = con.execute(
                f"SELECT count(*) FROM production_results WHERE {where} "
                "AND coalesce(json_extract(metadata_json, '$.simulated')::BOOLEAN, false)", params).fetchone()
        return bool(found)
