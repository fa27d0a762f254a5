"""The optimization gate's paired decision: deterministic examples plus a reduced Monte Carlo check."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from promptcycle.stats import (
    ConfirmationResult,
    RuleDesign,
    error_budget,
    spending_level,
    spent_before,
    adjust_holm,
    assess_spectrums,
    classify_decisions,
    compute_mde,
    compute_power,
    compute_required_cases,
    confirm_candidates,
    confirm_improvement,
    summarize_differences,
)


def exact_differences(mean: float, sd: float, n: int, seed: int = 0) -> np.ndarray:
    """n per-case differences whose sample mean and SD are exactly `mean` and `sd`."""
    z = np.random.default_rng(seed).standard_normal(n)
    return mean + sd * (z - z.mean()) / z.std(ddof=1)


def arms_from_differences(differences: np.ndarray, repeats: int = 1) -> tuple[list, list, list]:
    """Candidate and baseline observations (baseline 0.5 everywhere) with `repeats` identical copies per case."""
    n = len(differences)
    ids = [f"case-{i}" for i in range(n) for _ in range(repeats)]
    baseline = [0.5] * (n * repeats)
    candidate = [0.5 + d for d in np.repeat(differences, repeats)]
    return candidate, baseline, ids


def graded_world(rng: np.random.Generator, n_cases: int, repeats: int, gain: float) -> tuple[list, list, list]:
    """A small simulated world: case difficulty, per-arm per-case effects, repeat noise, scores clipped to [0, 1]."""
    difficulty = rng.uniform(0.35, 0.75, n_cases)
    base_p = difficulty + rng.normal(0.0, 0.05, n_cases)
    cand_p = difficulty + gain + rng.normal(0.0, 0.05, n_cases)
    base = np.clip(base_p[:, None] + rng.normal(0.0, 0.08, (n_cases, repeats)), 0.0, 1.0)
    cand = np.clip(cand_p[:, None] + rng.normal(0.0, 0.08, (n_cases, repeats)), 0.0, 1.0)
    ids = np.repeat([f"c{i}" for i in range(n_cases)], repeats).tolist()
    return cand.ravel().tolist(), base.ravel().tolist(), ids


# ------------------------------------------------------------------------------------------- decisions --
def test_clear_improvement_promotes_with_evidence():
    z = np.random.default_rng(0).standard_normal(60)
    differences = 0.05 + 0.10 * np.concatenate([z, -z]) / np.concatenate([z, -z]).std(ddof=1)  # skewness 0
    result = confirm_improvement(*arms_from_differences(differences, repeats=3))
    assert result.decision == "promote"
    assert result.effect == pytest.approx(0.05)
    assert result.n_cases == 120 and result.n_observations == 360 and result.repeats == 3
    assert result.n_clusters == 120 and result.cluster_unit == "case" and result.changed_clusters == 120
    # symmetric differences: the corrected t is the paired t, less the continuity correction
    corrected = 0.05 - np.abs(differences).min() / 120
    expected_p = stats.t.sf(corrected / (0.10 / math.sqrt(120)), 119)
    assert result.p_value == pytest.approx(expected_p, rel=1e-6)
    assert result.adjusted_p_value == result.p_value
    assert 0 < result.ci_low < result.effect < result.ci_high and result.ci_level == pytest.approx(0.9)
    assert result.test == "t on cluster totals with Hall's skewness correction, one-sided"
    assert result.reason.startswith("Promote")


def test_identical_arms_do_not_promote():
    rng = np.random.default_rng(3)
    scores = rng.uniform(0, 1, 300).tolist()
    ids = [f"c{i // 3}" for i in range(300)]
    result = confirm_improvement(scores, scores, ids)
    assert result.decision == "no_improvement"
    assert result.effect == 0.0 and result.p_value == 1.0 and result.changed_clusters == 0


def test_three_favourable_ties_give_the_exact_sign_flip_p():
    differences = np.zeros(100)
    differences[:3] = [0.1, 0.2, 0.3]  # temperature 0: 97 identical answers, three changed, all better
    result = confirm_improvement(*arms_from_differences(differences), min_effect=0.0)
    assert result.p_value == pytest.approx(0.125)
    assert result.test == "exact sign-flip on cluster totals, one-sided" and result.changed_clusters == 3
    assert result.decision != "promote"
    mixed = differences.copy()
    mixed[3] = -0.15  # four changed, sum 0.45: of the 16 sign patterns, 0.75, 0.45 and 0.55 reach it
    assert confirm_improvement(*arms_from_differences(mixed)).p_value == pytest.approx(3 / 16)


def test_differences_at_rounding_level_are_ties_not_certainty():
    candidate, baseline, ids = arms_from_differences(np.full(200, 1e-12))
    result = confirm_improvement(candidate, baseline, ids)
    assert result.p_value == 1.0 and result.changed_clusters == 0 and result.decision != "promote"
    summary = summarize_differences(np.full(200, 1e-12))
    assert summary.p_value == 1.0


def test_the_same_real_gain_on_every_case_is_total_evidence():
    result = confirm_improvement(*arms_from_differences(np.full(100, 0.02)))
    assert result.p_value == 0.0 and result.decision == "promote"


def test_left_skew_makes_the_test_more_cautious_than_the_plain_t():
    rng = np.random.default_rng(21)
    differences = np.concatenate([rng.normal(0.04, 0.05, 57), rng.normal(-0.55, 0.05, 3)])
    plain = stats.t.sf(differences.mean() / (differences.std(ddof=1) / math.sqrt(60)), 59)
    corrected = summarize_differences(differences)
    assert corrected.skewness < -2
    assert corrected.p_value > plain + 0.03


def test_repeats_are_clustered_by_case_not_counted_as_cases():
    differences = exact_differences(0.02, 0.10, 60, seed=4)
    once = confirm_improvement(*arms_from_differences(differences, repeats=1))
    five_times = confirm_improvement(*arms_from_differences(differences, repeats=5))
    assert five_times.n_observations == 5 * once.n_observations
    assert five_times.p_value == pytest.approx(once.p_value, rel=1e-12)
    assert five_times.n_cases == once.n_cases == 60


def test_cases_of_one_template_are_one_cluster():
    rng = np.random.default_rng(8)
    template_effect = rng.normal(0.0, 0.03, 10)
    template_effect -= template_effect.mean()
    differences = 0.02 + np.repeat(template_effect, 12) + rng.normal(0.0, 0.03, 120)
    candidate, baseline, ids = arms_from_differences(differences)
    templates = [f"t{i // 12}" for i in range(120)]
    by_case = confirm_improvement(candidate, baseline, ids)
    by_template = confirm_improvement(candidate, baseline, ids, clusters=templates, cluster_unit="template")
    assert by_template.n_clusters == 10 and by_template.cluster_unit == "template"
    assert by_template.effect == pytest.approx(by_case.effect)
    assert by_case.p_value < 1e-5
    assert by_template.p_value > 100 * by_case.p_value  # 12 correlated cases are not 12 times the evidence
    assert "10 clusters by template" in by_template.reason
    with pytest.raises(ValueError, match="each case belongs to one cluster"):
        confirm_improvement(candidate[:3], baseline[:3], ["a", "a", "b"], clusters=["x", "y", "y"])


def test_case_order_does_not_matter():
    rng = np.random.default_rng(5)
    cand, base, ids = graded_world(rng, 40, 3, 0.02)
    order = rng.permutation(len(ids))
    shuffled = confirm_improvement([cand[i] for i in order], [base[i] for i in order], [ids[i] for i in order])
    assert shuffled.p_value == pytest.approx(confirm_improvement(cand, base, ids).p_value, rel=1e-12)


def test_significant_but_below_min_effect_is_no_improvement():
    result = confirm_improvement(*arms_from_differences(exact_differences(0.005, 0.01, 200)))
    assert result.p_value < 1e-6
    assert result.decision == "no_improvement"
    assert "below min_effect" in result.reason


def test_adequately_powered_miss_is_no_significant_improvement():
    result = confirm_improvement(*arms_from_differences(exact_differences(0.0, 0.02, 200)))
    assert result.mde < 2 * result.min_effect
    assert result.decision == "no_improvement"
    assert result.reason.startswith("No significant improvement")


def test_tiny_design_is_flagged_underpowered():
    result = confirm_improvement(*arms_from_differences(exact_differences(0.02, 0.10, 20)))
    assert result.p_value > 0.05
    assert result.decision == "underpowered" and result.underpowered
    assert result.mde > result.min_effect
    assert "cannot detect twice the minimum effect" in result.reason
    assert "cases would be needed" in result.reason


def test_a_spectrum_shown_worse_blocks_promotion():
    good = exact_differences(0.08, 0.05, 90, seed=1)
    bad = exact_differences(-0.05, 0.05, 30, seed=2)
    candidate, baseline, ids = arms_from_differences(np.concatenate([good, bad]))
    spectrums = ["profile"] * 45 + ["history"] * 45 + ["credit"] * 30
    result = confirm_improvement(candidate, baseline, ids, spectrums=spectrums)
    assert result.effect > 0.04 and result.p_value < 1e-6
    assert result.decision == "regression_in_spectrum"
    by_name = {s.spectrum: s for s in result.per_spectrum}
    assert set(by_name) == {"credit", "history", "profile"}
    assert by_name["credit"].harmed and by_name["credit"].delta == pytest.approx(-0.05)
    assert by_name["credit"].n_cases == 30 and by_name["credit"].upper_bound < 0 and by_name["credit"].p_harm < 0.06
    assert not by_name["profile"].harmed and not by_name["history"].harmed
    assert "'credit'" in result.reason


def test_a_small_spectrum_that_is_not_shown_worse_does_not_block():
    # The old rule demanded proof of non-inferiority from each spectrum: nine cases at +0.03 could not give
    # it. The harm test only blocks what is shown to get worse.
    differences = exact_differences(0.03, 0.10, 63, seed=6)
    candidate, baseline, ids = arms_from_differences(differences)
    spectrums = [f"s{i % 7}" for i in range(63)]
    result = confirm_improvement(candidate, baseline, ids, spectrums=spectrums)
    assert result.decision == "promote"
    assert all(not s.harmed and s.n_cases == 9 for s in result.per_spectrum)


def test_result_is_json_ready_even_with_a_single_case_spectrum():
    candidate, baseline, ids = arms_from_differences(exact_differences(0.05, 0.05, 50, seed=7))
    spectrums = ["lonely"] + ["main"] * 49
    result = confirm_improvement(candidate, baseline, ids, spectrums=spectrums, error_budget={"level": 0.05})
    data = json.loads(json.dumps(result.to_dict()))
    lonely = next(s for s in data["per_spectrum"] if s["spectrum"] == "lonely")
    assert lonely["n_cases"] == 1 and lonely["upper_bound"] is not None  # judged with the pooled SD
    assert set(data) >= {"decision", "effect", "ci_low", "ci_high", "p_value", "adjusted_p_value", "n_cases",
                         "n_observations", "repeats", "test", "cluster_unit", "n_clusters", "mde", "min_effect",
                         "alpha", "spectrum_alpha", "per_spectrum", "error_budget", "reason"}
    assert data["error_budget"] == {"level": 0.05}


# ------------------------------------------------------------------------------------------- bad input --
def test_misaligned_lengths_are_rejected():
    with pytest.raises(ValueError, match="lengths differ: candidate=3, baseline=2, case_ids=3"):
        confirm_improvement([0.1, 0.2, 0.3], [0.1, 0.2], ["a", "b", "c"])
    with pytest.raises(ValueError, match="spectrums=2"):
        confirm_improvement([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], ["a", "b", "c"], spectrums=["x", "y"])


def test_misaligned_ids_are_rejected():
    with pytest.raises(ValueError, match="observation 1 is case 'b' in the candidate arm but 'c'"):
        confirm_improvement([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], ["a", "b", "c"], baseline_case_ids=["a", "c", "b"])


@pytest.mark.parametrize(("candidate", "message"), [
    ([0.1, float("nan"), 0.3], "observation 1 is nan"),
    ([0.1, 1.5, 0.3], r"observation 1 is 1.5; scores must be in \[0, 1\]"),
    ([0.1, "good", 0.3], "must be numbers"),
])
def test_bad_scores_are_rejected(candidate, message):
    with pytest.raises(ValueError, match=message):
        confirm_improvement(candidate, [0.1, 0.2, 0.3], ["a", "b", "c"])


def test_case_in_two_spectrums_and_single_case_are_rejected():
    with pytest.raises(ValueError, match="case 'a' is in spectrum 'x'"):
        confirm_improvement([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], ["a", "a", "b"], spectrums=["x", "y", "y"])
    with pytest.raises(ValueError, match="at least 2 distinct cases"):
        confirm_improvement([0.1, 0.2], [0.1, 0.2], ["a", "a"])
    with pytest.raises(ValueError, match="alpha"):
        confirm_improvement([0.1, 0.2], [0.1, 0.2], ["a", "b"], alpha=0.7)


# -------------------------------------------------------------------------------------- several candidates --
def test_holm_adjustment_matches_the_step_down_rule():
    assert adjust_holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    batch = adjust_holm(np.array([[0.01, 0.04, 0.03, 0.2], [0.5, 0.001, 0.9, 0.2]]))
    assert batch[1] == pytest.approx([1.0, 0.004, 1.0, 0.6])


def test_holm_keeps_a_marginal_winner_from_promoting_among_several():
    marginal = exact_differences(0.0134, 0.10, 200, seed=8)  # one-sided p ~ 0.03 on its own
    candidate, baseline, ids = arms_from_differences(marginal)
    alone = confirm_improvement(candidate, baseline, ids)
    assert 0.02 < alone.p_value < 0.04 and alone.decision == "promote"
    null_a, _, _ = arms_from_differences(exact_differences(0.0, 0.10, 200, seed=9))
    null_b, _, _ = arms_from_differences(exact_differences(-0.01, 0.10, 200, seed=10))
    results = confirm_candidates({"marginal": candidate, "a": null_a, "b": null_b}, baseline, ids)
    assert list(results) == ["marginal", "a", "b"]
    marginal_result = results["marginal"]
    assert isinstance(marginal_result, ConfirmationResult)
    assert marginal_result.p_value == pytest.approx(alone.p_value)
    assert marginal_result.adjusted_p_value == pytest.approx(3 * alone.p_value)
    assert marginal_result.n_compared == 3 and "Holm-adjusted" in marginal_result.reason
    assert marginal_result.mde > alone.mde  # computed at alpha / 3
    assert all(r.decision != "promote" for r in results.values())


def test_a_clear_winner_still_promotes_among_several():
    strong, baseline, ids = arms_from_differences(exact_differences(0.05, 0.10, 200, seed=11))
    null, _, _ = arms_from_differences(exact_differences(0.0, 0.10, 200, seed=12))
    results = confirm_candidates({"strong": strong, "null": null}, baseline, ids)
    assert results["strong"].decision == "promote" and results["null"].decision != "promote"
    with pytest.raises(ValueError, match="no candidates"):
        confirm_candidates({}, baseline, ids)


# ---------------------------------------------------------------------------------- vectorised and power --
def test_vectorised_path_matches_the_public_function():
    rng = np.random.default_rng(13)
    cand, base, ids = graded_world(rng, 80, 2, 0.02)
    spectrums = [f"s{int(i[1:]) % 2}" for i in ids]
    result = confirm_improvement(cand, base, ids, spectrums=spectrums)
    differences = (np.asarray(cand) - np.asarray(base)).reshape(80, 2).mean(axis=1)
    summary = summarize_differences(differences[None, :])
    _, ok, _ = assess_spectrums(differences[None, :], [f"s{c % 2}" for c in range(80)], spectrum_alpha=0.05)
    decision = classify_decisions(summary.p_value, summary.effect, result.mde, ok, alpha=0.05, min_effect=0.01)
    assert decision[0] == result.decision
    assert summary.p_value[0] == pytest.approx(result.p_value, rel=1e-12)


def test_power_helpers_agree_with_each_other():
    mde = compute_mde(0.10, 100)
    assert compute_power(mde, 0.10, 100) == pytest.approx(0.8, abs=1e-6)
    assert 0.024 < mde < 0.026  # normal approximation: 2.49 * 0.01
    n = compute_required_cases(0.03, 0.10, power=0.85)
    assert compute_power(0.03, 0.10, n) >= 0.85 > compute_power(0.03, 0.10, n - 1)
    assert compute_mde(np.array([0.1, 0.2]), 100) == pytest.approx([mde, 2 * mde])


def test_the_rule_mde_includes_the_spectrum_guard_and_the_level():
    plain = RuleDesign(sd=0.10, n_cases=100, n_clusters=100, level=0.05)
    assert plain.mde() == pytest.approx(compute_mde(0.10, 100), rel=1e-4)  # no guard, no min_effect: the t-test
    guarded = RuleDesign(sd=0.10, n_cases=100, n_clusters=100, level=0.04, min_effect=0.01,
                         spectrum_sizes=(15, 15, 14, 14, 14, 14, 14), spectrum_sd=0.10, spectrum_df=93,
                         spectrum_alpha=0.06)
    assert guarded.mde() > plain.mde()
    assert guarded.power(guarded.mde()) == pytest.approx(0.8, abs=1e-4)
    n = guarded.required_cases(0.02)
    assert guarded.scaled(n).power(0.02) >= 0.8 > guarded.scaled(n - 1).power(0.02)


def test_spending_levels_sum_to_alpha_and_front_load_the_first_confirmation():
    levels = [spending_level(0.05, j) for j in range(1, 2000)]
    assert levels[0] == pytest.approx(0.04) and levels[1] == pytest.approx(0.01 * 6 / math.pi ** 2)
    assert sum(levels) < 0.05 and sum(levels) > 0.0499
    assert spent_before(0.05, 3) == pytest.approx(levels[0] + levels[1])
    budget = error_budget(0.05, 2)
    assert budget["level"] == pytest.approx(levels[1])
    assert budget["remaining_after"] == pytest.approx(0.05 - 0.04 - levels[1])
    assert error_budget(0.05, 7, scheme="per_confirmation")["level"] == 0.05
    with pytest.raises(ValueError):
        spending_level(0.05, 0)
