"""`promptcycle serve` against a real `prefect server start` on loopback: the deployments and their schedules are
registered, a scheduled pass of the loop runs by itself, the parameters are typed in the server's schema, a run
started through a deployment runs, a run started through the HTTP API's trigger endpoint completes, and Ctrl-C stops
it cleanly with the schedules paused."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from promptcycle.loopback import free_port
from promptcycle.phases import PHASES, deployment_name
from server_support import OFFLINE, SERVER_PORTS, STARTUP_S, stop

REPO = Path(__file__).resolve().parent.parent
PIPE = "customer-insights"
RUN_WITHIN_S = 420  # the first scheduled pass: the schedule, the runner's poll, a process start, the probe
TRIGGERED_WITHIN_S = 300  # a one-case baseline started over HTTP: the runner's poll, a process start, 2 calls
API_TOKEN = "e2e-token-" + "5c" * 16


def _config(tmp_path: Path) -> Path:
    """The repository's pipeline, small: one spectrum, one serving model, a 12-case probe, a pass every 30 s."""
    data = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    pipe = data["pipelines"][PIPE]
    pipe["dataset"]["spectrums"] = pipe["dataset"]["spectrums"][:1]
    pipe["models"] = ["mini", "xl"]
    pipe["deployment"]["serving_models"] = ["xl"]
    pipe["monitor"] = {"probe_cases": 12, "interval_minutes": 0.5}
    pipe["schedules"] = {"timezone": "Europe/Paris", "baseline": "0 3 * * *", "monitor": True,
                         "canary_minutes": 600}
    data["store"] = "metrics.duckdb"
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class _Lines:
    """The lines a process writes to a pipe, collected by a thread (so the pipe never fills)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def wait_for(self, predicate, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if predicate(line):
                    return line
            time.sleep(0.5)
        raise AssertionError(f"not seen within {timeout:.0f} s; got: {''.join(self.lines)[-3000:]}")

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)


@pytest.mark.slow
def test_serve_registers_the_schedules_runs_the_loop_by_itself_and_stops_cleanly(prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api = prefect_server
    config = _config(tmp_path)
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(REPO), "PREFECT_API_URL": api,
           "PREFECT_HOME": str(tmp_path / "client-home"), "PREFECT_RUNNER_POLL_FREQUENCY": "2",
           "PROMPTCYCLE_LOG_DIR": str(tmp_path / "logs")}
    serve = subprocess.Popen([sys.executable, "-m", "promptcycle_cli.main", "serve", "--config", str(config),
                              "--json", "--limit", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True, cwd=tmp_path)
    out, err = _Lines(serve.stdout), _Lines(serve.stderr)
    # the application's API, started alongside (it imports Prefect and FastAPI: overlap its start with serve's)
    api_port = free_port(SERVER_PORTS)
    app_api = subprocess.Popen([sys.executable, "-m", "promptcycle_cli.main", "api", "--port", str(api_port),
                                "--config", str(config)], env={**env, "PROMPTCYCLE_API_TOKEN": API_TOKEN},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               cwd=tmp_path)
    app_err = _Lines(app_api.stderr)
    try:
        started = json.loads(out.wait_for(lambda line: line.startswith("{"), timeout=300))
        names = {row["deployment"] for row in started["deployments"]}
        assert names == {deployment_name(phase, PIPE) for phase in PHASES}
        assert started["ui_url"] == api.removesuffix("/api")
        with temporary_settings(updates={PREFECT_API_URL: api}):
            deployments = asyncio.run(_deployments(names))
            _check_schedules_and_parameters(deployments, config)
            cycle_run = asyncio.run(_first_scheduled_run(deployments[f"cycle/{PIPE}"].id, RUN_WITHIN_S))
            assert cycle_run.state.is_completed(), cycle_run.state
            children = asyncio.run(_children(cycle_run.id))
            assert [(c.name.split("-")[0], c.state.type.value) for c in children] == [("monitor", "COMPLETED")]
            # a run started through a served deployment, by the call the monitor hands healings over with
            first, again = asyncio.run(_start_twice(f"canary/{PIPE}", {"if_running": True}))
            assert again["flow_run_id"] == first["flow_run_id"]  # the same key starts one run, however often
            assert first["flow_run_url"].startswith(api.removesuffix("/api"))
            look = asyncio.run(_wait_final(first["flow_run_id"], 240))
            assert look.state.name == "NoCanary", look.state  # no canary runs: a scheduled look is no failure
            served = asyncio.run(_served())
            assert served == (f"healing/{PIPE}", None)  # what the monitor hands healings to, when served
            # what an application does: start a phase over HTTP; the served deployment runs it to completion
            triggered = _trigger_over_http(api_port, app_api, app_err, "baseline",
                                           {"limit": 1, "models": ["mini"]})
            assert triggered["deployment"] == f"baseline/{PIPE}" and triggered["state"] == "SCHEDULED", triggered
            assert triggered["url"] == f"{api.removesuffix('/api')}/runs/flow-run/{triggered['flow_run_id']}"
            baseline_run = asyncio.run(_wait_completed(triggered["flow_run_id"], TRIGGERED_WITHIN_S))
            assert baseline_run.parameters["limit"] == 1 and baseline_run.parameters["models"] == ["mini"]
            assert baseline_run.deployment_id == deployments[f"baseline/{PIPE}"].id
    finally:
        stop(app_api, signal.SIGINT)
        stop(serve, signal.SIGINT)  # Ctrl-C, as a terminal sends it: to the whole process group
    stderr = err.text()
    (tmp_path / "serve-stderr.txt").write_text(stderr)
    assert serve.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert "stopping: cancelling the runs in progress" in stderr and "stopped serving" in stderr, stderr
    with temporary_settings(updates={PREFECT_API_URL: api}):
        after = asyncio.run(_deployments(names))
    assert after[f"cycle/{PIPE}"].paused  # nothing piles up while nothing serves: the next serve resumes them

    from promptcycle.store import MetricsStore

    store = MetricsStore(tmp_path / "metrics.duckdb")
    runs = store.monitor_runs(PIPE)
    assert any(r["status"] == "completed" for r in runs), runs  # the scheduled pass stored its monitor run
    stored = store.latest_run(PIPE, "baseline")  # the triggered baseline's results, under its flow run
    assert stored is not None and stored.flow_run_id == triggered["flow_run_id"], stored
    assert (stored.case_limit, stored.models) == (1, ["mini"]), stored
    assert "Traceback" not in app_err.text(), app_err.text()


async def _deployments(names: set[str]) -> dict:
    from prefect import get_client

    async with get_client() as client:
        return {name: await client.read_deployment_by_name(name) for name in names}


def _check_schedules_and_parameters(deployments: dict, config: Path) -> None:
    baseline = deployments[f"baseline/{PIPE}"].schedules
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in baseline] == [("0 3 * * *", "Europe/Paris",
                                                                                      True)]
    cycle = deployments[f"cycle/{PIPE}"]
    assert [(s.schedule.interval.total_seconds(), s.active) for s in cycle.schedules] == [(30.0, True)]
    canary = deployments[f"canary/{PIPE}"]
    assert canary.schedules[0].schedule.interval.total_seconds() == 36000
    assert canary.schedules[0].parameters == {"if_running": True}
    for phase in ("optimization", "deployment", "monitor", "healing"):
        assert deployments[f"{phase}/{PIPE}"].schedules == []
    for deployment in deployments.values():
        assert deployment.parameters["pipeline"] == PIPE
        assert deployment.parameters["config_path"] == str(config.resolve())
    # typed, described and defaulted in the server's parameter schema (the UI's Run form)
    props = deployments[f"optimization/{PIPE}"].parameter_openapi_schema["properties"]
    assert props["pipeline"]["type"] == "string" and props["pipeline"]["default"] == "customer-insights"
    assert props["pipeline"]["description"] == "the pipeline's name in pipelines.yaml."
    assert {"type": "array", "items": {"type": "string"}} in props["strategies"]["anyOf"]
    assert {"type": "integer"} in props["max_calls"]["anyOf"] and "hard cap" in props["max_calls"]["description"]
    monitor = deployments[f"monitor/{PIPE}"].parameter_openapi_schema["properties"]
    assert monitor["heal"] == {**monitor["heal"], "type": "boolean", "default": True}
    assert {"type": "string", "format": "date-time"} in monitor["now"]["anyOf"]
    healing = deployments[f"healing/{PIPE}"].parameter_openapi_schema
    assert {"decision_id", "incident_id", "model", "spectrum"} <= set(healing["required"])


async def _first_scheduled_run(deployment_id, timeout: float):
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while time.monotonic() < deadline:
            runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(
                any_=[deployment_id])))
            # a pass that comes while the last one still runs is cancelled (the deployment's concurrency limit)
            done = [r for r in runs if r.auto_scheduled and r.state and r.state.is_final()
                    and not r.state.is_cancelled()]
            if done:
                return done[0]
            await asyncio.sleep(2)
        states = sorted(str(r.state_name) for r in runs)
    raise AssertionError(f"no scheduled run of the cycle finished within {timeout:.0f} s: {states}")


async def _children(flow_run_id):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async with get_client() as client:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))


async def _start_twice(name: str, parameters: dict):
    from promptcycle_flows.served import start_served_run

    key = f"test-{time.time()}"
    return await start_served_run(name, parameters, key), await start_served_run(name, parameters, key)


async def _wait_final(flow_run_id, timeout: float):
    from prefect import get_client

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while time.monotonic() < deadline:
            run = await client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                return run
            await asyncio.sleep(2)
    raise AssertionError(f"flow run {flow_run_id} did not finish within {timeout:.0f} s: {run.state}")


def _trigger_over_http(port: int, process: subprocess.Popen, stderr: "_Lines", phase: str,
                       parameters: dict) -> dict:
    """POST /v1/pipelines/{PIPE}/trigger/{phase} to `promptcycle api`, once it answers: the 202 body."""
    import httpx

    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + STARTUP_S
    while True:
        assert process.poll() is None, f"promptcycle api exited {process.returncode}: {stderr.text()[-3000:]}"
        try:
            if httpx.get(f"{base}/health", timeout=3).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"promptcycle api did not answer: {''.join(stderr.lines)[-3000:]}"
        time.sleep(1)
    response = httpx.post(f"{base}/pipelines/{PIPE}/trigger/{phase}", json={"parameters": parameters},
                          headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=60)
    assert response.status_code == 202, response.text
    return response.json()


async def _wait_completed(flow_run_id, timeout: float):
    """The flow run once it is Completed; fails with its last state and that state's message otherwise."""
    from prefect import get_client

    deadline = time.monotonic() + timeout
    run = None
    async with get_client() as client:
        while time.monotonic() < deadline:
            run = await client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                break
            await asyncio.sleep(2)
    state = run.state if run else None
    if state is None or not state.is_final():
        raise AssertionError(f"flow run {flow_run_id} did not end within {timeout:.0f} s: still "
                             f"{state.type.value + ' (' + state.name + ')' if state else 'without a state'}")
    assert state.is_completed(), f"flow run {flow_run_id} ended {state.type.value} ({state.name}): {state.message}"
    return run


async def _served():
    from promptcycle_flows.served import served_deployment

    return await served_deployment("healing", PIPE), await served_deployment("healing", "no-such-pipeline")


@pytest.mark.slow
def test_deployments_apply_registers_the_same_deployments_on_a_work_pool(prefect_server, tmp_path):
    """What workers run: the same names, schedules and parameters, on the pool, found by module path."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api = prefect_server
    config = _config(tmp_path)
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(REPO), "PREFECT_API_URL": api,
           "PREFECT_HOME": str(tmp_path / "client-home"), "PROMPTCYCLE_LOG_DIR": str(tmp_path / "logs")}

    def apply(pool: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "promptcycle_cli.main", "deployments", "apply", "--work-pool",
                               pool, "--config", str(config), "--config-path", "/srv/promptcycle/pipelines.yaml",
                               "--json"], env=env, capture_output=True, text=True, timeout=300)

    missing = apply("no-such-pool")
    assert missing.returncode == 2 and "prefect work-pool create no-such-pool" in missing.stdout

    async def create_pool() -> None:
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name="promptcycle-test", type="process"))

    with temporary_settings(updates={PREFECT_API_URL: api}):
        asyncio.run(create_pool())
        result = apply("promptcycle-test")
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)["deployments"]
        names = {row["deployment"] for row in rows}
        assert names == {deployment_name(phase, PIPE) for phase in PHASES}
        deployments = asyncio.run(_deployments(names))
    for phase in PHASES:
        d = deployments[deployment_name(phase, PIPE)]
        assert d.work_pool_name == "promptcycle-test" and not d.paused
        assert d.entrypoint == f"promptcycle_flows.{phase}.{phase}"
        assert d.parameters["config_path"] == "/srv/promptcycle/pipelines.yaml"
    cycle = deployments[f"cycle/{PIPE}"]
    assert [s.schedule.interval.total_seconds() for s in cycle.schedules] == [30.0]
