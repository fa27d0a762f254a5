"""The canary's sequential decision: promote, roll back or keep watching.

A canary splits production traffic between the current prompt (control) and a candidate (treatment) and looks at
the cumulative per-request quality scores again and again. Each look must be allowed to stop the canary without
the repeated looking inflating the error rates. `decide_canary` is that look: it is stateless (it needs only the
outcomes so far, not the history of earlier looks) and its error rates hold however often, and whenever, it is
called, up to the per-arm horizon `max_per_arm`.

The test — a group-sequential design with O'Brien–Fleming-type alpha spending, in its continuous-monitoring limit
----------------------------------------------------------------------------------------------------------------
Let theta be the treatment-minus-control difference of mean scores, theta_hat its estimate, V its (Welch) variance
and I = 1/V the information. In the Gaussian limit the score process S(I) = theta_hat * I is a Brownian motion in I
with drift theta, whatever the traffic split (the canonical joint distribution of group-sequential statistics).
The horizon fixes the maximum information I_max (both arms at `max_per_arm`). By the reflection principle a
Brownian motion without drift crosses the constant level c * sqrt(I_max) before information fraction t with
probability 2 * (1 - Phi(c / sqrt(t))); with c = z_(1 - alpha/2) that is exactly the Lan–DeMets O'Brien–Fleming
spending function, reaching alpha at t = 1. So the boundary

    promote   when  (theta_hat - min_effect) * I / sqrt(I_max) >= c        (treatment better by > min_effect)
    harm      when         -theta_hat        * I / sqrt(I_max) >= c        (treatment worse)

spends at most alpha on each side by the horizon under *continuous* monitoring; any finite set of looks, however
many and wherever placed, crosses less often. Nothing about earlier looks needs remembering, which is what makes
the rule valid however often a flow looks. On the theta scale the boundary is a confidence sequence
theta_hat +/- c * V / sqrt(V_max), which covers theta at every look simultaneously with probability >= 1 - 2 * alpha;
promotion is "its lower end is above min_effect", harm is "its upper end is below 0". The always-valid p-value
p = 2 * (1 - Phi(z * sqrt(t))) (z = (theta_hat - min_effect) / sqrt(V)) satisfies P(p <= alpha at any look) <= alpha
under the null, and p <= alpha exactly when the promotion boundary is crossed.

Why this and not a normal-mixture mSPRT: an mSPRT is valid over an unbounded horizon, which a canary does not
need — `max_per_arm` bounds it. That generality costs power: at the horizon a one-sided mixture boundary at
alpha = 0.05 sits near z = 2.8 (two-sided mixture: about 3.0) against z = 1.96 here, i.e. roughly 1.5 times the
requests for the same power. Simulated with graded scores of SD 0.12, looks every 25 up to 500 per arm, a
horizon-tuned one-sided mixture promoted a 3-point gain in about 92% of canaries, this boundary in about 99%
(both under 5% under the null; see bench/canary_error_rates.py).

Why a conservative horizon: reaching `max_per_arm` without crossing the promotion boundary rolls back. No evidence
of improvement keeps the prompt production already trusts; the candidate may be retried with more traffic.

Variance: each arm's sample variance (plug-in, Welch — the arms are independent requests and may differ in
spread), floored at `var_floor` (default 0.05 ** 2). Scores live in [0, 1], so the variance is bounded above by
0.25 and the plug-in converges quickly; its failure mode is a small sample of saturated scores (all 1.0) reading
as zero variance, which would shrink the boundary to nothing. The floor only ever widens the boundary (more
conservative), and heterogeneous production requests rarely have a score SD below 0.05. Quality decisions also
wait for `min_per_arm` scored requests per arm so the normal approximation has something to stand on.

Guardrails (error rate ceilings, error-rate increase over control, p95 latency ceilings) are checked first and roll
back at once when breached, once the treatment has `Guardrails.min_requests` requests.

Everything here is plain numpy/scipy; `compute_bounds` and `classify_bounds` take arrays so that simulations
(bench/canary_error_rates.py) run the very same arithmetic vectorised over many canaries and looks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

__all__ = [
    "DEFAULT_VAR_FLOOR",
    "TEST_NAME",
    "Guardrails",
    "GuardrailState",
    "CanaryDecision",
    "LookOutcome",
    "SequentialBounds",
    "compute_bounds",
    "classify_bounds",
    "decide_canary",
]

DEFAULT_VAR_FLOOR = 0.05**2
TEST_NAME = "group-sequential Welch z-test, O'Brien-Fleming spending (continuous-monitoring limit)"


class LookOutcome(IntEnum):
    """What one look concludes about quality (guardrails are separate)."""

    CONTINUE = 0
    PROMOTE = 1
    HARM = 2  # roll back: the treatment is shown to be worse
    HORIZON = 3  # roll back: horizon reached without evidence of improvement


@dataclass(frozen=True)
class SequentialBounds:
    """The statistics of one look (or, in simulations, arrays of looks with any shape).

    `lower`/`upper` are the confidence sequence for the treatment-minus-control mean difference; `z_*` are the
    boundary-scaled statistics (>= `critical` means that side's boundary is crossed).
    """

    effect: Any
    std_error: Any
    half_width: Any
    lower: Any
    upper: Any
    information_fraction: Any
    z_improvement: Any
    z_harm: Any
    p_improvement: Any
    p_harm: Any
    critical: float


def compute_bounds(mean_control, var_control, n_control, mean_treatment, var_treatment, n_treatment, *,
                   alpha: float = 0.05, min_effect: float = 0.0, max_per_arm: int = 500,
                   var_floor: float = DEFAULT_VAR_FLOOR) -> SequentialBounds:
    """Boundary statistics for looks given each arm's mean, sample variance and size (numpy-broadcastable).

    Sizes are expected to be at most `max_per_arm` (callers cap each arm there), so the information fraction
    lies in (0, 1].
    """
    var_c = np.maximum(np.asarray(var_control, dtype=float), var_floor)
    var_t = np.maximum(np.asarray(var_treatment, dtype=float), var_floor)
    n_c = np.asarray(n_control, dtype=float)
    n_t = np.asarray(n_treatment, dtype=float)
    effect = np.asarray(mean_treatment, dtype=float) - np.asarray(mean_control, dtype=float)
    v_now = var_c / n_c + var_t / n_t
    v_max = (var_c + var_t) / max_per_arm  # the variance once both arms reach the horizon
    fraction = v_max / v_now
    critical = float(ndtri(1.0 - alpha / 2.0))
    # c * sqrt(I_max) / I on the effect scale
    half_width = critical * v_now / np.sqrt(v_max)
    scale = np.sqrt(v_max) / v_now  # multiplies an effect into the boundary's z units
    z_improvement = (effect - min_effect) * scale
    z_harm = -effect * scale
    return SequentialBounds(
        effect=effect,
        std_error=np.sqrt(v_now),
        half_width=half_width,
        lower=effect - half_width,
        upper=effect + half_width,
        information_fraction=fraction,
        z_improvement=z_improvement,
        z_harm=z_harm,
        p_improvement=np.minimum(1.0, 2.0 * ndtr(-z_improvement)),
        p_harm=np.minimum(1.0, 2.0 * ndtr(-z_harm)),
        critical=critical,
    )


def classify_bounds(bounds: SequentialBounds, n_control, n_treatment, *, max_per_arm: int = 500,
                    min_per_arm: int = 20) -> np.ndarray:
    """`LookOutcome` codes (int array shaped like the bounds) for each look.

    Promotion wins over the horizon at the last look; nothing is decided before `min_per_arm` per arm.
    """
    n_c = np.asarray(n_control)
    n_t = np.asarray(n_treatment)
    ready = (n_c >= min_per_arm) & (n_t >= min_per_arm)
    promote = ready & (bounds.z_improvement >= bounds.critical)
    harm = ready & ~promote & (bounds.z_harm >= bounds.critical)
    horizon = (n_c >= max_per_arm) & (n_t >= max_per_arm) & ~promote & ~harm
    choices = [int(LookOutcome.PROMOTE), int(LookOutcome.HARM), int(LookOutcome.HORIZON)]
    outcome = np.select([promote, harm, horizon], choices, int(LookOutcome.CONTINUE)).astype(np.int8)
    return outcome


@dataclass(frozen=True)
class Guardrails:
    """Limits on the treatment that roll the canary back at once, whatever the quality test says.

    Every limit is optional; rates are fractions in [0, 1], latencies are milliseconds. Limits wait for
    `min_requests` treatment requests (below that one error would read as a 5%+ rate).
    """

    max_error_rate: float | None = None
    max_error_rate_increase: float | None = None  # treatment rate minus control rate
    max_p95_latency_ms: float | None = None
    max_p95_latency_increase_ms: float | None = None  # treatment p95 minus control p95
    min_requests: int = 20


@dataclass(frozen=True)
class GuardrailState:
    """One guardrail at this look: the observed value, its limit, and whether it was checked and breached."""

    name: str
    value: float | None
    threshold: float
    evaluated: bool
    breached: bool


@dataclass(frozen=True)
class CanaryDecision:
    """The outcome of one look, with the evidence that supports it (`to_dict()` is JSON-ready)."""

    action: str  # "promote" | "rollback" | "continue"
    reason: str
    n_control: int  # unique scored requests used by the quality test (capped at max_per_arm)
    n_treatment: int
    effect: float | None  # treatment mean minus control mean
    ci_low: float | None  # confidence sequence at this look
    ci_high: float | None
    confidence: float  # simultaneous coverage of the confidence sequence, 1 - 2 * alpha
    p_value: float | None  # always-valid p-value for "treatment beats control by more than min_effect"
    p_value_harm: float | None  # always-valid p-value for "treatment is worse than control"
    test: str
    alpha: float
    min_effect: float
    max_per_arm: int
    information_fraction: float | None
    control_mean: float | None
    treatment_mean: float | None
    control_sd: float | None
    treatment_sd: float | None
    duplicates_dropped: int  # repeated request ids, counted once
    unscored: int  # requests without a score (NaN), e.g. errored ones; they count for guardrails only
    beyond_horizon: int  # scored requests past max_per_arm in an arm, not used by the test
    guardrails: list[GuardrailState] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (no NaN): undefined statistics are None."""
        return asdict(self)


@dataclass(frozen=True)
class _Arm:
    scores: np.ndarray  # scored, unique, in arrival order, capped at the horizon
    errors: np.ndarray | None  # unique requests
    latencies: np.ndarray | None
    duplicates: int
    unscored: int
    beyond_horizon: int


def _as_array(name: str, values: Sequence[Any] | None, length: int | None, dtype: type) -> np.ndarray | None:
    if values is None:
        return None
    array = np.asarray(values, dtype=dtype).reshape(-1)
    if length is not None and array.size != length:
        raise ValueError(f"{name} has {array.size} values but the scores have {length}; they must align per request")
    return array


def _prepare_arm(arm: str, scores: Sequence[float], ids: Sequence[str] | None, errors: Sequence[bool] | None,
                 latencies: Sequence[float] | None, max_per_arm: int) -> _Arm:
    values = _as_array(f"{arm} scores", scores, None, float)
    n = values.size
    err = _as_array(f"{arm}_errors", errors, n, bool)
    lat = _as_array(f"{arm}_latencies_ms", latencies, n, float)
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
        values = values[keep]
        err = err[keep] if err is not None else None
        lat = lat[keep] if lat is not None else None
    scored = values[~np.isnan(values)]
    return _Arm(scores=scored[:max_per_arm], errors=err, latencies=lat, duplicates=duplicates,
                unscored=int(values.size - scored.size), beyond_horizon=max(0, int(scored.size) - max_per_arm))


def _check_guardrails(guardrails: Guardrails, control: _Arm, treatment: _Arm) -> list[GuardrailState]:
    states: list[GuardrailState] = []

    def need(values: np.ndarray | None, what: str, limit: str) -> np.ndarray:
        if values is None:
            raise ValueError(f"guardrails.{limit} is set but {what} was not given")
        return values

    def add(name: str, threshold: float, observed: float | None, n: int) -> None:
        evaluated = observed is not None and n >= guardrails.min_requests
        states.append(GuardrailState(name=name, value=observed, threshold=float(threshold), evaluated=evaluated,
                                     breached=bool(evaluated and observed > threshold)))

    def p95(values: np.ndarray) -> float | None:
        finite = values[np.isfinite(values)]
        return float(np.percentile(finite, 95)) if finite.size else None

    if guardrails.max_error_rate is not None:
        errors = need(treatment.errors, "treatment_errors", "max_error_rate")
        rate = float(errors.mean()) if errors.size else None
        add("treatment_error_rate", guardrails.max_error_rate, rate, errors.size)
    if guardrails.max_error_rate_increase is not None:
        t_err = need(treatment.errors, "treatment_errors", "max_error_rate_increase")
        c_err = need(control.errors, "control_errors", "max_error_rate_increase")
        gap = float(t_err.mean() - c_err.mean()) if t_err.size and c_err.size else None
        add("error_rate_increase", guardrails.max_error_rate_increase, gap, min(t_err.size, c_err.size))
    if guardrails.max_p95_latency_ms is not None:
        lat = need(treatment.latencies, "treatment_latencies_ms", "max_p95_latency_ms")
        add("treatment_p95_latency_ms", guardrails.max_p95_latency_ms, p95(lat), int(np.isfinite(lat).sum()))
    if guardrails.max_p95_latency_increase_ms is not None:
        t_lat = need(treatment.latencies, "treatment_latencies_ms", "max_p95_latency_increase_ms")
        c_lat = need(control.latencies, "control_latencies_ms", "max_p95_latency_increase_ms")
        t95, c95 = p95(t_lat), p95(c_lat)
        gap = t95 - c95 if t95 is not None and c95 is not None else None
        n = min(int(np.isfinite(t_lat).sum()), int(np.isfinite(c_lat).sum()))
        add("p95_latency_increase_ms", guardrails.max_p95_latency_increase_ms, gap, n)
    return states


def _fmt(x: float) -> str:
    return f"{x:+.3f}"


def decide_canary(control: Sequence[float], treatment: Sequence[float], *,
                  control_ids: Sequence[str] | None = None, treatment_ids: Sequence[str] | None = None,
                  alpha: float = 0.05, min_effect: float = 0.0, max_per_arm: int = 500,
                  guardrails: Guardrails | None = None,
                  control_errors: Sequence[bool] | None = None, treatment_errors: Sequence[bool] | None = None,
                  control_latencies_ms: Sequence[float] | None = None,
                  treatment_latencies_ms: Sequence[float] | None = None,
                  min_per_arm: int = 20, var_floor: float = DEFAULT_VAR_FLOOR) -> CanaryDecision:
    """Decide a canary at this look: "promote", "rollback" or "continue".

    `control` and `treatment` are the per-request quality scores in [0, 1] so far, in arrival order, from
    independent requests (not paired). NaN marks a request without a score (e.g. it errored): it counts for the
    guardrails, not for the quality test. `*_ids`, `*_errors` and `*_latencies_ms`, when given, align with the
    scores request by request; a repeated request id counts once (its first occurrence). Each arm's test uses its
    first `max_per_arm` scored requests.

    Rules, in order: a breached guardrail rolls back at once; the treatment is promoted when the always-valid
    test shows it beats control by more than `min_effect` at level `alpha`; it is rolled back when the test shows
    it is worse than control; at the horizon (both arms at `max_per_arm`) without promotion it is rolled back —
    no evidence of improvement keeps production; otherwise the canary continues. The module docstring explains
    the test and why it stays valid however often this is called.
    """
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
    if min_effect < 0.0:
        raise ValueError(f"min_effect must be >= 0 (the improvement required to promote), got {min_effect!r}")
    if min_per_arm < 2 or max_per_arm < min_per_arm:
        raise ValueError(f"need 2 <= min_per_arm <= max_per_arm, got {min_per_arm} and {max_per_arm}")
    if var_floor <= 0.0:
        raise ValueError(f"var_floor must be > 0, got {var_floor!r}")

    ctrl = _prepare_arm("control", control, control_ids, control_errors, control_latencies_ms, max_per_arm)
    trt = _prepare_arm("treatment", treatment, treatment_ids, treatment_errors, treatment_latencies_ms, max_per_arm)
    if control_ids is not None and treatment_ids is not None:
        shared = set(control_ids) & set(treatment_ids)
        if shared:
            sample = ", ".join(sorted(map(str, shared))[:3])
            raise ValueError(f"{len(shared)} request id(s) appear in both arms (e.g. {sample}); "
                             "the arms must be independent requests")
    states = _check_guardrails(guardrails, ctrl, trt) if guardrails is not None else []

    n_c, n_t = int(ctrl.scores.size), int(trt.scores.size)
    mean_c = float(ctrl.scores.mean()) if n_c else None
    mean_t = float(trt.scores.mean()) if n_t else None
    sd_c = float(ctrl.scores.std(ddof=1)) if n_c >= 2 else None
    sd_t = float(trt.scores.std(ddof=1)) if n_t >= 2 else None
    effect = mean_t - mean_c if mean_c is not None and mean_t is not None else None
    confidence = 1.0 - 2.0 * alpha
    evidence: dict[str, Any] = dict(
        n_control=n_c, n_treatment=n_t, effect=effect, ci_low=None, ci_high=None, confidence=confidence,
        p_value=None, p_value_harm=None, test=TEST_NAME, alpha=float(alpha), min_effect=float(min_effect),
        max_per_arm=int(max_per_arm), information_fraction=None, control_mean=mean_c, treatment_mean=mean_t,
        control_sd=sd_c, treatment_sd=sd_t, duplicates_dropped=ctrl.duplicates + trt.duplicates,
        unscored=ctrl.unscored + trt.unscored, beyond_horizon=ctrl.beyond_horizon + trt.beyond_horizon,
        guardrails=states,
    )

    outcome = LookOutcome.CONTINUE
    if sd_c is not None and sd_t is not None:
        b = compute_bounds(mean_c, sd_c**2, n_c, mean_t, sd_t**2, n_t, alpha=alpha, min_effect=min_effect,
                           max_per_arm=max_per_arm, var_floor=var_floor)
        evidence.update(ci_low=float(b.lower), ci_high=float(b.upper), p_value=float(b.p_improvement),
                        p_value_harm=float(b.p_harm), information_fraction=float(b.information_fraction))
        outcome = LookOutcome(int(classify_bounds(b, n_c, n_t, max_per_arm=max_per_arm, min_per_arm=min_per_arm)))

    counts = f"{n_c} control / {n_t} treatment requests"
    cs = (f"{confidence:.0%} confidence sequence {_fmt(evidence['ci_low'])} to {_fmt(evidence['ci_high'])}"
          if evidence["ci_low"] is not None else "no confidence sequence yet")
    breached = [s for s in states if s.breached]
    if breached:
        s = breached[0]
        action = "rollback"
        reason = (f"Roll back at once: guardrail {s.name} is breached ({s.value:.4g} > limit {s.threshold:.4g})"
                  f"{' and ' + str(len(breached) - 1) + ' more' if len(breached) > 1 else ''}.")
    elif outcome is LookOutcome.PROMOTE:
        action = "promote"
        reason = (f"Promote: the treatment beats control by {_fmt(effect)} ({cs}, above the minimum effect "
                  f"{min_effect:.3f}; always-valid p = {evidence['p_value']:.2g} <= {alpha}) after {counts}.")
    elif outcome is LookOutcome.HARM:
        action = "rollback"
        reason = (f"Roll back: the treatment is worse than control by {-effect:.3f} ({cs}, entirely below 0; "
                  f"always-valid p = {evidence['p_value_harm']:.2g}) after {counts}.")
    elif outcome is LookOutcome.HORIZON:
        action = "rollback"
        reason = (f"Roll back: the horizon of {max_per_arm} requests per arm was reached without evidence that the "
                  f"treatment beats control by more than {min_effect:.3f} (effect {_fmt(effect)}, {cs}); "
                  "production keeps the current prompt.")
    elif min(n_c, n_t) < min_per_arm:
        action = "continue"
        reason = f"Continue: {counts} so far; the quality test waits for {min_per_arm} scored requests per arm."
    else:
        action = "continue"
        reason = (f"Continue: no decision yet after {counts} (effect {_fmt(effect)}, {cs}; "
                  f"{evidence['information_fraction']:.0%} of the horizon's information).")
    return CanaryDecision(action=action, reason=reason, **evidence)

