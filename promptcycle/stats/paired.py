"""Is the candidate prompt better than the current one? The paired decision the optimization phase relies on.

Both prompts are scored on the same held-out cases, with the same models and the same repeats, so every
observation of the candidate has a twin in the baseline. `confirm_improvement` turns the two aligned lists of
scores (each in [0, 1], graded or pass/fail) into a decision with its evidence; `confirm_candidates` does the same
for several candidates against one baseline under a family-wise error guarantee.

Method
------
1. **The cluster is the unit.** Repeats (and pooled models) are averaged within each case and arm, giving one
   difference d_i = mean_candidate_i - mean_baseline_i per case. Cases are then summed within their *cluster*:
   the unit the data says is independent. By default every case is its own cluster; when cases share a source
   (the bundled dataset's questions come from a few dozen templates, `optimization.cluster_field: template`)
   the cluster is that source, since a prompt edit that helps one question of a template tends to help all of
   them. The effect is the mean case difference, sum_j S_j / N over cluster totals S_j; its standard error is
   the cluster-robust one, sqrt(G / (G - 1) * sum_j (S_j - n_j * effect)^2) / N, on G - 1 degrees of freedom.
   With one case per cluster this is exactly the paired t-test.
2. **Ties.** A cluster whose total moved by less than `resolution` per case (default 1e-6 score units: floating
   point, rounding) counts as unchanged. Identical answers (temperature 0) give exact zeros.
3. **The p-value** (one-sided, H0: mean difference <= 0):
   - when at most `EXACT_MAX_CLUSTERS` (16) clusters changed: the **exact sign-flip test** on the changed
     cluster totals (all 2^m sign patterns; unchanged clusters carry no evidence). Three changed cases, all
     favourable, give p = 1/8. Exact under a null that is symmetric in the two arms (exchangeable prompts);
   - otherwise: the **t-test on cluster totals with Hall's skewness correction**
     T = sqrt(G) (S + g S^2 / 3 + g^2 S^3 / 27 + g / (6 G)), S = effect' / sd, g the sample skewness of the
     cluster residuals, referred to t(G - 1); effect' is the effect less the smallest changed cluster total / N,
     a continuity correction (half the finest step of the sign-flip distribution: with pass/fail ties it is
     the classic one, with graded scores it is negligible). A candidate that badly breaks a few cases while
     slightly helping the rest has left-skewed differences; there the plain t-test promotes too often (mean and SD
     move together) and the correction removes the first-order error. With symmetric differences g ~ 0 and T ~ t,
     so the power of the t-test is kept.
4. **Confidence interval**: the plain two-sided (1 - 2 alpha) t interval on cluster totals (its lower end is the
   one-sided (1 - alpha) bound). It is a description; the decision uses the p-value above.
5. **Spectrums: a test for harm, not a demand for proof of non-inferiority.** For each spectrum the mean case
   difference gets a one-sided test of H0: delta_s >= -spectrum_margin against "this spectrum got worse by
   more than the margin", at level `spectrum_alpha` (default 0.06), with the SD pooled over spectrums (cluster
   residuals within each spectrum; degrees of freedom: cluster-spectrum cells minus spectrums). A spectrum is
   *harmed* when that test rejects, i.e. when its (1 - spectrum_alpha) upper bound is below -margin. The test
   is not corrected for the number of spectrums on purpose: it is a guard, and its errors only cost power; a
   uniform gain of three points loses ~1-2% of its promotions to it at 100 cases (bench/gate_error_rates.py),
   while a spectrum that truly loses five points is caught ~80% of the time at 200 cases and almost always at
   500. (Requiring every spectrum's *lower* bound above -margin, as before, blocked most real gains: nine cases
   cannot prove non-inferiority.)
6. **Several candidates**: Holm's step-down adjustment of the one-sided p-values (family-wise error <= level
   under any dependence, including the shared baseline).
7. **The level** is what the confirmation may spend: `alpha` here. Across successive confirmations of one
   pipeline the optimization phase passes its share of the error budget (`promptcycle.stats.spending`), so that
   many cycles without a real improvement still promote anything at most `alpha` of the time.
8. **MDE and `underpowered` describe this whole rule** (`promptcycle.stats.power.RuleDesign`): the uniform gain
   promoted with probability `power` given the level, min_effect, the number of clusters and the spectrum guard,
   from the observed SDs. It is not "observed power" computed from the observed effect.

The decision rule, exactly
--------------------------
Let p be the (Holm-adjusted, for several candidates) one-sided p-value and effect the mean case difference.

- ``promote``                 p <= level and effect >= min_effect and no spectrum is harmed;
- ``regression_in_spectrum``  p <= level and effect >= min_effect, but some spectrum is harmed;
- ``underpowered``            p > level and the rule's MDE > 2 x min_effect: a miss says little, the design "cannot
                              detect twice the minimum effect at this N" (the reason names the cases it would need).
                              Twice, because the rule itself requires the *estimate* to reach min_effect: a true
                              gain of exactly min_effect is promoted at most half the time by any design, so
                              "detects min_effect with 80% power" is never true; 2 x min_effect is reachable;
- ``no_improvement``          otherwise.

The false-promotion rate under no true improvement is at most the level because promotion requires p <= level
(exactly so for the sign-flip branch, to second order for the corrected t; bench/gate_error_rates.py measures
it over 50-500 cases, pass/fail and graded, 1 and 3 repeats, uniform and heterogeneous effects, broken cases,
template clusters and temperature-0 ties). A significant win in a design whose MDE exceeds min_effect still
promotes and carries ``underpowered=True`` (MDE > 2 x min_effect) with a note that the estimate may be optimistic.

The vectorised pieces (`cluster_totals`, `summarize_differences`, `assess_spectrums`, `adjust_holm`,
`classify_decisions`) are public so that simulations run the very same arithmetic over many data sets at once.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from promptcycle.stats.power import RuleDesign

__all__ = [
    "TEST_NAME",
    "DECISIONS",
    "EXACT_MAX_CLUSTERS",
    "RESOLUTION",
    "DETECT_MULTIPLE",
    "DifferenceStats",
    "SpectrumStats",
    "SpectrumResult",
    "ConfirmationResult",
    "cluster_totals",
    "summarize_differences",
    "assess_spectrums",
    "adjust_holm",
    "classify_decisions",
    "confirm_improvement",
    "confirm_candidates",
]

TEST_NAME = "one-sided test on cluster totals: exact sign-flip (<= 16 changed clusters) or skew-corrected t"
DECISIONS = ("promote", "no_improvement", "underpowered", "regression_in_spectrum")
EXACT_MAX_CLUSTERS = 16
RESOLUTION = 1e-6

# An effect equal to min_effect up to floating-point noise counts as reaching it.
_EFFECT_TOLERANCE = 1e-12
DETECT_MULTIPLE = 2.0  # a design is adequately powered when its rule's MDE is at most this x min_effect
_SIGN_PATTERNS: dict[int, np.ndarray] = {}


def _check_options(*, alpha: float, power: float, min_effect: float, spectrum_margin: float,
                   spectrum_alpha: float = 0.06) -> None:
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5) for a one-sided test, got {alpha!r}")
    if not alpha < power < 1.0:
        raise ValueError(f"power must be in (alpha, 1), got {power!r}")
    if not min_effect >= 0.0:
        raise ValueError(f"min_effect must be >= 0 (a score difference), got {min_effect!r}")
    if not spectrum_margin >= 0.0:
        raise ValueError(f"spectrum_margin must be >= 0 (a score difference), got {spectrum_margin!r}")
    if not 0.0 < spectrum_alpha < 0.5:
        raise ValueError(f"spectrum_alpha must be in (0, 0.5), got {spectrum_alpha!r}")


# ------------------------------------------------------------------------------------- vectorised core --
def cluster_totals(differences: np.ndarray | Sequence[float],
                   clusters: Sequence[Hashable] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sum per-case differences (last axis) within clusters: (totals (..., G), sizes (G,)).

    `clusters` labels each case; None makes every case its own cluster. Clusters are ordered by first appearance.
    """
    d = np.asarray(differences, dtype=float)
    n = d.shape[-1]
    if clusters is None:
        return d, np.ones(n)
    if len(clusters) != n:
        raise ValueError(f"{len(clusters)} cluster labels for {n} cases")
    index: dict[Hashable, int] = {}
    inverse = np.fromiter((index.setdefault(c, len(index)) for c in clusters), dtype=np.intp, count=n)
    indicator = np.zeros((n, len(index)))
    indicator[np.arange(n), inverse] = 1.0
    return d @ indicator, indicator.sum(axis=0)


@dataclass(frozen=True)
class DifferenceStats:
    """The overall test, one value per leading index of the input array (see the module docstring).

    `sd` is the per-case-equivalent SD (standard error x sqrt(N)); `exact` marks the sign-flip branch;
    `changed` counts clusters that moved by more than the resolution. With fewer than 2 clusters every field
    except `effect` is NaN.
    """

    n_cases: int
    n_clusters: int
    effect: np.ndarray
    se: np.ndarray
    sd: np.ndarray
    p_value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    skewness: np.ndarray
    changed: np.ndarray
    exact: np.ndarray


def _sign_patterns(m: int) -> np.ndarray:
    if m not in _SIGN_PATTERNS:
        bits = (np.arange(2 ** m)[:, None] >> np.arange(m)[None, :]) & 1
        _SIGN_PATTERNS[m] = 1.0 - 2.0 * bits
    return _SIGN_PATTERNS[m]


def _sign_flip_p(values: np.ndarray) -> np.ndarray:
    """Exact one-sided sign-flip p-values of the row sums of `values` (rows, m): P(sum(+-v) >= sum(v))."""
    rows, m = values.shape
    if m == 0:
        return np.ones(rows)
    patterns = _sign_patterns(m)
    observed = values.sum(axis=1)
    tolerance = 1e-12 * np.maximum(np.abs(values).sum(axis=1), 1e-300)
    out = np.empty(rows)
    for start in range(0, rows, 64):
        block = values[start:start + 64] @ patterns.T
        out[start:start + 64] = (block >= (observed - tolerance)[start:start + 64, None]).mean(axis=1)
    return out


def summarize_differences(differences: np.ndarray | Sequence[float], *,
                          clusters: Sequence[Hashable] | None = None, alpha: float = 0.05,
                          resolution: float = RESOLUTION) -> DifferenceStats:
    """The one-sided test on per-case differences (last axis), clustered by `clusters` (None: by case)."""
    totals, sizes = cluster_totals(differences, clusters)
    n, g = float(sizes.sum()), totals.shape[-1]
    lead = totals.shape[:-1]
    changed_mask = np.abs(totals) > resolution * sizes
    totals = np.where(changed_mask, totals, 0.0)
    effect = totals.sum(axis=-1) / n if g else np.full(lead, np.nan)
    changed = changed_mask.sum(axis=-1)
    if g < 2:
        nan = np.full(lead, np.nan)
        return DifferenceStats(int(n), g, effect, nan, nan, nan, nan, nan, nan, changed, np.zeros(lead, bool))
    df = g - 1
    residual = (totals - sizes * effect[..., None]) * (g / n)  # cluster residuals on the scale of the mean
    sd_x = np.sqrt((residual ** 2).sum(axis=-1) / df)
    se = sd_x / math.sqrt(g)
    m2 = (residual ** 2).mean(axis=-1)
    # Continuity correction: the sign-flip distribution of the total moves in steps of twice a cluster total,
    # so the smallest changed total is half its finest step (pass/fail ties: exactly the classic correction;
    # continuous scores: negligible).
    smallest = np.where(changed_mask, np.abs(totals), np.inf).min(axis=-1)
    corrected = effect - np.where(np.isfinite(smallest), smallest, 0.0) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = np.where(m2 > 0, (residual ** 3).mean(axis=-1) / m2 ** 1.5, 0.0)
        standardized = corrected / sd_x
        hall = math.sqrt(g) * (standardized + skew * standardized ** 2 / 3 + skew ** 2 * standardized ** 3 / 27
                               + skew / (6 * g))
        # Zero spread: every cluster moved by the same amount; the evidence is one-sided and total.
        statistic = np.where(se > 0.0, hall, np.sign(corrected) * np.inf)
    p_value = np.where(np.isnan(statistic) | (changed == 0), 1.0, stats.t.sf(statistic, df))
    exact = (changed <= EXACT_MAX_CLUSTERS)
    if np.any(exact):
        flat_totals = totals.reshape(-1, g)
        flat_changed = changed.reshape(-1)
        flat_p = p_value.reshape(-1).copy()
        order = np.argsort(~changed_mask.reshape(-1, g), axis=-1, kind="stable")
        moved = np.take_along_axis(flat_totals, order, axis=-1)  # changed clusters first
        for m in np.unique(flat_changed[flat_changed <= EXACT_MAX_CLUSTERS]):
            rows = np.flatnonzero(flat_changed == m)
            flat_p[rows] = _sign_flip_p(moved[rows, :m])
        p_value = flat_p.reshape(lead)
    t_crit = float(stats.t.ppf(1.0 - alpha, df))
    return DifferenceStats(int(n), g, effect, se, se * math.sqrt(n), p_value, effect - t_crit * se,
                           effect + t_crit * se, skew, changed, exact)


@dataclass(frozen=True)
class SpectrumStats:
    """One spectrum's harm test (leading shape of the input): mean difference, SE from the pooled SD,
    the (1 - spectrum_alpha) upper bound, the harm p-value and whether it is harmed."""

    n_cases: int
    effect: np.ndarray
    se: np.ndarray
    upper: np.ndarray
    p_harm: np.ndarray
    harmed: np.ndarray


def assess_spectrums(differences: np.ndarray | Sequence[float], case_spectrums: Sequence[str], *,
                     clusters: Sequence[Hashable] | None = None, margin: float = 0.0,
                     spectrum_alpha: float = 0.06) -> tuple[dict[str, SpectrumStats], np.ndarray, dict[str, float]]:
    """Per-spectrum harm tests of the case differences (last axis aligned with `case_spectrums`).

    Returns each spectrum's statistics (sorted by name), a boolean array (leading shape) that is True where no
    spectrum is harmed, and the design of the guard: {"sd": pooled per-case SD (mean over leading shape), "df"}.
    """
    d = np.asarray(differences, dtype=float)
    labels = np.asarray([str(s) for s in case_spectrums])
    if labels.shape != d.shape[-1:]:
        raise ValueError(f"{len(labels)} case spectrums for {d.shape[-1]} cases")
    cluster_labels = list(range(d.shape[-1])) if clusters is None else list(clusters)
    names = sorted(set(labels.tolist()))
    parts, residual_ss, denominator, cells = {}, np.zeros(d.shape[:-1]), 0.0, 0
    for name in names:
        mask = labels == name
        totals, sizes = cluster_totals(d[..., mask], [cluster_labels[i] for i in np.flatnonzero(mask)])
        n_s = float(sizes.sum())
        mean = totals.sum(axis=-1) / n_s
        residual_ss = residual_ss + ((totals - sizes * mean[..., None]) ** 2).sum(axis=-1)
        denominator += n_s - float((sizes ** 2).sum()) / n_s
        cells += len(sizes)
        parts[name] = (int(n_s), mean)
    df = max(cells - len(names), 1)
    pooled = np.sqrt(residual_ss / denominator) if denominator > 0 else np.full(d.shape[:-1], np.nan)
    t_crit = float(stats.t.ppf(1.0 - spectrum_alpha, df))
    per_spectrum: dict[str, SpectrumStats] = {}
    no_harm = np.ones(d.shape[:-1], dtype=bool)
    for name, (n_s, mean) in parts.items():
        se = pooled / math.sqrt(n_s)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(se > 0, (mean + margin) / se, np.where(mean + margin < 0, -np.inf, np.inf))
        p_harm = np.where(np.isnan(z), 1.0, stats.t.cdf(z, df))
        harmed = p_harm <= spectrum_alpha
        per_spectrum[name] = SpectrumStats(n_s, mean, se, mean + t_crit * se, p_harm, harmed)
        no_harm &= ~harmed
    design = {"sd": float(np.nanmean(pooled)) if np.any(np.isfinite(pooled)) else float("nan"), "df": df}
    return per_spectrum, no_harm, design


def adjust_holm(p_values: np.ndarray | Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values along the last axis (family-wise error control, any dependence)."""
    p = np.asarray(p_values, dtype=float)
    k = p.shape[-1]
    if k == 0:
        return p.copy()
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1) * np.arange(k, 0, -1)
    ranked = np.minimum(np.maximum.accumulate(ranked, axis=-1), 1.0)
    adjusted = np.empty_like(ranked)
    np.put_along_axis(adjusted, order, ranked, axis=-1)
    return adjusted


def classify_decisions(p_value: np.ndarray | float, effect: np.ndarray | float, mde: np.ndarray | float,
                       spectrum_ok: np.ndarray | bool = True, *, alpha: float,
                       min_effect: float) -> np.ndarray:
    """Apply the decision rule (module docstring) element-wise at level `alpha`; returns decision strings.

    `spectrum_ok` is True where no spectrum is harmed; `mde` is the rule's MDE (NaN: never `underpowered`);
    `underpowered` when it exceeds DETECT_MULTIPLE x min_effect.
    """
    p_value, effect, mde, spectrum_ok = np.broadcast_arrays(
        np.asarray(p_value, dtype=float), np.asarray(effect, dtype=float), np.asarray(mde, dtype=float),
        np.asarray(spectrum_ok, dtype=bool))
    significant = p_value <= alpha
    win = significant & (effect >= min_effect - _EFFECT_TOLERANCE)
    decision = np.full(p_value.shape, "no_improvement", dtype="<U22")
    decision[~significant & (mde > DETECT_MULTIPLE * min_effect)] = "underpowered"
    decision[win & ~spectrum_ok] = "regression_in_spectrum"
    decision[win & spectrum_ok] = "promote"
    return decision


# --------------------------------------------------------------------------------------- the evidence --
def _json_float(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_float(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_float(v) for v in value]
    return value


@dataclass(frozen=True)
class SpectrumResult:
    """One spectrum's mean case difference, its harm test and whether it is harmed.

    `upper_bound` is the one-sided (1 - spectrum_alpha) upper bound; harmed means it is below -margin.
    `ci_low`/`ci_high` are the two-sided (1 - 2 alpha) interval from the pooled SD, for description.
    """

    spectrum: str
    delta: float
    ci_low: float
    ci_high: float
    upper_bound: float
    p_harm: float
    n_cases: int
    harmed: bool


@dataclass(frozen=True)
class ConfirmationResult:
    """The decision on one candidate and the evidence behind it. `to_dict()` is JSON-ready."""

    decision: str
    effect: float
    ci_low: float
    ci_high: float
    ci_level: float
    p_value: float
    adjusted_p_value: float
    n_cases: int
    n_observations: int
    repeats: float  # observations per case (scores pooled over repeats and models); the mean if uneven
    test: str  # the test actually used for this decision
    cluster_unit: str  # 'case' or the dataset field cases were clustered by
    n_clusters: int
    changed_clusters: int
    sd_difference: float  # per-case-equivalent SD of the overall estimate
    mde: float  # of the whole rule, at this level (RuleDesign)
    power: float
    underpowered: bool  # mde > DETECT_MULTIPLE x min_effect
    min_effect: float
    alpha: float  # the level this confirmation was decided at (its share of the error budget)
    spectrum_margin: float
    spectrum_alpha: float
    n_compared: int  # candidates in the Holm family
    per_spectrum: list[SpectrumResult] = field(default_factory=list)
    error_budget: dict[str, Any] = field(default_factory=dict)  # what this decision spent (optimize passes it)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; non-finite numbers become None."""
        return _json_float(asdict(self))


@dataclass(frozen=True)
class _PairedCases:
    differences: np.ndarray  # one per case, in order of first appearance
    case_spectrums: list[str] | None
    case_clusters: list[str] | None
    n_observations: int
    repeats: float


def _as_scores(values: Sequence[float], label: str) -> np.ndarray:
    try:
        scores = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{label} scores must be numbers in [0, 1]: {exc}") from None
    if scores.ndim != 1:
        raise ValueError(f"{label} scores must be a flat sequence, got shape {scores.shape}")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ValueError(f"{label} score at observation {bad[0]} is {scores[bad[0]]}: drop failed observations "
                         "from both arms before comparing")
    bad = np.flatnonzero((scores < 0.0) | (scores > 1.0))
    if bad.size:
        raise ValueError(f"{label} score at observation {bad[0]} is {scores[bad[0]]}; scores must be in [0, 1]")
    return scores


def _per_case_label(inverse: list[int], names: list[Hashable], values: Sequence[Any], what: str) -> list[str]:
    first: dict[int, str] = {}
    for i, (case, value) in enumerate(zip(inverse, values)):
        known = first.setdefault(case, str(value))
        if known != str(value):
            raise ValueError(f"case {names[case]!r} is in {what} {known!r} and, at observation {i}, in "
                             f"{str(value)!r}: each case belongs to one {what}")
    return [first[c] for c in range(len(names))]


def _pair_observations(candidate: Sequence[float], baseline: Sequence[float], case_ids: Sequence[Hashable],
                       spectrums: Sequence[str] | None, baseline_case_ids: Sequence[Hashable] | None,
                       label: str = "candidate", clusters: Sequence[Hashable] | None = None) -> _PairedCases:
    lengths = {label: len(candidate), "baseline": len(baseline), "case_ids": len(case_ids)}
    if spectrums is not None:
        lengths["spectrums"] = len(spectrums)
    if clusters is not None:
        lengths["clusters"] = len(clusters)
    if baseline_case_ids is not None:
        lengths["baseline_case_ids"] = len(baseline_case_ids)
    if len(set(lengths.values())) != 1:
        found = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise ValueError(f"the arms must be aligned observation by observation (same case, same repeat), "
                         f"but the lengths differ: {found}")
    if baseline_case_ids is not None:
        for i, (a, b) in enumerate(zip(case_ids, baseline_case_ids)):
            if a != b:
                raise ValueError(f"observation {i} is case {a!r} in the {label} arm but {b!r} in the baseline "
                                 "arm: align both arms by (case, repeat) before comparing")
    cand = _as_scores(candidate, label)
    base = _as_scores(baseline, "baseline")

    index: dict[Hashable, int] = {}
    inverse = np.fromiter((index.setdefault(cid, len(index)) for cid in case_ids), dtype=np.intp,
                          count=len(case_ids))
    n_cases = len(index)
    if n_cases < 2:
        raise ValueError(f"a paired test needs at least 2 distinct cases, got {n_cases}")
    counts = np.bincount(inverse, minlength=n_cases)
    differences = np.bincount(inverse, weights=cand - base, minlength=n_cases) / counts
    names, inv = list(index), inverse.tolist()
    case_spectrums = None if spectrums is None else _per_case_label(inv, names, spectrums, "spectrum")
    case_clusters = None if clusters is None else _per_case_label(inv, names, clusters, "cluster")
    if case_clusters is not None and len(set(case_clusters)) < 2:
        raise ValueError(f"a paired test needs at least 2 distinct clusters, got {len(set(case_clusters))}")
    repeats = float(counts[0]) if np.all(counts == counts[0]) else round(float(counts.mean()), 3)
    return _PairedCases(differences, case_spectrums, case_clusters, len(cand), repeats)


def _signed(x: float) -> str:
    return f"{x:+.3f}" if math.isfinite(x) else "undefined"


def _describe_p(p: float, adjusted: float, k: int, exact: bool, changed: int) -> str:
    text = f"one-sided p = {p:.3g}" + (f" (exact sign-flip over {changed} changed clusters)" if exact else "")
    if k > 1:
        text += f" (Holm-adjusted {adjusted:.3g} over {k} candidates)"
    return text


def _reason(decision: str, *, effect: float, ci_low: float, ci_high: float, ci_level: float, p_text: str,
            adjusted: float, n_cases: int, unit: str, n_clusters: int, changed: int, mde: float, power: float,
            alpha: float, min_effect: float, margin: float, spectra: list[SpectrumResult], needed: str) -> str:
    interval = f"{ci_level:.0%} CI {_signed(ci_low)} to {_signed(ci_high)}"
    over = f"{n_cases} cases" + (f" in {n_clusters} clusters by {unit}" if unit != "case" else "")
    if decision == "promote":
        text = (f"Promote: the candidate improves the mean case score by {_signed(effect)} ({interval}) over "
                f"{over}, {p_text} <= {alpha:.3g}, reaching the minimum effect {min_effect}")
        if spectra:
            text += (", and no spectrum is shown to get worse" if margin == 0 else
                     f", and no spectrum is shown to lose more than {margin}")
        if mde > DETECT_MULTIPLE * min_effect:
            text += f"; note the rule only reliably detects {mde:.3f}, so this estimate may be optimistic"
        return text + "."
    if decision == "regression_in_spectrum":
        harmed = [s for s in spectra if s.harmed]
        shown = "; ".join(f"{s.spectrum!r} {_signed(s.delta)} (upper bound {_signed(s.upper_bound)}, "
                          f"p = {s.p_harm:.3g}, {s.n_cases} case{'s' if s.n_cases != 1 else ''})"
                          for s in harmed[:3])
        more = f" and {len(harmed) - 3} more" if len(harmed) > 3 else ""
        worse = "got worse" if margin == 0 else f"got worse by more than {margin}"
        return (f"Blocked: the improvement {_signed(effect)} is significant ({p_text}) but a spectrum {worse}: "
                f"{shown}{more}.")
    if decision == "underpowered":
        return (f"Underpowered: cannot detect twice the minimum effect {min_effect} at this N; with {over} the rule "
                f"detects {mde:.3f} with {power:.0%} power at level {alpha:.3g} (observed {_signed(effect)}, "
                f"{p_text}); {needed} would be needed.")
    if adjusted <= alpha:
        return (f"No improvement above the minimum effect: {_signed(effect)} ({interval}) is significant, "
                f"{p_text}, but below min_effect {min_effect}.")
    if changed == 0:
        return f"No improvement: both prompts scored the same on every one of the {n_cases} cases."
    return (f"No significant improvement: {_signed(effect)} ({interval}) over {over}, {p_text} > {alpha:.3g}; "
            f"the rule detects {mde:.3f} with {power:.0%} power, so a gain of {2 * min_effect:g} would likely have "
            "shown.")


def _build_result(paired: _PairedCases, adjusted_p: float, *, k: int, alpha: float, power: float,
                  min_effect: float, spectrum_margin: float, spectrum_alpha: float, resolution: float,
                  cluster_unit: str, error_budget: Mapping[str, Any] | None) -> ConfirmationResult:
    summary = summarize_differences(paired.differences, clusters=paired.case_clusters, alpha=alpha,
                                    resolution=resolution)
    spectra: list[SpectrumResult] = []
    spectrum_ok, guard_sd, guard_df, sizes = True, float("nan"), 1, ()
    if paired.case_spectrums is not None:
        per_spectrum, ok, design = assess_spectrums(paired.differences, paired.case_spectrums,
                                                    clusters=paired.case_clusters, margin=spectrum_margin,
                                                    spectrum_alpha=spectrum_alpha)
        spectrum_ok, guard_sd, guard_df = bool(ok), design["sd"], design["df"]
        sizes = tuple(s.n_cases for s in per_spectrum.values())
        t_two = float(stats.t.ppf(1.0 - alpha, guard_df))
        for name, s in per_spectrum.items():
            delta, se = float(s.effect), float(s.se)
            spectra.append(SpectrumResult(name, delta, delta - t_two * se, delta + t_two * se, float(s.upper),
                                          float(s.p_harm), s.n_cases, bool(s.harmed)))
    effect, p, sd = float(summary.effect), float(summary.p_value), float(summary.sd)
    level = alpha / k  # Holm's first rejection; the MDE describes the rule at the level a win needs
    design = RuleDesign(sd=sd, n_cases=summary.n_cases, n_clusters=summary.n_clusters, level=level,
                        min_effect=min_effect, spectrum_sizes=sizes, spectrum_sd=guard_sd, spectrum_df=guard_df,
                        spectrum_margin=spectrum_margin, spectrum_alpha=spectrum_alpha)
    mde = design.mde(power) if math.isfinite(sd) else float("nan")
    decision = str(classify_decisions(adjusted_p, effect, mde, spectrum_ok, alpha=alpha, min_effect=min_effect))
    exact = bool(summary.exact)
    test = ("exact sign-flip on cluster totals, one-sided" if exact
            else "t on cluster totals with Hall's skewness correction, one-sided")
    needed = "far more cases"
    if decision == "underpowered":
        try:
            needed = (f"about {design.required_cases(DETECT_MULTIPLE * min_effect, power)} cases" if min_effect > 0
                      else "a positive min_effect")
        except ValueError:
            pass
    ci_low, ci_high = float(summary.ci_low), float(summary.ci_high)
    unit = cluster_unit if paired.case_clusters is not None else "case"
    reason = _reason(decision, effect=effect, ci_low=ci_low, ci_high=ci_high, ci_level=1 - 2 * alpha,
                     p_text=_describe_p(p, adjusted_p, k, exact, int(summary.changed)), adjusted=adjusted_p,
                     n_cases=summary.n_cases, unit=unit, n_clusters=summary.n_clusters,
                     changed=int(summary.changed), mde=mde, power=power, alpha=alpha, min_effect=min_effect,
                     margin=spectrum_margin, spectra=spectra, needed=needed)
    return ConfirmationResult(
        decision=decision, effect=effect, ci_low=ci_low, ci_high=ci_high, ci_level=round(1 - 2 * alpha, 10),
        p_value=p, adjusted_p_value=float(adjusted_p), n_cases=summary.n_cases,
        n_observations=paired.n_observations, repeats=paired.repeats, test=test, cluster_unit=unit,
        n_clusters=summary.n_clusters, changed_clusters=int(summary.changed), sd_difference=sd, mde=mde,
        power=power, underpowered=bool(mde > DETECT_MULTIPLE * min_effect), min_effect=min_effect, alpha=alpha,
        spectrum_margin=spectrum_margin, spectrum_alpha=spectrum_alpha, n_compared=k, per_spectrum=spectra,
        error_budget=dict(error_budget or {}), reason=reason)


def confirm_improvement(candidate: Sequence[float], baseline: Sequence[float], case_ids: Sequence[Hashable], *,
                        spectrums: Sequence[str] | None = None, clusters: Sequence[Hashable] | None = None,
                        cluster_unit: str = "cluster", min_effect: float = 0.01, alpha: float = 0.05,
                        spectrum_margin: float = 0.0, spectrum_alpha: float = 0.06, power: float = 0.8,
                        resolution: float = RESOLUTION, error_budget: Mapping[str, Any] | None = None,
                        baseline_case_ids: Sequence[Hashable] | None = None) -> ConfirmationResult:
    """Decide whether `candidate` beats `baseline` on the same cases (rule and method: module docstring).

    `candidate`, `baseline`, `case_ids` (and `spectrums`, `clusters`, if given) are aligned observation by
    observation: position i is the same case, model and repeat in both arms. `clusters` labels the independent
    unit of each observation (a case belongs to one cluster; None: the case); `cluster_unit` names it in the
    evidence. `alpha` is the level this decision spends; `error_budget` (what the caller's budget spent) is
    stored with the evidence. Pass `baseline_case_ids` when the baseline arm's ids come from elsewhere to have
    the alignment checked. Raises ValueError on misaligned or malformed input.
    """
    _check_options(alpha=alpha, power=power, min_effect=min_effect, spectrum_margin=spectrum_margin,
                   spectrum_alpha=spectrum_alpha)
    paired = _pair_observations(candidate, baseline, case_ids, spectrums, baseline_case_ids, clusters=clusters)
    p = float(summarize_differences(paired.differences, clusters=paired.case_clusters, alpha=alpha,
                                    resolution=resolution).p_value)
    return _build_result(paired, p, k=1, alpha=alpha, power=power, min_effect=min_effect,
                         spectrum_margin=spectrum_margin, spectrum_alpha=spectrum_alpha, resolution=resolution,
                         cluster_unit=cluster_unit, error_budget=error_budget)


def confirm_candidates(candidates: Mapping[str, Sequence[float]], baseline: Sequence[float],
                       case_ids: Sequence[Hashable], *, spectrums: Sequence[str] | None = None,
                       clusters: Sequence[Hashable] | None = None, cluster_unit: str = "cluster",
                       min_effect: float = 0.01, alpha: float = 0.05, spectrum_margin: float = 0.0,
                       spectrum_alpha: float = 0.06, power: float = 0.8, resolution: float = RESOLUTION,
                       error_budget: Mapping[str, Any] | None = None,
                       baseline_case_ids: Sequence[Hashable] | None = None) -> dict[str, ConfirmationResult]:
    """Decide on several candidates against one baseline, Holm-correcting their p-values at level `alpha`.

    Every candidate is aligned with `baseline` and `case_ids` as in `confirm_improvement`. The probability
    that any candidate is promoted when none is truly better is at most `alpha`; each result carries its raw
    and adjusted p-value, and the rule's MDE at alpha / k. Results keep the order of `candidates`.
    """
    _check_options(alpha=alpha, power=power, min_effect=min_effect, spectrum_margin=spectrum_margin,
                   spectrum_alpha=spectrum_alpha)
    if not candidates:
        raise ValueError("no candidates to compare")
    k = len(candidates)
    names = list(candidates)
    paired = {name: _pair_observations(candidates[name], baseline, case_ids, spectrums, baseline_case_ids,
                                       label=f"candidate {name!r}", clusters=clusters) for name in names}
    raw = [float(summarize_differences(paired[n].differences, clusters=paired[n].case_clusters, alpha=alpha,
                                       resolution=resolution).p_value) for n in names]
    adjusted = adjust_holm(raw)
    return {name: _build_result(paired[name], float(adjusted[i]), k=k, alpha=alpha, power=power,
                                min_effect=min_effect, spectrum_margin=spectrum_margin,
                                spectrum_alpha=spectrum_alpha, resolution=resolution, cluster_unit=cluster_unit,
                                error_budget=error_budget)
            for i, name in enumerate(names)}
