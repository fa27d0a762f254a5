"""The canary's sequential decision rule: deterministic cases, the plan, and reduced Monte Carlo runs of the bench
scenarios (bench/canary_error_rates.py) and of decide_canary itself."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from promptcycle.stats.sequential import (
    CanaryDecision,
    Guardrails,
    LookOutcome,
    boundary_power,
    classify_bounds,
    compute_bounds,
    decide_canary,
    decide_shadow,
    history_variance,
    pairs_for,
    plan_canary,
    requests_for,
    stratified_statistics,
)

H = 400.0  # a horizon in effective pairs for the deterministic cases


def beta_scores(seed: int, mean: float, n: int, sd: float = 0.12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = mean * (1 - mean) / sd**2 - 1
    return rng.beta(mean * k, (1 - mean) * k, size=n)


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def load_bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "canary_error_rates.py"
    spec = importlib.util.spec_from_file_location("canary_error_rates", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("canary_error_rates", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_clear_win_promotes():
    control, treatment = beta_scores(1, 0.80, 200), beta_scores(2, 0.90, 200)
    d = decide_canary(control, treatment, horizon=H)
    assert d.action == "promote"
    assert d.ci_low > 0 and d.p_value <= 0.05
    assert d.effect == pytest.approx(treatment.mean() - control.mean())
    assert d.n_control == d.n_treatment == 200 and d.n_effective == pytest.approx(100)
    assert "Promote" in d.reason and "spent" in d.reason


def test_clear_harm_rolls_back_early():
    d = decide_canary(beta_scores(3, 0.90, 150), beta_scores(4, 0.75, 150), horizon=H)
    assert d.action == "rollback"
    assert d.ci_high < 0 and d.p_value_harm <= d.alpha_harm
    assert "worse" in d.reason and "horizon" not in d.reason


def test_tiny_samples_continue_even_with_a_large_gap():
    d = decide_canary([0.2, 0.3, 0.25, 0.2, 0.3], [1.0, 0.95, 1.0, 0.9, 1.0], horizon=H)
    assert d.action == "continue" and "waits for 20" in d.reason
    d = decide_canary(beta_scores(5, 0.85, 30), beta_scores(6, 0.87, 30), horizon=H)
    assert d.action == "continue" and 0 < d.information_fraction < 0.1


def test_no_data_continues_with_empty_evidence():
    d = decide_canary([], [], horizon=H)
    assert (d.action, d.effect, d.ci_low, d.p_value) == ("continue", None, None, None)


def test_horizon_without_promotion_rolls_back():
    control = beta_scores(9, 0.85, 800)
    treatment = np.random.default_rng(10).permutation(control)  # same scores, effect exactly 0
    assert decide_canary(control[:790], treatment[:790], horizon=H).action == "continue"
    d = decide_canary(control, treatment, horizon=H)
    assert d.action == "rollback" and "horizon of 400 effective pairs" in d.reason
    assert d.information_fraction == pytest.approx(1.0) and d.ci_low < 0 < d.ci_high


def test_the_pooled_variance_is_what_the_boundary_uses():
    # a small arm of identical scores has zero variance of its own; the pooled variance still bounds the test
    control = beta_scores(11, 0.85, 900)
    treatment = np.full(100, 0.95)
    d = decide_canary(control, treatment, horizon=1000)
    pooled = np.sqrt(((control - control.mean()) ** 2).sum() / (900 + 100 - 2))
    assert d.pooled_sd == pytest.approx(pooled)
    assert d.ci_high - d.ci_low > 0.05


def test_arms_are_compared_only_within_a_split_step():
    """Traffic got 10 points easier at step 1; with more treatment at step 1 an unstratified comparison would
    credit the new version with the drift. Stratified by step, the effect stays near zero."""
    rng = np.random.default_rng(12)
    c0, t0 = beta_scores(13, 0.80, 900), beta_scores(14, 0.80, 100)  # 10% at step 0
    c1, t1 = beta_scores(15, 0.90, 500), beta_scores(16, 0.90, 500)  # 50% at step 1, easier traffic
    control, treatment = np.concatenate([c0, c1]), np.concatenate([t0, t1])
    steps_c, steps_t = [0] * 900 + [1] * 500, [0] * 100 + [1] * 500
    pooled = decide_canary(control, treatment, horizon=H)
    stratified = decide_canary(control, treatment, horizon=H, control_strata=steps_c, treatment_strata=steps_t)
    assert pooled.effect > 0.04 and pooled.action == "promote"  # the drift, read as an improvement
    assert abs(stratified.effect) < 0.02 and stratified.action != "promote" and stratified.strata == 2
    del rng


def test_stratified_statistics_match_a_direct_computation():
    a0, b0, a1, b1 = beta_scores(1, 0.8, 50), beta_scores(2, 0.82, 10), beta_scores(3, 0.9, 40), beta_scores(4, 0.9, 45)
    sums = [[len(x) for x in (a0, a1)], [x.sum() for x in (a0, a1)], [(x**2).sum() for x in (a0, a1)],
            [len(x) for x in (b0, b1)], [x.sum() for x in (b0, b1)], [(x**2).sum() for x in (b0, b1)]]
    effect, variance, n_eff, _ = stratified_statistics(*[np.array(s, dtype=float) for s in sums])
    w = np.array([50 * 10 / 60, 40 * 45 / 85])
    diff = np.array([b0.mean() - a0.mean(), b1.mean() - a1.mean()])
    assert effect == pytest.approx((w * diff).sum() / w.sum()) and n_eff == pytest.approx(w.sum())
    ss = sum(((x - x.mean()) ** 2).sum() for x in (a0, b0, a1, b1))
    assert variance == pytest.approx(ss / (145 - 4))


def test_an_equal_error_rate_does_not_breach_where_raw_thresholds_did():
    """3% errors in both arms, a +2-point increase limit: with 20 treatment requests one error reads as 5% —
    2 points above control — and the old raw threshold rolled back; the sequential test needs evidence."""
    n_c, n_t = 180, 20
    c_err = np.zeros(n_c, dtype=bool)
    c_err[:5] = True  # 2.8%
    t_err = np.zeros(n_t, dtype=bool)
    t_err[0] = True  # 5%
    rails = Guardrails(max_error_rate=0.05, max_error_rate_increase=0.02)
    d = decide_canary(beta_scores(1, 0.85, n_c), beta_scores(2, 0.85, n_t), horizon=H, guardrails=rails,
                      control_errors=c_err, treatment_errors=t_err)
    states = {s.name: s for s in d.guardrails}
    assert states["error_rate_increase"].value > 0.02 and not states["error_rate_increase"].breached
    assert d.action == "continue"


def test_a_clearly_higher_error_rate_breaches_its_guardrail():
    n = 400
    c_err = np.zeros(n, dtype=bool)
    t_err = np.zeros(n, dtype=bool)
    t_err[::4] = True  # 25% against 0%
    rails = Guardrails(max_error_rate=0.05, max_error_rate_increase=0.02)
    d = decide_canary(beta_scores(1, 0.80, n), beta_scores(2, 0.90, n), horizon=H, guardrails=rails,
                      control_errors=c_err, treatment_errors=t_err)
    assert d.action == "rollback" and "guardrail" in d.reason
    assert all(s.breached for s in d.guardrails) and all(s.statistic >= s.critical for s in d.guardrails)


def test_latency_guardrails_test_the_share_of_slow_requests():
    n = 400
    control, treatment = beta_scores(7, 0.85, n), beta_scores(8, 0.85, n)
    c_lat = np.full(n, 800.0)
    t_lat = np.full(n, 900.0)
    t_lat[::5] = 5000.0  # a fifth of requests take 5 s: p95 5 s
    d = decide_canary(control, treatment, horizon=H, guardrails=Guardrails(max_p95_latency_ms=3000),
                      treatment_latencies_ms=t_lat)
    assert d.action == "rollback" and d.guardrails[0].value == pytest.approx(5000.0)
    d = decide_canary(control, treatment, horizon=H, guardrails=Guardrails(max_p95_latency_increase_ms=50),
                      control_latencies_ms=c_lat, treatment_latencies_ms=np.full(n, 820.0))
    assert d.action == "continue" and d.guardrails[0].value == pytest.approx(20.0)


def test_a_guardrail_without_its_signal_is_a_clear_error():
    with pytest.raises(ValueError, match="treatment_errors was not given"):
        decide_canary([0.9] * 30, [0.9] * 30, horizon=H, guardrails=Guardrails(max_error_rate=0.1))


def test_duplicated_request_ids_count_once():
    control, treatment = beta_scores(1, 0.80, 120), beta_scores(2, 0.86, 120)
    c_ids, t_ids = ids("c", 120), ids("t", 120)
    once = decide_canary(control, treatment, horizon=H, control_ids=c_ids, treatment_ids=t_ids)
    t_dup = np.concatenate([treatment, treatment[:60], treatment[:60]])
    d = decide_canary(control, t_dup, horizon=H, control_ids=c_ids, treatment_ids=t_ids + t_ids[:60] + t_ids[:60])
    assert d.n_treatment == 120 and d.duplicates_dropped == 120
    assert (d.action, d.effect, d.p_value, d.ci_low) == (once.action, once.effect, once.p_value, once.ci_low)


def test_unscored_requests_count_for_guardrails_only():
    scores = list(beta_scores(13, 0.85, 40)) + [float("nan")] * 10
    errors = [False] * 40 + [True] * 10
    d = decide_canary(beta_scores(14, 0.85, 40), scores, horizon=H, treatment_errors=errors,
                      guardrails=Guardrails(max_error_rate=0.5))
    assert d.n_treatment == 40 and d.unscored == 10
    assert d.guardrails[0].value == pytest.approx(0.2) and not d.guardrails[0].breached


@pytest.mark.parametrize("kwargs, message", [
    (dict(control=[0.5, 1.2], treatment=[0.5]), r"control score at position 1 is 1\.2"),
    (dict(control=[0.5], treatment=[0.5], treatment_ids=["a", "b"]), "treatment_ids has 2 ids"),
    (dict(control=[0.5], treatment=[0.5], control_ids=["x"], treatment_ids=["x"]), "appear in both arms"),
    (dict(control=[0.5], treatment=[0.5], treatment_strata=[0, 1]), "treatment_strata has 2 labels"),
    (dict(control=[0.5], treatment=[0.5], alpha=0.7), "alpha must be in"),
])
def test_bad_input_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        decide_canary(horizon=H, **kwargs)


def test_decision_is_json_ready_and_names_test_budget_and_plan():
    plan = plan_canary(0.0144, min_effect=0.03)
    d = decide_canary(beta_scores(1, 0.80, 60), beta_scores(2, 0.90, 60), horizon=plan.horizon, plan=plan,
                      guardrails=Guardrails(max_error_rate=0.5), treatment_errors=[False] * 60)
    payload = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert set(payload) == set(CanaryDecision.__dataclass_fields__)
    assert "stratified" in payload["test"] and payload["alpha_spent"] < payload["alpha"]
    assert payload["plan"]["power"] == 0.9 and payload["plan"]["horizon"] == plan.horizon
    assert payload["guardrails"][0]["test"].startswith("one-sided sequential test")
    json.dumps(decide_canary([], [], horizon=H).to_dict(), allow_nan=False)


def test_p_value_and_confidence_sequence_agree_with_the_action():
    rng = np.random.default_rng(20)
    for _ in range(200):
        n_c, n_t = rng.integers(20, 500, size=2)
        d = decide_canary(beta_scores(int(rng.integers(1e9)), 0.85, n_c),
                          beta_scores(int(rng.integers(1e9)), 0.85 + rng.uniform(-0.04, 0.04), n_t), horizon=H)
        assert (d.action == "promote") == (d.p_value <= 0.04) == (d.ci_low > 0)  # 0.8 alpha: the reserve
        if d.action == "rollback" and d.information_fraction < 1:
            assert d.ci_high < 0 and d.p_value_harm <= d.alpha_harm


def test_array_core_matches_the_scalar_decision():
    control, treatment = beta_scores(15, 0.84, 300), beta_scores(16, 0.87, 260)
    d = decide_canary(control, treatment, horizon=H)
    sums = [np.array([x]) for x in (300, control.sum(), (control**2).sum(), 260, treatment.sum(),
                                    (treatment**2).sum(), (control**3).sum(), (treatment**3).sum())]
    effect, variance, n_eff, skew = stratified_statistics(*sums)
    b = compute_bounds(effect, variance, n_eff, H, skewness=skew)
    assert float(b.lower) == pytest.approx(d.ci_low) and float(b.p_improvement) == pytest.approx(d.p_value)
    expected = {LookOutcome.PROMOTE: "promote", LookOutcome.HARM: "rollback", LookOutcome.HORIZON: "rollback",
                LookOutcome.CONTINUE: "continue"}
    assert expected[LookOutcome(int(classify_bounds(b, 300, 260)))] == d.action


def test_plan_states_requests_and_its_power_is_the_boundary_s():
    plan = plan_canary(0.0144, min_effect=0.03, schedule=[10, 50, 100], step_min_requests=50, look_size=200)
    drift = np.sqrt(plan.horizon) * 0.03 / 0.12
    assert boundary_power(drift, 2.054) >= 0.9
    assert plan.requests == requests_for(plan.horizon, [10, 50, 100], 50)["requests"]
    assert pairs_for(plan.requests, [10, 50, 100], 50) == pytest.approx(plan.horizon, rel=0.01)
    assert "90% power at a 3.0-point gain" in plan.describe()
    # a 10% split needs about 0.25 / 0.09 times the requests of a 50% one (the look-spacing correction differs)
    at10 = plan_canary(0.0144, min_effect=0.03, schedule=[10, 100]).requests
    at50 = plan_canary(0.0144, min_effect=0.03, schedule=[50, 100]).requests
    assert at10 / at50 == pytest.approx(0.25 / 0.09, rel=0.1)
    capped = plan_canary(0.0144, min_effect=0.03, max_requests=300, schedule=[50, 100])
    assert capped.power < 0.9 and capped.requests <= 300


def test_history_variance_bound_is_above_the_estimate():
    scores = beta_scores(30, 0.85, 1000)
    estimate, upper = history_variance(scores)
    assert estimate == pytest.approx(scores.var(ddof=1)) and upper > estimate


def test_shadow_decision_on_paired_differences():
    rng = np.random.default_rng(40)
    difficulty = rng.beta(2, 0.5, size=600)
    production = (rng.random(600) < difficulty).astype(float)
    better = (rng.random(600) < np.minimum(1, difficulty + 0.15)).astype(float)
    d = decide_shadow(production, better, horizon=1500)
    assert d.action == "promote" and d.mode == "shadow" and "paired" in d.test
    d = decide_shadow(production, production, horizon=1500)
    assert d.action == "continue" and d.effect == 0
    with pytest.raises(ValueError, match="must align"):
        decide_shadow([0.5, 0.5], [0.5], horizon=10)


# -- reduced Monte Carlo ----------------------------------------------------------------------------------------

def test_bench_reduced_scenarios_meet_their_targets():
    """The bench's quick set (a 10%-split null looking every request on skewed scores, the schedule under +2-point
    drift, +3 / -3 points, shadow power) with 300 canaries each: every row within its target + 2.5 MC SEs."""
    bench = load_bench()
    rows = bench.run_rows(300, seed=5, quick=True)
    assert len(rows) == 8
    for r in rows:
        op, target = r["target"].split()
        slack = 2.5 * max(r["mc_se"], np.sqrt(float(target) * (1 - float(target)) / 300))
        ok = r["estimate"] <= float(target) + slack if op == "<=" else r["estimate"] >= float(target) - slack
        assert ok, r


def run_canaries(delta: float, sims: int, look_every: int, seed: int, split: float) -> tuple[float, float]:
    """Promotion and harm-rollback rates of canaries looking through decide_canary itself, at a fixed split."""
    rng = np.random.default_rng(seed)
    plan = plan_canary(0.0144, min_effect=0.03, schedule=[split * 100, 100], look_size=look_every)
    promoted = harmed = 0
    n = int(plan.requests * 1.5)
    for _ in range(sims):
        arm = rng.random(n) < split
        scores = beta_scores(int(rng.integers(1e9)), 0.85, n)
        scores[arm] = beta_scores(int(rng.integers(1e9)), 0.85 + delta, int(arm.sum()))
        for end in range(look_every, n + 1, look_every):
            a, s = arm[:end], scores[:end]
            d = decide_canary(s[~a], s[a], horizon=plan.horizon)
            if d.action != "continue":
                break
        assert d.action != "continue", "the horizon must force a decision"
        promoted += d.action == "promote"
        harmed += d.action == "rollback" and "worse" in d.reason
    return promoted / sims, harmed / sims


def test_decide_canary_itself_rarely_promotes_a_null_at_a_10_percent_split():
    promoted, _ = run_canaries(0.0, sims=150, look_every=50, seed=1, split=0.1)
    assert promoted <= 0.08  # design <= 0.04; 0.08 is > 2 MC SEs above the 0.05 target


def test_decide_canary_itself_rolls_a_loss_back_for_harm():
    promoted, harmed = run_canaries(-0.03, sims=100, look_every=50, seed=3, split=0.5)
    assert promoted == 0 and harmed >= 0.9
