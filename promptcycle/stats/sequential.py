"""The canary's sequential decision: promote, roll back or keep watching.

A canary splits production traffic between the current prompt (control) and a candidate (treatment) and looks at
the per-request quality scores again and again. Each look may stop the canary; the repeated looking must not
inflate the error rates. `decide_canary` is that look. It is stateless — it needs the outcomes so far, not the
history of earlier looks — and its error rates hold however often, and whenever, it is called, whatever the split.

The design, fixed before the canary starts (`plan_canary`)
-----------------------------------------------------------
`min_effect` is the smallest improvement worth detecting; with the score variance observed in production history
it sets the *horizon*: the information at which the canary gives up. Information is counted in *effective pairs*

    n_eff = sum over split steps k of  n_ck * n_tk / (n_ck + n_tk)

(the sample size of a balanced two-arm test with the same precision: at a 10% split one request adds 0.09 of a
pair, at 50% 0.25). The horizon H is the n_eff at which the boundary below reaches `power` (default 90%) for a
true gain of `min_effect`, and also detects a loss of `min_effect` with probability `harm_power` (95%). The plan
states H and the requests it takes along the configured schedule, before the first request is served.

The test — a stratified two-sample z statistic against a constant boundary in information time
------------------------------------------------------------------------------------------------
Outcomes are grouped by the split step they were served under (a *stratum*). Within a stratum both arms are
served at the same time by the same random assignment, so a drift of the traffic (harder questions this hour)
moves both arms alike; across strata nothing is compared: the estimate is the information-weighted mean of the
per-stratum differences,

    theta_hat = sum_k w_k (mean_tk - mean_ck) / sum_k w_k,   w_k = n_ck n_tk / (n_ck + n_tk),

with variance sigma^2 / n_eff. sigma^2 is the *pooled* within-group variance of all scores (both arms, all steps),
not each arm's own: under the null both arms share it, and a small arm's sample variance — which, for skewed scores,
is correlated with its mean (a small sample without any failed answer reads as both high and tight) — no longer
drives the boundary. With z = theta_hat sqrt(n_eff) / sigma and t = min(1, n_eff / H), the score process
z sqrt(t) is, in the Gaussian limit, a Brownian motion in t whatever the allocation (unequal arms, a split that
moves at data-dependent times) with drift theta sqrt(H) / sigma. By the reflection principle a driftless Brownian
motion crosses the constant level c before t = 1 with probability 2 (1 - Phi(c)), so

    promote  when  z sqrt(t) >=  c,        c   = z_(1 - alpha/2)       (one-sided error alpha)
    harm     when  z sqrt(t) <= -c_harm,   c_h = z_(1 - alpha_harm/2)  (one-sided error alpha_harm)

spends at most alpha (alpha_harm) under continuous monitoring — the Lan–DeMets O'Brien–Fleming spending function
alpha(t) = 2 (1 - Phi(c / sqrt(t))) — and any finite set of looks crosses less often. On the effect scale this is
an always-valid confidence sequence theta_hat - c sigma sqrt(H) / n_eff ... theta_hat + c_h sigma sqrt(H) / n_eff:
promotion is "its lower end is above 0", harm is "its upper end is below 0". Reaching the horizon without
promotion rolls back (no evidence of improvement keeps the prompt production already trusts).

Why this and not a normal-mixture mSPRT or a betting confidence sequence: those are valid over an unbounded
horizon, which a canary does not need; the generality costs roughly 1.5 times the requests for the same power.
The constant boundary needs drift 3.02 (in sqrt(H) / sigma units; 3.13 with the reserve below) for 90% power
against 2.93 for a single fixed-size one-sided test. The price is the plug-in variance: validity is asymptotic,
and it is checked by simulation for pass/fail, graded and skewed scores, 10%/50% splits, the 10 -> 50% schedule,
looks after every request, and a drifting traffic mix (bench/canary_error_rates.py). A look that comes after the
horizon (sparse looks) uses t = 1: a final fixed-level test on the data it has.

The approximation reserve: under near-continuous monitoring (a look after every request) the boundary spends its
budget almost exactly, so any error of the normal approximation would show. The promotion boundary is therefore
built for 0.8 alpha; the remaining 0.2 alpha is kept for the approximation (plug-in variance, skewed scores in a
small arm — for which the boundary is also raised by a Cornish–Fisher skewness term, see `compute_bounds`). The
evidence reports the budget spent against the 0.8 alpha the boundary actually uses.

Why alpha_harm (default 0.15) is larger than alpha: rolling back a candidate that is merely no better costs only
time, while promoting a worse one costs users. A looser harm boundary rolls a 3-point-worse candidate back, for
harm, before the horizon in >= 95% of canaries without lengthening the horizon.

Guardrails — sequential too
---------------------------
Raw thresholds re-checked at every look roll back an innocent candidate far too often (each look is another
chance for noise to cross). Each guardrail is a one-sided always-valid test with the same constant boundary at
level `Guardrails.alpha`, rolling back only when the data *show* the limit is exceeded:

- `max_error_rate`: the treatment's error rate is above the limit (one-sample, null variance at the limit);
- `max_error_rate_increase`: treatment minus control error rate, stratified like the quality test, is above the
  limit (pooled error-rate variance, with one pseudo-error so that zero errors do not read as certainty);
- `max_p95_latency_ms`: more than 5% of treatment requests are slower than the limit;
- `max_p95_latency_increase_ms`: more than 5% of treatment requests are slower than control's p95 plus the limit
  (control's p95 is taken as known: the control arm is the larger and its p95 moves little).

Shadow (paired) mode
--------------------
`decide_shadow` is the same boundary on paired differences: the candidate also answers a sample of live requests
without being served, and both answers of a request are scored. Request difficulty cancels in the difference, and
every shadowed request is a full pair, so the horizon is several times shorter (see docs/deployment.md).

Everything here is plain numpy/scipy; `compute_bounds` and `classify_bounds` take arrays so that simulations
(bench/canary_error_rates.py) run the very same arithmetic vectorised over many canaries and looks.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.special import ndtr, ndtri

__all__ = [
    "DEFAULT_VAR_FLOOR",
    "MAX_VARIANCE",
    "TEST_NAME",
    "SHADOW_TEST_NAME",
    "Guardrails",
    "GuardrailState",
    "CanaryDecision",
    "CanaryPlan",
    "LookOutcome",
    "SequentialBounds",
    "boundary_power",
    "plan_canary",
    "pairs_for",
    "requests_for",
    "compute_bounds",
    "classify_bounds",
    "spent_alpha",
    "critical_value",
    "history_variance",
    "paired_skewness",
    "stratified_statistics",
    "sequential_exceedance",
    "decide_canary",
    "decide_shadow",
]

DEFAULT_VAR_FLOOR = 0.05**2
MAX_VARIANCE = 0.25  # the largest variance a score in [0, 1] can have
TEST_NAME = ("stratified two-sample z-test (strata: split steps; pooled variance), constant boundary in "
             "information time (O'Brien-Fleming spending, continuous-monitoring limit)")
SHADOW_TEST_NAME = ("paired z-test on shadow differences (same request, both prompts), constant boundary in "
                    "information time (O'Brien-Fleming spending, continuous-monitoring limit)")
SIEGMUND = 0.5826  # the boundary shift that makes discrete looks match continuous monitoring
RESERVE = 0.2  # share of the promotion error budget kept back for the normal approximation (see below)


class LookOutcome(IntEnum):
    """What one look concludes (vectorised code)."""

    CONTINUE = 0
    PROMOTE = 1
    HARM = 2  # roll back: the treatment is shown to be worse
    HORIZON = 3  # roll back: horizon reached without evidence of improvement
    GUARDRAIL = 4  # roll back: a guardrail's test shows its limit is exceeded


def critical_value(alpha: float) -> float:
    """The constant boundary whose continuous-monitoring one-sided crossing probability is `alpha`."""
    return float(ndtri(1.0 - alpha / 2.0))


def _promotion_critical(alpha: float) -> float:
    """The promotion boundary: built for (1 - RESERVE) * alpha under continuous monitoring."""
    return critical_value((1.0 - RESERVE) * alpha)


def spent_alpha(alpha: float, fraction: Any) -> Any:
    """Error budget spent by information fraction `fraction`: 2 (1 - Phi(c / sqrt(t)))
    (the Lan–DeMets O'Brien–Fleming spending function)."""
    t = np.clip(np.asarray(fraction, dtype=float), 1e-12, 1.0)
    return 2.0 * ndtr(-critical_value(alpha) / np.sqrt(t))


def _spent_promotion(alpha: float, fraction: Any) -> Any:
    return spent_alpha((1.0 - RESERVE) * alpha, fraction)


def boundary_power(drift: float, critical: float) -> float:
    """P(a Brownian motion with `drift` per unit time crosses `critical` before time 1) — the test's power when
    the true effect is drift * sigma / sqrt(H)."""
    if drift <= 0:
        return float(ndtr(drift - critical) + np.exp(2 * critical * drift) * ndtr(-critical - drift))
    # e^{2cm} Phi(-c-m) written stably
    tail = np.exp(2 * critical * drift + np.log(max(ndtr(-critical - drift), 1e-300)))
    return float(min(1.0, ndtr(drift - critical) + tail))


def _drift_for(power: float, critical: float) -> float:
    return float(brentq(lambda m: boundary_power(m, critical) - power, 0.0, 20.0))


def requests_for(horizon: float, schedule: Sequence[float], step_min_requests: int) -> dict[str, float]:
    """Requests (total, control, treatment) to reach `horizon` effective pairs along a split schedule.

    Every step before the last one below 100% lasts until its treatment has `step_min_requests` requests (its
    expected length); the last one runs until the horizon. Shares are percentages, 100 = promotion.
    """
    steps = [float(p) / 100.0 for p in schedule if float(p) < 100.0]
    if not steps:
        raise ValueError("a schedule needs at least one step below 100%")
    total = treatment = 0.0
    remaining = float(horizon)
    for i, p in enumerate(steps):
        per_request = p * (1.0 - p)
        last = i == len(steps) - 1
        n = remaining / per_request if last else min(step_min_requests / p, remaining / per_request)
        total += n
        treatment += n * p
        remaining -= n * per_request
        if remaining <= 1e-9:
            break
    return {"requests": float(np.ceil(total)), "treatment": float(np.ceil(treatment)),
            "control": float(np.ceil(total - treatment))}


def pairs_for(requests: float, schedule: Sequence[float], step_min_requests: int) -> float:
    """Effective pairs that `requests` requests reach along a split schedule (the inverse of `requests_for`)."""
    steps = [float(p) / 100.0 for p in schedule if float(p) < 100.0]
    pairs, remaining = 0.0, float(requests)
    for i, p in enumerate(steps):
        n = remaining if i == len(steps) - 1 else min(step_min_requests / p, remaining)
        pairs += n * p * (1.0 - p)
        remaining -= n
    return pairs


@dataclass(frozen=True)
class CanaryPlan:
    """The canary's design, stated before it starts: the horizon that gives `power` at `min_effect`."""

    test: str
    min_effect: float
    alpha: float
    alpha_harm: float
    power: float
    harm_power: float
    variance: float  # per-request score variance the plan assumes (paired: of the differences)
    variance_source: str
    horizon: float  # effective pairs (paired: shadowed requests)
    requests: float  # expected requests to reach the horizon along the schedule (shadow: shadowed requests)
    treatment_requests: float
    control_requests: float
    look_size: int
    schedule: list[float]
    drift: float  # the boundary-units drift sqrt(H) * min_effect / sd the horizon was sized for
    mode: str = "split"  # "split" (two arms) | "shadow" (paired)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        what = ("shadowed requests" if self.mode == "shadow" else
                f"requests ({self.treatment_requests:.0f} on the new version) along the "
                f"{' -> '.join(f'{p:g}%' for p in self.schedule)} schedule")
        return (f"needs {self.requests:.0f} {what} for {self.power:.0%} power at a "
                f"{self.min_effect * 100:.1f}-point gain (score SD {np.sqrt(self.variance):.3f} from "
                f"{self.variance_source}; horizon {self.horizon:.0f} effective pairs)")


def plan_canary(variance: float, *, min_effect: float, alpha: float = 0.05, alpha_harm: float = 0.15,
                power: float = 0.9, harm_power: float = 0.95, schedule: Sequence[float] = (10.0, 50.0, 100.0),
                step_min_requests: int = 50, look_size: int = 200, variance_source: str = "given",
                mode: str = "split", max_requests: int | None = None) -> CanaryPlan:
    """The horizon (effective pairs) and requests that give `power` to promote a true gain of `min_effect`, and
    `harm_power` to roll back a loss of `min_effect` for harm, at the given score variance.

    Discrete looks every `look_size` requests cross less often than continuous monitoring; Siegmund's correction
    (boundary + 0.583 sqrt(look spacing / horizon)) accounts for it, so the stated power holds at that spacing.
    With `max_requests` the horizon is what that many requests reach instead, and `power` is the power it gives.
    """
    if not min_effect > 0:
        raise ValueError(f"min_effect must be > 0 to size the canary, got {min_effect!r}")
    if mode not in ("split", "shadow"):
        raise ValueError(f"mode must be 'split' or 'shadow', got {mode!r}")
    largest = MAX_VARIANCE if mode == "split" else 4 * MAX_VARIANCE  # a paired difference lies in [-1, 1]
    if not 0 < variance <= largest:
        raise ValueError(f"variance must be in (0, {largest}], got {variance!r}")
    steps = [float(p) / 100.0 for p in schedule if float(p) < 100.0]
    last = steps[-1] if steps else 1.0
    look_pairs = look_size * (last * (1 - last) if mode == "split" else 1.0)
    horizon = 1.0
    for _ in range(20):  # the correction depends on the horizon itself; a fixed point in a few rounds
        shift = SIEGMUND * np.sqrt(look_pairs / horizon)
        drift = max(_drift_for(power, _promotion_critical(alpha) + shift),
                    _drift_for(harm_power, critical_value(alpha_harm) + shift))
        new = float(np.ceil(drift**2 * variance / min_effect**2))
        if abs(new - horizon) < 1:
            break
        horizon = new
    horizon = new
    if max_requests is not None:
        horizon = float(max_requests) if mode == "shadow" else pairs_for(max_requests, schedule, step_min_requests)
        if horizon <= 0:
            raise ValueError(f"max_requests {max_requests} reaches no information along the schedule")
        shift = SIEGMUND * np.sqrt(look_pairs / horizon)
        drift = float(np.sqrt(horizon) * min_effect / np.sqrt(variance))
        power = boundary_power(drift, _promotion_critical(alpha) + shift)
        harm_power = boundary_power(drift, critical_value(alpha_harm) + shift)
    if mode == "shadow":
        counts = {"requests": horizon, "treatment": horizon, "control": horizon}
        test = SHADOW_TEST_NAME
    else:
        counts = requests_for(horizon, schedule, step_min_requests)
        test = TEST_NAME
    return CanaryPlan(test=test, min_effect=float(min_effect), alpha=float(alpha), alpha_harm=float(alpha_harm),
                      power=float(power), harm_power=float(harm_power), variance=float(variance),
                      variance_source=variance_source, horizon=horizon, requests=counts["requests"],
                      treatment_requests=counts["treatment"], control_requests=counts["control"],
                      look_size=int(look_size), schedule=[float(p) for p in schedule], drift=float(drift),
                      mode=mode)


@dataclass(frozen=True)
class SequentialBounds:
    """The statistics of one look (or, in simulations, arrays of looks with any shape).

    `lower`/`upper` are the confidence sequence for the treatment-minus-control mean difference; `z_*` are the
    boundary-scaled statistics (>= `critical` / `critical_harm` means that side's boundary is crossed).
    """

    effect: Any
    std_error: Any
    sd: Any  # pooled per-request SD the look used
    n_effective: Any
    lower: Any
    upper: Any
    information_fraction: Any
    z_improvement: Any
    z_harm: Any
    p_improvement: Any
    p_harm: Any
    critical: float
    critical_harm: float


def compute_bounds(effect, variance, n_effective, horizon, *, alpha: float = 0.05, alpha_harm: float = 0.15,
                   var_floor: float = DEFAULT_VAR_FLOOR, skewness=0.0, p_values: bool = True) -> SequentialBounds:
    """Boundary statistics for looks given the (stratified) effect, the pooled per-request variance and the
    effective pairs so far; all numpy-broadcastable. `horizon` is the plan's effective pairs.

    `skewness` is that of the effect estimate (`stratified_statistics`); when positive — a small arm of right-skewed
    scores, whose mean has a heavy upper tail — the promotion boundary is raised by the Cornish–Fisher term
    skewness / 6 * (z_b^2 - 1) at the look's boundary z_b = c / sqrt(t). It is never lowered.
    `p_values=False` skips the always-valid p-values (None), which simulations do not need.
    """
    n_eff = np.maximum(np.asarray(n_effective, dtype=float), 1e-12)
    sd = np.sqrt(np.maximum(np.asarray(variance, dtype=float), var_floor))
    effect = np.asarray(effect, dtype=float)
    horizon = np.asarray(horizon, dtype=float)
    fraction = np.minimum(1.0, n_eff / horizon)
    z = effect * np.sqrt(n_eff) / sd
    c, c_h = _promotion_critical(alpha), critical_value(alpha_harm)
    gamma = np.maximum(np.nan_to_num(np.asarray(skewness, dtype=float)), 0.0)
    shift = np.sqrt(fraction) * gamma / 6.0 * np.maximum(c**2 / fraction - 1.0, 0.0)  # in z sqrt(t) units
    scaled = z * np.sqrt(fraction)
    improvement = scaled - shift
    # half-widths: c / sqrt(t) standard errors
    width = sd / np.sqrt(n_eff) / np.sqrt(fraction)
    return SequentialBounds(
        effect=effect, std_error=sd / np.sqrt(n_eff), sd=sd, n_effective=n_eff,
        lower=effect - (c + shift) * width, upper=effect + c_h * width, information_fraction=fraction,
        z_improvement=improvement, z_harm=-scaled,
        p_improvement=np.minimum(1.0, 2.0 * ndtr(-improvement)) if p_values else None,
        p_harm=np.minimum(1.0, 2.0 * ndtr(scaled)) if p_values else None,
        critical=c, critical_harm=c_h)


def classify_bounds(bounds: SequentialBounds, n_control, n_treatment, *, min_per_arm: int = 20) -> np.ndarray:
    """`LookOutcome` codes (int array shaped like the bounds) for each look (guardrails are separate).

    Promotion wins over the horizon at the last look; nothing is decided before `min_per_arm` scored requests
    per arm.
    """
    ready = (np.asarray(n_control) >= min_per_arm) & (np.asarray(n_treatment) >= min_per_arm)
    promote = ready & (bounds.z_improvement >= bounds.critical)
    harm = ready & ~promote & (bounds.z_harm >= bounds.critical_harm)
    horizon = ready & (bounds.information_fraction >= 1.0) & ~promote & ~harm
    choices = [int(LookOutcome.PROMOTE), int(LookOutcome.HARM), int(LookOutcome.HORIZON)]
    return np.select([promote, harm, horizon], choices, int(LookOutcome.CONTINUE)).astype(np.int8)


def sequential_exceedance(rate_hat, null_rate, n, horizon, *, alpha: float, variance=None) -> Any:
    """Boundary statistic z sqrt(t) of the one-sided test "the rate is above `null_rate`" (numpy-broadcastable).

    `variance` defaults to null_rate (1 - null_rate), the variance at the limit; `horizon` is the n at which the
    information fraction reaches 1. The limit is shown exceeded when the result is >= z_(1 - alpha/2).
    """
    n = np.maximum(np.asarray(n, dtype=float), 1e-12)
    var = null_rate * (1.0 - null_rate) if variance is None else variance
    z = (np.asarray(rate_hat, dtype=float) - null_rate) * np.sqrt(n) / np.sqrt(np.maximum(var, 1e-12))
    return z * np.sqrt(np.minimum(1.0, n / np.asarray(horizon, dtype=float)))


@dataclass(frozen=True)
class Guardrails:
    """Limits on the treatment, each tested sequentially: the canary rolls back once a test *shows* the limit
    is exceeded (one-sided, level `alpha`, same boundary as the quality test).

    Every limit is optional; rates are fractions in [0, 1], latencies are milliseconds. Nothing is tested before
    `min_requests` treatment requests.
    """

    max_error_rate: float | None = None
    max_error_rate_increase: float | None = None  # treatment rate minus control rate
    max_p95_latency_ms: float | None = None
    max_p95_latency_increase_ms: float | None = None  # treatment p95 minus control p95
    min_requests: int = 20
    alpha: float = 0.05


@dataclass(frozen=True)
class GuardrailState:
    """One guardrail at this look: the observed value, its limit, the test's boundary statistic, and whether it
    was tested and breached (the test shows the limit exceeded)."""

    name: str
    value: float | None
    threshold: float
    evaluated: bool
    breached: bool
    statistic: float | None = None  # z sqrt(t); breached when >= critical
    critical: float | None = None
    test: str = ""


@dataclass(frozen=True)
class CanaryDecision:
    """The outcome of one look, with the evidence that supports it (`to_dict()` is JSON-ready)."""

    action: str  # "promote" | "rollback" | "continue"
    reason: str
    n_control: int  # unique scored requests used by the quality test
    n_treatment: int
    effect: float | None  # treatment mean minus control mean (stratified by split step)
    ci_low: float | None  # always-valid confidence sequence at this look
    ci_high: float | None
    confidence: float  # simultaneous coverage of the confidence sequence, 1 - alpha - alpha_harm
    p_value: float | None  # always-valid p-value for "treatment beats control"
    p_value_harm: float | None  # always-valid p-value for "treatment is worse than control"
    test: str
    alpha: float
    alpha_harm: float
    min_effect: float
    horizon: float  # effective pairs at which the canary gives up
    n_effective: float | None
    information_fraction: float | None
    alpha_spent: float | None  # promotion error budget spent by this information fraction
    alpha_harm_spent: float | None
    pooled_sd: float | None
    strata: int  # split steps with outcomes
    control_mean: float | None
    treatment_mean: float | None
    duplicates_dropped: int  # repeated request ids, counted once
    unscored: int  # requests without a score (NaN), e.g. errored ones; they count for guardrails only
    plan: dict[str, Any] = field(default_factory=dict)  # the design: power, horizon, requests (CanaryPlan)
    guardrails: list[GuardrailState] = field(default_factory=list)
    mode: str = "split"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (no NaN): undefined statistics are None."""
        return asdict(self)


@dataclass(frozen=True)
class _Arm:
    scores: np.ndarray  # unique requests, NaN = unscored
    strata: np.ndarray  # int codes per unique request
    errors: np.ndarray | None
    latencies: np.ndarray | None
    duplicates: int


def _as_array(name: str, values: Sequence[Any] | None, length: int | None, dtype: type) -> np.ndarray | None:
    if values is None:
        return None
    array = np.asarray(values, dtype=dtype).reshape(-1)
    if length is not None and array.size != length:
        raise ValueError(f"{name} has {array.size} values but the scores have {length}; they must align per request")
    return array


def _prepare_arm(arm: str, scores: Sequence[float], ids: Sequence[str] | None, errors: Sequence[bool] | None,
                 latencies: Sequence[float] | None, strata: Sequence[Hashable] | None,
                 codes: dict[Hashable, int]) -> _Arm:
    values = _as_array(f"{arm} scores", scores, None, float)
    n = values.size
    err = _as_array(f"{arm}_errors", errors, n, bool)
    lat = _as_array(f"{arm}_latencies_ms", latencies, n, float)
    if strata is None:
        st = np.zeros(n, dtype=int)
    else:
        labels = list(strata)
        if len(labels) != n:
            raise ValueError(f"{arm}_strata has {len(labels)} labels but the scores have {n}; they must align")
        st = np.array([codes.setdefault(x, len(codes)) for x in labels], dtype=int)
    outside = ~np.isnan(values) & ((values < 0.0) | (values > 1.0))
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"{arm} score at position {i} is {float(values[i])!r}; "
                         "scores must lie in [0, 1] (NaN = unscored)")
    duplicates = 0
    if ids is not None:
        id_list = list(ids)
        if len(id_list) != n:
            raise ValueError(f"{arm}_ids has {len(id_list)} ids but the scores have {n}; they must align per request")
        seen: set[str] = set()
        keep = []
        for i, request_id in enumerate(id_list):
            if request_id not in seen:
                seen.add(request_id)
                keep.append(i)
        duplicates = n - len(keep)
        values, st = values[keep], st[keep]
        err = err[keep] if err is not None else None
        lat = lat[keep] if lat is not None else None
    return _Arm(scores=values, strata=st, errors=err, latencies=lat, duplicates=duplicates)


def stratified_statistics(n_control, sum_control, sumsq_control, n_treatment, sum_treatment, sumsq_treatment,
                          sumcube_control=None, sumcube_treatment=None):
    """(effect, pooled within-group variance, effective pairs, skewness of the effect) from per-stratum sums over
    the last axis.

    Each argument is an array (..., strata) of counts, sums, sums of squares (and, for the skewness, sums of
    cubes); strata where an arm is empty add no information (their scores still inform the pooled moments).
    Variance is NaN without a degree of freedom; effect is NaN without a stratum holding both arms; skewness is 0
    without the cubes.
    """
    nc, sc, qc = (np.asarray(x, dtype=float) for x in (n_control, sum_control, sumsq_control))
    nt, st, qt = (np.asarray(x, dtype=float) for x in (n_treatment, sum_treatment, sumsq_treatment))
    both = (nc > 0) & (nt > 0)
    w = np.where(both, nc * nt / np.maximum(nc + nt, 1.0), 0.0)
    n_eff = w.sum(axis=-1)
    mc, mt = sc / np.maximum(nc, 1.0), st / np.maximum(nt, 1.0)
    diff = np.where(both, mt - mc, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        effect = np.where(n_eff > 0, (w * diff).sum(axis=-1) / np.maximum(n_eff, 1e-300), np.nan)
        ss = (qc - sc * mc).sum(axis=-1) + (qt - st * mt).sum(axis=-1)
        dof = nc.sum(axis=-1) + nt.sum(axis=-1) - (nc > 0).sum(axis=-1) - (nt > 0).sum(axis=-1)
        variance = np.where(dof > 0, np.maximum(ss, 0.0) / np.maximum(dof, 1), np.nan)
        skewness = np.zeros_like(n_eff)
        if sumcube_control is not None and sumcube_treatment is not None:
            cc, ct = np.asarray(sumcube_control, dtype=float), np.asarray(sumcube_treatment, dtype=float)
            # pooled third central moment: sum over groups of sum (x - m)^3 = q3 - 3 m q2 + 2 n m^3
            m3 = ((cc - 3 * mc * qc + 2 * nc * mc**3).sum(axis=-1)
                  + (ct - 3 * mt * qt + 2 * nt * mt**3).sum(axis=-1)) / np.maximum(dof, 1)
            share = w / np.maximum(n_eff[..., None], 1e-300)
            k3 = (share**3 * np.where(both, 1.0 / np.maximum(nt, 1.0)**2 - 1.0 / np.maximum(nc, 1.0)**2, 0.0)
                  ).sum(axis=-1) * m3
            se = np.sqrt(np.maximum(variance, 1e-12) / np.maximum(n_eff, 1e-6))
            skewness = np.where((n_eff > 0) & (dof > 0), k3 / se**3, 0.0)
    return effect, variance, n_eff, skewness


def paired_skewness(n, total, sumsq, sumcube):
    """Skewness of a mean of `n` paired differences from their sum, sum of squares and sum of cubes."""
    n = np.maximum(np.asarray(n, dtype=float), 2.0)
    m = np.asarray(total, dtype=float) / n
    var = np.maximum((np.asarray(sumsq, dtype=float) - n * m**2) / (n - 1), 1e-12)
    m3 = (np.asarray(sumcube, dtype=float) - 3 * m * sumsq + 2 * n * m**3) / (n - 1)
    return m3 / (var**1.5 * np.sqrt(n))


def history_variance(scores: Sequence[float], *, confidence: float = 0.9,
                     largest: float = MAX_VARIANCE) -> tuple[float, float]:
    """(estimate, upper confidence bound) of the per-request score variance from production history.

    The plan sizes the horizon on the upper bound (normal approximation with the sample's fourth moment), so a
    history that happened to look calm does not leave the canary short of power. The bound is capped at `largest`
    (0.25 for scores in [0, 1]; 1 for paired differences).
    """
    x = np.asarray(scores, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        raise ValueError("history variance needs at least 2 scores")
    var = float(x.var(ddof=1))
    m4 = float(((x - x.mean()) ** 4).mean())
    se = np.sqrt(max(m4 - var**2, 0.0) / x.size)
    return var, float(min(largest, var + float(ndtri(confidence)) * se))


def _stratified(c_values: np.ndarray, c_strata: np.ndarray, t_values: np.ndarray, t_strata: np.ndarray,
                strata: int) -> tuple[float | None, float | None, float, float]:
    """(stratified effect, pooled within-group variance, effective pairs, skewness) of two arms' values."""
    def sums(v: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, ...]:
        return (np.bincount(s, minlength=strata).astype(float), np.bincount(s, v, minlength=strata),
                np.bincount(s, v * v, minlength=strata), np.bincount(s, v**3, minlength=strata))

    (nc, sc, qc, cc), (nt, st, qt, ct) = sums(c_values, c_strata), sums(t_values, t_strata)
    effect, variance, n_eff, skew = stratified_statistics(nc, sc, qc, nt, st, qt, cc, ct)
    effect, variance = float(effect), float(variance)
    return (None if np.isnan(effect) else effect, None if np.isnan(variance) else variance, float(n_eff),
            float(skew))


def _check_guardrails(g: Guardrails, control: _Arm, treatment: _Arm, strata: int,
                      plan: dict[str, Any]) -> list[GuardrailState]:
    states: list[GuardrailState] = []
    c = critical_value(g.alpha)
    horizon_pairs = float(plan.get("horizon") or 1.0)
    horizon_treatment = float(plan.get("treatment_requests") or horizon_pairs)

    def need(values: np.ndarray | None, what: str, limit: str) -> np.ndarray:
        if values is None:
            raise ValueError(f"guardrails.{limit} is set but {what} was not given")
        return values

    def add(name: str, threshold: float, value: float | None, n: int, statistic: float | None, test: str) -> None:
        evaluated = value is not None and statistic is not None and n >= g.min_requests
        states.append(GuardrailState(name=name, value=value, threshold=float(threshold), evaluated=evaluated,
                                     breached=bool(evaluated and statistic >= c),
                                     statistic=None if statistic is None else float(statistic), critical=c,
                                     test=test))

    def exceed(flags: np.ndarray, rate: float, name: str, threshold: float, value: float | None, test: str) -> None:
        n = int(flags.size)
        stat = float(sequential_exceedance(flags.mean(), rate, n, horizon_treatment, alpha=g.alpha)) if n else None
        add(name, threshold, value, n, stat, test)

    def p95(values: np.ndarray) -> float | None:
        finite = values[np.isfinite(values)]
        return float(np.percentile(finite, 95)) if finite.size else None

    if g.max_error_rate is not None:
        errors = need(treatment.errors, "treatment_errors", "max_error_rate")
        exceed(errors.astype(float), g.max_error_rate, "treatment_error_rate", g.max_error_rate,
               float(errors.mean()) if errors.size else None, "one-sided sequential test: error rate > limit")
    if g.max_error_rate_increase is not None:
        t_err = need(treatment.errors, "treatment_errors", "max_error_rate_increase").astype(float)
        c_err = need(control.errors, "control_errors", "max_error_rate_increase").astype(float)
        gap, _, n_eff, _ = _stratified(c_err, control.strata, t_err, treatment.strata, strata)
        pooled = (t_err.sum() + c_err.sum() + 1.0) / (t_err.size + c_err.size + 2.0)
        stat = None
        if gap is not None:
            b = compute_bounds(gap - g.max_error_rate_increase, pooled * (1 - pooled), n_eff, horizon_pairs,
                               alpha=g.alpha, var_floor=1e-12)
            stat = float(b.z_improvement)
        add("error_rate_increase", g.max_error_rate_increase, gap, min(t_err.size, c_err.size), stat,
            "one-sided sequential test, stratified by split step: treatment - control error rate > limit")
    if g.max_p95_latency_ms is not None:
        lat = need(treatment.latencies, "treatment_latencies_ms", "max_p95_latency_ms")
        lat = lat[np.isfinite(lat)]
        exceed((lat > g.max_p95_latency_ms).astype(float), 0.05, "treatment_p95_latency_ms", g.max_p95_latency_ms,
               p95(lat), "one-sided sequential test: share of treatment requests slower than the limit > 5%")
    if g.max_p95_latency_increase_ms is not None:
        t_lat = need(treatment.latencies, "treatment_latencies_ms", "max_p95_latency_increase_ms")
        c_lat = need(control.latencies, "control_latencies_ms", "max_p95_latency_increase_ms")
        t95, c95 = p95(t_lat), p95(c_lat)
        gap = t95 - c95 if t95 is not None and c95 is not None else None
        t_lat = t_lat[np.isfinite(t_lat)]
        if c95 is None:
            add("p95_latency_increase_ms", g.max_p95_latency_increase_ms, None, 0, None, "")
        else:
            exceed((t_lat > c95 + g.max_p95_latency_increase_ms).astype(float), 0.05, "p95_latency_increase_ms",
                   g.max_p95_latency_increase_ms, gap, "one-sided sequential test: share of treatment requests "
                   "slower than control's p95 + the limit > 5%")
    return states


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def _validate(alpha: float, alpha_harm: float, horizon: float, min_per_arm: int, var_floor: float) -> None:
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
    if not 0.0 < alpha_harm < 0.5:
        raise ValueError(f"alpha_harm must be in (0, 0.5), got {alpha_harm!r}")
    if not horizon > 0:
        raise ValueError(f"horizon must be > 0 effective pairs, got {horizon!r}")
    if min_per_arm < 2:
        raise ValueError(f"min_per_arm must be >= 2, got {min_per_arm}")
    if var_floor <= 0.0:
        raise ValueError(f"var_floor must be > 0, got {var_floor!r}")


def _conclude(evidence: dict[str, Any], outcome: LookOutcome, states: list[GuardrailState], counts: str,
              waiting: bool, min_per_arm: int) -> tuple[str, str]:
    cs = (f"{evidence['confidence']:.0%} confidence sequence {_fmt(evidence['ci_low'])} to "
          f"{_fmt(evidence['ci_high'])}" if evidence["ci_low"] is not None else "no confidence sequence yet")
    budget = (f"{evidence['alpha_spent']:.3g} of alpha {evidence['alpha']:g} spent"
              if evidence["alpha_spent"] is not None else "")
    effect = evidence["effect"]
    breached = [s for s in states if s.breached]
    if breached:
        s = breached[0]
        more = f" and {len(breached) - 1} more" if len(breached) > 1 else ""
        return "rollback", (f"Roll back at once: guardrail {s.name} is breached — its sequential test shows the "
                            f"limit {s.threshold:.4g} exceeded (observed {s.value:.4g}, statistic "
                            f"{s.statistic:.2f} >= {s.critical:.2f}){more}.")
    if outcome is LookOutcome.PROMOTE:
        return "promote", (f"Promote: the treatment beats control by {_fmt(effect)} ({cs}, above 0; always-valid "
                           f"p = {evidence['p_value']:.2g} <= {evidence['alpha']}; {budget}) after {counts}.")
    if outcome is LookOutcome.HARM:
        return "rollback", (f"Roll back: the treatment is worse than control by {-effect:.3f} ({cs}, entirely "
                            f"below 0; always-valid p = {evidence['p_value_harm']:.2g} <= {evidence['alpha_harm']})"
                            f" after {counts}.")
    if outcome is LookOutcome.HORIZON:
        return "rollback", (f"Roll back: the horizon of {evidence['horizon']:.0f} effective pairs was reached "
                            f"without evidence that the treatment beats control (effect {_fmt(effect)}, {cs}); "
                            f"the canary had {evidence['plan'].get('power', 0.9):.0%} power for a "
                            f"{evidence['min_effect'] * 100:.1f}-point gain; production keeps the current prompt.")
    if waiting:
        return "continue", f"Continue: {counts} so far; the quality test waits for {min_per_arm} scored per arm."
    fraction = evidence["information_fraction"]
    return "continue", (f"Continue: no decision yet after {counts} (effect {_fmt(effect)}, {cs}; "
                        f"{(fraction or 0):.0%} of the horizon's information, {budget}).")


def decide_canary(control: Sequence[float], treatment: Sequence[float], *, horizon: float,
                  control_ids: Sequence[str] | None = None, treatment_ids: Sequence[str] | None = None,
                  control_strata: Sequence[Hashable] | None = None,
                  treatment_strata: Sequence[Hashable] | None = None,
                  alpha: float = 0.05, alpha_harm: float = 0.15, min_effect: float = 0.0,
                  guardrails: Guardrails | None = None,
                  control_errors: Sequence[bool] | None = None, treatment_errors: Sequence[bool] | None = None,
                  control_latencies_ms: Sequence[float] | None = None,
                  treatment_latencies_ms: Sequence[float] | None = None,
                  min_per_arm: int = 20, var_floor: float = DEFAULT_VAR_FLOOR,
                  plan: CanaryPlan | dict[str, Any] | None = None) -> CanaryDecision:
    """Decide a canary at this look: "promote", "rollback" or "continue".

    `control` and `treatment` are the per-request quality scores in [0, 1] so far, from independent requests (not
    paired). NaN marks a request without a score (e.g. it errored): it counts for the guardrails, not for quality.
    `*_strata` label each request with the split step it was served under (default: one step); only outcomes of
    the same step are compared. `*_ids`, `*_errors` and `*_latencies_ms`, when given, align with the scores
    request by request; a repeated request id counts once (its first occurrence). `horizon` is the plan's
    effective pairs (`plan_canary`); `min_effect` is recorded with the evidence (it sized the horizon).

    Rules, in order: a guardrail whose test shows its limit exceeded rolls back at once; the treatment is promoted
    when the always-valid test shows it beats control at level `alpha`; it is rolled back when the test shows it
    is worse at level `alpha_harm`; at the horizon without promotion it is rolled back; otherwise the canary
    continues. The module docstring explains the test and why it stays valid however often this is called.
    """
    _validate(alpha, alpha_harm, horizon, min_per_arm, var_floor)
    plan_dict = plan.to_dict() if isinstance(plan, CanaryPlan) else dict(plan or {"horizon": float(horizon)})
    codes: dict[Hashable, int] = {}
    ctrl = _prepare_arm("control", control, control_ids, control_errors, control_latencies_ms, control_strata, codes)
    trt = _prepare_arm("treatment", treatment, treatment_ids, treatment_errors, treatment_latencies_ms,
                       treatment_strata, codes)
    if control_ids is not None and treatment_ids is not None:
        shared = set(control_ids) & set(treatment_ids)
        if shared:
            sample = ", ".join(sorted(map(str, shared))[:3])
            raise ValueError(f"{len(shared)} request id(s) appear in both arms (e.g. {sample}); "
                             "the arms must be independent requests")
    strata = max(1, len(codes))
    states = _check_guardrails(guardrails, ctrl, trt, strata, plan_dict) if guardrails is not None else []

    c_ok, t_ok = ~np.isnan(ctrl.scores), ~np.isnan(trt.scores)
    n_c, n_t = int(c_ok.sum()), int(t_ok.sum())
    effect, variance, n_eff, skew = _stratified(ctrl.scores[c_ok], ctrl.strata[c_ok], trt.scores[t_ok],
                                                trt.strata[t_ok], strata)
    used = {int(s) for s in np.concatenate([ctrl.strata[c_ok], trt.strata[t_ok]])}
    evidence: dict[str, Any] = dict(
        n_control=n_c, n_treatment=n_t, effect=effect, ci_low=None, ci_high=None,
        confidence=1.0 - alpha - alpha_harm, p_value=None, p_value_harm=None, test=TEST_NAME, alpha=float(alpha),
        alpha_harm=float(alpha_harm), min_effect=float(min_effect), horizon=float(horizon),
        n_effective=n_eff if n_eff > 0 else None, information_fraction=None, alpha_spent=None,
        alpha_harm_spent=None, pooled_sd=float(np.sqrt(variance)) if variance is not None else None,
        strata=len(used), control_mean=float(ctrl.scores[c_ok].mean()) if n_c else None,
        treatment_mean=float(trt.scores[t_ok].mean()) if n_t else None,
        duplicates_dropped=ctrl.duplicates + trt.duplicates,
        unscored=int((~c_ok).sum() + (~t_ok).sum()), plan=plan_dict, guardrails=states, mode="split")
    outcome = LookOutcome.CONTINUE
    if effect is not None and variance is not None:
        b = compute_bounds(effect, variance, n_eff, horizon, alpha=alpha, alpha_harm=alpha_harm, var_floor=var_floor,
                           skewness=skew)
        fraction = float(b.information_fraction)
        evidence.update(ci_low=float(b.lower), ci_high=float(b.upper), p_value=float(b.p_improvement),
                        p_value_harm=float(b.p_harm), information_fraction=fraction,
                        alpha_spent=float(_spent_promotion(alpha, fraction)),
                        alpha_harm_spent=float(spent_alpha(alpha_harm, fraction)))
        outcome = LookOutcome(int(classify_bounds(b, n_c, n_t, min_per_arm=min_per_arm)))
    counts = f"{n_c} control / {n_t} treatment scored requests"
    action, reason = _conclude(evidence, outcome, states, counts, min(n_c, n_t) < min_per_arm, min_per_arm)
    return CanaryDecision(action=action, reason=reason, **evidence)


def decide_shadow(production: Sequence[float], candidate: Sequence[float], *, horizon: float,
                  alpha: float = 0.05, alpha_harm: float = 0.15, min_effect: float = 0.0, min_pairs: int = 20,
                  var_floor: float = DEFAULT_VAR_FLOOR,
                  plan: CanaryPlan | dict[str, Any] | None = None) -> CanaryDecision:
    """Decide a shadow evaluation: `production[i]` and `candidate[i]` score the two prompts' answers to the same
    live request (only production's answer was served). NaN in either drops the pair.

    Same boundary as `decide_canary` on the paired differences: effect = mean difference, variance = the
    differences' sample variance, information = pairs; `horizon` is in pairs (`plan_canary(mode="shadow")`).
    """
    _validate(alpha, alpha_harm, horizon, min_pairs, var_floor)
    p = np.asarray(production, dtype=float).reshape(-1)
    q = np.asarray(candidate, dtype=float).reshape(-1)
    if p.size != q.size:
        raise ValueError(f"production has {p.size} scores and candidate {q.size}; shadow pairs must align")
    for name, v in (("production", p), ("candidate", q)):
        bad = ~np.isnan(v) & ((v < 0) | (v > 1))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name} score at position {i} is {float(v[i])!r}; scores must lie in [0, 1]")
    ok = ~np.isnan(p) & ~np.isnan(q)
    d = q[ok] - p[ok]
    n = int(d.size)
    plan_dict = plan.to_dict() if isinstance(plan, CanaryPlan) else dict(plan or {"horizon": float(horizon)})
    evidence: dict[str, Any] = dict(
        n_control=n, n_treatment=n, effect=float(d.mean()) if n else None, ci_low=None, ci_high=None,
        confidence=1.0 - alpha - alpha_harm, p_value=None, p_value_harm=None, test=SHADOW_TEST_NAME,
        alpha=float(alpha), alpha_harm=float(alpha_harm), min_effect=float(min_effect), horizon=float(horizon),
        n_effective=float(n) if n else None, information_fraction=None, alpha_spent=None, alpha_harm_spent=None,
        pooled_sd=float(d.std(ddof=1)) if n >= 2 else None, strata=1,
        control_mean=float(p[ok].mean()) if n else None, treatment_mean=float(q[ok].mean()) if n else None,
        duplicates_dropped=0, unscored=int((~ok).sum()), plan=plan_dict, guardrails=[], mode="shadow")
    outcome = LookOutcome.CONTINUE
    if n >= 2:
        b = compute_bounds(d.mean(), d.var(ddof=1), n, horizon, alpha=alpha, alpha_harm=alpha_harm,
                           var_floor=var_floor, skewness=paired_skewness(n, d.sum(), (d * d).sum(), (d**3).sum()))
        fraction = float(b.information_fraction)
        evidence.update(ci_low=float(b.lower), ci_high=float(b.upper), p_value=float(b.p_improvement),
                        p_value_harm=float(b.p_harm), information_fraction=fraction,
                        alpha_spent=float(_spent_promotion(alpha, fraction)),
                        alpha_harm_spent=float(spent_alpha(alpha_harm, fraction)))
        outcome = LookOutcome(int(classify_bounds(b, n, n, min_per_arm=min_pairs)))
    action, reason = _conclude(evidence, outcome, [], f"{n} shadow pairs", n < min_pairs, min_pairs)
    return CanaryDecision(action=action, reason=reason, **evidence)
