"""Provider limits shared across flows: a Prefect global concurrency limit caps a provider's cells."""

from __future__ import annotations

import asyncio
import time

import pytest
import yaml
from simserver import ServerThread

from promptcycle.errors import ConfigError
from promptcycle.sim.server import LatencyOverride

pytestmark = pytest.mark.engine


def _config(repo_config, base_url: str, limit_name: str):
    data = yaml.safe_load(repo_config.read_text())
    data["providers"] = {"shared": {"kind": "openai", "base_url": base_url, "max_concurrency": 64,
                                    "global_concurrency_limit": limit_name}}
    for model in data["models"].values():
        model["provider"] = "shared"
    pipe = data["pipelines"]["customer-insights"]
    pipe["models"] = ["nano", "mini"]
    pipe.pop("deployment", None)  # its serving models are not in this reduced pipeline
    pipe["dataset"]["spectrums"] = pipe["dataset"]["spectrums"][:3]
    repo_config.write_text(yaml.safe_dump(data))
    return repo_config


async def _create_limit(name: str, limit: int) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    async with get_client() as client:
        await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))


def test_one_slot_runs_cells_one_at_a_time(prefect_harness, repo_config, tmp_path):
    from promptcycle_flows.baseline import baseline

    with ServerThread(latency=LatencyOverride(fixed_ms=300)) as server:
        config = _config(repo_config, server.base_url, "promptcycle-test-one-slot")
        asyncio.run(_create_limit("promptcycle-test-one-slot", 1))
        started = time.monotonic()
        summary = asyncio.run(baseline(config_path=str(config), store_path=str(tmp_path / "m.duckdb"), limit=2))
        elapsed = time.monotonic() - started
        # 6 cells of 2 concurrent calls at 300 ms: about 0.3 s if cells overlap, >= 1.8 s one at a time.
        assert summary.rows == 2 * 3 * 2 and summary.errors == 0
        assert server.state.max_in_flight <= 2
        assert elapsed >= 1.8


def test_a_missing_limit_fails_the_run_clearly(prefect_harness, repo_config, tmp_path):
    from promptcycle_flows.baseline import baseline

    with ServerThread() as server:
        config = _config(repo_config, server.base_url, "promptcycle-test-no-such-limit")
        # A configuration error (exit 2 from the CLI) naming the limit and how to create it, before any call.
        with pytest.raises(ConfigError, match="prefect gcl create promptcycle-test-no-such-limit"):
            asyncio.run(baseline(config_path=str(config), store_path=str(tmp_path / "m.duckdb"), limit=1))
        assert server.state.requests == 0  # nothing was called unthrottled


def test_a_cell_whose_calls_all_fail_retryably_is_retried_then_resumes(prefect_harness, repo_config, tmp_path):
    """The first attempts of each cell hit 503s; the task retries and the run completes with every row."""
    from promptcycle_flows.baseline import baseline
    from promptcycle.sim.server import FaultConfig

    data = yaml.safe_load(repo_config.read_text())
    # 2 models x 1 spectrum x 2 cases; each request fails (503) until the client's retries run out
    # once per call, so the cell defers its calls and Prefect retries the task.
    with ServerThread(faults=FaultConfig(fail_first=6, fail_kind="server_error")) as server:
        data["providers"] = {"flaky": {"kind": "openai", "base_url": server.base_url, "max_retries": 0,
                                       "backoff_seconds": 0.0, "circuit_failure_threshold": 100}}
        for model in data["models"].values():
            model["provider"] = "flaky"
        pipe = data["pipelines"]["customer-insights"]
        pipe["models"] = ["nano", "mini"]
        pipe.pop("deployment", None)
        pipe["dataset"]["spectrums"] = pipe["dataset"]["spectrums"][:1]
        repo_config.write_text(yaml.safe_dump(data))
        summary = asyncio.run(baseline(config_path=str(repo_config), store_path=str(tmp_path / "m.duckdb"),
                                       limit=2))
        assert summary.rows == 4 and summary.errors == 0
        assert server.state.requests >= 4 + 1  # at least one failed call was made again by a retried cell
