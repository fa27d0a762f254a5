"""The data worker: one process that does the pipeline's DuckDB and Great Expectations work.

Why a separate process: DuckDB, pyarrow, pandas and Great Expectations together cost the pipeline
process ~300 MB, and their CPU competes with the event loop that drives the model calls. The
pipeline process sends a function and plain arguments to the worker and gets plain results back.

The worker is `python -m promptcycle.dataworker`, started on first use and spoken to over its
stdin/stdout with length-prefixed pickles (one call at a time). Unlike a multiprocessing pool it
never re-imports the caller's main module, so scripts that call flows need no `__main__` guard.
It exits when its stdin closes — that is, when the pipeline process ends, however it ends.

`PROMPTCYCLE_DATA_IN_PROCESS=1` runs everything in the calling process instead.
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

__all__ = ["in_process", "call", "warm_up", "shutdown"]

T = TypeVar("T")
_HEADER = struct.Struct("!Q")

_lock = threading.Lock()
_process: subprocess.Popen | None = None


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


def _start() -> subprocess.Popen:
    global _process
    if _process is None or _process.poll() is not None:
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


def _warm() -> None:
    from promptcycle.quality import suites

    suites._get_batch_definition()  # imports Great Expectations and builds its context


def _warm_quietly() -> None:
    try:
        call(_warm)
    except Exception:  # noqa: BLE001 - the first real call meets (and reports) the same failure
        pass


def warm_up() -> None:
    """Start the worker and its Great Expectations import now, in parallel with other start-up work."""
    if not in_process():
        threading.Thread(target=_warm_quietly, name="promptcycle-data-warm-up", daemon=True).start()


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
        try:
            target: Any = importlib.import_module(module)
            for part in qualname.split("."):
                target = getattr(target, part)
            reply = (True, target(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
            reply = (False, exc)
        try:
            _send(replies, reply)
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable exception
            from promptcycle.errors import StoreError

            _send(replies, (False, StoreError(f"{type(reply[1]).__name__}: {reply[1]}"
                                              if not reply[0] else f"unpicklable result: {exc}")))


if __name__ == "__main__":
    import logging
    import signal

    # Ctrl-C in a terminal reaches the whole process group: the pipeline process handles it and closes
    # our stdin, so the worker finishes the call in hand (no half-done write, no traceback) and exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    os.environ["PROMPTCYCLE_DATA_IN_PROCESS"] = "1"  # inside the worker, data work runs right here

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the reply stream
    serve(sys.stdin.buffer, replies)
