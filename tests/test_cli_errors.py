"""What a user sees when something goes wrong: the `promptcycle` command run as a subprocess, on real YAML
and DuckDB files in tmp_path.

The first screen is one clear message (file, path, what was expected, what to do), never a traceback;
tracebacks go to a log file the message names, or to the terminal with --debug. Bad input fails before
any call with exit status 2 and writes nothing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parent.parent
PIPE = "pipelines.customer-insights"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PROMPTCYCLE_LOG_DIR=str(tmp_path / "logs"), **extra)
    env.pop("PREFECT_API_URL", None)
    env.update(extra)
    return env


def _run(tmp_path: Path, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "promptcycle_cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(tmp_path, **env), cwd=tmp_path)


def _config(tmp_path: Path, old: str = "", new: str = "", name: str = "pipelines.yaml") -> Path:
    text = (REPO / "pipelines.yaml").read_text()
    if old:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def _lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _results(store: Path) -> int | None:
    """Rows in the store's results table; None when no store file was created."""
    if not store.exists():
        return None
    with duckdb.connect(str(store), read_only=True) as con:
        return con.execute("SELECT count(*) FROM results").fetchone()[0]


def _assert_short_and_clean(out: subprocess.CompletedProcess, *needles: str) -> None:
    lines = _lines(out.stderr)
    assert len(lines) <= 5, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr


# -- bad input fails at load: exit 2, the file and dotted path named, nothing written ----------------------------

def test_all_zero_scorer_weights_fail_at_load(tmp_path):
    config = _config(tmp_path, "completeness: {weight: 0.4}\n      accuracy: {weight: 0.4,",
                     "completeness: {weight: 0}\n      accuracy: {weight: 0,")
    config.write_text(config.read_text().replace("format: {weight: 0.1,", "format: {weight: 0,")
                      .replace("latency: {weight: 0.1}", "latency: {weight: 0}"))
    store = tmp_path / "m.duckdb"
    out = _run(tmp_path, "baseline", "--config", str(config), "--store", str(store), "--limit", "1")
    assert out.returncode == 2
    _assert_short_and_clean(out, str(config), f"{PIPE}.scorers", "weight 0")
    assert _results(store) is None


def test_a_duplicate_key_in_pipelines_yaml_is_an_error(tmp_path):
    config = _config(tmp_path, "    repeats: 1\n", "    repeats: 1\n    repeats: 3\n")
    store = tmp_path / "m.duckdb"
    out = _run(tmp_path, "baseline", "--config", str(config), "--store", str(store))
    assert out.returncode == 2
    _assert_short_and_clean(out, str(config), f"{PIPE}.repeats", "duplicate key 'repeats'")
    assert re.search(r"at line \d+ \(first at line \d+\)", out.stderr)
    assert _results(store) is None


@pytest.mark.parametrize("broken", ["{{question}", "{question}}", "{{ question name }}"])
def test_a_malformed_placeholder_fails_at_load(tmp_path, broken):
    config = _config(tmp_path, "{{question}}", broken)
    store = tmp_path / "m.duckdb"
    out = _run(tmp_path, "baseline", "--config", str(config), "--store", str(store))
    assert out.returncode == 2
    _assert_short_and_clean(out, str(config), f"{PIPE}.prompt.template", "malformed placeholder", "line 4")
    assert _results(store) is None


def test_a_single_brace_placeholder_of_a_case_field_fails_at_load(tmp_path):
    config = _config(tmp_path, "{{question}}", "{question}")
    out = _run(tmp_path, "validate", "--config", str(config), "--store", str(tmp_path / "m.duckdb"))
    assert out.returncode == 2
    _assert_short_and_clean(out, str(config), f"{PIPE}.prompt.template", "single braces", "{{question}}")


def test_an_unclosed_brace_before_a_case_field_fails_at_load(tmp_path):
    config = _config(tmp_path, "{{question}}", "{question")
    out = _run(tmp_path, "validate", "--config", str(config), "--store", str(tmp_path / "m.duckdb"))
    assert out.returncode == 2
    _assert_short_and_clean(out, str(config), f"{PIPE}.prompt.template", "nothing closes", "{{question}}")


def test_json_in_a_prompt_is_not_a_malformed_placeholder(tmp_path):
    config = _config(tmp_path, "Reply with a JSON object.",
                     'Reply with a JSON object such as {"a": {"b": [1, {"c": 2}]}} or {note}.')
    out = _run(tmp_path, "validate", "--config", str(config), "--store", str(tmp_path / "m.duckdb"))
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("kind", ["directory", "not duckdb", "read-only location"])
def test_a_store_that_cannot_be_opened_is_bad_input(tmp_path, kind):
    if kind == "directory":
        store = tmp_path / "a-directory"
        store.mkdir()
    elif kind == "not duckdb":
        store = tmp_path / "notes.duckdb"
        store.write_text("these are notes, not a database\n")
    else:
        store = Path("/proc/promptcycle-test.duckdb")  # not creatable, even by root
    out = _run(tmp_path, "validate", "--config", str(_config(tmp_path)), "--store", str(store))
    assert out.returncode == 2, out.stderr
    _assert_short_and_clean(out, "StorePathError", str(store))


def test_status_refuses_a_missing_store_instead_of_creating_one(tmp_path):
    config = _config(tmp_path)
    store = tmp_path / "mistyped.duckdb"
    out = _run(tmp_path, "status", "--config", str(config), "--store", str(store))
    assert out.returncode == 2
    _assert_short_and_clean(out, f"no metrics store at {store}", "promptcycle baseline")
    assert not store.exists()
    out = _run(tmp_path, "status", "--config", str(config), "--store", str(store), "--json")
    result = json.loads(out.stdout)
    assert out.returncode == 2 and result["success"] is False and result["error"] == "StorePathError"
    assert not store.exists()


def test_rollback_refuses_a_missing_store(tmp_path):
    store = tmp_path / "mistyped.duckdb"
    out = _run(tmp_path, "rollback", "--config", str(_config(tmp_path)), "--store", str(store))
    assert out.returncode == 2
    _assert_short_and_clean(out, f"no metrics store at {store}")
    assert not store.exists()


def test_status_json_says_success_and_no_flow_run(tmp_path):
    from promptcycle.store import MetricsStore

    store = tmp_path / "m.duckdb"
    MetricsStore(store)
    out = _run(tmp_path, "status", "--config", str(_config(tmp_path)), "--store", str(store), "--json")
    result = json.loads(out.stdout)
    assert out.returncode == 0
    assert result["success"] is True and result["flow_run_id"] is None and result["flow_run_url"] is None


# -- errors raised inside a flow: one clear message, the traceback in the log or behind --debug -------------------

@pytest.mark.slow
def test_a_failed_dataset_suite_inside_the_flow_prints_one_message_and_names_the_log(tmp_path):
    config = _config(tmp_path, "min_cases_per_spectrum: 20", "min_cases_per_spectrum: 2000")
    store = tmp_path / "m.duckdb"
    out = _run(tmp_path, "baseline", "--config", str(config), "--store", str(store), "--limit", "1")
    assert out.returncode == 1
    _assert_short_and_clean(out, "error (DataQualityError): dataset suite FAILED", "at least 2000 cases per spectrum")
    log = Path(re.search(r"details and traceback: (\S+)", out.stderr).group(1))
    assert log.parent == tmp_path / "logs"
    assert "Traceback" in log.read_text() and "DataQualityError" in log.read_text()
    assert _results(store) == 0

    debug = _run(tmp_path, "baseline", "--config", str(config), "--store", str(store), "--limit", "1", "--debug")
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "error (DataQualityError)" in debug.stderr


@pytest.mark.slow
def test_a_placeholder_no_case_provides_fails_before_any_call(tmp_path):
    config = _config(tmp_path, "{{question}}", "{{question}}\n        {{region}}")
    store = tmp_path / "m.duckdb"
    out = _run(tmp_path, "baseline", "--config", str(config), "--store", str(store), "--limit", "1")
    assert out.returncode == 2
    _assert_short_and_clean(out, str(config), f"{PIPE}.prompt.template", "{{region}}", "customer, question")
    assert not _results(store)  # no store, or one without a row


@pytest.mark.slow
def test_a_store_directory_inside_the_flow_is_bad_input(tmp_path):
    store = tmp_path / "a-directory"
    store.mkdir()
    out = _run(tmp_path, "baseline", "--config", str(_config(tmp_path)), "--store", str(store), "--limit", "1")
    assert out.returncode == 2
    _assert_short_and_clean(out, "StorePathError", f"{store} is a directory")


@pytest.mark.slow
def test_a_missing_global_concurrency_limit_is_a_configuration_error(tmp_path):
    config = _config(tmp_path, "    max_concurrency: 64\n",
                     "    max_concurrency: 64\n    global_concurrency_limit: no-such-limit\n")
    store = tmp_path / "m.duckdb"
    out = _run(tmp_path, "baseline", "--config", str(config), "--store", str(store), "--limit", "1")
    assert out.returncode == 2
    _assert_short_and_clean(out, str(config), "providers.simulator.global_concurrency_limit",
                            "prefect gcl create no-such-limit --limit N")
    assert "resume" not in out.stderr
    assert not _results(store)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_dead_prefect_server_is_one_line_naming_the_url(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/api"
    out = _run(tmp_path, "baseline", "--config", str(_config(tmp_path)), "--store", str(tmp_path / "m.duckdb"),
               "--limit", "1", PREFECT_API_URL=url)
    assert out.returncode == 3
    _assert_short_and_clean(out, f"cannot reach the Prefect API at {url}", "prefect server start",
                            "unset PREFECT_API_URL")
    assert "temporary server" not in out.stderr  # unset, promptcycle reuses (or starts) its local server
    error_lines = [line for line in _lines(out.stderr) if line.startswith("error")]
    assert len(error_lines) == 1

    out = _run(tmp_path, "baseline", "--config", str(_config(tmp_path)), "--store", str(tmp_path / "m.duckdb"),
               "--limit", "1", "--json", PREFECT_API_URL=url)
    result = json.loads(out.stdout)
    assert out.returncode == 3 and result["success"] is False and url in result["message"]


@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_no_traceback(tmp_path):
    store = tmp_path / "m.duckdb"
    proc = subprocess.Popen([sys.executable, "-m", "promptcycle_cli.main", "baseline", "--config", str(_config(tmp_path)),
                             "--store", str(store), "--repeats", "5"], env=_env(tmp_path), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if _results(store):
                break
        except duckdb.Error:  # the data worker holds the file while it writes
            pass
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted: " + proc.stderr.read()[-2000:]
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Exception" not in stderr, stderr
    assert "interrupted — re-run the same command to resume" in stderr
    # What was said before the interrupt (what is running, plain progress off a terminal), then one line.
    assert _lines(stderr)[-1] == "interrupted — re-run the same command to resume", stderr
    assert len(_lines(stderr)) <= 5, stderr


def test_sim_server_on_a_port_in_use_is_bad_input_not_an_unreachable_prefect(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run(tmp_path, "sim-server", "--port", str(port), timeout=60)
    assert result.returncode == 2, result.stderr  # 3 would say Prefect's API could not be reached
    assert f"error (ConfigError): --port: 127.0.0.1:{port} is already in use" in result.stderr, result.stderr
    assert "Errno" not in result.stderr.split("error (ConfigError)")[0]
