"""Prefect's API server for the CLI's commands: started once per Prefect home, reused, stopped when idle.

CLI-side code (it moves with the CLI; the domain never imports it). Without `PREFECT_API_URL`, Prefect
starts a temporary server inside every command — a uvicorn child that costs 9–25 s per command and
stays alive if the command is killed. Instead, a command that runs a flow:

- reads `promptcycle-server.json` in `PREFECT_HOME` (pid, port, Prefect version). If that server is
  alive, answers `/api/health` and runs the installed Prefect version, the command uses it;
- otherwise starts `python -m promptcycle_cli.local_server` in its own session (so Ctrl-C in the terminal
  and `kill` of the command leave it alone) on a free loopback port, writes the state file and waits
  for `/api/health`. A lock file makes concurrent commands share one server;
- the server stops itself once it has had no request and no open connection for
  `PROMPTCYCLE_SERVER_IDLE_SECONDS` (default 300), or as soon as the state file no longer names it
  (the Prefect home was removed, or a newer server replaced it). A killed command therefore never
  leaves more than this one server per Prefect home, and that one ends after the idle time.

It starts in a background thread as soon as the command is parsed, so it overlaps loading the
configuration, the data worker and the dataset suite. Nothing changes when the user configured a
Prefect API (`PREFECT_API_URL` in the environment or the active Prefect profile), when Prefect's
ephemeral mode is off, or with `PROMPTCYCLE_LOCAL_SERVER=0` (Prefect then starts its own temporary
server in the command, as it does by default).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from promptcycle.errors import LocalServerError, PromptcycleError
from promptcycle.loopback import free_port
from promptcycle.workerhost import DEFAULT_IDLE_SECONDS, idle_seconds  # one idle setting for both helper processes

__all__ = ["FLOW_COMMANDS", "serving", "ready", "running_url", "state_path", "DEFAULT_IDLE_SECONDS"]

# Commands that run a Prefect flow. Each calls `ready()` just before its flow, as late as it can: bad input
# fails first, without waiting for the server. (A flow run without `ready()` gets Prefect's own temporary server.)
FLOW_COMMANDS = frozenset({"baseline", "optimize", "deploy", "canary", "monitor", "cycle", "report"})
STATE_FILE = "promptcycle-server.json"
LOCK_FILE = "promptcycle-server.lock"
LOG_FILE = "promptcycle-server.log"
_MODULE = "promptcycle_cli.local_server"
LOOPBACK_CA = Path(__file__).with_name("loopback-ca.pem")  # see ready()


# -- the command's side -------------------------------------------------------------------------------------------

class _Start:
    """The server's start (or reuse), running in a daemon thread; `wait()` returns its API URL or None."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="promptcycle-prefect-server", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.url = ensure_server()
        except PromptcycleError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 - e.g. an unwritable Prefect home: handed to the waiting command
            error = LocalServerError(f"Prefect's local server could not be started: {type(exc).__name__}: {exc}. "
                                     "Set PREFECT_API_URL to use another Prefect server, or PROMPTCYCLE_LOCAL_SERVER=0 "
                                     "to let Prefect start its own.")
            error.__cause__ = exc
            self.error = error

    def wait(self) -> str | None:
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.url


_current: _Start | None = None
_settings = contextlib.ExitStack()


def enabled() -> bool:
    return os.environ.get("PROMPTCYCLE_LOCAL_SERVER", "1").lower() not in {"0", "false", "no", "off"}


@contextlib.contextmanager
def serving(command: str, runs_flow: bool = True) -> Iterator[None]:
    """Around one CLI command: start (or find) the local server in the background if the command runs flows
    (`runs_flow=False`: this invocation of it does not, e.g. `report --no-artifacts`)."""
    global _current
    if command in FLOW_COMMANDS and runs_flow and enabled():
        _current = _Start()
    try:
        yield
    finally:
        _current = None
        _settings.close()


def ready() -> str | None:
    """Wait for the server started by `serving` and point Prefect at it (for the rest of the command).

    Returns its API URL, or None when Prefect is left to its own configuration."""
    if _current is None:
        return None
    url = _current.wait()
    if url is not None:
        from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_URL, temporary_settings

        # The server speaks plain HTTP on loopback: no certificate is ever checked, whatever CA file is set
        # (PREFECT_API_SSL_CERT_FILE, or SSL_CERT_FILE, its default). Prefect's client still loads one into
        # every SSL context it makes (~12 clients a run, ~25 ms each with a system or certifi bundle); this
        # one holds a single certificate whose key was never kept (~0.5 ms).
        _settings.enter_context(temporary_settings(updates={PREFECT_API_URL: url,
                                                            PREFECT_API_SSL_CERT_FILE: str(LOOPBACK_CA)}))
    return url


def running_url() -> str | None:
    """The API URL of this Prefect home's local server if one is running and healthy (none is started)."""
    state = _read_state(prefect_home())
    if state is None or not _is_ours(state.get("pid")) or not _healthy(state["port"]):
        return None
    return _api_url(state["port"])


def prefect_home() -> Path:
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home).expanduser()


def state_path(home: Path | None = None) -> Path:
    return (home or prefect_home()) / STATE_FILE


def ensure_server() -> str | None:
    """The API URL of a healthy local server for this Prefect home, started if needed; None if Prefect
    is configured to use another API (or not to start one)."""
    import prefect
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    home = Path(settings.home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    timeout = float(settings.server.ephemeral.startup_timeout_seconds)
    with _locked(home / LOCK_FILE):
        state = _read_state(home)
        if state is not None and _is_ours(state.get("pid")):
            if state.get("prefect_version") == prefect.__version__ and _wait_healthy(state, timeout):
                return _api_url(state["port"])
            _stop(state["pid"])  # another Prefect version, or not healthy: replace it
        last_error = ""
        for _ in range(3):  # a port taken between choosing it and binding it: choose again
            port = free_port()
            process = _spawn(home, port, settings)
            state = {"pid": process.pid, "port": port, "prefect_version": prefect.__version__,
                     "started_at": time.time()}
            _write_state(home, state)
            if _wait_healthy(state, timeout, process):
                return _api_url(port)
            last_error = _tail(home / LOG_FILE)
            if process.poll() is None:
                _stop(process.pid)
                break
        raise LocalServerError(f"Prefect's local server did not answer within {timeout:.0f} s (see "
                               f"{home / LOG_FILE}): {last_error}. Set PREFECT_API_URL to use another Prefect "
                               "server, or PROMPTCYCLE_LOCAL_SERVER=0 to let Prefect start its own.")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel too, if this process is killed
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_state(home: Path) -> dict | None:
    try:
        state = json.loads((home / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("pid"), int) and \
        isinstance(state.get("port"), int) else None


def _write_state(home: Path, state: dict) -> None:
    tmp = home / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, home / STATE_FILE)


def _is_ours(pid: object) -> bool:
    """True if `pid` is alive and is a local server process (not a recycled pid)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return _MODULE.encode() in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"


def _api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


def _healthy(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/api/health")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _wait_healthy(state: dict, timeout: float, process: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _healthy(state["port"]):
            return True
        if (process.poll() is not None) if process is not None else not _is_ours(state["pid"]):
            return False
        time.sleep(0.05)
    return False


def _spawn(home: Path, port: int, settings) -> subprocess.Popen:
    env = {**os.environ, **settings.to_environment_variables(exclude_unset=True),
           # as Prefect's own temporary server: no UI, no background services
           "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    with open(home / LOG_FILE, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", _MODULE, "--port", str(port)], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                close_fds=True)


def _stop(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _is_ours(pid):
        time.sleep(0.05)
    if _is_ours(pid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) or "no output"
    except OSError:
        return "no log"


# -- the server's side --------------------------------------------------------------------------------------------

class _Activity:
    """ASGI middleware: counts open requests and connections and notes when the last one ended."""

    def __init__(self, app) -> None:
        self.app = app
        self.open = 0
        self.last = time.monotonic()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1
            self.last = time.monotonic()

    def idle_for(self) -> float:
        return 0.0 if self.open else time.monotonic() - self.last


def _named_in_state(home: Path) -> bool:
    state = _read_state(home)
    return state is not None and state["pid"] == os.getpid()


def serve(port: int, idle_seconds: float) -> None:
    """Run Prefect's API on 127.0.0.1:`port` until idle for `idle_seconds` or replaced (see the module doc)."""
    import uvicorn
    from prefect.server.api.server import create_app

    home = prefect_home()
    activity = _Activity(create_app(ephemeral=True, final=True))
    server = uvicorn.Server(uvicorn.Config(activity, host="127.0.0.1", port=port, log_level="error",
                                           lifespan="on", timeout_keep_alive=5))

    def watch() -> None:
        while not server.should_exit:
            time.sleep(0.5)
            if activity.idle_for() >= idle_seconds or not _named_in_state(home):
                server.should_exit = True

    threading.Thread(target=watch, name="idle-watch", daemon=True).start()
    server.run()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}")
    parser.add_argument("--port", type=int, required=True)
    serve(parser.parse_args().port, idle_seconds())
