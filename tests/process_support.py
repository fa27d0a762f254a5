"""Waiting on real processes, for the tests of the hosts (tests/test_workerhost.py, tests/test_commandhost.py)."""

from __future__ import annotations

import time
from pathlib import Path


def wait(predicate, timeout: float = 60.0, what: str = "") -> None:
    """Poll `predicate` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, ended but not yet reaped, is not alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
