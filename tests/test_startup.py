"""Start-up: Prefect's local server (reused, stopped when idle, never orphaned), the data worker's end with its
parent, and dataset-suite verdicts reused only for identical input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import certifi
import duckdb
import pytest

from promptcycle.config import SplitConfig
from promptcycle.datasets import Case, assign_splits
from promptcycle.quality import verdicts
from promptcycle.quality.report import QualityReport

SPECTRUMS = ["credit_analysis", "customer_profile"]


# -- processes ------------------------------------------------------------------------------------------------

def _processes_of_home(home: Path) -> dict[int, str]:
    """Live processes (not zombies) whose environment names this Prefect home: pid -> command line."""
    found = {}
    needle = f"PREFECT_HOME={home}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return found


def _rows(store: Path) -> int:
    try:
        with duckdb.connect(str(store), read_only=True) as con:
            return con.execute("select count(*) from results").fetchone()[0]
    except (duckdb.IOException, duckdb.CatalogException):
        return -1


def _cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "promptcycle_cli.main", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_gone(home: Path, seconds: float) -> dict[int, str]:
    deadline = time.monotonic() + seconds
    left = _processes_of_home(home)
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = _processes_of_home(home)
    return left


def _kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def test_the_data_worker_ends_with_its_parent_even_if_its_stdin_stays_open(tmp_path):
    # The parent starts a worker, and a second process inherits the write end of the worker's stdin:
    # the worker never reads end-of-file, so only its parent's death can tell it to stop.
    parent_code = (
        "import subprocess, sys, time\n"
        "w = subprocess.Popen([sys.executable, '-m', 'promptcycle.dataworker'], stdin=subprocess.PIPE,\n"
        "                     stdout=subprocess.PIPE)\n"
        "h = subprocess.Popen(['sleep', '120'], pass_fds=[w.stdin.fileno()])\n"
        "print(w.pid, h.pid, flush=True)\n"
        "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    worker, holder = map(int, parent.stdout.readline().split())
    try:
        time.sleep(1.0)
        assert Path(f"/proc/{worker}").exists()
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(worker):
            time.sleep(0.1)
        assert not _alive(worker), "the data worker outlived its parent"
    finally:
        _kill_all([worker, holder])
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_kill_9_of_the_command_leaves_no_server_or_worker_behind(tmp_path, repo_config):
    home = tmp_path / "prefect-home"
    env = dict(os.environ, PREFECT_HOME=str(home), PROMPTCYCLE_SERVER_IDLE_SECONDS="3",
               PROMPTCYCLE_CACHE_DIR=str(tmp_path / "cache"))
    store = tmp_path / "killed.duckdb"
    proc = _cli(["baseline", "--config", str(repo_config), "--store", str(store), "--limit", "12", "--json"], env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and _rows(store) <= 0:
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-2000:]
        running = _processes_of_home(home)
        assert any("promptcycle.dataworker" in c for c in running.values()), running
        assert any("prefect" in c or "local_server" in c for c in running.values()), running
        proc.send_signal(signal.SIGKILL)  # the command only, as `kill -9 PID` does
        proc.wait()
        left = _wait_gone(home, 20)
        assert not left, f"still running 20 s after kill -9 of the command: {left}"
    finally:
        proc.kill()
        _kill_all(_processes_of_home(home))


@pytest.mark.slow
def test_the_next_command_reuses_the_server_and_it_stops_when_idle(tmp_path, repo_config):
    home = tmp_path / "prefect-home"
    env = dict(os.environ, PREFECT_HOME=str(home), PROMPTCYCLE_SERVER_IDLE_SECONDS="10",
               PROMPTCYCLE_CACHE_DIR=str(tmp_path / "cache"))
    state = home / "promptcycle-server.json"
    args = ["baseline", "--config", str(repo_config), "--limit", "1", "--repeats", "1", "--json"]
    try:
        servers = []
        for n in range(2):
            proc = _cli([*args, "--store", str(tmp_path / f"run{n}.duckdb")], env)
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
            assert json.loads(out)["rows"] == 7 * 7
            servers.append(json.loads(state.read_text())["pid"])
            alive = _processes_of_home(home)
            # One server for the home, kept for the next command; the data worker ended with its command.
            assert list(alive) == [servers[-1]], alive
            assert "promptcycle_cli.local_server" in alive[servers[-1]]
        assert servers[0] == servers[1]
        left = _wait_gone(home, 60)
        assert not left, f"the idle server did not stop: {left}"
    finally:
        _kill_all(_processes_of_home(home))


_CA_CHECK = """
import json, ssl, sys
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_SSL_CERT_FILE
from promptcycle_cli import local_server

with local_server.serving("baseline"):
    url = local_server.ready()
    ca = PREFECT_API_SSL_CERT_FILE.value()
    certs = ssl.create_default_context(cafile=ca).cert_store_stats()["x509_ca"]
    with get_client(sync_client=True) as client:
        healthy = client.api_healthcheck() is None
print(json.dumps({"url": url, "ca": ca, "certs": certs, "healthy": healthy, "bundled": str(local_server.LOOPBACK_CA)}))
"""


@pytest.mark.slow
def test_prefect_clients_of_the_local_server_load_one_certificate_not_the_bundle(tmp_path):
    """Plain HTTP on loopback: Prefect's clients get the one-certificate CA file (their SSL contexts cost
    ~0.5 ms, not ~25 ms each) and still reach the server — also where SSL_CERT_FILE (the default of
    Prefect's CA setting) or Prefect's own setting names a bundle. Run as a command runs (its own
    process, no Prefect API configured)."""
    home = tmp_path / "home"
    bundle = str(tmp_path / "bundle.pem")  # a bundle of many authorities
    shutil.copy(certifi.where(), bundle)
    base = {k: v for k, v in os.environ.items()
            if k not in ("PREFECT_API_URL", "PREFECT_API_SSL_CERT_FILE", "SSL_CERT_FILE")}
    seen = []
    try:
        for setting in ({}, {"SSL_CERT_FILE": bundle}, {"PREFECT_API_SSL_CERT_FILE": bundle}):
            env = {**base, "PREFECT_HOME": str(home), **setting}
            seen.append(json.loads(subprocess.run([sys.executable, "-c", _CA_CHECK], env=env, capture_output=True,
                                                  text=True, timeout=300, check=True).stdout.strip().splitlines()[-1]))
    finally:
        _kill_all(_processes_of_home(home))
    assert seen[0]["url"].startswith("http://127.0.0.1:")
    for run in seen:
        assert run["url"] == seen[0]["url"] and run["healthy"], run
        assert run["ca"] == run["bundled"] and run["certs"] == 1, run
    assert ssl.create_default_context(cafile=bundle).cert_store_stats()["x509_ca"] > 50  # what was set aside


def test_a_configured_prefect_api_is_used_as_is(monkeypatch, tmp_path):
    from promptcycle_cli import local_server

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert local_server.ensure_server() is None
    assert not (tmp_path / "home" / local_server.STATE_FILE).exists()


# -- dataset-suite verdicts -----------------------------------------------------------------------------------

def _cases(per_spectrum: int = 5) -> list[Case]:
    return [Case(id=f"{s}-{i:03d}", spectrum=s,
                 inputs={"customer": {"credit_score": 700 + i}, "question": "What is the credit score?"},
                 facts={"credit_score": 700 + i}, reference=f"Credit score: {700 + i}.")
            for s in SPECTRUMS for i in range(1, per_spectrum + 1)]


def test_a_passing_verdict_is_reused_only_for_identical_input(tmp_path, monkeypatch):
    from promptcycle.quality.worker import _validate_dataset

    monkeypatch.setenv("PROMPTCYCLE_CACHE_DIR", str(tmp_path))
    cases = _cases()
    splits = assign_splits(cases, SplitConfig())
    kw = {"spectrums": SPECTRUMS, "min_cases_per_spectrum": 4, "recorded_splits": None}

    first = _validate_dataset(cases, splits, **kw)
    assert first.success and first.reused is None and first.n_expectations > 0
    again = _validate_dataset(cases, splits, **kw)
    assert again.success and again.reused is not None
    assert (again.n_rows, again.n_expectations) == (first.n_rows, first.n_expectations)
    assert "identical input" in again.summary() and again.to_dict()["reused"]["key"]
    assert _validate_dataset(cases, splits, **kw, reuse_verdict=False).reused is None

    # One character of one case, a split, the minimum or the recorded splits: another key, the suite runs.
    blank = [c.model_copy(update={"inputs": {**c.inputs, "question": " "}}) if c.id == cases[0].id else c
             for c in cases]
    failed = _validate_dataset(blank, splits, **kw)
    assert not failed.success and failed.reused is None
    assert _validate_dataset(cases, splits, **{**kw, "min_cases_per_spectrum": 6}).success is False
    moved = {**splits, cases[0].id: next(s for s in ("train", "dev", "test") if s != splits[cases[0].id])}
    assert _validate_dataset(cases, splits, **{**kw, "recorded_splits": moved}).success is False
    assert len({verdicts.dataset_key(cases, s, spectrums=SPECTRUMS, min_cases_per_spectrum=4, recorded_splits=r)
                for s, r in [(splits, None), (moved, None), (splits, splits)]}) == 3
    # Failures are never kept: only the one passing verdict is on disk.
    assert len(list(verdicts.cache_dir().glob("*.json"))) == 1


def test_a_failing_or_reused_report_is_not_kept_and_a_corrupt_one_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTCYCLE_CACHE_DIR", str(tmp_path))
    verdicts.save("k1", QualityReport(suite="dataset", success=False, n_rows=3,
                                      failures=[{"expectation": "ids unique"}], n_expectations=5))
    assert verdicts.load("k1") is None and not list(tmp_path.rglob("*.json"))
    verdicts.save("k2", QualityReport(suite="dataset", success=True, n_rows=3, n_expectations=5))
    assert verdicts.load("k2").reused["key"] == "k2"
    (verdicts.cache_dir() / "k2.json").write_text("{not json")
    assert verdicts.load("k2") is None


def test_deploy_says_the_local_server_is_reused_like_the_other_commands(capsys):
    import argparse

    from promptcycle_cli.commands.deploy import _starting

    _starting(argparse.Namespace(json=False), "Deploying 'customer-insights'")
    err = capsys.readouterr().err
    assert "local server is reused" in err and "temporary server" not in err, err


def _loaded_after(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` a fresh interpreter has imported after running `code`."""
    probe = f"{code}\nimport sys\nprint(','.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    return [m for m in out.split(",") if m]


def test_the_store_opens_without_the_statistics_or_the_monitor():
    # The data worker imports the store first, and a baseline's first model call waits on it: the detectors'
    # statistics (scipy, ~1 s here) and Great Expectations must stay out of that import.
    assert _loaded_after("import promptcycle.store.metrics", ("scipy", "promptcycle.monitor.detectors",
                                                             "promptcycle.stats", "great_expectations")) == []


def test_the_cli_parser_leaves_the_optimizer_and_prefect_unimported_yet_names_the_strategies():
    # Every command builds the whole parser before it starts: the optimizer (~0.1 s) is imported by the commands
    # that use it, and `optimize --help` still lists the registered strategies.
    assert _loaded_after("from promptcycle_cli.main import build_parser\nbuild_parser()",
                         ("prefect", "promptcycle.optimize", "promptcycle.optimize.strategies")) == []
    shown = subprocess.run([sys.executable, "-m", "promptcycle_cli.main", "optimize", "--help"], capture_output=True,
                           text=True, check=True, env=dict(os.environ, COLUMNS="200")).stdout
    assert "known: checklist, combined, few_shot, format_spec, grounding" in shown
