"""One process at a time spends on a pipeline: the pipeline lease.

Two processes running the same pipeline at once (a schedule overlapping a manual run, a command
started twice) would each pay for the same calls, since neither sees the other's answers before it
has flushed them. So a baseline or optimization takes the pipeline's lease in the store before it
starts or resumes a run, and a second process is refused with `PipelineBusyError` before any call.

The lease lives `LEASE_SECONDS` and a thread renews it every third of that while it is held, so a
holder that dies without releasing it (kill -9, a lost machine) blocks the pipeline for at most that
long — and not at all on the same host, where a dead holder's process id is checked and the lease
taken over at once. Within one process the lease is re-entrant (an optimization that runs a baseline
first holds it once).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from dataclasses import dataclass, field

from promptcycle.errors import PipelineBusyError

__all__ = ["LEASE_SECONDS", "HOLDER", "hold_pipeline", "release_pipeline"]

LEASE_SECONDS = 30.0
_HOST = socket.gethostname()
HOLDER = ""


def _new_holder() -> None:
    """This process's name as a lease holder, host:pid:token (the token tells apart two processes that reused one
    pid). Made again in a forked child (a command run by the command host, cli/host.py), which is another holder."""
    global HOLDER
    HOLDER = f"{_HOST}:{os.getpid()}:{secrets.token_hex(4)}"


_new_holder()
os.register_at_fork(after_in_child=_new_holder)

_lock = threading.Lock()


@dataclass
class _Held:
    store: object
    pipeline: str
    depth: int = 1
    stop: threading.Event = field(default_factory=threading.Event)


_held: dict[tuple[str, str], _Held] = {}


def _dead_on_this_host(holder: str) -> bool:
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != _HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def _renew(held: _Held, purpose: str) -> None:
    while not held.stop.wait(LEASE_SECONDS / 3):
        try:
            held.store.acquire_pipeline_lease(held.pipeline, HOLDER, purpose, LEASE_SECONDS)
        except Exception:  # noqa: BLE001 - a busy store: the next renewal tries again, well within the lease
            pass


def hold_pipeline(store, pipeline: str, purpose: str) -> None:
    """Take the pipeline's lease for this process, or raise `PipelineBusyError` naming its holder."""
    key = (str(store.path), pipeline)
    with _lock:
        held = _held.get(key)
        if held is not None:
            held.depth += 1
            return
        lease = store.acquire_pipeline_lease(pipeline, HOLDER, purpose, LEASE_SECONDS)
        if lease["holder"] != HOLDER and _dead_on_this_host(lease["holder"]):
            lease = store.acquire_pipeline_lease(pipeline, HOLDER, purpose, LEASE_SECONDS,
                                                 take_from=lease["holder"])
        if lease["holder"] != HOLDER:
            host, _, rest = lease["holder"].partition(":")
            raise PipelineBusyError(
                f"pipeline {pipeline!r} is already being run by another process (pid {rest.partition(':')[0]} on "
                f"{host}: {lease['purpose']}, since {lease['acquired_at']:%Y-%m-%d %H:%M:%S} UTC); this copy "
                f"started nothing and paid for nothing, so that no call is paid twice. Wait for it to finish — "
                f"its lease lapses {LEASE_SECONDS:g} s after it stops — then re-run to resume what is left")
        held = _held[key] = _Held(store=store, pipeline=pipeline)
        threading.Thread(target=_renew, args=(held, purpose), name=f"promptcycle-lease-{pipeline}",
                         daemon=True).start()


def release_pipeline(pipeline: str) -> None:
    """Give back this process's hold on the pipeline's lease (the lease itself when the last hold ends)."""
    with _lock:
        for key, held in list(_held.items()):
            if held.pipeline != pipeline:
                continue
            held.depth -= 1
            if held.depth > 0:
                continue
            del _held[key]
            held.stop.set()
            try:
                held.store.release_pipeline_lease(pipeline, HOLDER)
            except Exception:  # noqa: BLE001 - the lease lapses by itself
                pass
