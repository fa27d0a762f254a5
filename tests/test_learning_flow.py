"""Learning in the optimization flow, on the simulator: `strategies: auto` spends the candidate budget by the
learned posteriors, every screened candidate's outcome is stored with its context and cost, and the table is
published and shown by `promptcycle learning`."""

from __future__ import annotations

import asyncio
import json

import pytest

from promptcycle.cli import main
from promptcycle.optimize.learning import FAILURE_KINDS
from promptcycle.store import MetricsStore

from test_optimization_flow import LIMIT, PIPE, small_config


@pytest.mark.engine
@pytest.mark.slow
def test_auto_strategies_record_outcomes_and_show_the_table(prefect_harness, tmp_path, capsys):
    from flows.optimization import optimization
    from prefect.artifacts import Artifact

    config = small_config(tmp_path / "pipelines.yaml", strategies="auto", max_candidates=3, confirm_top=1)
    store_path = tmp_path / "metrics.duckdb"
    summary = asyncio.run(optimization(pipeline=PIPE, config_path=str(config), store_path=str(store_path),
                                       limit=LIMIT))
    screened = [r for r in summary.candidates if r.dev_delta is not None]
    not_chosen = [r for r in summary.candidates if any("strategies: auto" in x for x in r.reasons)]
    assert 1 <= len(screened) <= 3 and not_chosen  # every strategy proposed; 3 slots were spent
    assert len(summary.strategies) >= 7  # auto: every registered strategy

    outcomes = MetricsStore(store_path).strategy_outcomes(PIPE)
    assert {(o["candidate"], o["strategy"]) for o in outcomes} == {(r.hash, r.strategy) for r in screened}
    for o in outcomes:
        assert o["run_id"] == summary.run_id and o["pipeline"] == PIPE and o["simulated"]
        assert o["spectrum"] in ("customer_profile", "credit_analysis", "temporal_analysis")
        assert o["failure_kind"] in FAILURE_KINDS and o["calls"] > 0 and o["min_effect"] == pytest.approx(1.0)
        row = next(r for r in screened if r.hash == o["candidate"])
        assert o["dev_effect"] == pytest.approx(row.dev_delta)
        assert (o["test_effect"] is None) == (row.effect is None)

    artifact = Artifact.get(f"strategy-learning-{PIPE}")
    assert artifact is not None and "simulated" in artifact.data and screened[0].strategy in artifact.data
    assert main(["learning", "--config", str(config), "--store", str(store_path), "--pipeline", PIPE, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert sum(r["n"] for r in payload["strategies"]) == len(screened) and payload["simulated"]
