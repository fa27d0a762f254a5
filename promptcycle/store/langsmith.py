"""What promptcycle sent to LangSmith and read from it (migration 9).

- `langsmith_mirrored`: one row per result mirrored as a LangSmith run (promptcycle/langsmith/mirror.py), keyed
  like the result. The result's `created_at` is kept: a result rewritten later (a terminal error that a resumed
  run called again) no longer matches and is sent again, as an update of the same LangSmith run.
- `langsmith_cursors`: how far each production-feedback source (promptcycle/langsmith/feedback.py) was read, so
  the monitor never reads a LangSmith run twice.

A "mirror scope" is a run id: the run itself and every run whose id starts with it and a slash (the arms of an
optimization, `optimization-…/confirm/<hash>`), so one id mirrors a whole optimization.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa

from promptcycle.store.connection import _rows
from promptcycle.store.records import from_db_time, to_db_time, utc_now

__all__ = ["LangSmithTables", "MIRRORED_COLUMNS"]

MIRRORED_COLUMNS = ("run_id", "model", "case_id", "repeat", "ls_run_id", "experiment", "result_created_at",
                    "mirrored_at")

_SCOPE = "(r.run_id = ? OR starts_with(r.run_id, ? || '/'))"
_UNMIRRORED = ("NOT EXISTS (SELECT 1 FROM langsmith_mirrored m WHERE m.run_id = r.run_id AND m.model = r.model "
               "AND m.case_id = r.case_id AND m.repeat = r.repeat "
               "AND m.result_created_at IS NOT DISTINCT FROM r.created_at)")


class LangSmithTables:
    """Mirrored results and feedback cursors. Mixed into `MetricsStore`."""

    # -- mirrored results ----------------------------------------------------------------------

    def results_to_mirror(self, run_id: str, limit: int = 500) -> list[dict[str, Any]]:
        """Up to `limit` results of the mirror scope `run_id` not mirrored yet (or changed since), oldest first,
        each with its output, scores (a dict), and `mirrored` (whether an earlier version was sent)."""
        with self._connect(f"read the results of {run_id} to mirror to LangSmith") as con:
            rows = _rows(con.execute(
                "SELECT r.run_id, r.model, r.case_id, r.repeat, r.spectrum, r.split, r.prompt_hash, "
                "map_keys(r.scores) AS score_names, map_values(r.scores) AS score_values, r.overall, r.latency_ms, "
                "r.input_tokens, r.output_tokens, r.cost_usd, r.attempts, r.error, r.error_kind, r.simulated, "
                "r.created_at, r.finish_reason, p.output, "
                "EXISTS (SELECT 1 FROM langsmith_mirrored m WHERE m.run_id = r.run_id AND m.model = r.model "
                "AND m.case_id = r.case_id AND m.repeat = r.repeat) AS mirrored "
                "FROM results r LEFT JOIN responses p ON p.call_key = r.call_key "
                f"WHERE {_SCOPE} AND {_UNMIRRORED} "
                "ORDER BY r.created_at, r.run_id, r.model, r.case_id, r.repeat LIMIT ?",
                [run_id, run_id, int(limit)]))
        for row in rows:
            row["scores"] = dict(zip(row.pop("score_names") or [], row.pop("score_values") or []))
            row["created_at"] = from_db_time(row["created_at"])
        return rows

    def mark_mirrored(self, rows: Sequence[dict[str, Any]]) -> int:
        """Record results as mirrored (keys of `results_to_mirror` rows plus `ls_run_id` and `experiment`);
        writing a key again replaces it. Returns how many rows were written."""
        if not rows:
            return 0
        now = to_db_time(utc_now())
        table = pa.table({
            "run_id": pa.array([r["run_id"] for r in rows], pa.string()),
            "model": pa.array([r["model"] for r in rows], pa.string()),
            "case_id": pa.array([r["case_id"] for r in rows], pa.string()),
            "repeat": pa.array([int(r["repeat"]) for r in rows], pa.int32()),
            "ls_run_id": pa.array([str(r["ls_run_id"]) for r in rows], pa.string()),
            "experiment": pa.array([r["experiment"] for r in rows], pa.string()),
            "result_created_at": pa.array([to_db_time(r.get("created_at")) for r in rows], pa.timestamp("us")),
            "mirrored_at": pa.array([now] * len(rows), pa.timestamp("us")),
        })
        with self._transaction(f"record {len(rows)} results mirrored to LangSmith") as con:
            con.register("new_mirrored", table)
            con.execute(f"INSERT OR REPLACE INTO langsmith_mirrored ({', '.join(MIRRORED_COLUMNS)}) "
                        f"SELECT {', '.join(MIRRORED_COLUMNS)} FROM new_mirrored")
        return len(rows)

    def mirror_status(self, run_id: str) -> dict[str, int]:
        """Of the mirror scope `run_id`: `results` stored, `mirrored` (current version sent), `pending`."""
        with self._connect(f"count the results of {run_id} mirrored to LangSmith") as con:
            total, pending = con.execute(
                f"SELECT count(*), count(*) FILTER (WHERE {_UNMIRRORED}) FROM results r WHERE {_SCOPE}",
                [run_id, run_id]).fetchone()
        return {"results": int(total), "mirrored": int(total - pending), "pending": int(pending)}

    def mirrored_runs(self, run_id: str) -> list[dict[str, Any]]:
        """The mirrored rows of the mirror scope `run_id` (for reports and tests)."""
        with self._connect(f"read what {run_id} mirrored to LangSmith") as con:
            return _rows(con.execute(
                f"SELECT {', '.join(MIRRORED_COLUMNS)} FROM langsmith_mirrored r WHERE {_SCOPE} "
                "ORDER BY run_id, model, case_id, repeat", [run_id, run_id]))

    # -- production feedback cursors -----------------------------------------------------------

    def langsmith_cursor(self, pipeline: str, source: str) -> tuple[datetime | None, int]:
        """(the start time read up to, runs read so far) of a feedback source; (None, 0) when never read."""
        with self._connect(f"read the LangSmith cursor of {pipeline}") as con:
            row = con.execute("SELECT cursor_time, runs_read FROM langsmith_cursors WHERE pipeline = ? AND source = ?",
                              [pipeline, source]).fetchone()
        return (from_db_time(row[0]), int(row[1])) if row else (None, 0)

    def advance_langsmith_cursor(self, pipeline: str, source: str, cursor_time: datetime, runs: int) -> None:
        """Move a feedback source's cursor to `cursor_time` (never backwards), counting `runs` more read."""
        now = to_db_time(utc_now())
        with self._transaction(f"advance the LangSmith cursor of {pipeline}") as con:
            con.execute(
                "INSERT INTO langsmith_cursors (pipeline, source, cursor_time, runs_read, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (pipeline, source) DO UPDATE SET "
                "cursor_time = greatest(coalesce(langsmith_cursors.cursor_time, excluded.cursor_time), "
                "excluded.cursor_time), runs_read = langsmith_cursors.runs_read + excluded.runs_read, "
                "updated_at = excluded.updated_at",
                [pipeline, source, to_db_time(cursor_time), int(runs), now])
