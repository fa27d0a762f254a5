"""Runs, the paid-call ledger (responses), results, data-quality results, dataset splits and pipeline leases."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from promptcycle.errors import StoreError
from promptcycle.store.arrow import (
    RESPONSE_COLUMNS,
    RESULT_COLUMNS,
    keys_table,
    responses_table,
    results_table,
    splits_table,
)
from promptcycle.store.connection import (
    StoreConnection,
    _quote_identifier,
    _quote_literal,
    _require_text,
    _rows,
)
from promptcycle.store.records import (
    RUN_STATUSES,
    ResponseRecord,
    ResultRecord,
    RunRecord,
    dump_json,
    from_db_time,
    to_db_time,
    utc_now,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RunsTables"]

_RUN_COLUMNS = ("run_id", "pipeline", "kind", "fingerprint", "status", "prompt_hash", "dataset_hash", "models",
                "repeats", "case_limit", "simulated", "config_json", "flow_run_id", "started_at", "finished_at",
                "summary_json")


def _run_from_row(row: dict[str, Any]) -> RunRecord:
    row = dict(row)
    row["models"] = list(row["models"] or [])
    for name in ("started_at", "finished_at"):
        row[name] = from_db_time(row[name])
    return RunRecord(**row)


def _results_frame(con: duckdb.DuckDBPyConnection, where: str, params: list[Any],
                   scorers: Sequence[str] | None, text: bool = True) -> pd.DataFrame:
    """Results of the rows matching `where` (over `results r`) with their score columns and, with
    `text`, the answers' `output` and the scorers' `explanation`."""
    names = [k for (k,) in con.execute(
        f"SELECT DISTINCT unnest(map_keys(r.scores)) AS k FROM results r WHERE {where} ORDER BY k",
        params).fetchall()]
    names += [n for n in (scorers or ()) if n not in names]
    score_columns = "".join(f", r.scores[{_quote_literal(n)}] AS {_quote_identifier('score_' + n)}" for n in names)
    return con.execute(
        "SELECT r.run_id, r.model, r.case_id, r.repeat, r.spectrum, r.split, r.prompt_hash, r.call_key, "
        f"r.overall{score_columns}, r.latency_ms, r.input_tokens, r.output_tokens, r.cost_usd, "
        f"r.attempts, r.wait_ms, r.error, r.error_kind, r.simulated, {'r.explanation, ' if text else ''}r.created_at, "
        f"r.finish_reason, r.tokens_source{', p.output' if text else ''} "
        f"FROM results r {'LEFT JOIN responses p ON p.call_key = r.call_key ' if text else ''}"
        f"WHERE {where} ORDER BY r.run_id, r.model, r.case_id, r.repeat", params).df()


class RunsTables(StoreConnection):
    """Runs and what they record: the responses ledger, results, data-quality results, dataset splits,
    and the leases that let one process at a time spend on a pipeline."""

    # -- runs ----------------------------------------------------------------------------------

    def create_run(self, run: RunRecord) -> bool:
        """Record a new run; True if written. Creating the same run again (same id and fingerprint)
        is a no-op returning False; the same id with another fingerprint is a `StoreError`."""
        if run.status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {', '.join(RUN_STATUSES)}, not {run.status!r}")
        values = [getattr(run, c) for c in _RUN_COLUMNS]
        values[_RUN_COLUMNS.index("started_at")] = to_db_time(run.started_at or utc_now())
        values[_RUN_COLUMNS.index("finished_at")] = to_db_time(run.finished_at)
        values[_RUN_COLUMNS.index("models")] = list(run.models)
        with self._transaction(f"create run {run.run_id}") as con:
            found = con.execute("SELECT fingerprint FROM runs WHERE run_id = ?", [run.run_id]).fetchone()
            if found is not None:
                if found[0] != run.fingerprint:
                    raise StoreError(f"run {run.run_id!r} already exists with another fingerprint "
                                     f"({found[0]}, not {run.fingerprint}); run ids must be unique")
                return False
            placeholders = ", ".join("?" for _ in _RUN_COLUMNS)
            con.execute(f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}) VALUES ({placeholders})", values)
        return True

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._connect(f"read run {run_id}") as con:
            rows = _rows(con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]))
        return _run_from_row(rows[0]) if rows else None

    def find_resumable_run(self, pipeline: str, kind: str, fingerprint: str) -> RunRecord | None:
        """The latest run of this work (same fingerprint) that has not completed, or None."""
        with self._connect("find a resumable run") as con:
            rows = _rows(con.execute(
                "SELECT * FROM runs WHERE pipeline = ? AND kind = ? AND fingerprint = ? AND status <> 'completed' "
                "ORDER BY started_at DESC NULLS LAST, run_id DESC LIMIT 1", [pipeline, kind, fingerprint]))
        return _run_from_row(rows[0]) if rows else None

    def latest_run(self, pipeline: str, kind: str = "baseline", status: str | None = "completed") -> RunRecord | None:
        """The most recent run of `pipeline` and `kind` with `status` (None: any status)."""
        where, params = "pipeline = ? AND kind = ?", [pipeline, kind]
        if status is not None:
            where, params = where + " AND status = ?", [*params, status]
        with self._connect("find the latest run") as con:
            rows = _rows(con.execute(
                f"SELECT * FROM runs WHERE {where} "
                "ORDER BY coalesce(finished_at, started_at) DESC NULLS LAST, started_at DESC NULLS LAST, run_id DESC "
                "LIMIT 1", params))
        return _run_from_row(rows[0]) if rows else None

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
        """Close a run as 'completed' or 'failed' with its summary. Finishing it again with the same
        status keeps the first finish time."""
        if status not in ("completed", "failed"):
            raise ValueError(f"a run finishes as 'completed' or 'failed', not {status!r}")
        with self._transaction(f"finish run {run_id}") as con:
            count = con.execute(
                "UPDATE runs SET finished_at = CASE WHEN status = ? AND finished_at IS NOT NULL "
                "THEN finished_at ELSE ? END, status = ?, summary_json = ? WHERE run_id = ?",
                [status, to_db_time(utc_now()), status, dump_json(summary), run_id]).fetchone()[0]
            if count == 0:
                raise StoreError(f"cannot finish run {run_id!r}: no such run in {self.path}")

    def resume_run(self, run_id: str, flow_run_id: str | None = None) -> None:
        """Mark an unfinished or failed run as running again (when a re-run picks it up)."""
        with self._transaction(f"resume run {run_id}") as con:
            count = con.execute(
                "UPDATE runs SET status = 'running', finished_at = NULL, "
                "flow_run_id = coalesce(?, flow_run_id) WHERE run_id = ?", [flow_run_id, run_id]).fetchone()[0]
            if count == 0:
                raise StoreError(f"cannot resume run {run_id!r}: no such run in {self.path}")

    # -- responses and results -----------------------------------------------------------------

    def get_responses(self, call_keys: Iterable[str]) -> dict[str, ResponseRecord]:
        """The ledger entries for those call keys that were ever paid for (missing keys are absent)."""
        keys = list(dict.fromkeys(call_keys))
        if not keys:
            return {}
        wanted = keys_table("call_key", keys)
        with self._connect("read responses") as con:
            con.register("wanted", wanted)
            rows = _rows(con.execute(
                f"SELECT {', '.join(RESPONSE_COLUMNS)} FROM responses "
                "WHERE call_key IN (SELECT call_key FROM wanted)"))
        out = {}
        for row in rows:
            row["created_at"] = from_db_time(row["created_at"])
            out[row["call_key"]] = ResponseRecord(**row)
        return out

    def write_batch(self, responses: Sequence[ResponseRecord], results: Sequence[ResultRecord]) -> None:
        """Write paid calls and results in ONE transaction: both land or neither does.

        A response whose call key is already in the ledger is kept as first written (the run that
        paid keeps the credit); a result replaces any row with the same (run_id, model, case_id,
        repeat). Within one batch the first response and the last result per key win.
        """
        if not responses and not results:
            return
        now = utc_now()
        first_responses = list({r.call_key: r for r in reversed(responses)}.values())[::-1]
        last_results = list({(r.run_id, r.model, r.case_id, r.repeat): r for r in results}.values())
        try:
            new_responses = responses_table(first_responses, now)
            new_results = results_table(last_results, now)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise StoreError(f"a batch for {self.path} has a value of the wrong type: {exc}") from exc
        with self._transaction(f"write a batch of {len(responses)} responses and {len(results)} results") as con:
            if first_responses:
                con.register("new_responses", new_responses)
                con.execute(f"INSERT INTO responses ({', '.join(RESPONSE_COLUMNS)}) "
                            f"SELECT {', '.join(RESPONSE_COLUMNS)} FROM new_responses ON CONFLICT DO NOTHING")
            if last_results:
                con.register("new_results", new_results)
                con.execute(f"INSERT OR REPLACE INTO results ({', '.join(RESULT_COLUMNS)}) "
                            f"SELECT {', '.join(RESULT_COLUMNS)} FROM new_results")

    def completed_keys(self, run_id: str, model: str,
                       case_ids: Iterable[str] | None = None) -> set[tuple[str, int]]:
        """(case_id, repeat) pairs of `model` in `run_id` that ended with a score — the work a resumed
        run must not redo. A row that ended in a terminal error is not among them: a re-run retries it
        (a wrong key or an outage is fixed between runs), see `failed_calls`."""
        query = "SELECT case_id, repeat FROM results WHERE run_id = ? AND model = ? AND overall IS NOT NULL " \
                "AND error IS NULL"
        with self._connect(f"read completed results of run {run_id}") as con:
            if case_ids is not None:
                ids = list(dict.fromkeys(case_ids))
                if not ids:
                    return set()
                con.register("wanted", keys_table("case_id", ids))
                query += " AND case_id IN (SELECT case_id FROM wanted)"
            return {(case_id, repeat) for case_id, repeat in con.execute(query, [run_id, model]).fetchall()}

    def recorded_calls(self, run_id: str) -> dict[str, tuple[set[tuple[str, int]], dict[tuple[str, int], tuple[int, float]]]]:
        """model -> (scored, failed) of `run_id`, read in one query: `scored` as `completed_keys` (the work a
        resumed run must not redo), `failed` maps (case_id, repeat) -> (attempts, wait_ms) of the rows that
        ended in a terminal error (a re-run retries them and adds what they already sent to the new row).
        Models with no row are absent."""
        with self._connect(f"read the recorded calls of run {run_id}") as con:
            rows = con.execute("SELECT model, case_id, repeat, error IS NOT NULL, coalesce(attempts, 0), "
                               "coalesce(wait_ms, 0) FROM results WHERE run_id = ? "
                               "AND (error IS NOT NULL OR overall IS NOT NULL)", [run_id]).fetchall()
        calls: dict[str, tuple[set[tuple[str, int]], dict[tuple[str, int], tuple[int, float]]]] = {}
        for model, case_id, repeat, failed, attempts, wait_ms in rows:
            scored, errors = calls.setdefault(model, (set(), {}))
            if failed:
                errors[(case_id, repeat)] = (int(attempts), float(wait_ms))
            else:
                scored.add((case_id, repeat))
        return calls

    def run_progress(self, run_id: str) -> dict[str, int]:
        """How much of a run is recorded: `scored` rows and `failed` rows (terminal errors)."""
        with self._connect(f"count the results of run {run_id}") as con:
            scored, failed = con.execute(
                "SELECT count(*) FILTER (WHERE error IS NULL), count(*) FILTER (WHERE error IS NOT NULL) "
                "FROM results WHERE run_id = ?", [run_id]).fetchone()
        return {"scored": int(scored), "failed": int(failed)}

    def results_frame(self, run_id: str, scorers: Sequence[str] | None = None, *, text: bool = True) -> pd.DataFrame:
        """One row per (model, case_id, repeat) of the run, with the response's `output` and one
        `score_<name>` column per scorer (those seen in the run, plus `scorers` if given; NaN where
        a row has no such score). Ordered by model, case_id, repeat; times are naive UTC. Without
        `text`, the answers' `output` and the `explanation` columns are left out (a lighter read)."""
        with self._connect(f"read the results of run {run_id}") as con:
            return _results_frame(con, "r.run_id = ?", [run_id], scorers, text)

    def results_columns(self, run_id: str, columns: Sequence[str]) -> pd.DataFrame:
        """Only `columns` of the run's rows in `results` (no answer text, no score columns): what an
        aggregate needs, read at a fraction of `results_frame`'s cost. Ordered as `results_frame`."""
        unknown = [c for c in columns if c not in RESULT_COLUMNS]
        if unknown or not columns:
            raise ValueError(f"columns must be some of the results table's ({', '.join(RESULT_COLUMNS)}), "
                             f"found {unknown or 'none'}")
        with self._connect(f"read the results of run {run_id}") as con:
            return con.execute(f"SELECT {', '.join(_quote_identifier(c) for c in columns)} FROM results "
                               "WHERE run_id = ? ORDER BY model, case_id, repeat", [run_id]).df()

    def results_frame_many(self, run_ids: Iterable[str], scorers: Sequence[str] | None = None) -> pd.DataFrame:
        """`results_frame` over several runs at once, ordered by run_id, model, case_id, repeat; the
        `run_id` column tells them apart and the score columns are those seen in any of the runs."""
        ids = list(dict.fromkeys(run_ids))
        with self._connect(f"read the results of {len(ids)} runs") as con:
            con.register("wanted_runs", keys_table("run_id", ids))
            return _results_frame(con, "r.run_id IN (SELECT run_id FROM wanted_runs)", [], scorers)

    def spend(self, run_ids: Sequence[str] | str) -> dict[str, int | float]:
        """What the runs paid for: `calls` (every request sent to a provider: each attempt of the
        ledger's answered calls and of the calls that ended in a terminal error), `answered` (ledger
        rows), `cost_usd`, `input_tokens` and `output_tokens`, over rows whose run_id is in `run_ids`,
        or — when `run_ids` is a single string — starts with that prefix (matched literally: `_` and
        `%` are not wildcards). A call re-used from another run's ledger entry counts for the run that
        paid."""
        wanted: pa.Table | None = None
        if isinstance(run_ids, str):
            if not run_ids:
                raise ValueError("spend() needs a non-empty run id prefix; an empty one would sum every run")
            where, params, label = "starts_with(run_id, ?)", [run_ids], f"runs starting with {run_ids!r}"
        else:
            ids = list(dict.fromkeys(run_ids))
            if not ids:
                return {"calls": 0, "answered": 0, "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0}
            wanted = keys_table("run_id", ids)
            where, params, label = "run_id IN (SELECT run_id FROM wanted_runs)", [], f"{len(ids)} runs"
        with self._connect(f"sum the spend of {label}") as con:
            if wanted is not None:
                con.register("wanted_runs", wanted)
            answered, attempts, cost, tokens_in, tokens_out = con.execute(
                "SELECT count(*), coalesce(sum(coalesce(attempts, 1)), 0), coalesce(sum(cost_usd), 0), "
                f"coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0) FROM responses WHERE {where}",
                params).fetchone()
            (failed,) = con.execute(f"SELECT coalesce(sum(attempts), 0) FROM results WHERE {where} "
                                    "AND error IS NOT NULL", params).fetchone()
        return {"calls": int(attempts) + int(failed), "answered": int(answered), "cost_usd": float(cost),
                "input_tokens": int(tokens_in), "output_tokens": int(tokens_out)}

    # -- data quality --------------------------------------------------------------------------

    def write_dq_result(self, run_id: str, suite: str, success: bool, report: dict[str, Any]) -> None:
        """Record the outcome of a data-quality suite for a run (re-running the suite replaces it)."""
        try:
            report_json = dump_json(report)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"the {suite!r} data-quality report of run {run_id} is not JSON: {exc}") from exc
        with self._transaction(f"write the {suite} data-quality result of run {run_id}") as con:
            con.execute("INSERT OR REPLACE INTO dq_results (run_id, suite, success, report_json, created_at) "
                        "VALUES (?, ?, ?, ?, ?)", [run_id, suite, bool(success), report_json, to_db_time(utc_now())])

    def dq_results(self, run_id: str) -> list[dict[str, Any]]:
        """The run's data-quality results, oldest first: dicts with run_id, suite, success, report
        (the parsed JSON) and created_at."""
        with self._connect(f"read the data-quality results of run {run_id}") as con:
            rows = _rows(con.execute("SELECT run_id, suite, success, report_json, created_at FROM dq_results "
                                     "WHERE run_id = ? ORDER BY created_at, suite", [run_id]))
        return [{"run_id": r["run_id"], "suite": r["suite"], "success": r["success"],
                 "report": json.loads(r["report_json"]) if r["report_json"] else None,
                 "created_at": from_db_time(r["created_at"])} for r in rows]

    # -- splits --------------------------------------------------------------------------------

    def write_splits(self, dataset_key: str, splits: dict[str, str]) -> int:
        """Record each case's split for a dataset once; return how many were new. A case already
        recorded keeps its split, so train/dev/test stay stable across runs."""
        if not splits:
            return 0
        with self._transaction(f"write the splits of {dataset_key}") as con:
            con.register("new_splits", splits_table(dataset_key, splits))
            before = con.execute("SELECT count(*) FROM splits WHERE dataset_key = ?", [dataset_key]).fetchone()[0]
            con.execute("INSERT INTO splits (dataset_key, case_id, split) "
                        "SELECT dataset_key, case_id, split FROM new_splits ON CONFLICT DO NOTHING")
            after = con.execute("SELECT count(*) FROM splits WHERE dataset_key = ?", [dataset_key]).fetchone()[0]
        return after - before

    def get_splits(self, dataset_key: str) -> dict[str, str]:
        """case_id -> split recorded for the dataset (empty when none)."""
        with self._connect(f"read the splits of {dataset_key}") as con:
            return dict(con.execute("SELECT case_id, split FROM splits WHERE dataset_key = ? ORDER BY case_id",
                                    [dataset_key]).fetchall())

    # -- pipeline leases -----------------------------------------------------------------------

    def acquire_pipeline_lease(self, pipeline: str, holder: str, purpose: str, lease_seconds: float, *,
                               take_from: str | None = None) -> dict[str, Any]:
        """Take (or, for the same holder, renew) the pipeline's lease for `lease_seconds`.

        It is taken when free, expired, already `holder`'s, or held by `take_from` (a holder the
        caller knows is dead). Returns the lease as it stands after the call: its `holder` is another
        one when it was not taken (nothing is changed then).
        """
        _require_text(holder, "a pipeline lease's holder")
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be > 0, not {lease_seconds!r}")
        from datetime import timedelta

        now = utc_now()
        with self._transaction(f"take the lease of pipeline {pipeline}") as con:
            found = _rows(con.execute("SELECT pipeline, holder, purpose, acquired_at, expires_at FROM pipeline_leases "
                                      "WHERE pipeline = ?", [pipeline]))
            if (found and found[0]["holder"] not in (holder, take_from)
                    and from_db_time(found[0]["expires_at"]) > now):
                row = found[0]
            else:
                acquired = found[0]["acquired_at"] if found and found[0]["holder"] == holder else to_db_time(now)
                row = {"pipeline": pipeline, "holder": holder, "purpose": purpose, "acquired_at": acquired,
                       "expires_at": to_db_time(now + timedelta(seconds=float(lease_seconds)))}
                con.execute("INSERT OR REPLACE INTO pipeline_leases (pipeline, holder, purpose, acquired_at, "
                            "expires_at) VALUES (?, ?, ?, ?, ?)",
                            [pipeline, holder, purpose, row["acquired_at"], row["expires_at"]])
        return {**row, "acquired_at": from_db_time(row["acquired_at"]), "expires_at": from_db_time(row["expires_at"])}

    def release_pipeline_lease(self, pipeline: str, holder: str) -> bool:
        """Give the lease back; True if `holder` held it."""
        with self._transaction(f"release the lease of pipeline {pipeline}") as con:
            found = con.execute("SELECT holder FROM pipeline_leases WHERE pipeline = ?", [pipeline]).fetchone()
            if found is None or found[0] != holder:
                return False
            con.execute("DELETE FROM pipeline_leases WHERE pipeline = ? AND holder = ?", [pipeline, holder])
        return True
