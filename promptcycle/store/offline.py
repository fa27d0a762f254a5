"""DuckDB connections that never reach the network on their own.

DuckDB installs and loads "known" extensions by itself when a file or query needs one: handed a
SQLite file as a database it downloads `sqlite_scanner` from extensions.duckdb.org. Every
connection promptcycle opens goes through `connect`, with both switched off, and a file that is not
a DuckDB database is named for what it is (`foreign_format`) instead.

All connections of a process to one file must share one configuration (DuckDB refuses a second
connection with another one), so there is exactly one: `OFFLINE_CONFIG`. And they must not open and
close at the same time from several threads: DuckDB 2.0's per-process database cache then races (a
connection fails with "Unique file handle conflict", or loses the Arrow tables registered on it), so
every connection of this process to a file is held under `process_lock(path)`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb

__all__ = ["OFFLINE_CONFIG", "UNKNOWN_FORMAT", "connect", "foreign_format", "process_lock"]

OFFLINE_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
UNKNOWN_FORMAT = "a file of another format"

_DUCKDB_MAGIC = b"DUCK"  # bytes 8-12 of every DuckDB database file
_KNOWN_FORMATS = ((b"SQLite format 3\x00", "a SQLite database"), (b"PAR1", "a Parquet file"),
                  (b"PK\x03\x04", "a ZIP archive (or an Excel workbook)"))


def connect(path: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-write connection to the DuckDB file `path`, with extension auto-install/auto-load off."""
    return duckdb.connect(str(path), config=dict(OFFLINE_CONFIG))


_process_locks: dict[str, threading.RLock] = {}
_process_locks_guard = threading.Lock()


def process_lock(path: str | Path) -> threading.RLock:
    """The lock that serialises this process's connections to the (resolved) file `path`."""
    with _process_locks_guard:
        return _process_locks.setdefault(str(path), threading.RLock())


def foreign_format(path: str | Path) -> str | None:
    """What the non-empty file `path` is when it is not a DuckDB database ("a SQLite database", or
    `UNKNOWN_FORMAT` when unrecognised); None for a DuckDB file, an empty or unreadable one."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if not head or head[8:12] == _DUCKDB_MAGIC:
        return None
    for magic, name in _KNOWN_FORMATS:
        if head.startswith(magic):
            return name
    return UNKNOWN_FORMAT
