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
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from promptcycle.errors import StoreError, StorePathError
from promptcycle.store.records import (
    CANARY_STATUSES,
    DECISION_KINDS,
    DEPLOYMENT_KINDS,
    DEPLOYMENT_STATUSES,
    LABELS,
    STAGES,
    RUN_STATUSES,
    CanaryRecord,
    DecisionRecord,
    DeploymentRecord,
    LabelEvent,
    ProductionResult,
    PromptVersionRecord,
    ResponseRecord,
    ResultRecord,
    RunRecord,
    dump_json,
    from_db_time,
    to_db_time,
    utc_now,
)
from promptcycle.store.arrow import (
    PRODUCTION_COLUMNS,
    RESPONSE_COLUMNS,
    RESULT_COLUMNS,
    keys_table,
    production_results_table,
    responses_table,
    results_table,
    splits_table,
)
from promptcycle.store.alerts import AlertsTables
from promptcycle.store.incidents import IncidentsTables
from promptcycle.store.monitoring import MonitoringTables
from promptcycle.store.learning import LearningTables
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


def _prompt_from_row(row: dict[str, Any]) -> PromptVersionRecord:
    row = dict(row)
    row["variables"] = list(row["variables"] or [])
    row["created_at"] = from_db_time(row["created_at"])
    return PromptVersionRecord(**row)


def _load_json(text: str | None) -> Any:
    return json.loads(text) if text else None


def _dump_evidence(value: dict[str, Any] | None, what: str) -> str | None:
    try:
        return dump_json(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} is not JSON: {exc}") from exc


def _event_from_row(row: dict[str, Any]) -> LabelEvent:
    row = dict(row)
    row["evidence"] = _load_json(row.pop("evidence_json"))
    row["created_at"] = from_db_time(row["created_at"])
    return LabelEvent(**row)


def _decision_from_row(row: dict[str, Any]) -> DecisionRecord:
    row = dict(row)
    row["evidence"] = _load_json(row.pop("evidence_json")) or {}
    row["created_at"] = from_db_time(row["created_at"])
    return DecisionRecord(**row)


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


def _production_from_row(row: dict[str, Any]) -> ProductionResult:
    row = dict(row)
    row["metadata"] = _load_json(row.pop("metadata_json"))
    row["created_at"] = from_db_time(row["created_at"])
    return ProductionResult(**row)


def _require_text(value: str, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, not {value!r}")


_DEPLOYMENT_COLUMNS = ("deployment_id", "seq", "pipeline", "scope", "kind", "status", "from_hash", "to_hash",
                       "forced", "actor", "reason", "targets_json", "evidence_json", "flow_run_id", "created_at",
                       "finished_at")
_CANARY_COLUMNS = ("canary_id", "pipeline", "scope", "deployment_id", "control_hash", "treatment_hash", "status",
                   "step", "split_pct", "step_start_treatment", "looks", "settings_json", "decision_json", "reason",
                   "actor", "started_at", "updated_at", "finished_at")
_CANARY_UPDATABLE = ("status", "step", "split_pct", "step_start_treatment", "looks", "decision", "reason")
_RUN_COLUMNS = ("run_id", "pipeline", "kind", "fingerprint", "status", "prompt_hash", "dataset_hash", "models",
                "repeats", "case_limit", "simulated", "config_json", "flow_run_id", "started_at", "finished_at",
                "summary_json")
_PROMPT_COLUMNS = ("prompt_hash", "pipeline", "system", "template", "variables", "parent_hash", "strategy",
                   "rationale", "scope", "created_at")
_PROMPT_SELECT = f"SELECT {', '.join(_PROMPT_COLUMNS)} FROM prompt_versions"
_LABEL_COLUMNS = ("pipeline", "label", "scope", "prompt_hash", "updated_at", "updated_by")
_EVENT_COLUMNS = ("event_id", "pipeline", "label", "scope", "from_hash", "to_hash", "actor", "reason",
                  "evidence_json", "forced", "created_at")
_DECISION_COLUMNS = ("decision_id", "run_id", "pipeline", "kind", "prompt_hash", "baseline_hash", "decision",
                     "evidence_json", "created_at")


def _results_frame(con: duckdb.DuckDBPyConnection, where: str, params: list[Any],
                   scorers: Sequence[str] | None) -> pd.DataFrame:
    """Results of the rows matching `where` (over `results r`) with their output and score columns."""
    names = [k for (k,) in con.execute(
        f"SELECT DISTINCT unnest(map_keys(r.scores)) AS k FROM results r WHERE {where} ORDER BY k",
        params).fetchall()]
    names += [n for n in (scorers or ()) if n not in names]
    score_columns = "".join(f", r.scores[{_quote_literal(n)}] AS {_quote_identifier('score_' + n)}" for n in names)
    return con.execute(
        "SELECT r.run_id, r.model, r.case_id, r.repeat, r.spectrum, r.split, r.prompt_hash, r.call_key, "
        f"r.overall{score_columns}, r.latency_ms, r.input_tokens, r.output_tokens, r.cost_usd, "
        "r.attempts, r.wait_ms, r.error, r.error_kind, r.simulated, r.explanation, r.created_at, r.finish_reason, "
        "r.tokens_source, p.output "
        "FROM results r LEFT JOIN responses p ON p.call_key = r.call_key "
        f"WHERE {where} ORDER BY r.run_id, r.model, r.case_id, r.repeat", params).df()


class MetricsStore(AlertsTables, LearningTables, MonitoringTables, IncidentsTables):
    """The DuckDB metrics store at `path`: runs, the paid-call ledger, results, prompt versions and
    their labels, decisions with their evidence, diagnoses, data-quality results and dataset splits.

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
            raise StorePathError(f"cannot create the directory of the metrics store {self.path}: {exc}") from exc
        if self.path.is_dir():
            raise StorePathError(f"the metrics store path {self.path} is a directory; give a file path "
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
            raise StorePathError(f"cannot create the metrics store {self.path}: {exc}") from exc
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
                        raise StorePathError(f"{self.path} is an empty file, not a DuckDB database; delete it and "
                                         f"the store will create the database there") from exc
                    if "not a valid DuckDB database" in str(exc):
                        raise StorePathError(f"{self.path} exists but is not a DuckDB database; point the store "
                                         f"at a new file or an existing metrics store") from exc
                    raise StorePathError(f"cannot open the metrics store {self.path}: {exc}") from exc
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

    def failed_calls(self, run_id: str, model: str) -> dict[tuple[str, int], tuple[int, float]]:
        """(case_id, repeat) -> (attempts, wait_ms) of the rows of `model` in `run_id` that ended in a
        terminal error: a re-run retries them and adds what they already sent to the new row."""
        with self._connect(f"read failed calls of run {run_id}") as con:
            rows = con.execute("SELECT case_id, repeat, coalesce(attempts, 0), coalesce(wait_ms, 0) FROM results "
                               "WHERE run_id = ? AND model = ? AND error IS NOT NULL", [run_id, model]).fetchall()
        return {(case_id, repeat): (int(a), float(w)) for case_id, repeat, a, w in rows}

    def run_progress(self, run_id: str) -> dict[str, int]:
        """How much of a run is recorded: `scored` rows and `failed` rows (terminal errors)."""
        with self._connect(f"count the results of run {run_id}") as con:
            scored, failed = con.execute(
                "SELECT count(*) FILTER (WHERE error IS NULL), count(*) FILTER (WHERE error IS NOT NULL) "
                "FROM results WHERE run_id = ?", [run_id]).fetchone()
        return {"scored": int(scored), "failed": int(failed)}

    def results_frame(self, run_id: str, scorers: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per (model, case_id, repeat) of the run, with the response's `output` and one
        `score_<name>` column per scorer (those seen in the run, plus `scorers` if given; NaN where
        a row has no such score). Ordered by model, case_id, repeat; times are naive UTC."""
        with self._connect(f"read the results of run {run_id}") as con:
            return _results_frame(con, "r.run_id = ?", [run_id], scorers)

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
            rows = _rows(con.execute(f"{_PROMPT_SELECT} WHERE prompt_hash = ?", [prompt_hash]))
        return _prompt_from_row(rows[0]) if rows else None

    def prompt_versions(self, pipeline: str) -> list[PromptVersionRecord]:
        """Every recorded version of the pipeline's prompt, oldest first."""
        with self._connect(f"read the prompt versions of {pipeline}") as con:
            rows = _rows(con.execute(f"{_PROMPT_SELECT} WHERE pipeline = ? ORDER BY created_at, prompt_hash",
                                     [pipeline]))
        return [_prompt_from_row(r) for r in rows]

    def lineage(self, prompt_hash: str) -> list[PromptVersionRecord]:
        """The version, its parent, its grandparent … up to the root (a version without a recorded
        parent). Empty when `prompt_hash` is unknown. A parent chain that loops back on itself stops
        before the repeat instead of walking forever."""
        chain: list[PromptVersionRecord] = []
        seen: set[str] = set()
        with self._connect(f"read the lineage of prompt version {prompt_hash}") as con:
            current: str | None = prompt_hash
            while current is not None and current not in seen:
                seen.add(current)
                rows = _rows(con.execute(f"{_PROMPT_SELECT} WHERE prompt_hash = ?", [current]))
                if not rows:
                    break
                chain.append(_prompt_from_row(rows[0]))
                current = chain[-1].parent_hash
        return chain

    def children(self, prompt_hash: str) -> list[PromptVersionRecord]:
        """The versions derived directly from `prompt_hash`, oldest first."""
        with self._connect(f"read the children of prompt version {prompt_hash}") as con:
            rows = _rows(con.execute(f"{_PROMPT_SELECT} WHERE parent_hash = ? ORDER BY created_at, prompt_hash",
                                     [prompt_hash]))
        return [_prompt_from_row(r) for r in rows]

    # -- labels --------------------------------------------------------------------------------

    def move_label(self, pipeline: str, label: str, to_hash: str, *, scope: str | None = "", actor: str,
                   reason: str, evidence: dict[str, Any] | None = None, forced: bool = False) -> LabelEvent | None:
        """Point `label` ('production', 'candidate' or 'previous') of `pipeline` at prompt version
        `to_hash` and append the move to the label history, in one transaction.

        `scope` is '' (or None) for every model, else the model the label applies to. `actor` says
        who or which flow run moved it, `reason` why; `evidence` (JSON-able) and `forced` are kept
        with the event. Returns the event, or None — writing nothing — when the label already points
        at `to_hash`. `to_hash` must be a recorded version of this pipeline, else `StoreError`.
        """
        if label not in LABELS:
            raise ValueError(f"a prompt label is one of {', '.join(LABELS)}, not {label!r}")
        _require_text(to_hash, "the prompt version to move a label to")
        _require_text(actor, "the actor of a label move (who or which flow run moved it)")
        _require_text(reason, "the reason for a label move")
        scope = scope or ""
        where = f"{label!r} of pipeline {pipeline!r}" + (f" for model {scope!r}" if scope else "")
        evidence_json = _dump_evidence(evidence, f"the evidence for moving {where}")
        with self._transaction(f"move label {where} to {to_hash}") as con:
            return self._move_label_in(con, pipeline, label, to_hash, scope=scope, actor=actor, reason=reason,
                                       evidence=evidence, evidence_json=evidence_json, forced=forced)

    def _move_label_in(self, con: duckdb.DuckDBPyConnection, pipeline: str, label: str, to_hash: str, *, scope: str,
                       actor: str, reason: str, evidence: dict[str, Any] | None, evidence_json: str | None,
                       forced: bool) -> LabelEvent | None:
        """`move_label`'s work inside the caller's transaction."""
        where = f"{label!r} of pipeline {pipeline!r}" + (f" for model {scope!r}" if scope else "")
        now = utc_now()
        found = con.execute("SELECT pipeline FROM prompt_versions WHERE prompt_hash = ?", [to_hash]).fetchone()
        if found is None:
            raise StoreError(f"cannot move label {where} to prompt version {to_hash!r}: no such version in "
                             f"{self.path}; record it with write_prompt_version first")
        if found[0] != pipeline:
            raise StoreError(f"cannot move label {where} to prompt version {to_hash!r}: that version "
                             f"belongs to pipeline {found[0]!r}")
        current = con.execute("SELECT prompt_hash FROM prompt_labels WHERE pipeline = ? AND label = ? "
                              "AND scope = ?", [pipeline, label, scope]).fetchone()
        from_hash = current[0] if current else None
        if from_hash == to_hash:
            return None
        con.execute(f"INSERT INTO prompt_labels ({', '.join(_LABEL_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (pipeline, label, scope) DO UPDATE SET prompt_hash = excluded.prompt_hash, "
                    "updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                    [pipeline, label, scope, to_hash, to_db_time(now), actor])
        event = LabelEvent(event_id=uuid.uuid4().hex, pipeline=pipeline, label=label, scope=scope,
                           from_hash=from_hash, to_hash=to_hash, actor=actor, reason=reason, evidence=evidence,
                           forced=bool(forced), created_at=now)
        # The file is held exclusively for the transaction, so max + 1 cannot be taken twice.
        con.execute(f"INSERT INTO label_events (seq, {', '.join(_EVENT_COLUMNS)}) "
                    "SELECT coalesce(max(seq), 0) + 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM label_events",
                    [event.event_id, pipeline, label, scope, from_hash, to_hash, actor, reason, evidence_json,
                     event.forced, to_db_time(now)])
        return event

    def move_labels(self, pipeline: str, moves: Sequence[tuple[str, str]], *, scope: str | None = "", actor: str,
                    reason: str, evidence: dict[str, Any] | None = None,
                    forced: bool = False) -> list[LabelEvent]:
        """Several `move_label`s of one pipeline — (label, to_hash) pairs, applied in order — in ONE
        transaction: all move or none does. Returns the events of the labels that moved."""
        for label, to_hash in moves:
            if label not in LABELS:
                raise ValueError(f"a prompt label is one of {', '.join(LABELS)}, not {label!r}")
            _require_text(to_hash, "the prompt version to move a label to")
        _require_text(actor, "the actor of a label move (who or which flow run moved it)")
        _require_text(reason, "the reason for a label move")
        evidence_json = _dump_evidence(evidence, f"the evidence for moving labels of {pipeline!r}")
        events = []
        with self._transaction(f"move {len(moves)} labels of {pipeline}") as con:
            for label, to_hash in moves:
                event = self._move_label_in(con, pipeline, label, to_hash, scope=scope or "", actor=actor,
                                            reason=reason, evidence=evidence, evidence_json=evidence_json,
                                            forced=forced)
                if event is not None:
                    events.append(event)
        return events

    def get_label(self, pipeline: str, label: str, scope: str | None = "") -> str | None:
        """The prompt hash `label` points at for exactly this scope ('' = every model), or None.
        A model's scope does not fall back to the every-model label; ask for '' for that."""
        with self._connect(f"read label {label} of {pipeline}") as con:
            found = con.execute("SELECT prompt_hash FROM prompt_labels WHERE pipeline = ? AND label = ? "
                                "AND scope = ?", [pipeline, label, scope or ""]).fetchone()
        return found[0] if found else None

    def labels(self, pipeline: str | None = None) -> list[dict[str, Any]]:
        """Where every label points (of one pipeline, or all): dicts with pipeline, label, scope,
        prompt_hash, updated_at and updated_by, ordered by pipeline, label, scope."""
        where, params = ("WHERE pipeline = ?", [pipeline]) if pipeline is not None else ("", [])
        with self._connect("read the prompt labels") as con:
            rows = _rows(con.execute(f"SELECT {', '.join(_LABEL_COLUMNS)} FROM prompt_labels {where} "
                                     "ORDER BY pipeline, label, scope", params))
        for row in rows:
            row["updated_at"] = from_db_time(row["updated_at"])
        return rows

    def label_history(self, pipeline: str, label: str | None = None, limit: int | None = 500, *,
                      scope: str | None = None) -> list[LabelEvent]:
        """The pipeline's label moves, newest first: of one `label` (None: all) and one `scope`
        (None: all; '' the every-model labels), at most `limit` of them (None: all)."""
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative integer or None, not {limit!r}")
        where, params = "pipeline = ?", [pipeline]
        if label is not None:
            where, params = where + " AND label = ?", [*params, label]
        if scope is not None:
            where, params = where + " AND scope = ?", [*params, scope]
        limit_sql = "" if limit is None else f" LIMIT {int(limit)}"
        with self._connect(f"read the label history of {pipeline}") as con:
            rows = _rows(con.execute(f"SELECT {', '.join(_EVENT_COLUMNS)} FROM label_events WHERE {where} "
                                     f"ORDER BY seq DESC{limit_sql}", params))
        return [_event_from_row(r) for r in rows]

    # -- decisions and diagnoses ---------------------------------------------------------------

    def write_decision(self, decision: DecisionRecord) -> DecisionRecord:
        """Record a decision with its evidence; return it as stored (with its id and time).

        Keyed by (run_id, prompt_hash, kind): a resumed run deciding again replaces the earlier
        decision and keeps its `decision_id`, so there is one decision per candidate and step.
        """
        if decision.kind not in DECISION_KINDS:
            raise ValueError(f"a decision kind is one of {', '.join(DECISION_KINDS)}, not {decision.kind!r}")
        for name in ("run_id", "pipeline", "prompt_hash", "decision"):
            _require_text(getattr(decision, name), f"a decision's {name}")
        what = f"the {decision.kind} decision on {decision.prompt_hash} in run {decision.run_id}"
        evidence_json = _dump_evidence(decision.evidence or {}, f"the evidence of {what}")
        created_at = to_db_time(decision.created_at or utc_now())
        with self._transaction(f"write {what}") as con:
            found = con.execute("SELECT decision_id FROM decisions WHERE run_id = ? AND prompt_hash = ? AND kind = ?",
                                [decision.run_id, decision.prompt_hash, decision.kind]).fetchone()
            if found is not None:
                decision_id = found[0]
                con.execute("UPDATE decisions SET pipeline = ?, baseline_hash = ?, decision = ?, evidence_json = ?, "
                            "created_at = ? WHERE decision_id = ?",
                            [decision.pipeline, decision.baseline_hash, decision.decision, evidence_json,
                             created_at, decision_id])
            else:
                decision_id = decision.decision_id or uuid.uuid4().hex
                con.execute(f"INSERT INTO decisions ({', '.join(_DECISION_COLUMNS)}) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [decision_id, decision.run_id, decision.pipeline, decision.kind, decision.prompt_hash,
                             decision.baseline_hash, decision.decision, evidence_json, created_at])
        return replace(decision, decision_id=decision_id, created_at=from_db_time(created_at))

    def decisions(self, run_id: str | None = None, pipeline: str | None = None,
                  kind: str | None = None) -> list[DecisionRecord]:
        """Recorded decisions matching every filter given, oldest first."""
        filters = [(c, v) for c, v in (("run_id", run_id), ("pipeline", pipeline), ("kind", kind)) if v is not None]
        where = ("WHERE " + " AND ".join(f"{c} = ?" for c, _ in filters)) if filters else ""
        with self._connect("read decisions") as con:
            rows = _rows(con.execute(f"SELECT {', '.join(_DECISION_COLUMNS)} FROM decisions {where} "
                                     "ORDER BY created_at, decision_id", [v for _, v in filters]))
        return [_decision_from_row(r) for r in rows]

    def write_diagnosis(self, run_id: str, baseline_run_id: str, diagnosis: dict[str, Any]) -> None:
        """Record what optimization run `run_id` found diagnosing baseline run `baseline_run_id`
        (where and how the prompt fails). Writing it again replaces it."""
        diagnosis_json = _dump_evidence(diagnosis, f"the diagnosis of run {baseline_run_id}")
        with self._transaction(f"write the diagnosis of run {baseline_run_id} for run {run_id}") as con:
            con.execute("INSERT OR REPLACE INTO diagnoses (run_id, baseline_run_id, diagnosis_json, created_at) "
                        "VALUES (?, ?, ?, ?)", [run_id, baseline_run_id, diagnosis_json, to_db_time(utc_now())])

    def get_diagnosis(self, run_id: str, baseline_run_id: str | None = None) -> dict[str, Any] | None:
        """The diagnosis recorded by optimization run `run_id` (of `baseline_run_id`, or the newest
        when None), parsed; None when there is none."""
        where, params = "run_id = ?", [run_id]
        if baseline_run_id is not None:
            where, params = where + " AND baseline_run_id = ?", [*params, baseline_run_id]
        with self._connect(f"read the diagnosis of run {run_id}") as con:
            found = con.execute(f"SELECT diagnosis_json FROM diagnoses WHERE {where} "
                                "ORDER BY created_at DESC, baseline_run_id DESC LIMIT 1", params).fetchone()
        return _load_json(found[0]) if found else None

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

    # -- production results --------------------------------------------------------------------

    def write_production_results(self, results: Sequence[ProductionResult]) -> int:
        """Record production outcomes in one transaction; return how many were new. A request id the
        pipeline already recorded keeps its first outcome (re-reporting changes nothing)."""
        if not results:
            return 0
        for r in results:
            if r.score is not None and not 0.0 <= float(r.score) <= 1.0:
                raise ValueError(f"request {r.request_id!r}: score {r.score!r} is outside [0, 1]")
        try:
            table = production_results_table(list(results), utc_now())
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise StoreError(f"production results for {self.path} have a value of the wrong type: {exc}") from exc
        with self._transaction(f"write {len(results)} production results") as con:
            con.register("new_production", table)
            before = con.execute("SELECT count(*) FROM production_results").fetchone()[0]
            con.execute(f"INSERT INTO production_results ({', '.join(PRODUCTION_COLUMNS)}) "
                        f"SELECT {', '.join(PRODUCTION_COLUMNS)} FROM new_production ON CONFLICT DO NOTHING")
            after = con.execute("SELECT count(*) FROM production_results").fetchone()[0]
        return int(after - before)

    def production_results(self, pipeline: str, *, prompt_hashes: Sequence[str] | None = None,
                           scope: str | None = "", since: Any = None, until: Any = None,
                           canary_id: str | None = None) -> list[ProductionResult]:
        """The pipeline's production outcomes in arrival order (created_at, request_id).

        Filters: served by one of `prompt_hashes`; of `scope` (None: any); and either tagged with
        `canary_id` or, untagged, reported between `since` and `until` (UTC datetimes; None: open).
        """
        where, params = ["pipeline = ?"], [pipeline]
        if scope is not None:
            where.append("scope = ?")
            params.append(scope)
        if prompt_hashes is not None:
            hashes = list(dict.fromkeys(prompt_hashes))
            if not hashes:
                return []
            where.append(f"prompt_hash IN ({', '.join('?' for _ in hashes)})")
            params += hashes
        window, window_params = [], []
        if since is not None:
            window.append("created_at >= ?")
            window_params.append(to_db_time(since))
        if until is not None:
            window.append("created_at <= ?")
            window_params.append(to_db_time(until))
        window_sql = " AND ".join(window) or "TRUE"
        if canary_id is not None:
            where.append(f"(canary_id = ? OR (canary_id IS NULL AND {window_sql}))")
            params += [canary_id, *window_params]
        else:
            where.append(window_sql)
            params += window_params
        with self._connect(f"read the production results of {pipeline}") as con:
            rows = _rows(con.execute(f"SELECT {', '.join(PRODUCTION_COLUMNS)} FROM production_results "
                                     f"WHERE {' AND '.join(where)} ORDER BY created_at, request_id", params))
        return [_production_from_row(r) for r in rows]
