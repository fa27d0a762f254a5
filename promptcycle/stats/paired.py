"""Is the candidate prompt better than the current one? The paired decision the optimization phase relies on.

Both prompts are scored on the same held-out cases, with the same models and the same repeats, so every
observation of the candidate has a twin in the baseline. `confirm_improvement` turns the two aligned lists of
scores (each in [0, 1], graded or pass/fail) into a decision with its evidence; `confirm_candidates` does the same
for several candidates against one baseline under a family-wise error guarantee.

Method
------
1. **The case is the unit.** Repeats (and, when scores of several models are pooled, the models) are averaged
   within each case and arm; the test runs on the n per-case differences d_i = mean_candidate_i - mean_baseline_i.
   Repeats of one case are not independent evidence — a case the prompt handles badly is handled badly on every
   repeat — so counting them as separate observations would understate the standard error and promote too often.
   When models are pooled, the case stays the cluster: the models are the fixed set the prompt is deployed on,
   the cases are the sample we generalise from, and a prompt edit that fixes (or breaks) a case tends to do so for
   every model, so model x case cells of one case are positively correlated. (bench/gate_error_rates.py shows the
   false-promotion rate that treating model x case as independent units produces.) Pass "model:case" ids only if
   the models themselves are the sample you want to generalise over. Cases may have different numbers of
   observations (a failed call dropped from both arms); each case counts once.
2. **One-sided paired t-test on the case means**, H0: mean difference <= 0. Averages of bounded scores over
   >= ~30 cases are close enough to normal for the t reference distribution; bench/gate_error_rates.py checks the
   false-promotion rate at 50-500 cases for pass/fail and graded scores with 1 and 3 repeats. A sign-flip
   permutation test would be exact only under a symmetric null and costs thousands of resamples per decision;
   the bench shows the t-test already holds its level where this gate is used.
3. **Confidence interval**: the two-sided (1 - 2 alpha) interval (90% at alpha = 0.05), so its lower end is the
   one-sided (1 - alpha) bound and `ci_low > 0` exactly when the (unadjusted) test is significant.
4. **Minimum detectable effect (MDE)**: the true mean difference this design detects with probability `power` at
   the test's level, from the observed SD of the case differences and the noncentral t (see `stats.power`). It
   describes the design's sensitivity; it is not "observed power" computed from the observed effect.
5. **Per-spectrum non-inferiority**: within each spectrum, the one-sided (1 - alpha) lower confidence bound of the
   mean case difference must exceed -spectrum_margin. The candidate must *show* that no spectrum loses more than
   the margin (a spectrum with a single case cannot show it and blocks). Promotion needs every spectrum to pass:
   an intersection-union test, which keeps its level without a multiplicity correction.
6. **Several candidates**: Holm's step-down adjustment of the one-sided p-values (family-wise error <= alpha
   under any dependence, including the shared baseline); decisions use the adjusted p-values and the MDE is
   computed at alpha / k, the level Holm requires of the first rejection.

The decision rule, exactly
--------------------------
Let p be the (Holm-adjusted, for several candidates) one-sided p-value and effect the mean case difference.

- ``promote``                 p <= alpha and effect >= min_effect and every spectrum is non-inferior;
- ``regression_in_spectrum``  p <= alpha and effect >= min_effect, but some spectrum's lower bound is at or
                              below -spectrum_margin;
- ``underpowered``            p > alpha and MDE > min_effect: a miss says nothing, the design "cannot detect the
                              minimum effect at this N" (the reason names the number of cases it would need);
- ``no_improvement``          otherwise: not significant although the design could detect min_effect, or
                              significant but estimated below min_effect.

The false-promotion rate under no true improvement is at most alpha because promotion requires p <= alpha.
`underpowered` describes misses only. A significant win in a design whose MDE exceeds min_effect still promotes
(its error rate is controlled by the test, not by the power) and carries ``underpowered=True`` with a note that
the estimate may be optimistic; refusing it would make the gate unable to promote at realistic sizes — with a
per-case SD of 0.10 the MDE drops below 0.01 only past ~620 cases. Testing against min_effect as the null
(requiring ci_low >= min_effect) was rejected for the same reason: it spends the whole power budget on a
minimum that is a business threshold, not a sharp hypothesis.

The vectorised pieces (`summarize_differences`, `assess_spectrums`, `adjust_holm`, `classify_decisions`) are
public so that simulations run the very same arithmetic over many data sets at once.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from promptcycle.stats.power import compute_mde, compute_required_cases

__all__ = [
    "TEST_NAME",
    "DECISIONS",
    "DifferenceStats",
    "SpectrumResult",
    "ConfirmationResult",
    "summarize_differences",
    "assess_spectrums",
    "adjust_holm",
    "classify_decisions",
    "confirm_improvement",
    "confirm_candidates",
]

TEST_NAME = "paired t on case means, one-sided"
DECISIONS = ("promote", "no_improvement", "underpowered", "regression_in_spectrum")

# An effect equal to min_effect up to floating-point noise counts as reaching it.
_EFFECT_TOLERANCE = 1e-12


@dataclass(frozen=True)
class DifferenceStats:
    """Paired-t statistics of per-case differences, one value per leading index of the input array.

    `ci_low`/`ci_high` are the two-sided (1 - 2 alpha) interval; `ci_low` is the one-sided (1 - alpha) bound.
    With fewer than 2 cases every field except `effect` is NaN.
    """

    n_cases: int
    effect: np.ndarray
    sd: np.ndarray
    p_value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    mde: np.ndarray


def _check_options(*, alpha: float, power: float, min_effect: float, spectrum_margin: float) -> None:
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5) for a one-sided test, got {alpha!r}")
    if not alpha < power < 1.0:
        raise ValueError(f"power must be in (alpha, 1), got {power!r}")
    if not min_effect >= 0.0:
        raise ValueError(f"min_effect must be >= 0 (a score difference), got {min_effect!r}")
    if not spectrum_margin >= 0.0:
        raise ValueError(f"spectrum_margin must be >= 0 (a score difference), got {spectrum_margin!r}")


def summarize_differences(differences: np.ndarray | Sequence[float], *, alpha: float = 0.05,
                          power: float = 0.8, mde_alpha: float | None = None) -> DifferenceStats:
    """Run the one-sided paired t-test on per-case differences along the last axis.

    `differences` has shape (..., n_cases); every output has the leading shape. `mde_alpha` is the level the
    MDE is computed at (defaults to `alpha`; `confirm_candidates` passes alpha / k).
    """
    d = np.asarray(differences, dtype=float)
    n = d.shape[-1]
    effect = d.mean(axis=-1) if n else np.full(d.shape[:-1], np.nan)
    if n < 2:
        nan = np.full(d.shape[:-1], np.nan)
        return DifferenceStats(n, effect, nan, nan, nan, nan, nan)
    df = n - 1
    sd = d.std(axis=-1, ddof=1)
    se = sd / math.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Zero spread: every case moved by the same amount, so the evidence is one-sided and total
        # (t = +/-inf); no movement at all (0/0) is no evidence of improvement.
        t_stat = np.where(se > 0.0, effect / se, np.sign(effect) * np.inf)
    p_value = np.where(np.isnan(t_stat), 1.0, stats.t.sf(t_stat, df))
    t_crit = float(stats.t.ppf(1.0 - alpha, df))
    mde = np.asarray(compute_mde(sd, n, alpha=alpha if mde_alpha is None else mde_alpha, power=power))
    return DifferenceStats(n, effect, sd, p_value, effect - t_crit * se, effect + t_crit * se, mde)


def assess_spectrums(differences: np.ndarray | Sequence[float], case_spectrums: Sequence[str], *,
                     margin: float, alpha: float = 0.05,
                     power: float = 0.8) -> tuple[dict[str, DifferenceStats], np.ndarray]:
    """Per-spectrum non-inferiority of the case differences (last axis aligned with `case_spectrums`).

    Returns each spectrum's statistics (sorted by name) and a boolean array (leading shape) that is True where
    every spectrum's one-sided (1 - alpha) lower bound exceeds -margin. A spectrum with one case has no bound
    and is never shown non-inferior.
    """
    d = np.asarray(differences, dtype=float)
    labels = np.asarray([str(s) for s in case_spectrums])
    if labels.shape != d.shape[-1:]:
        raise ValueError(f"{len(labels)} case spectrums for {d.shape[-1]} cases")
    per_spectrum: dict[str, DifferenceStats] = {}
    all_ok = np.ones(d.shape[:-1], dtype=bool)
    for name in sorted(set(labels.tolist())):
        result = summarize_differences(d[..., labels == name], alpha=alpha, power=power)
        per_spectrum[name] = result
        all_ok &= np.nan_to_num(result.ci_low, nan=-np.inf) > -margin
    return per_spectrum, all_ok


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
    """Apply the decision rule (module docstring) element-wise; returns an array of decision strings."""
    p_value, effect, mde, spectrum_ok = np.broadcast_arrays(
        np.asarray(p_value, dtype=float), np.asarray(effect, dtype=float), np.asarray(mde, dtype=float),
        np.asarray(spectrum_ok, dtype=bool))
    significant = p_value <= alpha
    win = significant & (effect >= min_effect - _EFFECT_TOLERANCE)
    decision = np.full(p_value.shape, "no_improvement", dtype="<U22")
    decision[~significant & (mde > min_effect)] = "underpowered"
    decision[win & ~spectrum_ok] = "regression_in_spectrum"
    decision[win & spectrum_ok] = "promote"
    return decision


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
    """One spectrum's mean case difference, its (1 - 2 alpha) interval and whether it is non-inferior."""

    spectrum: str
    delta: float
    ci_low: float  # one-sided (1 - alpha) lower bound; NaN (null in JSON) with a single case
    ci_high: float
    n_cases: int
    non_inferior: bool


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
    test: str
    sd_difference: float
    mde: float
    power: float
    underpowered: bool  # mde > min_effect
    min_effect: float
    alpha: float
    spectrum_margin: float
    n_compared: int  # candidates in the Holm family
    per_spectrum: list[SpectrumResult] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; non-finite numbers become None."""
        return _json_float(asdict(self))


@dataclass(frozen=True)
class _PairedCases:
    differences: np.ndarray  # one per case, in order of first appearance
    case_spectrums: list[str] | None
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


def _pair_observations(candidate: Sequence[float], baseline: Sequence[float], case_ids: Sequence[Hashable],
                       spectrums: Sequence[str] | None, baseline_case_ids: Sequence[Hashable] | None,
                       label: str = "candidate") -> _PairedCases:
    lengths = {label: len(candidate), "baseline": len(baseline), "case_ids": len(case_ids)}
    if spectrums is not None:
        lengths["spectrums"] = len(spectrums)
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

    case_spectrums = None
    if spectrums is not None:
        first: dict[int, str] = {}
        names = list(index)
        for i, (case, spectrum) in enumerate(zip(inverse.tolist(), spectrums)):
            known = first.setdefault(case, str(spectrum))
            if known != str(spectrum):
                raise ValueError(f"case {names[case]!r} is in spectrum {known!r} and, at observation {i}, in "
                                 f"{str(spectrum)!r}: each case belongs to one spectrum")
        case_spectrums = [first[c] for c in range(n_cases)]

    repeats = float(counts[0]) if np.all(counts == counts[0]) else round(float(counts.mean()), 3)
    return _PairedCases(differences, case_spectrums, len(cand), repeats)


def _signed(x: float) -> str:
    return f"{x:+.3f}" if math.isfinite(x) else "undefined"


def _describe_p(p: float, adjusted: float, k: int) -> str:
    text = f"one-sided p = {p:.3g}"
    if k > 1:
        text += f" (Holm-adjusted {adjusted:.3g} over {k} candidates)"
    return text


def _reason(decision: str, *, effect: float, ci_low: float, ci_high: float, level: float, p: float,
            adjusted: float, k: int, n_cases: int, sd: float, mde: float, power: float, alpha: float,
            mde_alpha: float, min_effect: float, margin: float, spectra: list[SpectrumResult]) -> str:
    interval = f"{level:.0%} CI {_signed(ci_low)} to {_signed(ci_high)}"
    p_text = _describe_p(p, adjusted, k)
    if decision == "promote":
        text = (f"Promote: the candidate improves the mean case score by {_signed(effect)} ({interval}) over "
                f"{n_cases} cases, {p_text} <= {alpha}, reaching the minimum effect {min_effect}")
        if spectra:
            text += f", and no spectrum loses more than {margin}"
        if mde > min_effect:
            text += (f"; note the design only reliably detects {mde:.3f}, so this estimate may be optimistic")
        return text + "."
    if decision == "regression_in_spectrum":
        failing = [s for s in spectra if not s.non_inferior]
        shown = "; ".join(
            f"{s.spectrum!r} {_signed(s.delta)} with lower bound "
            + (f"{_signed(s.ci_low)}" if math.isfinite(s.ci_low) else "undefined")
            + f" ({s.n_cases} case{'s' if s.n_cases != 1 else ''})" for s in failing[:3])
        more = f" and {len(failing) - 3} more" if len(failing) > 3 else ""
        return (f"Blocked: the improvement {_signed(effect)} is significant ({p_text}) but a spectrum may "
                f"regress beyond the margin {margin} ({1 - alpha:.0%} lower bound not above -{margin}): "
                f"{shown}{more}.")
    if decision == "underpowered":
        try:
            needed = f"about {compute_required_cases(min_effect, sd, alpha=mde_alpha, power=power)} cases"
        except ValueError:
            needed = "a positive min_effect" if min_effect <= 0 else "far more cases"
        return (f"Underpowered: cannot detect the minimum effect {min_effect} at this N; with {n_cases} cases "
                f"the design detects {mde:.3f} with {power:.0%} power (observed {_signed(effect)}, {p_text}); "
                f"{needed} would be needed.")
    if adjusted <= alpha:
        return (f"No improvement above the minimum effect: {_signed(effect)} ({interval}) is significant, "
                f"{p_text}, but below min_effect {min_effect}.")
    if sd == 0.0 and effect == 0.0:
        return f"No improvement: both prompts scored the same on every one of the {n_cases} cases."
    return (f"No significant improvement: {_signed(effect)} ({interval}) over {n_cases} cases, {p_text} > "
            f"{alpha}; the design detects {mde:.3f} with {power:.0%} power, so a gain of {min_effect} would "
            f"likely have shown.")


def _build_result(paired: _PairedCases, summary: DifferenceStats, adjusted_p: float, *, k: int, alpha: float,
                  power: float, min_effect: float, spectrum_margin: float, mde_alpha: float) -> ConfirmationResult:
    spectra: list[SpectrumResult] = []
    spectrum_ok = True
    if paired.case_spectrums is not None:
        per_spectrum, ok = assess_spectrums(paired.differences, paired.case_spectrums, margin=spectrum_margin,
                                            alpha=alpha, power=power)
        spectrum_ok = bool(ok)
        for name, s in per_spectrum.items():
            low = float(s.ci_low)
            spectra.append(SpectrumResult(name, float(s.effect), low, float(s.ci_high), s.n_cases,
                                          bool(math.isfinite(low) and low > -spectrum_margin)))
    effect, p, mde, sd = float(summary.effect), float(summary.p_value), float(summary.mde), float(summary.sd)
    decision = str(classify_decisions(adjusted_p, effect, mde, spectrum_ok, alpha=alpha, min_effect=min_effect))
    ci_low, ci_high = float(summary.ci_low), float(summary.ci_high)
    reason = _reason(decision, effect=effect, ci_low=ci_low, ci_high=ci_high, level=1 - 2 * alpha, p=p,
                     adjusted=adjusted_p, k=k, n_cases=summary.n_cases, sd=sd, mde=mde, power=power,
                     alpha=alpha, mde_alpha=mde_alpha, min_effect=min_effect, margin=spectrum_margin,
                     spectra=spectra)
    return ConfirmationResult(
        decision=decision, effect=effect, ci_low=ci_low, ci_high=ci_high, ci_level=round(1 - 2 * alpha, 10),
        p_value=p, adjusted_p_value=float(adjusted_p), n_cases=summary.n_cases,
        n_observations=paired.n_observations, repeats=paired.repeats, test=TEST_NAME, sd_difference=sd,
        mde=mde, power=power, underpowered=bool(mde > min_effect), min_effect=min_effect, alpha=alpha,
        spectrum_margin=spectrum_margin, n_compared=k, per_spectrum=spectra, reason=reason)


def confirm_improvement(candidate: Sequence[float], baseline: Sequence[float], case_ids: Sequence[Hashable], *,
                        spectrums: Sequence[str] | None = None, min_effect: float = 0.01, alpha: float = 0.05,
                        spectrum_margin: float = 0.02, power: float = 0.8,
                        baseline_case_ids: Sequence[Hashable] | None = None) -> ConfirmationResult:
    """Decide whether `candidate` beats `baseline` on the same cases (rule and method: module docstring).

    `candidate`, `baseline`, `case_ids` (and `spectrums`, if given) are aligned observation by observation:
    position i is the same case, model and repeat in both arms. Pass `baseline_case_ids` when the baseline
    arm's ids come from elsewhere (e.g. a different query) to have the alignment checked. Raises ValueError
    on misaligned or malformed input (different lengths, mismatched ids, non-finite or out-of-range scores,
    a case in two spectrums, fewer than 2 cases).
    """
    _check_options(alpha=alpha, power=power, min_effect=min_effect, spectrum_margin=spectrum_margin)
    paired = _pair_observations(candidate, baseline, case_ids, spectrums, baseline_case_ids)
    summary = summarize_differences(paired.differences, alpha=alpha, power=power)
    return _build_result(paired, summary, float(summary.p_value), k=1, alpha=alpha, power=power,
                         min_effect=min_effect, spectrum_margin=spectrum_margin, mde_alpha=alpha)


def confirm_candidates(candidates: Mapping[str, Sequence[float]], baseline: Sequence[float],
                       case_ids: Sequence[Hashable], *, spectrums: Sequence[str] | None = None,
                       min_effect: float = 0.01, alpha: float = 0.05, spectrum_margin: float = 0.02,
                       power: float = 0.8,
                       baseline_case_ids: Sequence[Hashable] | None = None) -> dict[str, ConfirmationResult]:
    """Decide on several candidates against one baseline, Holm-correcting their p-values.

    Every candidate is aligned with `baseline` and `case_ids` as in `confirm_improvement`. The probability
    that any candidate is promoted when none is truly better is at most `alpha`; each result carries its raw
    and adjusted p-value, and its MDE at alpha / k. Results keep the order of `candidates`.
    """
    _check_options(alpha=alpha, power=power, min_effect=min_effect, spectrum_margin=spectrum_margin)
    if not candidates:
        raise ValueError("no candidates to compare")
    k = len(candidates)
    mde_alpha = alpha / k
    names = list(candidates)
    paired = {name: _pair_observations(candidates[name], baseline, case_ids, spectrums, baseline_case_ids,
                                       label=f"candidate {name!r}") for name in names}
    summaries = {name: summarize_differences(paired[name].differences, alpha=alpha, power=power,
                                             mde_alpha=mde_alpha) for name in names}
    adjusted = adjust_holm([float(summaries[name].p_value) for name in names])
    return {name: _build_result(paired[name], summaries[name], float(adjusted[i]), k=k, alpha=alpha,
                                power=power, min_effect=min_effect, spectrum_margin=spectrum_margin,
                                mde_alpha=mde_alpha)
            for i, name in enumerate(names)}
