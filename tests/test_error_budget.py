"""The error budget across optimization cycles: the ledger is the stored confirmation decisions (DuckDB)."""

from __future__ import annotations

import pytest

from promptcycle.optimize.search import ErrorControl, confirmation_index
from promptcycle.stats.spending import spending_level
from promptcycle.store import DecisionRecord, MetricsStore


def _confirmation(store: MetricsStore, run_id: str, baseline: str, decision: str = "no_improvement") -> None:
    store.write_decision(DecisionRecord(run_id=run_id, pipeline="p", kind="confirmation", prompt_hash=f"c-{run_id}",
                                        baseline_hash=baseline, decision=decision, evidence={}))


def test_each_confirmation_against_one_prompt_takes_the_next_share(tmp_path):
    store = MetricsStore(tmp_path / "store.duckdb")
    control = ErrorControl(pipeline="p", baseline_hash="current", run_id="run-3")
    assert confirmation_index(store, control) == 1
    _confirmation(store, "run-1", "current")
    _confirmation(store, "run-1", "current", "promote")  # a second candidate of the same run: one confirmation
    store.write_decision(DecisionRecord(run_id="run-1", pipeline="p", kind="confirmation", prompt_hash="other",
                                        baseline_hash="current", decision="no_improvement"))
    _confirmation(store, "run-2", "current", "budget_exhausted")  # stopped before deciding: spent nothing
    _confirmation(store, "run-x", "older-prompt")  # against another current prompt: its own budget
    assert confirmation_index(store, control) == 2
    _confirmation(store, "run-3", "current")  # the run itself, resumed: keeps its place
    assert confirmation_index(store, control) == 2
    assert confirmation_index(store, control.model_copy(update={"baseline_hash": "new"})) == 1


def test_ten_null_cycles_spend_less_than_alpha():
    assert sum(spending_level(0.05, j) for j in range(1, 11)) < 0.05
    assert spending_level(0.05, 1) == pytest.approx(0.04)
