"""A real Prefect server (`prefect server start`) for the tests whose behaviour is Prefect's own:
schedules, deployments, global concurrency limits. One per session (the `prefect_server` fixture in
conftest.py): a cold start costs ~15 s on a busy 2-core machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from promptcycle.loopback import free_port

OFFLINE = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
           "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
           "PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": "false"}
STARTUP_S = 240  # a cold server on a busy 2-core machine
SERVER_PORTS = range(42000, 43000)  # apart from the ports other servers of the suite take


def healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal `process`'s group and wait (serve cancels its runs and pauses the schedules first); kill it
    if it has not ended within two minutes."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def running_server(home: Path) -> Iterator[str]:
    """Start a Prefect server (API and UI) on a free loopback port in the Prefect home `home`, yield its
    API URL once healthy, stop it afterwards."""
    port = free_port(SERVER_PORTS)
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, **OFFLINE, "PREFECT_HOME": str(home), "PREFECT_SERVER_UI_API_URL": api,
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                "--port", str(port)], env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_S
        while not healthy(api):
            assert process.poll() is None, (home / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the Prefect server did not answer within the startup time"
            time.sleep(1)
        yield api
    finally:
        stop(process)
        log.close()
