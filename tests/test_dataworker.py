"""The data worker process: the pipeline's DuckDB and Great Expectations work, out of its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from promptcycle import dataworker
from promptcycle.errors import StoreError
from promptcycle.store.remote import RemoteStore, open_store

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fresh_worker(monkeypatch):
    monkeypatch.delenv("PROMPTCYCLE_DATA_IN_PROCESS", raising=False)
    yield
    dataworker.shutdown()


def test_store_calls_run_in_the_worker_and_return_results(tmp_path):
    store = open_store(tmp_path / "m.duckdb")
    assert isinstance(store, RemoteStore)
    assert store.write_splits("key", {"a": "train", "b": "test"}) == 2
    assert store.get_splits("key") == {"a": "train", "b": "test"}
    assert dataworker._process is not None and dataworker._process.pid != os.getpid()


def test_a_held_store_stays_open_in_the_worker_for_the_calls_inside_and_closes_after(tmp_path):
    import duckdb

    path = tmp_path / "m.duckdb"
    store = open_store(path)
    store.write_splits("key", {"a": "train"})

    def another_process_opens() -> bool:
        probe = subprocess.run([sys.executable, "-c", f"import duckdb; duckdb.connect({str(path)!r}).close()"],
                               capture_output=True, text=True)
        return probe.returncode == 0

    assert another_process_opens()  # between calls, the worker keeps nothing open
    with store.held_open():
        assert store.write_splits("key", {"b": "test"}) == 1
        assert store.get_splits("key") == {"a": "train", "b": "test"}
        assert not another_process_opens()  # DuckDB: one process at a time, and the worker holds it
    assert another_process_opens()
    with pytest.raises(StoreError):  # an error inside is the one reported, and the hold still ends
        with store.held_open():
            store.finish_run("nope", "failed", {})
    assert another_process_opens()
    assert duckdb.connect(str(path), read_only=True).execute("select count(*) from splits").fetchone()[0] == 2


def test_worker_errors_come_back_typed(tmp_path):
    store = open_store(tmp_path / "m.duckdb")
    with pytest.raises(StoreError, match="cannot finish run 'nope'"):
        store.finish_run("nope", "failed", {})
    # The worker survives a raised error and serves the next call.
    assert store.get_prompt_version("0" * 16) is None


def test_a_worker_killed_between_calls_is_replaced(tmp_path):
    store = open_store(tmp_path / "m.duckdb")
    store.write_splits("key", {"a": "train"})
    old = dataworker._process.pid
    os.kill(old, signal.SIGKILL)
    dataworker._process.wait()
    assert store.get_splits("key") == {"a": "train"}  # a new worker, the same file
    assert dataworker._process.pid != old


def test_a_worker_dying_during_a_call_fails_that_call_clearly(tmp_path):
    with pytest.raises(StoreError, match="data worker process ended while running _exit"):
        dataworker.call(os._exit, 3)
    assert open_store(tmp_path / "m.duckdb").get_splits("key") == {}


def test_in_process_mode_uses_the_store_directly(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTCYCLE_DATA_IN_PROCESS", "1")
    from promptcycle.store.metrics import MetricsStore

    assert isinstance(open_store(tmp_path / "m.duckdb"), MetricsStore)


def test_a_script_without_a_main_guard_can_use_the_store(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(f"""
        from promptcycle.store.remote import open_store
        store = open_store({str(tmp_path / "m.duckdb")!r})
        store.write_prompt_version(__import__("promptcycle.store.records", fromlist=["x"]).PromptVersionRecord(
            prompt_hash="abc", pipeline="p", system="", template="{{{{q}}}}", variables=["q"]))
        print(store.get_prompt_version("abc").template)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{{q}}"
    assert "leaked" not in out.stderr


def test_the_pipeline_process_loads_no_data_libraries():
    code = ("import sys, promptcycle_flows.baseline, promptcycle_cli.main, promptcycle.catalog as c; "
            "c.load_config('pipelines.yaml'); "
            "print(','.join(m for m in ('pandas','pyarrow','duckdb','great_expectations') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
