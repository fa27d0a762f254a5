"""Schedules in pipelines.yaml, the deployments `serve` registers, and what `serve` says when it has no server.

Fast tests: the config and the plan are plain data; the CLI is run in a subprocess against a dead port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from promptcycle.catalog import load_config
from promptcycle.errors import ConfigError
from promptcycle.phases import PHASES, deployment_name
from promptcycle.schedules import plan_deployments

REPO = Path(__file__).resolve().parent.parent
PIPE = "customer-insights"


def config_with(tmp_path: Path, schedules: dict | None = None, monitor: dict | None = None) -> Path:
    data = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    pipe = data["pipelines"][PIPE]
    if schedules is None:
        pipe.pop("schedules", None)
    else:
        pipe["schedules"] = schedules
    if monitor is not None:
        pipe["monitor"] = monitor
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(("schedules", "expect_in_message"), [
    ({"baseline": "0 2 * *"}, ["schedules.baseline", "5 fields", "this one has 4 fields", "found '0 2 * *'"]),
    ({"baseline": "61 * * * *"}, ["schedules.baseline", "a bad minute", "found '61 * * * *'"]),
    ({"baseline": "every night"}, ["schedules.baseline", "cron expression"]),
    ({"timezone": "Mars/Olympus"}, ["schedules.timezone", "IANA time zone", "found 'Mars/Olympus'"]),
    ({"canary_minutes": 0}, ["schedules.canary_minutes", "greater than 0"]),
    ({"monitor": "often"}, ["schedules.monitor", "found 'often'"]),
    ({"cron": "0 2 * * *"}, ["schedules.cron", "unknown key"]),
])
def test_a_bad_schedule_names_the_file_the_path_and_what_was_expected(tmp_path, schedules, expect_in_message):
    path = config_with(tmp_path, schedules)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and f"pipelines.{PIPE}.schedules" in message
    for part in expect_in_message:
        assert part in message


def test_the_repository_schedules_a_nightly_baseline_the_loop_and_canary_looks():
    plans = {p.phase: p for p in plan_deployments(load_config(REPO / "pipelines.yaml"), "/abs/pipelines.yaml")}
    assert set(plans) == set(PHASES)  # every phase is a deployment, scheduled or not
    assert plans["baseline"].cron == "0 2 * * *" and plans["baseline"].timezone == "UTC"
    assert plans["cycle"].interval_seconds == 30 * 60  # monitor.interval_minutes' default: one place says it
    assert plans["canary"].interval_seconds == 5 * 60 and plans["canary"].schedule_parameters == {"if_running": True}
    unscheduled = {"optimization", "deployment", "monitor", "healing"}
    assert {phase for phase, p in plans.items() if not p.scheduled} == unscheduled
    for phase, plan in plans.items():
        assert plan.full_name == deployment_name(phase, PIPE) == f"{PHASES[phase]}/{PIPE}"
        assert plan.parameters == {"pipeline": PIPE, "config_path": "/abs/pipelines.yaml"}


def test_the_loop_runs_at_the_monitor_interval_and_each_schedule_can_be_switched_off(tmp_path):
    path = config_with(tmp_path, {"timezone": "Europe/Paris", "baseline": "@daily", "monitor": False,
                                  "canary_minutes": None}, monitor={"interval_minutes": 10})
    plans = {p.phase: p for p in plan_deployments(load_config(path), path, store_path="/data/m.duckdb")}
    assert plans["baseline"].cron == "0 0 * * *" and plans["baseline"].schedule_text() == \
        "cron '0 0 * * *' (Europe/Paris)"
    assert not plans["cycle"].scheduled and not plans["canary"].scheduled
    assert plans["monitor"].parameters["store_path"] == "/data/m.duckdb"

    path = config_with(tmp_path, None, monitor={"interval_minutes": 10})  # no `schedules:` key: the defaults
    plans = {p.phase: p for p in plan_deployments(load_config(path), path)}
    assert plans["cycle"].interval_seconds == 600 and plans["cycle"].schedule_text() == "every 10 min"
    assert plans["baseline"].cron is None  # a baseline pays for every model x case: only when asked for


def _cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    for key in [k for k, v in full_env.items() if v is None]:
        full_env.pop(key)
    return subprocess.run([sys.executable, "-m", "promptcycle_cli.main", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)


def test_deployments_list_prints_every_deployment_and_its_schedule_without_a_server(tmp_path):
    path = config_with(tmp_path, {"baseline": "0 3 * * 1-5", "timezone": "America/New_York"})
    result = _cli("deployments", "list", "--config", str(path), "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["deployment"]: r for r in json.loads(result.stdout)["deployments"]}
    assert set(rows) == {deployment_name(phase, PIPE) for phase in PHASES}
    assert rows[f"baseline/{PIPE}"]["schedule"] == "cron '0 3 * * 1-5' (America/New_York)"
    assert rows[f"cycle/{PIPE}"]["interval_seconds"] == 1800


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: nothing listens there


def test_serve_says_clearly_when_the_prefect_api_does_not_answer(tmp_path):
    url = f"http://127.0.0.1:{_dead_port()}/api"
    result = _cli("serve", "--config", str(config_with(tmp_path, {})), env={"PREFECT_API_URL": url})
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert f"the Prefect API at {url} does not answer" in result.stderr and "prefect server start" in result.stderr


def test_serve_without_a_configured_server_says_how_to_start_one(tmp_path):
    profiles = tmp_path / "profiles.toml"  # an empty profile: no PREFECT_API_URL from the user's own profile
    profiles.write_text('active = "empty"\n[profiles.empty]\n')
    result = _cli("serve", "--config", str(config_with(tmp_path, {})),
                  env={"PREFECT_API_URL": None, "PREFECT_PROFILES_PATH": str(profiles)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "PREFECT_API_URL" in result.stderr and "prefect server start" in result.stderr


def test_a_bad_schedule_stops_serve_before_it_touches_prefect(tmp_path):
    result = _cli("serve", "--config", str(config_with(tmp_path, {"baseline": "0 25 * * *"})),
                  env={"PREFECT_API_URL": f"http://127.0.0.1:{_dead_port()}/api"})
    assert result.returncode == 2 and "schedules.baseline" in result.stderr and "a bad hour" in result.stderr


@pytest.mark.engine
def test_a_healing_deployment_that_nothing_serves_is_not_handed_healings(prefect_harness, tmp_path):
    """Registered but served by nobody (serve stopped, no worker): a run started there would wait forever, so the
    monitor keeps running its healings as subflows. (Served, the end-to-end test sees it handed over.)"""
    import asyncio

    from promptcycle_flows.served import served_deployment, to_deployment

    path = config_with(tmp_path, {})
    plan = next(p for p in plan_deployments(load_config(path), path) if p.phase == "healing")
    deployment_id = to_deployment(plan).apply()
    assert deployment_id is not None
    assert asyncio.run(served_deployment("healing", PIPE)) is None
    assert asyncio.run(served_deployment("healing", "not-registered")) is None
