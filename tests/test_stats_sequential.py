"""The canary's sequential decision rule: deterministic cases plus a reduced Monte Carlo through decide_canary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from promptcycle.stats.sequential import (
    CanaryDecision,
    Guardrails,
    LookOutcome,
    classify_bounds,
    compute_bounds,
    decide_canary,
)


def beta_scores(seed: int, mean: float, n: int, sd: float = 0.12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = mean * (1 - mean) / sd**2 - 1
    return rng.beta(mean * k, (1 - mean) * k, size=n)


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def test_clear_win_promotes():
    control, treatment = beta_scores(1, 0.80, 200), beta_scores(2, 0.90, 200)
    d = decide_canary(control, treatment)
    assert d.action == "promote"
    assert d.ci_low > 0 and d.p_value <= 0.05
    assert d.effect == pytest.approx(treatment.mean() - control.mean())
    assert d.n_control == d.n_treatment == 200
    assert "Promote" in d.reason


def test_min_effect_larger_than_the_gain_does_not_promote():
    control, treatment = beta_scores(1, 0.80, 200), beta_scores(2, 0.90, 200)
    d = decide_canary(control, treatment, min_effect=0.15)
    assert d.action == "continue"
    assert d.p_value > 0.05


def test_clear_harm_rolls_back_early():
    d = decide_canary(beta_scores(3, 0.90, 150), beta_scores(4, 0.75, 150))
    assert d.action == "rollback"
    assert d.ci_high < 0 and d.p_value_harm <= 0.05
    assert "worse" in d.reason and "horizon" not in d.reason


def test_tiny_samples_continue_even_with_a_large_gap():
    d = decide_canary([0.2, 0.3, 0.25, 0.2, 0.3], [1.0, 0.95, 1.0, 0.9, 1.0])
    assert d.action == "continue"
    assert "waits for 20" in d.reason
    d = decide_canary(beta_scores(5, 0.85, 30), beta_scores(6, 0.87, 30))
    assert d.action == "continue"
    assert 0 < d.information_fraction < 0.1


def test_no_data_continues_with_empty_evidence():
    d = decide_canary([], [])
    assert (d.action, d.effect, d.ci_low, d.p_value) == ("continue", None, None, None)


def test_error_rate_guardrail_rolls_back_at_once_even_when_quality_wins():
    control, treatment = beta_scores(1, 0.80, 200), beta_scores(2, 0.90, 200)
    errors = np.zeros(200, dtype=bool)
    errors[::5] = True  # 20% of treatment requests errored
    d = decide_canary(control, treatment, guardrails=Guardrails(max_error_rate=0.05),
                      treatment_errors=errors)
    assert d.action == "rollback"
    assert "treatment_error_rate" in d.reason
    (state,) = d.guardrails
    assert state.breached and state.value == pytest.approx(0.2) and state.threshold == 0.05


def test_guardrails_wait_for_min_requests_then_fire():
    treatment_errors = [True, False, False, False]
    rails = Guardrails(max_error_rate=0.1, min_requests=20)
    d = decide_canary([0.9] * 4, [0.9] * 4, guardrails=rails, treatment_errors=treatment_errors)
    assert d.action == "continue" and not d.guardrails[0].evaluated
    d = decide_canary([0.9] * 20, [0.9] * 20, guardrails=rails, treatment_errors=treatment_errors * 5)
    assert d.action == "rollback" and d.guardrails[0].breached


def test_error_increase_and_latency_guardrails():
    n = 100
    control, treatment = beta_scores(7, 0.85, n), beta_scores(8, 0.85, n)
    c_err = np.zeros(n, dtype=bool)
    t_err = np.zeros(n, dtype=bool)
    t_err[:4] = True  # 4% vs 0%
    c_lat = np.full(n, 800.0)
    t_lat = np.full(n, 900.0)
    t_lat[-10:] = 5000.0  # the slowest 10% make p95 5 s
    rails = Guardrails(max_error_rate_increase=0.05, max_p95_latency_ms=3000)
    d = decide_canary(control, treatment, guardrails=rails, control_errors=c_err, treatment_errors=t_err,
                      control_latencies_ms=c_lat, treatment_latencies_ms=t_lat)
    states = {s.name: s for s in d.guardrails}
    assert not states["error_rate_increase"].breached
    assert states["error_rate_increase"].value == pytest.approx(0.04)
    assert states["treatment_p95_latency_ms"].breached
    assert d.action == "rollback" and "p95" in d.reason
    rails = Guardrails(max_p95_latency_increase_ms=50)
    d = decide_canary(control, treatment, guardrails=rails, control_latencies_ms=c_lat,
                      treatment_latencies_ms=np.full(n, 820.0))
    assert d.action == "continue" and d.guardrails[0].value == pytest.approx(20.0)


def test_a_guardrail_without_its_signal_is_a_clear_error():
    with pytest.raises(ValueError, match="treatment_errors was not given"):
        decide_canary([0.9] * 30, [0.9] * 30, guardrails=Guardrails(max_error_rate=0.1))


def test_horizon_without_promotion_rolls_back():
    control = beta_scores(9, 0.85, 500)
    treatment = np.random.default_rng(10).permutation(control)  # same scores, effect exactly 0
    before = decide_canary(control[:499], treatment[:499])
    assert before.action == "continue"
    d = decide_canary(control, treatment)
    assert d.action == "rollback"
    assert "horizon of 500" in d.reason and "keeps the current prompt" in d.reason
    assert d.information_fraction == pytest.approx(1.0)
    assert d.ci_low < 0 < d.ci_high


def test_data_past_the_horizon_is_not_used():
    control, treatment = beta_scores(11, 0.85, 600), beta_scores(12, 0.85, 650)
    d = decide_canary(control, treatment)
    capped = decide_canary(control[:500], treatment[:500])
    assert (d.n_control, d.n_treatment, d.beyond_horizon) == (500, 500, 250)
    assert (d.action, d.effect, d.p_value) == (capped.action, capped.effect, capped.p_value)


def test_duplicated_request_ids_count_once():
    control, treatment = beta_scores(1, 0.80, 120), beta_scores(2, 0.86, 120)
    c_ids, t_ids = ids("c", 120), ids("t", 120)
    once = decide_canary(control, treatment, control_ids=c_ids, treatment_ids=t_ids)
    # the treatment's first 60 requests are delivered three times (retries/replays) and must not add evidence
    t_dup = np.concatenate([treatment, treatment[:60], treatment[:60]])
    d = decide_canary(control, t_dup, control_ids=c_ids, treatment_ids=t_ids + t_ids[:60] + t_ids[:60])
    assert d.n_treatment == 120 and d.duplicates_dropped == 120
    assert (d.action, d.effect, d.p_value, d.ci_low) == (once.action, once.effect, once.p_value, once.ci_low)
    without_ids = decide_canary(control, t_dup)
    assert without_ids.n_treatment == 240


def test_unscored_requests_count_for_guardrails_only():
    scores = list(beta_scores(13, 0.85, 40)) + [float("nan")] * 10
    errors = [False] * 40 + [True] * 10
    d = decide_canary(beta_scores(14, 0.85, 40), scores, treatment_errors=errors,
                      guardrails=Guardrails(max_error_rate=0.5))
    assert d.n_treatment == 40 and d.unscored == 10
    assert d.guardrails[0].value == pytest.approx(0.2) and not d.guardrails[0].breached


@pytest.mark.parametrize("kwargs, message", [
    (dict(control=[0.5, 1.2], treatment=[0.5]), r"control score at position 1 is 1\.2"),
    (dict(control=[0.5], treatment=[0.5], treatment_ids=["a", "b"]), "treatment_ids has 2 ids"),
    (dict(control=[0.5], treatment=[0.5], control_ids=["x"], treatment_ids=["x"]), "appear in both arms"),
    (dict(control=[0.5], treatment=[0.5], min_effect=-0.01), "min_effect must be >= 0"),
    (dict(control=[0.5], treatment=[0.5], alpha=0.7), "alpha must be in"),
])
def test_bad_input_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        decide_canary(**kwargs)


def test_decision_is_json_ready():
    d = decide_canary(beta_scores(1, 0.80, 60), beta_scores(2, 0.90, 60), guardrails=Guardrails(max_error_rate=0.5),
                      treatment_errors=[False] * 60)
    payload = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert payload["action"] == d.action and payload["test"] == d.test
    assert payload["guardrails"][0]["name"] == "treatment_error_rate"
    assert set(payload) == set(CanaryDecision.__dataclass_fields__)
    json.dumps(decide_canary([], []).to_dict(), allow_nan=False)


def test_p_value_and_confidence_sequence_agree_with_the_action():
    rng = np.random.default_rng(20)
    for _ in range(200):
        n_c, n_t = rng.integers(20, 500, size=2)
        d = decide_canary(beta_scores(int(rng.integers(1e9)), 0.85, n_c),
                          beta_scores(int(rng.integers(1e9)), 0.85 + rng.uniform(-0.04, 0.04), n_t),
                          min_effect=0.005)
        assert (d.action == "promote") == (d.p_value <= 0.05) == (d.ci_low > 0.005)
        if d.action == "rollback" and d.n_treatment < 500:
            assert d.ci_high < 0 and d.p_value_harm <= 0.05


def test_array_core_matches_the_scalar_decision():
    control, treatment = beta_scores(15, 0.84, 300), beta_scores(16, 0.87, 260)
    d = decide_canary(control, treatment)
    b = compute_bounds(control.mean(), control.var(ddof=1), 300, treatment.mean(), treatment.var(ddof=1), 260)
    assert float(b.lower) == pytest.approx(d.ci_low) and float(b.p_improvement) == pytest.approx(d.p_value)
    codes = classify_bounds(b, 300, 260)
    expected = {LookOutcome.PROMOTE: "promote", LookOutcome.HARM: "rollback", LookOutcome.HORIZON: "rollback",
                LookOutcome.CONTINUE: "continue"}
    assert expected[LookOutcome(int(codes))] == d.action


def run_canaries(delta: float, sims: int, look_every: int, seed: int) -> tuple[float, float]:
    """Promotion and rollback rates of `sims` canaries, each looking through decide_canary every `look_every`."""
    promoted = rolled_back = 0
    for s in range(sims):
        control = beta_scores(seed * 100_000 + 2 * s, 0.85, 500)
        treatment = beta_scores(seed * 100_000 + 2 * s + 1, 0.85 + delta, 500)
        for n in range(look_every, 501, look_every):
            action = decide_canary(control[:n], treatment[:n]).action
            if action != "continue":
                break
        assert action != "continue", "the horizon must force a decision"
        promoted += action == "promote"
        rolled_back += action == "rollback"
    return promoted / sims, rolled_back / sims


def test_monte_carlo_null_promotes_rarely_even_looking_every_10_requests():
    promoted, _ = run_canaries(0.0, sims=300, look_every=10, seed=1)
    # design rate <= 0.05 (about 0.04 at 50 looks); 0.08 is > 2.5 Monte Carlo SEs above it
    assert promoted <= 0.08


def test_monte_carlo_three_point_gain_is_promoted():
    promoted, _ = run_canaries(+0.03, sims=300, look_every=25, seed=2)
    assert promoted >= 0.93  # about 0.985 in the full bench


def test_monte_carlo_three_point_loss_is_rolled_back():
    promoted, rolled_back = run_canaries(-0.03, sims=300, look_every=25, seed=3)
    assert promoted <= 0.01 and rolled_back >= 0.95
