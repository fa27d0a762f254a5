"""The optimization budget: the estimate, the hard caps, and a cell that stops at the cap — paying for
nothing past it while still reusing, for free, what the ledger already holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pandas as pd
import pytest

from promptcycle.config import ModelConfig, ProviderConfig
from promptcycle.datasets import load_cases
from promptcycle.errors import BudgetExceededError
from promptcycle.evaluation.cells import CellSpec, evaluate_cell
from promptcycle.optimize.budget import (
    Budget,
    PlannedEvaluation,
    TokenProfile,
    budget_for,
    estimate_spend,
    worst_confirmation,
)
from promptcycle.prompts import PromptTemplate
from promptcycle.providers import build_provider
from promptcycle.scoring import build_scorers
from promptcycle.sim.server import LatencyOverride
from promptcycle.store import MetricsStore

PRICING = {"nano": ModelConfig(provider="sim", model="sim-nano", input_cost_per_mtok=1.0, output_cost_per_mtok=2.0),
           "large": ModelConfig(provider="sim", model="sim-large", input_cost_per_mtok=10.0,
                                output_cost_per_mtok=40.0)}
PROFILE = TokenProfile(input_tokens={"nano": 1000.0, "large": 1000.0}, output_tokens={"nano": 100.0, "large": 100.0})
PROMPT = PromptTemplate(system="You are an analyst at a retail bank.",
                        template="Customer record:\n{{customer}}\n\n{{question}}\nReply with a JSON object.")


# --- the estimate -------------------------------------------------------------------------------

def test_the_estimate_counts_only_calls_missing_from_the_ledger_and_prices_them_per_model():
    planned = [PlannedEvaluation("screen", "nano", calls=100, reused=40),
               PlannedEvaluation("screen", "large", calls=100, reused=100),  # all in the ledger: free
               PlannedEvaluation("confirm", "large", calls=30, reused=0, extra_input_chars=400)]
    estimate = estimate_spend(planned, profile=PROFILE, pricing=PRICING, spent={"calls": 7, "cost_usd": 0.5},
                              max_calls=100, max_cost_usd=None)
    assert (estimate.calls, estimate.reused) == (60 + 30, 40 + 100)
    assert estimate.stages["screen"].calls == 60 and estimate.stages["confirm"].calls == 30
    # 400 more characters of prompt = 100 more input tokens per call (4 characters a token)
    assert estimate.input_tokens == 60 * 1000 + 30 * 1100
    assert estimate.output_tokens == 90 * 100
    nano = 60 * (1000 * 1.0 + 100 * 2.0) / 1e6
    large = 30 * (1100 * 10.0 + 100 * 40.0) / 1e6
    assert estimate.cost_usd == pytest.approx(nano + large, abs=1e-6)
    assert estimate.cost_per_call["nano"] == pytest.approx(1200 / 1e6)
    # 7 already paid + 90 planned fits under 100 calls
    assert estimate.total_calls == 97 and not estimate.exceeds_cap
    assert any("within the cap" in line for line in estimate.lines())
    tight = estimate_spend(planned, profile=PROFILE, pricing=PRICING, spent={"calls": 20}, max_calls=100)
    assert tight.exceeds_cap and any("stop cleanly" in line for line in tight.lines())


def test_the_token_profile_is_measured_on_answered_calls_only():
    frame = pd.DataFrame({"model": ["nano", "nano", "nano", "large"], "input_tokens": [100, 300, None, 50],
                          "output_tokens": [10, 30, None, 500], "error": [None, None, "timeout", None]})
    profile = TokenProfile.from_results(frame)
    assert profile.per_call("nano") == (200.0, 20.0)
    assert profile.per_call("large", extra_input_chars=-400) == (1.0, 500.0)  # never below one token
    assert profile.per_call("unseen") == (125.0, 260.0)  # the mean of the known models


def test_confirmation_is_planned_for_the_candidates_that_would_cost_most():
    per_candidate = {"a": [PlannedEvaluation("confirm", "nano", 10, 9)],
                     "b": [PlannedEvaluation("confirm", "nano", 10, 0)],
                     "c": [PlannedEvaluation("confirm", "nano", 10, 5)]}
    chosen = worst_confirmation(per_candidate, top=2)
    assert sorted(p.paid for p in chosen) == [5, 10]


# --- the caps -----------------------------------------------------------------------------------

def test_the_call_cap_is_exact_and_the_first_refusal_exhausts_the_budget():
    budget = Budget(max_calls=3, spent_calls=1)
    assert budget.try_acquire("nano") and budget.try_acquire("nano")
    assert not budget.try_acquire("nano")  # 1 paid + 2 in flight = the cap
    assert budget.exhausted and budget.refused == 1
    budget.release("nano")  # a failed call frees its slot, but an exhausted budget stays exhausted
    assert not budget.try_acquire("nano") and budget.refused == 2
    budget.settle("nano", 0.01)
    assert budget.spend() == {"calls": 2, "cost_usd": 0.01}


def test_the_cost_cap_counts_calls_in_flight_at_their_expected_cost():
    budget = Budget(max_cost_usd=0.10, cost_per_call={"large": 0.03, "nano": 0.001})
    assert budget.try_acquire("large") and budget.try_acquire("large") and budget.try_acquire("large")
    assert budget.try_acquire("nano")  # 0.09 + 0.001 in flight fits under 0.10
    assert not budget.try_acquire("large")  # 0.091 + 0.03 would not
    assert budget.exhausted and not budget.try_acquire("nano")  # after the first refusal nothing starts
    fresh = Budget(max_cost_usd=0.10, cost_per_call={"large": 0.03})
    fresh.try_acquire("large")
    fresh.settle("large", 0.05)  # actual costs replace the estimate for later decisions
    assert fresh.expected_cost("large") == pytest.approx(0.05)
    assert fresh.try_acquire("large") and not fresh.try_acquire("large")  # 0.05 + 0.05 in flight + 0.05 > 0.10


def test_a_budget_starts_from_what_the_run_already_paid(tmp_path):
    from promptcycle.store import ResponseRecord

    store = MetricsStore(tmp_path / "m.duckdb")
    store.write_batch([ResponseRecord(call_key=f"k{i}", provider="sim", model="sim-nano", prompt_hash="p",
                                      case_id=f"c{i}", repeat=0, output="{}", cost_usd=0.01,
                                      run_id=f"opt-1/screen/p{i % 2}") for i in range(4)], [])

    async def go():
        budget = budget_for(store, "opt-1", max_calls=5, max_cost_usd=None)
        again = budget_for(store, "opt-1", max_calls=5, max_cost_usd=None)
        return budget, again, budget.try_acquire("nano"), budget.try_acquire("nano")

    budget, again, first, second = asyncio.run(go())
    assert again is budget  # the concurrent cells of one optimization share it
    assert budget.spent_calls == 4 and budget.spent_cost_usd == pytest.approx(0.04)
    assert first and not second


# --- a cell at the cap --------------------------------------------------------------------------

def _cell(store: MetricsStore, run_id: str, cases, budget: Budget | None):
    async def go():
        models = {"nano": ModelConfig(provider="simulator", model="sim-nano", input_cost_per_mtok=1.0,
                                      output_cost_per_mtok=2.0)}
        provider = build_provider("simulator", ProviderConfig(kind="simulator", max_concurrency=4), models,
                                  latency=LatencyOverride(fixed_ms=1))
        async with provider:
            spec = CellSpec(run_id=run_id, pipeline="p", model_name="nano", model=models["nano"], spectrum="dev",
                            prompt=PROMPT, cases=cases, splits={c.id: "dev" for c in cases}, repeats=1,
                            weights={"completeness": 1.0})
            return await evaluate_cell(spec, provider=provider, provider_name="simulator",
                                       scorers=build_scorers({"completeness": {"weight": 1.0}}), store=store,
                                       budget=budget)

    return asyncio.run(go())


def test_the_cap_stops_paid_calls_but_not_ledger_reuse(tmp_path: Path):
    store = MetricsStore(tmp_path / "m.duckdb")
    cases = load_cases("bundled:customer_insights")[:10]
    first = _cell(store, "opt-a/screen/x", cases[:6], None)
    assert first.called == 6

    budget = Budget(max_calls=2)
    with pytest.raises(BudgetExceededError) as info:
        _cell(store, "opt-b/screen/x", cases, budget)
    stopped = info.value.outcome
    # the 6 answers paid by the first run are reused for free; of the 4 new ones, only 2 are paid
    assert (stopped.reused, stopped.called, stopped.stopped) == (6, 2, 2)
    assert store.spend("opt-b")["calls"] == 2 and budget.spent_calls == 2
    frame = store.results_frame("opt-b/screen/x")
    assert len(frame) == 8 and frame["overall"].notna().all()  # nothing fake recorded for the 2 not made
    assert store.spend("opt-a")["calls"] == 6

    # Re-running with room in the budget pays only for the 2 calls that were not made.
    again = _cell(store, "opt-b/screen/x", cases, Budget(max_calls=10, spent_calls=2))
    assert (again.skipped, again.called) == (8, 2)
    assert store.spend("opt-b")["calls"] == 4
