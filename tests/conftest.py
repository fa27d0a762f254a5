"""Shared test fixtures. Offline Prefect settings are applied before anything imports Prefect."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_PREFECT_HOME = tempfile.mkdtemp(prefix="promptcycle-test-prefect-")
for key, value in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "ERROR",
    "PREFECT_HOME": _PREFECT_HOME,
    "PROMPTCYCLE_CACHE_DIR": os.path.join(_PREFECT_HOME, "promptcycle-cache"),
    # The commands the tests start share this home's local server (cli/local_server.py); it lives through
    # the gaps between them and stops at the session's end, when the home is removed (pytest_sessionfinish).
    "PROMPTCYCLE_SERVER_IDLE_SECONDS": "900",
}.items():
    os.environ.setdefault(key, value)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for every engine test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect server (`prefect server start`, API and UI) on a loopback port, in a Prefect home of its
    own, shared by the session's tests of schedules, deployments and concurrency limits (server_support.py)."""
    from server_support import running_server

    yield from running_server(tmp_path_factory.mktemp("prefect-server-home"))


@pytest.fixture
def repo_config(tmp_path: Path) -> Path:
    """A copy of the repository's pipelines.yaml in tmp_path (its store lands in tmp_path too)."""
    target = tmp_path / "pipelines.yaml"
    shutil.copy(REPO / "pipelines.yaml", target)
    return target


def pytest_sessionstart(session):
    """Cache the checkout's bytecode first: the suite starts the CLI, the data worker and servers as
    processes hundreds of times, and where PYTHONDONTWRITEBYTECODE is set each would compile every module
    of promptcycle again (~0.1 s of CPU per process)."""
    import compileall

    for name in ("promptcycle", "flows", "tasks", "cli", "blocks"):
        compileall.compile_dir(REPO / name, quiet=2)


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's Prefect home: its local server and command host see their files gone and stop
    (within seconds). Hosts that commands started in Prefect homes under the session's temporary directory are
    ended here too (pytest keeps those directories)."""
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None:
        _end_worker_hosts_under(factory.getbasetemp())


def _end_worker_hosts_under(root: Path) -> None:
    import signal

    prefix = os.fsencode(str(root))
    for proc in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        hosts = b"promptcycle.workerhost" in argv or b"promptcycle_cli.host" in argv
        if hosts and any(arg.startswith(prefix) for arg in argv):
            try:
                os.kill(int(proc.name), signal.SIGTERM)
            except OSError:
                pass


@pytest.fixture
def langsmith_fake():
    """A fake LangSmith (`promptcycle.langsmith.fake`, a test double) served on a free 127.0.0.1 port.

    Yields the `FakeLangSmith`; its API URL is `langsmith_fake.url` and the key it requires is
    `langsmith_fake.api_key` (give both to `langsmith.Client` or set LANGSMITH_ENDPOINT / LANGSMITH_API_KEY).
    """
    from promptcycle.langsmith.fake import FakeLangSmith, FakeLangSmithServer

    fake = FakeLangSmith(api_key="lsv2_pt_fake_0d5e3c1a9b7f4e2d_secret")
    with FakeLangSmithServer(fake):
        yield fake
