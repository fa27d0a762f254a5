"""`MetricsStore`: every number promptcycle produces, in one DuckDB file.

While one process has a DuckDB file open for writing, no other process can open it at all. So the
store never keeps a connection: each call opens the file, does its work in one transaction and
closes it. A call that finds the file locked by another process (a scheduled run, a notebook)
waits with exponential back-off and jitter, and raises `StoreError` only when the lock has not
come free within `lock_timeout_s`. Inside one process a lock per file serialises our own
connections, so threads never collide on it.

Every write is keyed and idempotent: writing the same keys again changes nothing, or replaces
rows with the same values. Rows go in as one columnar insert per table (an Arrow table), never
row by row.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from promptcycle.errors import StoreError
from promptcycle.store.records import (
    RESPONSE_COLUMNS,
    RESULT_COLUMNS,
    RUN_STATUSES,
    PromptVersionRecord,
    ResponseRecord,
    ResultRecord,
    RunRecord,
    dump_json,
    from_db_time,
    keys_table,
    responses_table,
    results_table,
    splits_table,
    to_db_time,
    utc_now,
)
from promptcycle.store.schema import MIGRATIONS, apply_migrations

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MetricsStore"]

# Back-off while another process holds the file: 10 ms doubling to 0.2 s, each sleep jittered. A
# failed attempt costs ~10 ms and a write holds the file for ~50-200 ms, so a short cap wastes little
# and keeps a waiting process from sleeping through the gaps between another one's writes.
_FIRST_WAIT_S = 0.01
_MAX_WAIT_S = 0.2

_process_locks: dict[str, threading.RLock] = {}
_process_locks_guard = threading.Lock()


def _process_lock(key: str) -> threading.RLock:
    with _process_locks_guard:
        return _process_locks.setdefault(key, threading.RLock())


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    text = str(exc)
    # Another process holds the file, or this process has it open with another configuration.
    return "Could not set lock" in text or "Conflicting lock" in text or "different configuration" in text


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _rows(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _run_from_row(row: dict[str, Any]) -> RunRecord:
    row = dict(row)
    row["models"] = list(row["models"] or [])
    for name in ("started_at", "finished_at"):
        row[name] = from_db_time(row[name])
    return RunRecord(**row)


_RUN_COLUMNS = ("run_id", "pipeline", "kind", "fingerprint", "status", "prompt_hash", "dataset_hash", "models",
                "repeats", "case_limit", "simulated", "config_json", "flow_run_id", "started_at", "finished_at",
                "summary_json")
_PROMPT_COLUMNS = ("prompt_hash", "pipeline", "system", "template", "variables", "parent_hash", "strategy",
                   "rationale", "scope", "created_at")


class MetricsStore:
    """The DuckDB metrics store at `path`: runs, the paid-call ledger, results, prompt versions,
    data-quality results and dataset splits.

    Opening a store creates the file (and its parent directory) when missing and applies any
    pending schema migrations. Instances hold no connection, so they are cheap, picklable and safe
    to share between threads and to create in several processes at once.
    """

    def __init__(self, path: str | Path, *, lock_timeout_s: float = 120.0):
        if str(path) == ":memory:":
            raise StoreError("the metrics store needs a file: ':memory:' would vanish after every call")
        self.path = Path(path).expanduser().resolve()
        self.lock_timeout_s = float(lock_timeout_s)
        self.lock_conflicts = 0  # diagnostics: how many times a connection found the file locked
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of the metrics store {self.path}: {exc}") from exc
        if self.path.is_dir():
            raise StoreError(f"the metrics store path {self.path} is a directory; give a file path "
                             f"such as {self.path / 'metrics.duckdb'}")
        if not self.path.exists():
            self._create()
        self.migrate()

    def __repr__(self) -> str:
        return f"MetricsStore({str(self.path)!r})"

    def _create(self) -> None:
        """Create the file whole: build it under a temporary name and link it into place.

        A process that opens a database file while another is still writing its first blocks can
        find it "not a valid DuckDB database"; a file that appears complete, atomically, cannot
        be caught half-made. If another process links its file first, ours is dropped.
        """
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with duckdb.connect(str(temporary)) as con:
                apply_migrations(con, MIGRATIONS, source=f"the metrics store {self.path}")
            try:
                os.link(temporary, self.path)
            except FileExistsError:
                pass
            except OSError:
                # A filesystem without hard links: a rename is atomic too, but would replace a file
                # another process linked in meanwhile, so only when there is still none.
                if not self.path.exists():
                    os.replace(temporary, self.path)
        except (OSError, duckdb.Error) as exc:
            raise StoreError(f"cannot create the metrics store {self.path}: {exc}") from exc
        finally:
            for leftover in (temporary, temporary.with_name(temporary.name + ".wal")):
                leftover.unlink(missing_ok=True)

    # -- connections ---------------------------------------------------------------------------

    def _open(self, deadline: float) -> duckdb.DuckDBPyConnection:
        wait = _FIRST_WAIT_S
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.Error as exc:
                if not _is_lock_conflict(exc):
                    if "not a valid DuckDB database" in str(exc) and _is_empty(self.path):
                        raise StoreError(f"{self.path} is an empty file, not a DuckDB database; delete it and "
                                         f"the store will create the database there") from exc
                    if "not a valid DuckDB database" in str(exc):
                        raise StoreError(f"{self.path} exists but is not a DuckDB database; point the store "
                                         f"at a new file or an existing metrics store") from exc
                    raise StoreError(f"cannot open the metrics store {self.path}: {exc}") from exc
                self.lock_conflicts += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    holder = ("this process, through a connection with another configuration"
                              if "different configuration" in str(exc) else "another process")
                    raise StoreError(
                        f"the metrics store {self.path} stayed locked by {holder} for "
                        f"{self.lock_timeout_s:g} s (DuckDB lets one process open a file at a time): {exc}. "
                        f"Wait for it to finish, or raise the store's lock timeout") from exc
                time.sleep(min(remaining, wait * random.uniform(0.5, 1.0)))
                wait = min(wait * 2, _MAX_WAIT_S)

    @contextmanager
    def _connect(self, action: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection; DuckDB errors come out as `StoreError` naming `action`."""
        deadline = time.monotonic() + self.lock_timeout_s
        lock = _process_lock(str(self.path))
        if not lock.acquire(timeout=max(self.lock_timeout_s, 0.0)):
            raise StoreError(f"the metrics store {self.path} stayed busy in this process for "
                             f"{self.lock_timeout_s:g} s")
        try:
            con = self._open(deadline)
            try:
                yield con
            except duckdb.Error as exc:
                raise StoreError(f"metrics store {self.path}: could not {action}: {exc}") from exc
            finally:
                try:
                    con.close()
                except duckdb.Error as exc:  # closing checkpoints the file: a full disk shows here
                    raise StoreError(f"metrics store {self.path}: could not {action}: {exc}") from exc
        finally:
            lock.release()

    @contextmanager
    def _transaction(self, action: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection inside one transaction: committed on success, rolled back on any error."""
        with self._connect(action) as con:
            con.begin()
            try:
                yield con
            except BaseException:
                con.rollback()
                raise
            con.commit()

    # -- schema --------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Apply pending schema migrations; return the schema version. Idempotent and safe to call
        from several processes at once (each applies what is still missing under the file lock)."""
        with self._connect("migrate the schema") as con:
            return apply_migrations(con, MIGRATIONS, source=f"the metrics store {self.path}")

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
        """(case_id, repeat) pairs of `model` in `run_id` that ended with a score or a recorded
        terminal error — the work a resumed run must not redo."""
        query = ("SELECT case_id, repeat FROM results WHERE run_id = ? AND model = ? "
                 "AND (overall IS NOT NULL OR error IS NOT NULL)")
        with self._connect(f"read completed results of run {run_id}") as con:
            if case_ids is not None:
                ids = list(dict.fromkeys(case_ids))
                if not ids:
                    return set()
                con.register("wanted", keys_table("case_id", ids))
                query += " AND case_id IN (SELECT case_id FROM wanted)"
            return {(case_id, repeat) for case_id, repeat in con.execute(query, [run_id, model]).fetchall()}

    def results_frame(self, run_id: str, scorers: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per (model, case_id, repeat) of the run, with the response's `output` and one
        `score_<name>` column per scorer (those seen in the run, plus `scorers` if given; NaN where
        a row has no such score). Ordered by model, case_id, repeat; times are naive UTC."""
        with self._connect(f"read the results of run {run_id}") as con:
            names = [k for (k,) in con.execute(
                "SELECT DISTINCT unnest(map_keys(scores)) AS k FROM results WHERE run_id = ? ORDER BY k",
                [run_id]).fetchall()]
            names += [n for n in (scorers or ()) if n not in names]
            score_columns = "".join(
                f", r.scores[{_quote_literal(n)}] AS {_quote_identifier('score_' + n)}" for n in names)
            return con.execute(
                "SELECT r.run_id, r.model, r.case_id, r.repeat, r.spectrum, r.split, r.prompt_hash, r.call_key, "
                f"r.overall{score_columns}, r.latency_ms, r.input_tokens, r.output_tokens, r.cost_usd, "
                "r.attempts, r.error, r.error_kind, r.simulated, r.explanation, r.created_at, p.output "
                "FROM results r LEFT JOIN responses p ON p.call_key = r.call_key "
                "WHERE r.run_id = ? ORDER BY r.model, r.case_id, r.repeat", [run_id]).df()

    # -- prompt versions -----------------------------------------------------------------------

    def write_prompt_version(self, version: PromptVersionRecord) -> bool:
        """Record a prompt version once; True if new. Versions are immutable: writing a known hash
        again keeps the first record, and a known hash with different text is a `StoreError`."""
        values = [getattr(version, c) for c in _PROMPT_COLUMNS]
        values[_PROMPT_COLUMNS.index("variables")] = list(version.variables)
        values[_PROMPT_COLUMNS.index("created_at")] = to_db_time(version.created_at or utc_now())
        with self._transaction(f"write prompt version {version.prompt_hash}") as con:
            found = con.execute("SELECT system, template FROM prompt_versions WHERE prompt_hash = ?",
                                [version.prompt_hash]).fetchone()
            if found is not None:
                if tuple(found) != (version.system, version.template):
                    raise StoreError(f"prompt version {version.prompt_hash} is already recorded with different "
                                     f"text; prompt versions are immutable and keyed by their content hash")
                return False
            placeholders = ", ".join("?" for _ in _PROMPT_COLUMNS)
            con.execute(f"INSERT INTO prompt_versions ({', '.join(_PROMPT_COLUMNS)}) VALUES ({placeholders})",
                        values)
        return True

    def get_prompt_version(self, prompt_hash: str) -> PromptVersionRecord | None:
        with self._connect(f"read prompt version {prompt_hash}") as con:
            rows = _rows(con.execute(f"SELECT {', '.join(_PROMPT_COLUMNS)} FROM prompt_versions "
                                     "WHERE prompt_hash = ?", [prompt_hash]))
        if not rows:
            return None
        row = rows[0]
        row["variables"] = list(row["variables"] or [])
        row["created_at"] = from_db_time(row["created_at"])
        return PromptVersionRecord(**row)

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
