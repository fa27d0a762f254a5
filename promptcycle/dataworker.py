"""The data worker: one process that does the pipeline's DuckDB and Great Expectations work.

Why a separate process: DuckDB, pyarrow, pandas and Great Expectations together cost the pipeline
process ~300 MB, and their CPU competes with the event loop that drives the model calls. The
pipeline process sends a function and plain arguments to the worker and gets plain results back.

The worker is `python -m promptcycle.dataworker`, started on first use and spoken to over its
stdin/stdout with length-prefixed pickles (one call at a time). Unlike a multiprocessing pool it
never re-imports the caller's main module, so scripts that call flows need no `__main__` guard.
It exits when its stdin closes — that is, when the pipeline process ends, however it ends — and,
should the stdin stay open (another process holding the pipe), within a second of its parent's
death once no call is running (a call in progress finishes first, so received answers are written).
The Great Expectations import that `warm_up()` asks for runs in a thread of the worker, so the
worker answers other calls (DuckDB reads and writes) while it imports.

`PROMPTCYCLE_DATA_IN_PROCESS=1` runs everything in the calling process instead. After `use_host(directory)`
(the CLI does this), the worker is forked by the data-worker host in that directory, which has these
libraries imported already (promptcycle/workerhost.py); with no host there, the worker is started as above
and `start_missing_host()` starts one for the next command.
"""

from __future__ import annotations

import atexit
import importlib
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

__all__ = ["in_process", "call", "warm_up", "shutdown", "use_host", "start_missing_host", "preload",
           "imported"]

T = TypeVar("T")
_HEADER = struct.Struct("!Q")

_lock = threading.Lock()
_process: Any = None  # a subprocess.Popen, or a workerhost.HostedWorker
_host_directory: str | None = None
_host_missing = False
_host_start: dict[str, Any] = {}  # how to start the host if none serves: its module, fingerprint, environment


def use_host(directory: str | os.PathLike | None, module: str = "promptcycle.workerhost") -> None:
    """Ask the host in `directory` for this process's workers (see promptcycle/workerhost.py); None: start them
    as processes of this one. A host started for the next command (`start_missing_host`) runs `python -m
    <module>`, with the fingerprint and environment of now."""
    global _host_directory, _host_missing, _host_start
    _host_directory, _host_missing, _host_start = None, False, {}
    if directory is not None:
        from promptcycle import workerhost

        _host_directory = os.fspath(directory)
        _host_start = {"module": module, "key": workerhost.fingerprint(), "env": dict(os.environ)}


def start_missing_host() -> None:
    """If this process asked for a host and found none, start one now, for the next command."""
    if _host_directory is not None and _host_missing:
        from promptcycle import workerhost

        try:
            workerhost.start(_host_directory, **_host_start)
        except OSError:
            pass  # the next command starts its own worker, as this one did


def in_process() -> bool:
    return os.environ.get("PROMPTCYCLE_DATA_IN_PROCESS", "").lower() in {"1", "true", "yes"}


def _send(stream: BinaryIO, payload: Any) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _receive(stream: BinaryIO) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    return pickle.loads(stream.read(size))


def _start() -> Any:
    global _process, _host_missing
    if _process is None or _process.poll() is not None:
        _process = None
        if _host_directory is not None:
            from promptcycle import workerhost

            if workerhost.enabled():
                _process = workerhost.connect(_host_directory, _host_start.get("key"))
                _host_missing = _process is None
        if _process is None:
            _process = subprocess.Popen([sys.executable, "-m", "promptcycle.dataworker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=dict(os.environ))
        atexit.register(shutdown)
    return _process


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run the module-level function `fn(*args, **kwargs)` in the worker and return its result."""
    if in_process():
        return fn(*args, **kwargs)
    from promptcycle.errors import StoreError

    with _lock:
        process = _start()
        try:
            _send(process.stdin, (fn.__module__, fn.__qualname__, args, kwargs))
            ok, value = _receive(process.stdout)
        except (EOFError, BrokenPipeError, OSError) as exc:
            shutdown_locked()
            raise StoreError(f"the data worker process ended while running {fn.__name__}; re-run to resume") from exc
    if ok:
        return value
    raise value


_warm_thread: threading.Thread | None = None
_pandas_thread: threading.Thread | None = None
_busy = threading.Event()


def _import_pandas() -> None:
    import pandas  # noqa: F401


def _warm(gx: bool = True) -> None:
    """In the worker: import the store's and the dataset gate's modules now; import pandas in a thread
    (DuckDB loads it on the first table a store call registers: ~0.35 s, which would otherwise fall on a
    baseline's last step before its first model call) and, with `gx`, start Great Expectations' import and
    context in another (the suites serialise on it), so the worker keeps answering store calls meanwhile."""
    global _warm_thread, _pandas_thread
    import promptcycle.store.metrics  # noqa: F401 - DuckDB, for the first store call
    # What the dataset gate unpickles and runs (cases: the config's models, ~80 ms): before the gate asks.
    import promptcycle.datasets.cases  # noqa: F401
    import promptcycle.quality.suites  # noqa: F401
    import promptcycle.quality.verdicts  # noqa: F401

    if _pandas_thread is None:
        _pandas_thread = threading.Thread(target=_import_pandas, name="pandas-import", daemon=True)
        _pandas_thread.start()
    if gx and _warm_thread is None:
        from promptcycle.quality import suites

        _warm_thread = threading.Thread(target=suites._get_batch_definition, name="gx-import", daemon=True)
        _warm_thread.start()


def warm_up(gx: bool = True) -> None:
    """Start the worker now, in parallel with other start-up work; with `gx`, Great Expectations' import too.

    The baseline asks for Great Expectations only once the dataset suite has passed (from a stored
    verdict, promptcycle/quality/verdicts.py, or run right then): importing it beside the first store
    calls would halve their speed, and nothing before the first model call needs it."""
    if not in_process():
        threading.Thread(target=_warm_quietly, args=(gx,), name="promptcycle-data-warm-up", daemon=True).start()


def _warm_quietly(gx: bool) -> None:
    try:
        call(_warm, gx)
    except Exception:  # noqa: BLE001 - the first real call meets (and reports) the same failure
        pass


def shutdown_locked() -> None:
    global _process
    process, _process = _process, None
    if process is not None and process.poll() is None:
        try:
            process.stdin.close()
            process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()


def shutdown() -> None:
    """Stop the worker (it starts again on the next call)."""
    with _lock:
        shutdown_locked()


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """The worker's loop: run each requested function and reply (ok, result) or (False, exception)."""
    while True:
        try:
            module, qualname, args, kwargs = _receive(requests)
        except EOFError:
            return
        _busy.set()
        try:
            target: Any = importlib.import_module(module)
            for part in qualname.split("."):
                target = getattr(target, part)
            reply = (True, target(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
            reply = (False, exc)
        finally:
            _busy.clear()
        try:
            _send(replies, reply)
        except (BrokenPipeError, ConnectionError):
            return  # the caller is gone
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable exception
            from promptcycle.errors import StoreError

            _send(replies, (False, StoreError(f"{type(reply[1]).__name__}: {reply[1]}"
                                              if not reply[0] else f"unpicklable result: {exc}")))


def exit_when(gone: Callable[[], bool]) -> None:
    """In the worker: end the process once `gone()` (its command has died) and no call is running."""
    import time

    while True:
        time.sleep(0.5)
        if not _busy.is_set() and gone():
            os._exit(0)


def imported(names: list[str]) -> list[str]:
    """Which of the modules `names` this process has imported (asked of a worker: what it started with)."""
    return [name for name in names if name in sys.modules]


def preload() -> None:
    """Import now, in this thread, everything the worker's calls use, and make Great Expectations' context
    (what the data-worker host does once, before it forks workers)."""
    from promptcycle.quality import suites

    _warm(gx=False)
    _pandas_thread.join()
    suites._get_batch_definition()


if __name__ == "__main__":
    import logging
    import signal

    # Ctrl-C in a terminal reaches the whole process group: the pipeline process handles it and closes
    # our stdin, so the worker finishes the call in hand (no half-done write, no traceback) and exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    parent = os.getppid()
    threading.Thread(target=exit_when, args=(lambda: os.getppid() != parent,), name="parent-watch",
                     daemon=True).start()

    os.environ["PROMPTCYCLE_DATA_IN_PROCESS"] = "1"  # inside the worker, data work runs right here

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the reply stream
    serve(sys.stdin.buffer, replies)
    # Every call was answered and the store keeps no connection open: skip the interpreter's teardown
    # of pandas, DuckDB and Great Expectations (a second or more) and any unfinished import.
    sys.stderr.flush()
    os._exit(0)
