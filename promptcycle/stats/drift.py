"""Drift detection on a quality series: levels, CUSUM and EWMA for paging, trend and variance for the dashboard.

A *quality series* is one run-level score per monitor run (points, 0-100) for one pipeline x serving model x
spectrum, with the number of cases behind it and, for a probe, the per-case variance of its scores. Everything here
is plain numpy/scipy with no store and no Prefect: the monitor keeps the small state dataclasses (`to_dict` /
`from_dict`, JSON-safe) between runs, so a detector continues across runs and processes, and a deployment resets
it by starting a new `Baseline`. The step functions (`baseline_arrays`, `standardize`, `cusum_step`, `ewma_step`, `level_z`) take arrays, so
bench/monitor_error_rates.py runs the very same arithmetic vectorised over thousands of simulated streams.

The noise model (what the paging guarantees assume)
---------------------------------------------------
    x_t = mu + e_t,    Var(e_t) = sigma_case^2 / n_t  (x overdispersion, if the in-control runs show it)

`sigma_case` is the per-case SD of scores in the probe (measured on the bundled dataset's simulated scores: about
13 points pooled within model x spectrum, 9 for the strongest simulated model, 17 for the weakest), `n_t` the number
of cases behind run t. After a reset, the first `in_control_runs` runs are the in-control period: their mean is
the baseline `mu0`, their pooled per-case variance gives `sigma_case` (precise: runs x cases degrees of freedom),
and when their run-to-run variance exceeds what case sampling explains (a chi-square test at 1%), the excess is
kept as an inflation factor (run-level effects: day-to-day traffic, provider variation). Without per-case
variances (production outcomes reported as means only), the run-to-run variance of the in-control runs is the
noise, at its 90% upper confidence bound (m - 1 degrees of freedom only; bench/monitor_error_rates.py prints a
row for it).

Each run is standardized, z_t = (x_t - mu0) / s_t with s_t = sqrt(inflation * sigma_case^2 / n_t), and clipped to
[-clip, clip] (`DEFAULT_CLIP` = 4): one wild run (a probe hit by provider errors) moves the CUSUM from 0 by at most
clip - k = 2.4 < h, the EWMA from 0 by lam * clip = 0.6 < its limit 1.41, and the level window by clip / sqrt(3) = 2.3
< z_crit standard errors — **no single run can page by itself** (with the defaults; tests/test_stats_drift.py).

Paging (one-sided: only a drop pages; a rise is good news)
----------------------------------------------------------
- CUSUM (Page 1954): C_t = min(h + cap, max(0, C_{t-1} - z_t - k)); out of control while C_t > h. `k` is half the
  standardized drop it is tuned for; `cap` bounds how long it stays out of control after the series recovers.
- EWMA (Roberts 1959): E_t = (1 - lam) E_{t-1} + lam z_t; out of control while E_t < -L sqrt(lam / (2 - lam) + 1/m),
  the 1/m for the error of the baseline mean estimated from m in-control runs.
  The smaller `lam`, the better it sees small drops and slow drifts that the CUSUM misses.
Both are in standard-error units, so their false-alarm rate does not depend on the noise level or probe size;
the probe size only sets how many points a standard error is, hence how fast a drop in points is seen.
Defaults (`DEFAULT_CUSUM_K`, `DEFAULT_CUSUM_H`, `DEFAULT_EWMA_LAMBDA`, `DEFAULT_EWMA_L`) are calibrated together in
bench/monitor_error_rates.py: at most 1 alerting run per 1,000 stable runs (estimated baseline, AR(1) run noise),
a 5-point drop seen in a median of <= 3 runs at the default probe size.

Levels: `Thresholds.level` (config) names the level of one value; `level_breach` asks whether the mean of the
last runs is below a threshold *beyond noise* (a one-sided z-test), which is what may page — a single run under a
threshold never does.

Dashboard only: `mann_kendall` (trend, prewhitened against lag-1 autocorrelation) and
`variance_ratio` (recent run-to-run variance against the baseline's). Stale data: `staleness`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, TypeVar

import numpy as np
from scipy import stats as sps

__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_CUSUM_CAP",
    "DEFAULT_CUSUM_H",
    "DEFAULT_CUSUM_K",
    "DEFAULT_EWMA_L",
    "DEFAULT_EWMA_LAMBDA",
    "DEFAULT_IN_CONTROL_RUNS",
    "DEFAULT_LEVEL_WINDOW",
    "DEFAULT_LEVEL_Z",
    "DEFAULT_PROBE_CASES",
    "DESIGN_CASE_SD",
    "Baseline",
    "baseline_arrays",
    "CusumState",
    "EwmaState",
    "LevelBreach",
    "StaleResult",
    "TrendResult",
    "VarianceResult",
    "cusum_step",
    "estimate_baseline",
    "ewma_limit",
    "ewma_step",
    "level_breach",
    "level_z",
    "mann_kendall",
    "staleness",
    "standardize",
    "variance_ratio",
]

# Per-case SD of simulated scores on the bundled dataset, pooled within model x spectrum (points): the design value.
DESIGN_CASE_SD = 13.0
# Cases per probe run (per model x spectrum series). Run-level SD = 13 / sqrt(150) = 1.06 points. The 5-point target
# alone needs about 70 cases (SD 1.55: a 5-point drop is 3.2 SE, seen in a median of 2-3 runs); the 2-point drop in
# <= 10 runs at <= 1 false alerting run per 1,000 needs the EWMA to see 1.9 SE, hence 150 (at 70 its median is
# well above 10 runs). See bench/monitor_error_rates.py (--cases) and docs/monitoring.md.
DEFAULT_PROBE_CASES = 150
DEFAULT_IN_CONTROL_RUNS = 20
DEFAULT_CUSUM_K = 1.6
DEFAULT_CUSUM_H = 3.5
DEFAULT_CUSUM_CAP = 3.0  # C never exceeds h + cap: a recovered series is back in control within a few runs
DEFAULT_EWMA_LAMBDA = 0.15
DEFAULT_EWMA_L = 3.9
DEFAULT_CLIP = 4.0
DEFAULT_LEVEL_WINDOW = 3
DEFAULT_LEVEL_Z = 4.0

_S = TypeVar("_S")


class _Serializable:
    """`to_dict()` gives JSON-safe values; `from_dict()` ignores unknown keys (a newer writer's extra fields)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_S], data: dict[str, Any]) -> _S:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


# --- baseline -----------------------------------------------------------------------------------------------------


@dataclass
class Baseline(_Serializable):
    """What is normal since the last reset: collected over the in-control period, then frozen.

    `values`, `ns` and `case_vars` hold the in-control runs while they are being collected (emptied once `ready`).
    `case_var` is the pooled per-case variance (points^2, None without per-case variances); `run_var` the run-level
    variance used when there is no `case_var`; `inflation` >= 1 the overdispersion kept from the in-control runs.
    """

    runs_needed: int = DEFAULT_IN_CONTROL_RUNS
    values: list[float] = field(default_factory=list)
    ns: list[int] = field(default_factory=list)
    case_vars: list[float | None] = field(default_factory=list)
    ready: bool = False
    mean: float | None = None
    case_var: float | None = None
    run_var: float | None = None
    inflation: float = 1.0
    reset_at: str | None = None  # ISO time of the reset (deployment) this baseline follows

    def add(self, value: float, n: int, case_var: float | None) -> "Baseline":
        """A new Baseline with one more in-control run (estimated once `runs_needed` are in)."""
        if self.ready:
            return self
        values, ns, cvs = [*self.values, float(value)], [*self.ns, int(n)], [*self.case_vars, case_var]
        if len(values) < self.runs_needed:
            return Baseline(self.runs_needed, values, ns, cvs, reset_at=self.reset_at)
        est = estimate_baseline(values, ns, cvs)
        est.runs_needed, est.reset_at = self.runs_needed, self.reset_at
        return est

    def run_sd(self, n: int | np.ndarray) -> float | np.ndarray:
        """The standard error of a run of `n` cases (points)."""
        if not self.ready:
            raise ValueError("the baseline is still being collected")
        if self.case_var is not None:
            return np.sqrt(self.inflation * self.case_var / np.maximum(n, 1))
        return math.sqrt(self.run_var or 0.0)


def estimate_baseline(values: Sequence[float], ns: Sequence[int], case_vars: Sequence[float | None] | None = None,
                      *, overdispersion_alpha: float = 0.01, var_floor: float = 0.25) -> Baseline:
    """Estimate mean and noise from in-control runs (see the module docstring).

    With per-case variances for every run, the noise is the pooled per-case variance over n_t, inflated by the
    ratio (run-to-run variance) / (what case sampling explains) only when that ratio is significant at
    `overdispersion_alpha` (chi-square, m - 1 df). Otherwise the noise is the run-to-run variance, taken at its
    upper `run_var_confidence` (90%) confidence bound: from m runs it is uncertain, and an underestimate pages too
    often (with 20 runs the bound is 1.28 x the SD: 0.5 instead of 3.6 alerting runs per 1,000). `var_floor`
    (points^2) keeps a saturated in-control period (every score 100) from reading as zero noise.
    """
    x = np.asarray(values, dtype=float)
    m = len(x)
    if m < 2:
        raise ValueError("a baseline needs at least 2 in-control runs")
    cvs = list(case_vars) if case_vars is not None else [None] * m
    with_case_var = all(v is not None for v in cvs) and min(ns) >= 2
    mean, case_var, run_var, inflation = baseline_arrays(
        x, np.asarray(ns, dtype=float), np.asarray(cvs, dtype=float) if with_case_var else None,
        overdispersion_alpha=overdispersion_alpha, var_floor=var_floor)
    return Baseline(m, [], [], [], True, float(mean), float(case_var) if with_case_var else None, float(run_var),
                    float(inflation))


def baseline_arrays(x: np.ndarray, n: np.ndarray, case_var: np.ndarray | None, *,
                    overdispersion_alpha: float = 0.01, var_floor: float = 0.25, run_var_confidence: float = 0.9
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """`estimate_baseline` over the last axis of arrays (streams x in-control runs): mean, case_var, run_var,
    inflation. `case_var=None` means no per-case variances."""
    m = x.shape[-1]
    mean = x.mean(axis=-1)
    run_var = np.maximum(x.var(axis=-1, ddof=1), var_floor)
    if case_var is None:
        # m - 1 degrees of freedom only: an underestimate would page too often, so take the upper confidence bound
        upper = run_var * (m - 1) / sps.chi2.ppf(1 - run_var_confidence, m - 1)
        return mean, None, upper, np.ones_like(mean)
    pooled = np.maximum(np.sum((n - 1) * case_var, axis=-1) / np.sum(n - 1 + 0 * case_var, axis=-1), var_floor)
    expected = np.mean(pooled[..., None] / n, axis=-1)
    ratio = run_var / expected
    crit = sps.chi2.ppf(1 - overdispersion_alpha, m - 1) / (m - 1)
    return mean, pooled, run_var, np.where(ratio > crit, ratio, 1.0)


def standardize(value: float | np.ndarray, run_sd: float | np.ndarray, mean: float | np.ndarray,
                clip: float = DEFAULT_CLIP) -> float | np.ndarray:
    """z = (value - mean) / run_sd, clipped to [-clip, clip] (array-friendly)."""
    z = np.clip((np.asarray(value, dtype=float) - mean) / run_sd, -clip, clip)
    return float(z) if np.ndim(z) == 0 else z


# --- paging: CUSUM and EWMA ---------------------------------------------------------------------------------------


def cusum_step(c: float | np.ndarray, z: float | np.ndarray, k: float = DEFAULT_CUSUM_K,
               h: float = DEFAULT_CUSUM_H, cap: float = DEFAULT_CUSUM_CAP) -> float | np.ndarray:
    """Lower one-sided CUSUM: min(h + cap, max(0, c - z - k)). Out of control while the result is > h."""
    out = np.minimum(h + cap, np.maximum(0.0, np.asarray(c) - np.asarray(z) - k))
    return float(out) if np.ndim(out) == 0 else out


def ewma_limit(lam: float = DEFAULT_EWMA_LAMBDA, L: float = DEFAULT_EWMA_L,
               baseline_runs: int | None = DEFAULT_IN_CONTROL_RUNS) -> float:
    """The EWMA's lower control limit is minus this (standard-error units).

    L times the EWMA's asymptotic SD, sqrt(lam / (2 - lam)), widened by the error of a baseline mean estimated from
    `baseline_runs` runs (variance 1 / baseline_runs, shared by every later run, so the EWMA converges to it): with a
    small `lam` that error dominates and, ignored, it alone would page. None: a known mean.
    """
    extra = 1.0 / baseline_runs if baseline_runs else 0.0
    return L * math.sqrt(lam / (2.0 - lam) + extra)


def ewma_step(e: float | np.ndarray, z: float | np.ndarray, lam: float = DEFAULT_EWMA_LAMBDA) -> float | np.ndarray:
    """E = (1 - lam) e + lam z. Out of control while E < -ewma_limit(lam, L)."""
    out = (1.0 - lam) * np.asarray(e) + lam * np.asarray(z)
    return float(out) if np.ndim(out) == 0 else out


@dataclass
class CusumState(_Serializable):
    c: float = 0.0
    runs: int = 0  # runs seen since the baseline was ready
    out_of_control_since: int | None = None  # run index (of `runs`) where C first exceeded h, while it does

    def update(self, z: float, k: float = DEFAULT_CUSUM_K, h: float = DEFAULT_CUSUM_H,
               cap: float = DEFAULT_CUSUM_CAP) -> "CusumState":
        c = cusum_step(self.c, z, k, h, cap)
        runs = self.runs + 1
        since = (self.out_of_control_since or runs) if c > h else None
        return CusumState(float(c), runs, since)


@dataclass
class EwmaState(_Serializable):
    e: float = 0.0
    runs: int = 0
    out_of_control_since: int | None = None

    def update(self, z: float, lam: float = DEFAULT_EWMA_LAMBDA, L: float = DEFAULT_EWMA_L,
               baseline_runs: int | None = DEFAULT_IN_CONTROL_RUNS) -> "EwmaState":
        e = ewma_step(self.e, z, lam)
        runs = self.runs + 1
        since = (self.out_of_control_since or runs) if e < -ewma_limit(lam, L, baseline_runs) else None
        return EwmaState(float(e), runs, since)


# --- levels -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelBreach:
    threshold: float
    window_mean: float
    se: float | None
    z: float | None  # (threshold - window_mean) / se: how many standard errors below the threshold
    breached: bool  # below the threshold beyond noise (z >= z_crit over the whole window)
    runs: int


def level_z(values: np.ndarray, run_sd: np.ndarray | float, threshold: float,
            clip: float = DEFAULT_CLIP) -> np.ndarray | float:
    """How many standard errors the window mean is below `threshold` (array-friendly over the last axis).

    Each run counts at most `clip` of its standard errors below the threshold, so one wild run cannot carry the
    window: with a window of w runs it adds at most clip / sqrt(w) (2.3 at w = 3), less than the default z_crit."""
    x = np.asarray(values, dtype=float)
    sd = np.broadcast_to(np.asarray(run_sd, dtype=float), x.shape)
    w = x.shape[-1]
    clipped = np.maximum(x, threshold - clip * sd)
    se = np.sqrt(np.sum(sd * sd, axis=-1)) / w
    z = (threshold - clipped.mean(axis=-1)) / se
    return float(z) if np.ndim(z) == 0 else z


def level_breach(values: Sequence[float], run_sds: Sequence[float] | None, threshold: float,
                 z_crit: float = DEFAULT_LEVEL_Z, clip: float = DEFAULT_CLIP) -> LevelBreach:
    """Is the mean of `values` (the last few runs) below `threshold` beyond noise?

    One-sided z-test of the window mean against the threshold with the runs' standard errors (`run_sds`, points),
    each run clipped as in `level_z`. Without standard errors (noise not yet known) nothing is `breached`; a window
    of one run never is.
    """
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if run_sds is None or len(x) < 2:
        return LevelBreach(threshold, mean, None, None, False, len(x))
    sd = np.asarray(run_sds, dtype=float)
    se = float(np.sqrt(np.sum(sd * sd)) / len(x))
    if se <= 0:
        return LevelBreach(threshold, mean, 0.0, None, bool(np.all(x < threshold)), len(x))
    z = level_z(x, sd, threshold, clip)
    return LevelBreach(threshold, mean, se, float(z), bool(z >= z_crit), len(x))


# --- dashboard: trend and variance --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrendResult:
    slope: float  # Sen's slope, points per run
    s: float  # Mann-Kendall S (of the prewhitened series when prewhitened)
    z: float
    p_value: float  # two-sided
    n: int
    lag1: float  # the lag-1 autocorrelation removed by prewhitening (0 without)

    @property
    def declining(self) -> bool:
        return self.slope < 0


def _mk_z(x: np.ndarray) -> tuple[float, float]:
    n = len(x)
    i, j = np.triu_indices(n, 1)
    s = float(np.sign(x[j] - x[i]).sum())
    var_s = n * (n - 1) * (2 * n + 5) / 18.0
    return s, (s - np.sign(s)) / math.sqrt(var_s) if s != 0 else 0.0


def mann_kendall(values: Sequence[float], *, prewhiten: bool = True) -> TrendResult:
    """Mann–Kendall trend test with Sen's slope, prewhitened against lag-1 autocorrelation.

    Positively autocorrelated runs wander, and the plain test reads the wander as a trend (at lag-1
    autocorrelation 0.6 over 30 runs it rejects about 28% of trendless series at 5%). Prewhitening (von Storch
    1995) tests x_t - r1 x_{t-1} instead, with r1 estimated from the series detrended by Sen's slope (so a real
    trend does not inflate it) and bias-corrected for short series, r1 + (1 + 4 r1) / n + 2 / n (Kendall's bias of
    the lag-1 estimate plus the part the detrending takes). Measured on simulated AR(1) series of 30 runs: 4% at
    r1 = 0.2, 12% at 0.6 (plain: 12% and 28%). Hamed–Rao's variance correction was tried and does not help at
    these lengths: its autocorrelation estimate from the detrended ranks is too small (tests/test_stats_drift.py).
    """
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n < 4:
        return TrendResult(0.0, 0.0, 0.0, 1.0, n, 0.0)
    i, j = np.triu_indices(n, 1)
    slope = float(np.median((x[j] - x[i]) / (j - i)))
    r1 = 0.0
    if prewhiten:
        y = x - slope * np.arange(n)
        yc = y - y.mean()
        denom = float(np.sum(yc * yc))
        if denom > 0:
            r1 = float(np.sum(yc[:-1] * yc[1:]) / denom)
            r1 = min(max(r1 + (1 + 4 * r1) / n + 2.0 / n, 0.0), 0.95)
        x = x[1:] - r1 * x[:-1]
    s, z = _mk_z(x)
    return TrendResult(slope, s, float(z), float(2 * sps.norm.sf(abs(z))), n, r1)


@dataclass(frozen=True)
class VarianceResult:
    ratio: float  # recent variance / baseline variance
    p_value: float  # one-sided, for an increase
    df: int


def variance_ratio(residuals: Sequence[float], baseline_var: float) -> VarianceResult:
    """Has run-to-run variance increased? `residuals` are recent runs minus the baseline mean (points).

    chi-square test of sum(residual^2) / baseline_var on len(residuals) df (the mean is the baseline's, not
    re-estimated), one-sided for an increase.
    """
    r = np.asarray(residuals, dtype=float)
    df = len(r)
    if df == 0 or baseline_var <= 0:
        return VarianceResult(1.0, 1.0, df)
    stat = float(np.sum(r * r) / baseline_var)
    return VarianceResult(stat / df, float(sps.chi2.sf(stat, df)), df)


# --- stale data ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StaleResult:
    stale: bool
    age_seconds: float | None  # None: no observation ever
    max_age_seconds: float


def staleness(last_time: datetime | None, now: datetime, max_age: timedelta) -> StaleResult:
    """No observation for longer than `max_age` (or none at all) is stale."""
    if last_time is None:
        return StaleResult(True, None, max_age.total_seconds())
    age = (now - last_time).total_seconds()
    return StaleResult(age > max_age.total_seconds(), age, max_age.total_seconds())
