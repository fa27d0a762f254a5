"""Money and processes: what a re-run, a fault, a second process and a kill cost.

Real pieces throughout: the simulator over loopback HTTP (with fault injection), the store in
tmp_path, the baseline flow in this process or the `promptcycle` command in real subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import yaml

from promptcycle.evaluation import progress
from promptcycle.sim.server import FaultConfig, LatencyOverride
from simserver import ServerThread

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-test-right-key"


def write_config(tmp_path: Path, base_url: str, *, models=("nano", "mini"), spectrums=2, repeats=1,
                 **provider) -> Path:
    """pipelines.yaml with the repository's pipeline, served by the sim-server at `base_url`."""
    data = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    data["providers"] = {"sim": {"kind": "openai", "base_url": base_url, "api_key_env": "LEDGER_SIM_KEY",
                                 "max_concurrency": 8, "max_retries": 2, "backoff_seconds": 0.05,
                                 "max_backoff_seconds": 0.2, **provider}}
    data["models"] = {m: {**data["models"][m], "provider": "sim"} for m in models}
    pipe = data["pipelines"]["customer-insights"]
    pipe["models"] = list(models)
    pipe["dataset"]["spectrums"] = pipe["dataset"]["spectrums"][:spectrums]
    pipe["repeats"] = repeats
    pipe.pop("deployment", None)
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def store_figures(store: Path, run_id: str | None = None) -> dict:
    where = "WHERE run_id = ?" if run_id else ""
    params = [run_id] if run_id else []
    with duckdb.connect(str(store), read_only=True) as con:
        answered, attempts = con.execute(f"SELECT count(*), coalesce(sum(attempts), 0) FROM responses {where}",
                                         params).fetchone()
        failed = con.execute(f"SELECT coalesce(sum(attempts), 0) FROM results {where} "
                             f"{'AND' if where else 'WHERE'} error IS NOT NULL", params).fetchone()[0]
        waits = con.execute(f"SELECT count(*) FILTER (WHERE attempts > 1 AND wait_ms > 0), "
                            f"count(*) FILTER (WHERE attempts > 1) FROM responses {where}", params).fetchone()
        errors = con.execute(f"SELECT count(*) FROM results {where} {'AND' if where else 'WHERE'} error IS NOT NULL",
                             params).fetchone()[0]
    return {"answered": answered, "attempts": int(attempts) + int(failed), "retried_with_wait": waits[0],
            "retried": waits[1], "errors": errors}


def run_baseline(config: Path, store: Path, limit: int):
    from promptcycle_flows.baseline import baseline

    return asyncio.run(baseline(pipeline="customer-insights", config_path=str(config), store_path=str(store),
                                limit=limit))


# -- 1. a run that ended in errors is retried ------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_that_ended_in_errors_is_retried_by_the_same_command(prefect_harness, tmp_path, monkeypatch):
    from promptcycle.errors import PromptcycleError

    notes: list[str] = []
    progress.add_note_listener(notes.append)
    store = tmp_path / "m.duckdb"
    total = 2 * 2 * 5
    try:
        # A provider outage: every chat completion answers 503 (its models list still answers, so the
        # check before spending passes — a wrong key would be stopped there, before any call).
        outage = FaultConfig(server_error_rate=1.0, server_error_statuses=(503,))
        with ServerThread(outage, LatencyOverride(fixed_ms=5), require_api_key=KEY) as server:
            config = write_config(tmp_path, server.base_url)
            monkeypatch.setenv("LEDGER_SIM_KEY", KEY)
            with pytest.raises(PromptcycleError):  # every row ended in an error
                run_baseline(config, store, limit=5)
            figures = store_figures(store)
            assert figures["errors"] == total
            # Every error row counts its requests; a probe the circuit breaker lets through while half-open can
            # land after its cell gave up, so the store may count one fewer than the server saw (the exact count
            # is asserted without a breaker in test_every_request_the_provider_received_is_an_attempt_in_the_store).
            assert total <= figures["attempts"] <= server.state.requests

            server.app.faults = FaultConfig()  # the outage is over: the same command again
            server.state.reset()
            summary = run_baseline(config, store, limit=5)
            assert summary.resumed and summary.errors == 0 and summary.rows == total
            assert server.state.requests == total  # each failed call retried once, nothing else
            assert any(f"resuming run {summary.run_id}: 0 of {total} recorded, {total} ended in error and are retried"
                       in n for n in notes), notes

            server.state.reset()
            again = run_baseline(config, store, limit=5)  # completed: a new run, every answer from the ledger
            assert server.state.requests == 0 and again.calls_paid == 0 and again.calls_reused == total
    finally:
        progress.remove_note_listener(notes.append)


def test_a_cell_retries_its_errors_in_a_new_process_and_carries_their_attempts(tmp_path):
    """The mechanism under the baseline's and the optimization's evaluations, without the engine: a
    re-run (a new event loop, as a new process has) calls again what ended in error, and the row that
    finally records a call counts every request it took, in this and earlier runs and task attempts."""
    from pydantic import SecretStr

    from promptcycle.config import ModelConfig, ProviderConfig
    from promptcycle.datasets import load_cases
    from promptcycle.evaluation.cells import CellSpec, RetryCellError, evaluate_cell
    from promptcycle.prompts import PromptTemplate
    from promptcycle.providers import OpenAICompatibleProvider
    from promptcycle.scoring import build_scorers
    from promptcycle.store import MetricsStore

    cases = load_cases("bundled:customer_insights")[:6]
    models = {"nano": ModelConfig(provider="sim", model="sim-nano")}
    store = MetricsStore(tmp_path / "m.duckdb")
    spec = CellSpec(run_id="run-1", pipeline="p", model_name="nano", model=models["nano"], spectrum="mixed",
                    prompt=PromptTemplate(system="s", template="{{customer}} {{question}}"), cases=cases, splits={},
                    repeats=1, weights={"completeness": 1.0})

    def attempt(server, key: str, *, final: bool):
        async def go():
            conf = ProviderConfig(kind="openai", base_url=server.base_url, max_retries=1, backoff_seconds=0.01)
            async with OpenAICompatibleProvider("sim", conf, models, api_key=SecretStr(key)) as provider:
                return await evaluate_cell(spec, provider=provider, provider_name="sim",
                                           scorers=build_scorers({"completeness": {"weight": 1.0}}), store=store,
                                           final_attempt=final)
        return asyncio.run(go())

    # A 401 is answered before any fault is drawn: the 503s go to the first four authorised requests.
    with ServerThread(FaultConfig(fail_first=4, fail_kind="server_error"), require_api_key=KEY) as server:
        assert attempt(server, "sk-wrong", final=True).errors == 6  # a wrong key: six terminal errors
        assert server.state.requests == 6
        # The key fixed, one process: its first task attempt meets the 503s (two calls are left for the
        # next attempt after their one client retry), the last attempt answers them.

        async def two_task_attempts():
            conf = ProviderConfig(kind="openai", base_url=server.base_url, max_retries=1, backoff_seconds=0.01)
            async with OpenAICompatibleProvider("sim", conf, models, api_key=SecretStr(KEY)) as provider:
                kwargs = dict(provider=provider, provider_name="sim", store=store,
                              scorers=build_scorers({"completeness": {"weight": 1.0}}))
                try:
                    await evaluate_cell(spec, final_attempt=False, concurrency=2, **kwargs)
                except RetryCellError:
                    pass
                return await evaluate_cell(spec, final_attempt=True, **kwargs)

        outcome = asyncio.run(two_task_attempts())
        assert outcome.errors == 0
    figures = store_figures(store.path, "run-1")
    assert figures["errors"] == 0 and figures["answered"] == 6
    assert figures["attempts"] == server.state.requests == 6 + 4 + 6  # the 401s, the 503s and the answers


def test_a_strategys_own_call_goes_through_the_same_ledger_and_budget(tmp_path):
    """`meta` asks a model for rewrites outside any cell: the call is paid once within the optimization's
    budget and recorded in the ledger; the identical call later is answered from it, free, even with the
    budget spent; a new call past the cap is refused before anything is sent."""
    from pydantic import SecretStr

    from promptcycle.catalog import load_config
    from promptcycle.errors import BudgetExceededError
    from promptcycle.evaluation.ledger import ledgered_complete
    from promptcycle.evaluation.pool import close_providers
    from promptcycle.optimize.budget import Budget
    from promptcycle.store import MetricsStore

    store = MetricsStore(tmp_path / "m.duckdb")
    asked: list[str] = []

    async def key_of(provider: str) -> SecretStr:
        asked.append(provider)
        return SecretStr(KEY)

    messages = [{"role": "system", "content": "You rewrite prompts."}, {"role": "user", "content": "Rewrite it."}]
    other = [{"role": "user", "content": "Rewrite it again."}]
    with ServerThread(require_api_key=KEY) as server:
        config = load_config(write_config(tmp_path, server.base_url))

        async def go():
            try:
                budget = Budget(max_calls=1)
                complete = ledgered_complete(config, store, "opt-1", key_of=key_of, budget=budget)
                first = await complete("nano", messages)
                assert budget.spend()["calls"] == 1 and server.state.requests == 1
                again = await ledgered_complete(config, store, "opt-2", key_of=key_of,
                                                budget=Budget(max_calls=0))("nano", messages)
                with pytest.raises(BudgetExceededError):
                    await complete("nano", other)
                return first, again
            finally:
                await close_providers()

        first, again = asyncio.run(go())
        assert server.state.requests == 1  # the reuse and the refusal sent nothing
    assert again.text == first.text and again.cost_usd == first.cost_usd
    assert asked == ["sim"]  # the key is loaded at the first paid call only
    with duckdb.connect(str(store.path), read_only=True) as con:
        rows = con.execute("SELECT run_id, provider, model, attempts FROM responses").fetchall()
    assert rows == [("opt-1", "sim", "sim-nano", 1)]


# -- 2. every attempt is counted, waiting apart from latency ---------------------------------------------------

@pytest.mark.slow
def test_every_request_the_provider_received_is_an_attempt_in_the_store(prefect_harness, tmp_path, monkeypatch):
    faults = FaultConfig(server_error_rate=0.25, rate_limit_rate=0.15, retry_after_seconds=0.05, seed=3)
    store = tmp_path / "m.duckdb"
    monkeypatch.setenv("LEDGER_SIM_KEY", KEY)
    with ServerThread(faults=faults, latency=LatencyOverride(fixed_ms=5)) as server:
        # One retry in the client: many calls fail twice and are left to the cell's task retries.
        config = write_config(tmp_path, server.base_url, max_retries=1)
        try:
            summary = run_baseline(config, store, limit=10)
        except Exception:  # noqa: BLE001 - a cell may end with recorded errors; what was paid is the point
            summary = None
        received = server.state.requests
    figures = store_figures(store)
    assert server.state.faults and received > figures["answered"]  # faults were injected and retried
    assert figures["attempts"] == received
    if summary is not None:
        assert summary.calls_paid == received
    # A call that needed more than one attempt waited (failed attempts, back-off) apart from its latency.
    assert figures["retried"] > 0 and figures["retried_with_wait"] == figures["retried"]


# -- 3 and 4: real processes ----------------------------------------------------------------------------------

def _cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "promptcycle_cli.main", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _env() -> dict:
    # The session's Prefect home: the commands share its local server, as a user's commands do (a
    # server of their own would cost each test a cold start).
    return dict(os.environ, PYTHONPATH=str(REPO), LEDGER_SIM_KEY=KEY)


@pytest.mark.slow
def test_concurrent_copies_of_one_baseline_pay_each_call_once_and_say_what_they_did(tmp_path):
    store = tmp_path / "m.duckdb"
    limit, copies = 10, 4
    distinct = 2 * 2 * limit * 3
    with ServerThread(latency=LatencyOverride(fixed_ms=400)) as server:
        config = write_config(tmp_path, server.base_url, repeats=3, max_concurrency=4)
        args = ["baseline", "--config", str(config), "--store", str(store), "--limit", str(limit), "--json"]
        procs = [_cli(args, _env()) for _ in range(copies)]
        outputs = [p.communicate(timeout=400) for p in procs]
        received = server.state.requests
    said = []
    for proc, (out, err) in zip(procs, outputs):
        if proc.returncode == 0:
            summary = json.loads(out)
            assert "starting run" in err or "resuming run" in err, err[-2000:]
            said.append("ran")
        else:
            assert proc.returncode == 1 and "PipelineBusyError" in out + err, (out + err)[-2000:]
            assert json.loads(out)["error"] == "PipelineBusyError"
            assert "already being run by another process" in json.loads(out)["message"]
            said.append("refused")
    assert said.count("ran") >= 1
    print(f"{copies} copies: {said}; {received} requests for {distinct} distinct calls")
    assert received == distinct, f"{received} requests for {distinct} distinct calls ({said})"


def test_a_forked_process_is_another_lease_holder():
    """The command host runs commands in forks of one process (cli/host.py): each must hold leases as itself."""
    from promptcycle.evaluation import lease

    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write, lease.HOLDER.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    forked = os.read(read, 200).decode()
    os.close(read)
    assert forked != lease.HOLDER
    assert forked.split(":")[1] == str(child) and lease.HOLDER.split(":")[1] == str(os.getpid())


@pytest.mark.slow
def test_a_kill_costs_at_most_the_answers_of_the_last_second(tmp_path):
    """README, "What a kill costs": a kill re-pays at most the answers of the last flush interval (1 s)
    plus one store write, and the calls in flight."""
    store = tmp_path / "m.duckdb"
    limit, concurrency, latency_s = 30, 8, 0.1
    total = 2 * 2 * limit * 4
    rate = concurrency / latency_s  # answers per second at most
    # The flush interval (1 s), one store write under way (allowed 1 s: a write takes ~0.1-0.5 s, longer when
    # the suite loads both cores), and the calls in flight.
    bound = rate * (1.0 + 1.0) + concurrency
    kill_at = 300  # ~3.8 s of calls: an unbounded buffer would re-pay all of them, far above the bound
    with ServerThread(latency=LatencyOverride(fixed_ms=latency_s * 1000)) as server:
        config = write_config(tmp_path, server.base_url, repeats=4, max_concurrency=concurrency)
        args = ["baseline", "--config", str(config), "--store", str(store), "--limit", str(limit), "--json"]
        env = _env()
        proc = _cli(args, env)
        deadline = time.monotonic() + 300
        while server.state.requests < kill_at and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        os.killpg(proc.pid, signal.SIGKILL)  # the command and its data worker (the local server, in its own
        # session, lives on and serves the re-run)
        proc.wait()
        first = server.state.requests
        assert first < total

        again = _cli(args, env)
        out, err = again.communicate(timeout=400)
        assert again.returncode == 0, err[-3000:]
        second = server.state.requests - first
    assert json.loads(out)["rows"] == total and "resuming run" in err
    re_paid = first + second - total
    print(f"kill at {first} requests: {re_paid} calls paid twice (bound {bound:.0f})")
    assert 0 <= re_paid <= bound, f"{re_paid} calls paid twice after a kill at {first} requests (bound {bound:.0f})"
