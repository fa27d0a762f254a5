"""The monitor flow on the engine: the probe through the cell tasks, the stored observations, the artifacts, and a
re-run in the same period that pays for nothing."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
import yaml

from test_monitor_loop import PIPE, REPO


@pytest.mark.engine
def test_monitor_flow_probes_records_and_publishes_and_a_rerun_pays_nothing(prefect_harness, tmp_path):
    from prefect.artifacts import Artifact

    from promptcycle_flows.monitor import monitor
    from promptcycle.store import MetricsStore

    data = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    pipe = data["pipelines"][PIPE]
    pipe["dataset"]["spectrums"] = pipe["dataset"]["spectrums"][:1]
    pipe.setdefault("deployment", {})["serving_models"] = ["xl"]
    pipe["monitor"] = {"probe_cases": 12}
    data["store"] = "metrics.duckdb"
    config = tmp_path / "pipelines.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)

    first = asyncio.run(monitor(pipeline=PIPE, config_path=str(config), now=now))
    assert first.probe_run_id and first.probe_calls >= 12 and not first.resumed
    assert [o["source"] for o in first.observations] == ["probe"] and first.observations[0]["n"] >= 12
    assert first.series[0].findings and first.pages == 0
    store = MetricsStore(tmp_path / "metrics.duckdb")
    assert store.get_run(first.probe_run_id).kind == "probe"
    assert store.monitor_runs(PIPE)[0]["status"] == "completed"
    trend = Artifact.get(f"monitor-trend-{PIPE}")
    assert trend is not None and "| xl |" in trend.data

    again = asyncio.run(monitor(pipeline=PIPE, config_path=str(config), now=now))
    assert again.resumed and again.probe_calls == 0  # the same period: its calls are in the ledger
    later = asyncio.run(monitor(pipeline=PIPE, config_path=str(config),
                                now=datetime(2026, 12, 1, 12, 30, tzinfo=timezone.utc)))
    assert later.period == first.period + 1 and later.probe_calls >= 12  # a new period measures afresh
    assert len(store.observations(PIPE)) == 2
