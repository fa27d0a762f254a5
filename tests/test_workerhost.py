"""The data-worker host (promptcycle/workerhost.py): a process with the data libraries imported that forks each
command's data worker. Real processes and sockets throughout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from process_support import alive as _alive
from process_support import wait as _wait

from promptcycle import dataworker, workerhost
from promptcycle.store.remote import open_store

REPO = Path(__file__).resolve().parent.parent
DATA_LIBRARIES = ["duckdb", "pandas", "great_expectations", "promptcycle.store.metrics", "promptcycle.quality.suites"]


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].split()[1])


def _host_pids(directory: Path, *, workers: bool = False) -> list[int]:
    """The hosts serving `directory` (with `workers`, the workers they forked too: they share its command line)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (b"promptcycle.workerhost" in argv or b"promptcycle_cli.host" in argv) and \
                os.fsencode(str(directory)) in argv:
            pids.append(int(proc.name))
    return pids if workers else [pid for pid in pids if _ppid(pid) not in pids]


def _start_host() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="pc-host-"))  # short: a Unix socket's name is limited
    workerhost.start(directory)
    _wait(lambda: workerhost.socket_path(directory).exists(), what="the host's socket")
    return directory


def _end_host(directory: Path) -> None:
    for pid in _host_pids(directory, workers=True):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_host():
    directory = _start_host()
    yield directory
    _end_host(directory)


@pytest.fixture
def host_dir(shared_host, monkeypatch):
    """The directory of a serving host; this process's workers come from it until the test ends."""
    monkeypatch.delenv("PROMPTCYCLE_DATA_IN_PROCESS", raising=False)
    monkeypatch.delenv("PROMPTCYCLE_WORKER_HOST", raising=False)
    dataworker.shutdown()  # a worker an earlier test left running would otherwise serve this test
    yield shared_host
    dataworker.shutdown()
    dataworker.use_host(None)


def test_a_hosted_worker_starts_with_the_data_libraries_imported_and_serves_the_store(host_dir, tmp_path):
    dataworker.use_host(host_dir)
    started = time.monotonic()
    store = open_store(tmp_path / "m.duckdb")
    assert store.write_splits("key", {"a": "train"}) == 1
    assert store.get_splits("key") == {"a": "train"}
    assert isinstance(dataworker._process, workerhost.HostedWorker)
    assert dataworker.call(dataworker.imported, DATA_LIBRARIES) == DATA_LIBRARIES
    assert time.monotonic() - started < 5  # a piped worker spends ~1 s importing DuckDB alone
    [host] = _host_pids(host_dir)
    assert _ppid(dataworker._process.pid) == host


def test_a_piped_worker_has_imported_none_of_them_yet(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMPTCYCLE_DATA_IN_PROCESS", raising=False)
    try:
        assert dataworker.call(dataworker.imported, ["great_expectations"]) == []
        assert isinstance(dataworker._process, subprocess.Popen)
    finally:
        dataworker.shutdown()


def test_the_hosted_worker_takes_the_commands_environment_and_directory(host_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROMPTCYCLE_HOST_TEST_VALUE", "from the command")
    dataworker.use_host(host_dir)
    assert dataworker.call(os.getcwd) == str(tmp_path)
    assert dataworker.call(os.getenv, "PROMPTCYCLE_HOST_TEST_VALUE") == "from the command"
    assert dataworker.call(os.getenv, "PROMPTCYCLE_DATA_IN_PROCESS") == "1"  # inside, data work runs right there


def test_closing_ends_the_hosted_worker_and_the_next_call_gets_a_new_one(host_dir, tmp_path):
    dataworker.use_host(host_dir)
    store = open_store(tmp_path / "m.duckdb")
    store.write_splits("key", {"a": "train"})
    first = dataworker._process.pid
    dataworker.shutdown()
    _wait(lambda: not _alive(first), timeout=10, what="the worker to end")
    assert store.get_splits("key") == {"a": "train"}
    assert dataworker._process.pid != first


def test_a_hosted_worker_killed_between_calls_is_replaced(host_dir, tmp_path):
    dataworker.use_host(host_dir)
    store = open_store(tmp_path / "m.duckdb")
    store.write_splits("key", {"a": "train"})
    old = dataworker._process.pid
    os.kill(old, signal.SIGKILL)
    dataworker._process.wait(timeout=10)
    assert store.get_splits("key") == {"a": "train"}
    assert dataworker._process.pid != old


def _command(host_dir: Path, *body: str) -> subprocess.Popen:
    script = "\n".join(["import os, sys, time", "from promptcycle import dataworker",
                        f"dataworker.use_host({str(host_dir)!r})", *body])
    return subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={k: v for k, v in os.environ.items() if k != "PROMPTCYCLE_DATA_IN_PROCESS"})


def test_a_killed_command_s_worker_ends(host_dir):
    command = _command(host_dir, "print(dataworker.call(os.getpid), flush=True)", "time.sleep(600)")
    worker = int(command.stdout.readline())
    assert _alive(worker)
    command.kill()
    command.wait()
    _wait(lambda: not _alive(worker), timeout=10, what="the killed command's worker to end")


def test_what_the_worker_writes_reaches_the_commands_stderr(host_dir):
    command = _command(host_dir, "dataworker.call(print, 'a warning from the worker')",
                       "print(type(dataworker._process).__name__)")
    out, err = command.communicate(timeout=60)
    assert command.returncode == 0, err
    assert out.strip() == "HostedWorker"
    assert "a warning from the worker" in err


def test_one_host_per_name_and_it_stops_when_its_socket_is_removed():
    directory = _start_host()
    try:
        [host] = _host_pids(directory)
        second = subprocess.run([sys.executable, "-m", "promptcycle.workerhost", str(directory),
                                 workerhost.fingerprint()], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert second.returncode == 0 and _host_pids(directory) == [host]  # it found the lock taken and left
        workerhost.socket_path(directory).unlink()
        _wait(lambda: not _alive(host), timeout=10, what="the host to stop")
    finally:
        _end_host(directory)


def test_a_host_for_other_code_does_not_serve(tmp_path):
    directory = Path(tempfile.mkdtemp(prefix="pc-host-"))
    try:
        out = subprocess.run([sys.executable, "-m", "promptcycle.workerhost", str(directory), "0" * 16], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1
        assert "code or settings differ from 0000000000000000; not serving" in out.stderr
        assert not list(directory.glob("*.sock"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_an_idle_host_stops(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTCYCLE_SERVER_IDLE_SECONDS", "1")
    directory = Path(tempfile.mkdtemp(prefix="pc-host-"))
    try:
        workerhost.start(directory)
        _wait(lambda: workerhost.socket_path(directory).exists(), what="the host's socket")
        [host] = _host_pids(directory)
        _wait(lambda: not _alive(host), timeout=15, what="the idle host to stop")
        assert not workerhost.socket_path(directory).exists()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _piped_then_hosted(directory: Path, store_path: Path, serving) -> None:
    """A command finds no host answering in `directory`: a piped worker serves it and, as it ends, it starts a
    host (`serving()` says when it does); the next command's worker comes from that host."""
    try:
        dataworker.use_host(directory)
        assert open_store(store_path).get_splits("key") == {}
        assert isinstance(dataworker._process, subprocess.Popen)
        dataworker.shutdown()
        dataworker.start_missing_host()
        _wait(serving, what="the host the first command started")
        dataworker.use_host(directory)
        assert open_store(store_path).get_splits("key") == {}
        assert isinstance(dataworker._process, workerhost.HostedWorker)
    finally:
        dataworker.shutdown()
        dataworker.use_host(None)


def test_without_a_host_the_command_uses_a_piped_worker_and_starts_one_for_the_next(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMPTCYCLE_DATA_IN_PROCESS", raising=False)
    directory = Path(tempfile.mkdtemp(prefix="pc-host-"))
    try:
        _piped_then_hosted(directory, tmp_path / "m.duckdb",
                           serving=lambda: workerhost.socket_path(directory).exists())
    finally:
        _end_host(directory)


def test_with_the_host_switched_off_every_worker_is_piped(host_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTCYCLE_WORKER_HOST", "0")
    dataworker.use_host(host_dir)
    assert open_store(tmp_path / "m.duckdb").get_splits("key") == {}
    assert isinstance(dataworker._process, subprocess.Popen)


@pytest.mark.slow
def test_a_baseline_command_starts_the_host_and_the_next_one_takes_its_worker_from_it(tmp_path, repo_config):
    from prefect.settings import get_current_settings

    from promptcycle_cli import local_server

    # The session's server (this test's Prefect home is only the host's directory): its local server, or the
    # test harness's when an earlier test started that in this process.
    api = local_server.ensure_server() or get_current_settings().api.url
    assert api
    home = Path(tempfile.mkdtemp(prefix="pc-home-"))
    env = {**{k: v for k, v in os.environ.items() if k != "PROMPTCYCLE_DATA_IN_PROCESS"},
           "PREFECT_HOME": str(home), "PREFECT_API_URL": api}
    argv = [sys.executable, "-m", "promptcycle_cli.main", "baseline", "--config", str(repo_config), "--limit", "1",
            "--repeats", "1", "--json"]
    try:
        first = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr
        # (its name's fingerprint covers the command's environment and directory, not this process's)
        _wait(lambda: list(home.glob("promptcycle-worker-*.sock")), what="the host the first command started")
        log = home / "promptcycle-worker-host.log"
        assert "forked" not in log.read_text()
        second = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr
        assert json.loads(second.stdout)["success"] is True
        assert "forked" in log.read_text()  # the second command's worker came from the host
    finally:
        _end_host(home)


def test_a_killed_host_is_replaced_by_the_next_command(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMPTCYCLE_DATA_IN_PROCESS", raising=False)
    directory = _start_host()
    try:
        [host] = _host_pids(directory)
        os.kill(host, signal.SIGKILL)
        _wait(lambda: not _alive(host), timeout=10, what="the host to die")
        assert workerhost.socket_path(directory).exists()  # what a killed host leaves behind
        _piped_then_hosted(directory, tmp_path / "m.duckdb", serving=lambda: len(_host_pids(directory)) == 1 and
                           (directory / "promptcycle-worker-host.log").read_text().count("serving at") == 2)
    finally:
        _end_host(directory)
