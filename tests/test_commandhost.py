"""The command host (cli/host.py): a flow command runs in a fork of a process that has Prefect, the flows and the
data libraries imported, on the promptcycle process's own streams, with its exit status, its signals and its death.

Real processes throughout: the `promptcycle` command (`python -m promptcycle_cli.main`), the host it starts, the
session's Prefect server, the built-in simulator."""

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

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _processes(home: Path) -> dict[int, int]:
    """The host of `home` and its forks (commands and data workers): pid -> parent pid."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if b"promptcycle_cli.host" in argv and os.fsencode(str(home)) in argv:
            found[int(proc.name)] = ppid
    return found


class Home:
    """A Prefect home whose command host the first command started; commands run with the session's API."""

    def __init__(self, root: Path, api: str) -> None:
        self.path = root / "home"
        self.config = root / "pipelines.yaml"
        shutil.copy(REPO / "pipelines.yaml", self.config)
        self.env = {**{k: v for k, v in os.environ.items()
                       if k not in ("PROMPTCYCLE_DATA_IN_PROCESS", "PROMPTCYCLE_WORKER_HOST")},
                    "PREFECT_HOME": str(self.path), "PREFECT_API_URL": api}
        self.root = root

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "promptcycle_cli.main", *args]

    def baseline(self, store: str, *extra: str) -> list[str]:
        return self.argv("baseline", "--config", str(self.config), "--store", str(self.root / store),
                         "--limit", "1", "--repeats", "1", *extra)

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env={**self.env, **kwargs.pop("env", {})}, cwd=self.root, capture_output=True,
                              text=True, timeout=300, **kwargs)

    def log(self) -> str:
        path = self.path / "promptcycle-worker-host.log"
        return path.read_text() if path.exists() else ""

    def forks(self, kind: str) -> int:
        return self.log().count(f" {kind} ")


@pytest.fixture(scope="module")
def home():
    from prefect.settings import get_current_settings

    from promptcycle_cli import local_server

    api = local_server.ensure_server() or get_current_settings().api.url  # the session's server
    assert api
    root = Path(tempfile.mkdtemp(prefix="pc-cmd-"))  # short: a Unix socket's name is limited
    home = Home(root, api)
    first = home.run(home.baseline("first.duckdb", "--json"))
    assert first.returncode == 0, first.stderr
    assert home.forks("command") == 0  # the first command ran in its own process, and started the host
    _wait(lambda: "serving at" in home.log(), timeout=120, what="the host the first command started")
    yield home
    for pid in _processes(home.path):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def test_the_next_flow_command_runs_in_a_fork_of_the_host_with_the_same_output(home):
    before = home.forks("command")
    out = home.run(home.baseline("second.duckdb", "--json"))
    assert out.returncode == 0, out.stderr
    assert home.forks("command") == before + 1
    result = json.loads(out.stdout)
    assert result["success"] is True and result["calls_paid"] == 49 and result["errors"] == 0
    assert "starting run baseline-customer-insights-" in out.stderr
    human = home.run(home.baseline("third.duckdb"))
    assert human.returncode == 0, human.stderr
    assert "49 results, 0 errors, 49 calls paid" in human.stdout
    assert "SIMULATED" in human.stdout
    assert home.forks("command") == before + 2


def test_exit_statuses_and_messages_come_back_from_the_fork(home):
    before = home.forks("command")
    bad = home.run(home.argv("baseline", "--config", str(home.config), "--pipeline", "customer-insight"))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"error (ConfigError): {home.config}: pipelines: unknown pipeline 'customer-insight'; known: customer-insights"]
    usage = home.run(home.argv("baseline", "--no-such-flag"))
    assert usage.returncode == 2 and "unrecognized arguments: --no-such-flag" in usage.stderr
    assert home.forks("command") == before + 2
    assert home.run(home.argv("validate", "--config", str(home.config))).returncode == 0
    assert home.forks("command") == before + 2  # a command that runs no flow runs in its own process


def test_ctrl_c_reaches_the_fork_which_stops_as_the_command_would(home):
    proc = subprocess.Popen(home.argv("baseline", "--config", str(home.config), "--store",
                                      str(home.root / "interrupted.duckdb")),
                            env=home.env, cwd=home.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait(lambda: len(_processes(home.path)) >= 3, what="the fork and its data worker")
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted — re-run the same command to resume" in err
    assert "Traceback" not in err
    _wait(lambda: len(_processes(home.path)) == 1, timeout=30, what="the fork and its worker to end")


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_ctrl_z_stops_the_fork_with_the_command_and_fg_continues_both(home):
    proc = subprocess.Popen(home.baseline("suspended.duckdb", "--json"), env=home.env, cwd=home.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    before = home.forks("command")
    _wait(lambda: home.forks("command") > before, what="the command's fork")
    fork = int(home.log().split(" command ")[-1].split()[0])
    proc.send_signal(signal.SIGTSTP)
    _wait(lambda: _state(proc.pid) == "T" and _state(fork) == "T", timeout=10, what="both to stop")
    time.sleep(0.5)
    assert _state(fork) == "T"
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)["success"] is True


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_command_takes_its_fork_and_worker_with_it(home, signum):
    proc = subprocess.Popen(home.argv("baseline", "--config", str(home.config), "--store",
                                      str(home.root / f"killed-{signum}.duckdb")),
                            env=home.env, cwd=home.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait(lambda: len(_processes(home.path)) >= 3, what="the fork and its data worker")
    forks = [pid for pid, ppid in _processes(home.path).items() if ppid in _processes(home.path)]
    time.sleep(1.0)
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=60)
    if signum == signal.SIGKILL:
        assert proc.returncode == -signum
    else:  # the promptcycle process ends as its command did: by the signal, or, where Prefect's flow engine turned
        # it into an exception in a cell (its SIGTERM bridge), with the command's one-line error (exit 1)
        assert proc.returncode == -signum or (proc.returncode == 1 and "\nerror (" in err), err
    assert "Traceback" not in err
    _wait(lambda: not any(_alive(pid) for pid in forks), timeout=30, what="the fork and its worker to end")
    assert len(_processes(home.path)) == 1  # the host serves on


def test_other_prefect_settings_get_a_host_of_their_own(home):
    before = home.forks("command")
    out = home.run(home.baseline("other.duckdb", "--json"), env={"PREFECT_LOGGING_LEVEL": "DEBUG"})
    assert out.returncode == 0, out.stderr
    assert home.forks("command") == before  # not run by the host imported with the other settings
    _wait(lambda: len(list(home.path.glob("promptcycle-worker-*.sock"))) == 2, timeout=120,
          what="the second host, started for the next command with these settings")


def test_switched_off_the_command_runs_in_its_own_process(home):
    before = home.forks("command"), home.forks("worker")
    out = home.run(home.baseline("off.duckdb", "--json"), env={"PROMPTCYCLE_WORKER_HOST": "0"})
    assert out.returncode == 0, out.stderr
    assert (home.forks("command"), home.forks("worker")) == before


def test_concurrent_copies_run_by_the_host_pay_each_call_once(home):
    """Forks of one process are distinct processes to the pipeline's lease and the paid-call ledger."""
    before = home.forks("command")
    procs = [subprocess.Popen(home.baseline("concurrent.duckdb", "--json"), env=home.env, cwd=home.root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert home.forks("command") == before + 4
    paid = 0
    for proc, (out, err) in zip(procs, outputs):
        result = json.loads(out)
        if proc.returncode == 0:
            paid += result["calls_paid"]
        else:
            assert (proc.returncode, result["error"]) == (1, "PipelineBusyError"), err
    assert paid == 49  # the 49 distinct calls of `--limit 1 --repeats 1`, each paid once


def test_the_fork_takes_the_commands_limits_priority_and_affinity(home):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, 700)
    cpus = sorted(os.sched_getaffinity(0))[:1]

    def constrain() -> None:  # as `ulimit -n 700; nice -n 7 taskset -c <cpu> promptcycle …` would
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
        os.nice(7)
        os.sched_setaffinity(0, cpus)

    before = home.forks("command")
    proc = subprocess.Popen(home.argv("baseline", "--config", str(home.config), "--store",
                                      str(home.root / "limited.duckdb")),
                            env=home.env, cwd=home.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=constrain)
    try:
        _wait(lambda: home.forks("command") > before, what="the command's fork")
        fork = int(home.log().split(" command ")[-1].split()[0])

        def open_files() -> list[str]:
            limits = Path(f"/proc/{fork}/limits").read_text().splitlines()
            return [line.split()[3] for line in limits if line.startswith("Max open files")]

        _wait(lambda: open_files() == [str(lowered)], timeout=10, what="the fork to take the command's limits")
        assert int(Path(f"/proc/{fork}/stat").read_text().rsplit(")", 1)[1].split()[16]) == os.getpriority(
            os.PRIO_PROCESS, 0) + 7
        assert sorted(os.sched_getaffinity(fork)) == cpus
    finally:
        proc.kill()
        proc.wait(timeout=30)
