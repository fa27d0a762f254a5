"""Strategy learning: outcomes in the store, posteriors over a memory, Thompson allocation with a floor,
`strategies: auto` in pipelines.yaml, and the `promptcycle learning` table."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from promptcycle_cli.main import main
from promptcycle.catalog import load_config
from promptcycle.errors import ConfigError
from promptcycle.optimize.learning import (
    NOISE_SD,
    PRIOR_SD,
    LearningContext,
    StrategyOutcome,
    allocate,
    learning_table,
    outcomes_from_rows,
    posterior_for,
    posteriors,
    resolve_strategies,
    select_candidates,
)
from promptcycle.store import MetricsStore

from test_config import repo_yaml, write

CTX = LearningContext("customer-insights", "", "credit_analysis", "missed_fields")
OTHER = LearningContext("customer-insights", "", "temporal_analysis", "wrong_values")


def outcome(run: str, strategy: str, effect: float, ctx: LearningContext = CTX, *, test: float | None = None,
            calls: int = 100) -> StrategyOutcome:
    return StrategyOutcome(run_id=run, candidate=f"{run}-{strategy}-{effect}", strategy=strategy, context=ctx,
                           dev_effect=effect, test_effect=test, min_effect=1.0, calls=calls, cost_usd=0.01)


def test_posterior_counts_successes_and_shrinks_the_effect():
    outs = [outcome("r1", "checklist", 3.0), outcome("r2", "checklist", 2.0), outcome("r3", "checklist", 0.5),
            outcome("r4", "checklist", 1.5, test=4.0)]  # the test effect counts when there is one
    (p,) = posteriors(outs)
    assert (p.n, p.successes, p.alpha, p.beta) == (4, 3, 4.0, 2.0)
    assert p.success_mean == pytest.approx(4 / 6)
    lo, hi = p.success_interval()
    assert 0 < lo < 4 / 6 < hi < 1
    k = (NOISE_SD / PRIOR_SD) ** 2
    assert p.effect_mean == pytest.approx((3.0 + 2.0 + 0.5 + 4.0) / (4 + k))
    assert p.effect_sd == pytest.approx(NOISE_SD / (4 + k) ** 0.5)
    # one more failure moves it the right way
    (q,) = posteriors(outs + [outcome("r5", "checklist", -1.0)])
    assert q.success_mean < p.success_mean and q.beta == 3.0


def test_contexts_are_kept_apart_and_memory_forgets_old_cycles():
    outs = [outcome(f"r{i}", "grounding", -1.0) for i in range(5)] + \
           [outcome(f"r{i}", "grounding", 3.0) for i in range(5, 8)] + [outcome("r8", "grounding", 3.0, OTHER)]
    by_ctx = {p.context.spectrum: p for p in posteriors(outs)}
    assert (by_ctx["credit_analysis"].n, by_ctx["temporal_analysis"].n) == (8, 1)
    recent = {p.context.spectrum: p for p in posteriors(outs, memory=4)}  # runs r5..r8
    assert (recent["credit_analysis"].n, recent["credit_analysis"].successes) == (3, 3)
    assert posteriors(outs, memory=1)[0].context == OTHER


def test_posterior_for_pools_similar_contexts_with_smaller_weights_and_starts_from_the_diagnosis():
    elsewhere = LearningContext("other-pipe", "", "credit_analysis", "missed_fields")
    outs = [outcome(f"r{i}", "grounding", 3.0, elsewhere) for i in range(4)]  # same spectrum and failure: 0.5 each
    p = posterior_for("grounding", CTX, outs)
    assert (p.n, p.successes) == (2.0, 2.0)
    p = posterior_for("grounding", CTX, outs + [outcome("r9", "grounding", -2.0)])  # here: counts fully
    assert (p.n, p.successes) == (3.0, 2.0)
    p = posterior_for("grounding", OTHER, outs)  # another spectrum and failure kind: 0.1 each
    assert p.n == pytest.approx(1.0 + 0.4)  # + the hint: wrong values point at grounding
    # the diagnosis' pointer: missed fields -> checklist starts with one pseudo-success
    hinted, plain = posterior_for("checklist", CTX, []), posterior_for("few_shot", CTX, [])
    assert (hinted.n, hinted.successes, plain.n) == (1.0, 1.0, 0.0)
    assert hinted.success_mean > plain.success_mean == 0.5


def test_thompson_gives_the_budget_to_what_works_and_the_floor_keeps_exploring():
    outs = [outcome(f"r{i}", "checklist", 3.0) for i in range(20)] + \
           [outcome(f"r{i}", "step_structure", -0.5) for i in range(20)]
    names = ["checklist", "step_structure"]
    greedy = allocate(names, CTX, outs, budget=1000, exploration=0.0, rng=random.Random(1))
    assert Counter(greedy)["step_structure"] <= 5
    floor = Counter(allocate(names, CTX, outs, budget=4000, exploration=0.3, rng=random.Random(2)))
    # with probability 0.3 a slot is uniform over the 2 strategies: about 15% go to the poor one
    assert 0.12 <= floor["step_structure"] / 4000 <= 0.18
    # without evidence (and no diagnosis hint for either), Thompson spreads the budget about evenly
    fresh = Counter(allocate(["few_shot", "step_structure"], CTX, [], budget=2000, exploration=0.0,
                             rng=random.Random(3)))
    assert 0.45 <= fresh["few_shot"] / 2000 <= 0.55
    assert allocate(names, CTX, outs, budget=5, rng=random.Random(4), capacity={"checklist": 2,
                                                                                   "step_structure": 1}).__len__() == 3
    with pytest.raises(ValueError):
        allocate(names, CTX, outs, budget=1, exploration=1.5, rng=random.Random(0))


def test_the_first_of_several_slots_goes_to_the_best_guess_and_the_others_explore():
    names = ["checklist", "format_spec", "grounding", "step_structure"]
    # no evidence: the best guess is the lever the diagnosis points at (missed fields -> checklist), even when
    # every other slot is drawn uniformly
    firsts = Counter(allocate(names, CTX, [], budget=2, exploration=1.0, rng=random.Random(seed))[0]
                     for seed in range(200))
    assert firsts == Counter({"checklist": 200})
    # evidence in this context overrides the hint: grounding has worked here, checklist has not
    outs = [outcome(f"r{i}", "grounding", 6.0) for i in range(3)] + \
           [outcome(f"r{i}", "checklist", -1.0) for i in range(3)]
    assert {allocate(names, CTX, outs, budget=3, exploration=1.0, rng=random.Random(seed))[0]
            for seed in range(50)} == {"grounding"}
    # the other slots still explore: every strategy gets some of them
    rest = Counter(s for seed in range(400)
                   for s in allocate(names, CTX, outs, budget=2, exploration=0.5, rng=random.Random(seed))[1:])
    assert {"checklist", "format_spec", "step_structure"} <= set(rest)
    # a single slot is never exploited blindly: it is drawn (Thompson, with the floor)
    single = Counter(allocate(names, CTX, outs, budget=1, exploration=1.0, rng=random.Random(seed))[0]
                     for seed in range(400))
    assert len(single) == 4


def test_select_candidates_is_deterministic_and_keeps_proposal_order_within_a_strategy():
    class Cand:
        def __init__(self, strategy, i):
            self.strategy, self.i, self.scope = strategy, i, None

    cands = [Cand("checklist", i) for i in range(3)] + [Cand("step_structure", i) for i in range(3)]
    outs = [outcome(f"r{i}", "checklist", 3.0) for i in range(20)] + \
           [outcome(f"r{i}", "step_structure", -0.5) for i in range(20)]
    chosen = select_candidates(cands, CTX, outs, budget=3, exploration=0.0, seed=5)
    assert [(c.strategy, c.i) for c in chosen] == [("checklist", 0), ("checklist", 1), ("checklist", 2)]
    assert select_candidates(cands, CTX, outs, budget=3, seed=9) == select_candidates(cands, CTX, outs, budget=3,
                                                                                        seed=9)


def test_store_keeps_outcomes_keyed_and_the_table_reads_them_back(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    rows = [outcome("r1", "checklist", 3.0).to_row(), outcome("r1", "grounding", 0.2).to_row()]
    assert store.record_strategy_outcomes(rows) == 2
    assert store.record_strategy_outcomes(rows) == 2  # recorded again: replaced, not doubled
    stored = store.strategy_outcomes("customer-insights")
    assert len(stored) == 2 and {r["success"] for r in stored} == {True, False}
    table = learning_table(outcomes_from_rows(stored))
    assert {(r["strategy"], r["n"], r["successes"]) for r in table} == {("checklist", 1, 1), ("grounding", 1, 0)}
    assert store.strategy_outcomes("other") == []


def test_auto_is_accepted_by_config_and_resolves_to_every_strategy(tmp_path):
    data = repo_yaml()
    opt = data["pipelines"]["customer-insights"].setdefault("optimization", {})
    opt.update(strategies="auto", exploration=0.2, learning_memory=50)
    cfg = load_config(write(tmp_path, data)).pipeline("customer-insights").optimization
    assert (cfg.strategies, cfg.exploration, cfg.learning_memory) == ("auto", 0.2, 50)
    names, auto = resolve_strategies(cfg.strategies, ["checklist", "grounding"])
    assert (names, auto) == (["checklist", "grounding"], True)
    assert resolve_strategies(["grounding", "grounding"], ["checklist", "grounding"]) == (["grounding"], False)
    opt["strategies"] = "automatic"
    with pytest.raises(ConfigError, match="optimization.strategies"):
        load_config(write(tmp_path, data))
    opt.update(strategies="auto", exploration=1.5)
    with pytest.raises(ConfigError, match="optimization.exploration"):
        load_config(write(tmp_path, data))


def test_learning_command_prints_the_table_and_json(tmp_path, capsys):
    config = write(tmp_path, repo_yaml())
    store_path = tmp_path / "m.duckdb"
    store = MetricsStore(store_path)
    store.record_strategy_outcomes([outcome(f"r{i}", "checklist", 2.0 + i).to_row() for i in range(3)]
                                   + [outcome("r0", "grounding", -0.5).to_row()])
    assert main(["learning", "--config", str(config), "--store", str(store_path), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    rows = {r["strategy"]: r for r in payload["strategies"]}
    assert payload["memory"] == 100
    assert (rows["checklist"]["n"], rows["checklist"]["successes"], rows["checklist"]["p_success"]) == (3, 3, 0.8)
    assert rows["grounding"]["successes"] == 0
    assert main(["learning", "--config", str(config), "--store", str(store_path), "--memory", "1"]) == 0
    text = capsys.readouterr().out
    assert "| checklist | customer-insights | all models | credit_analysis | missed_fields | 1 | 1 |" in text
    assert "grounding" not in text  # r0 is older than the last optimization
    assert main(["learning", "--config", str(config), "--store", str(tmp_path / "missing.duckdb")]) == 2
    assert not (tmp_path / "missing.duckdb").exists()


def test_the_learning_bench_learns_the_context_best_strategy(capsys):
    """A reduced bench/learning_strategies.py: the world's best strategy differs by context, and `auto`, after
    some cycles, spends its slots on each context's best strategy far more often than at random."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import learning_strategies as bench

    world = bench.measure_world()
    best = [max(e, key=e.get) for e in world.effects]
    assert len(set(best)) >= 3  # which lever helps depends on model x spectrum
    history, rng, hits, slots = [], random.Random(0), 0, 0
    for cycle in range(40):
        k = cycle % len(world.contexts)
        picks = bench.auto_policy(history, world.contexts[k], rng, tuple(world.effects[k]))
        if cycle >= 24:
            hits += best[k] in picks
            slots += 1
        for s in picks:
            effect = world.effects[k][s] + rng.gauss(0, 2)
            history.append(StrategyOutcome(run_id=f"c{cycle}", candidate=s, strategy=s, context=world.contexts[k],
                                           dev_effect=effect, min_effect=1.0))
    # at random, 3 of 5 strategies include the best 60% of the time: >= 15 of 16 has probability 0.3%
    assert hits / slots >= 0.9
