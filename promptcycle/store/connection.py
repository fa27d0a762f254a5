"""The metrics store's connection: opening the DuckDB file with lock retries, creating it whole, migrations.

While one process has a DuckDB file open for writing, no other process can open it at all. So the
store never keeps a connection: each call opens the file, does its work in one transaction and
closes it. A call that finds the file locked by another process (a scheduled run, a notebook)
waits with exponential back-off and jitter, and raises `StoreError` only when the lock has not
come free within `lock_timeout_s`. Inside one process a lock per file serialises our own
connections, so threads never collide on it.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from promptcycle.errors import StoreError, StorePathError
from promptcycle.store.offline import UNKNOWN_FORMAT, connect, foreign_format, process_lock
from promptcycle.store.records import dump_json
from promptcycle.store.schema import MIGRATIONS, apply_migrations

__all__ = ["StoreConnection"]

# Back-off while another process holds the file: 10 ms doubling to 0.2 s, each sleep jittered. A
# failed attempt costs ~10 ms and a write holds the file for ~50-200 ms, so a short cap wastes little
# and keeps a waiting process from sleeping through the gaps between another one's writes.
_FIRST_WAIT_S = 0.01
_MAX_WAIT_S = 0.2



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


def _load_json(text: str | None) -> Any:
    return json.loads(text) if text else None


def _dump_evidence(value: dict[str, Any] | None, what: str) -> str | None:
    try:
        return dump_json(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} is not JSON: {exc}") from exc


def _require_text(value: str, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, not {value!r}")


class StoreConnection:
    """The DuckDB file at `path`, created (with its parent directory) when missing and migrated.

    Every table group (store/runs.py, prompts.py, deployments.py, production.py) is a subclass using
    `_connect` and `_transaction`; `MetricsStore` composes them.
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
            with connect(temporary) as con:
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
                return connect(self.path)
            except duckdb.Error as exc:
                if not _is_lock_conflict(exc):
                    if "not a valid DuckDB database" in str(exc) and _is_empty(self.path):
                        raise StorePathError(f"{self.path} is an empty file, not a DuckDB database; delete it "
                                             f"and the store will create the database there") from exc
                    kind = foreign_format(self.path)
                    if kind is not None or "not a valid DuckDB database" in str(exc):
                        what = f" (it is {kind})" if kind and kind != UNKNOWN_FORMAT else ""
                        raise StorePathError(f"{self.path} exists but is not a DuckDB database{what}; point --store "
                                             f"(or `store:` in pipelines.yaml) at a new file or an existing metrics "
                                             f"store") from exc
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
        lock = process_lock(self.path)
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
    def held_open(self) -> Iterator[None]:
        """Keep the file open for the calls made inside, in this thread.

        Opening the file (and checkpointing it when the last connection closes) costs tens of
        milliseconds; while one connection stays open, each call's own connection shares the open
        database and costs microseconds. Other processes cannot open the file meanwhile, and other
        threads of this process wait: hold it for a burst of writes, not for long.
        """
        with self._connect("hold the store open"):
            yield

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
