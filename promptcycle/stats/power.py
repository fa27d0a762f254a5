"""Power and minimum detectable effect of the one-sided paired t-test on case means.

The test in `promptcycle.stats.paired` compares per-case mean differences d_1..d_n against zero. With the
per-case standard deviation `sd` of those differences, its t statistic follows a noncentral t distribution with
n - 1 degrees of freedom and noncentrality delta * sqrt(n) / sd, so power depends on the design only through
(n, sd, alpha). These helpers answer the three planning questions exactly (no normal approximation, which is
optimistic below ~30 cases):

- `compute_mde`: the smallest true mean difference the test detects with probability `power`;
- `compute_power`: the probability of a significant result for a given true mean difference;
- `compute_required_cases`: the number of cases needed to detect a given difference with `power`.

`sd` is the standard deviation of the per-case differences *after* averaging repeats within each case: more
repeats shrink only its repeat-noise part, more cases shrink the standard error itself.

These describe the t-test alone. `RuleDesign` describes the whole decision rule of `promptcycle.stats.paired`
(level, Holm, min_effect, clusters and the spectrum harm guard): its `mde()` is what a confirmation reports and
what `underpowered` is judged by; bench/gate_error_rates.py checks it against simulated power.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import optimize, stats

__all__ = ["compute_mde", "compute_power", "compute_required_cases", "noncentrality_for_power", "RuleDesign"]


def _check_levels(alpha: float, power: float | None = None) -> None:
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5) for a one-sided test, got {alpha!r}")
    if power is not None and not alpha < power < 1.0:
        raise ValueError(f"power must be in (alpha, 1) = ({alpha}, 1), got {power!r}")


@lru_cache(maxsize=4096)
def noncentrality_for_power(df: int, alpha: float, power: float) -> float:
    """The noncentrality at which a one-sided level-`alpha` t-test with `df` degrees of freedom has `power`.

    The minimum detectable effect is this value times sd / sqrt(n).
    """
    if df < 1:
        raise ValueError(f"need at least 1 degree of freedom (2 cases), got df={df}")
    _check_levels(alpha, power)
    t_crit = stats.t.ppf(1.0 - alpha, df)

    def shortfall(ncp: float) -> float:
        return float(stats.nct.sf(t_crit, df, ncp)) - power

    high = t_crit + stats.norm.ppf(power) + 1.0
    while shortfall(high) < 0.0:  # heavy tails at tiny df need a wider bracket
        high *= 2.0
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-10))


def compute_mde(sd: float | np.ndarray, n_cases: int, *, alpha: float = 0.05,
                power: float = 0.8) -> float | np.ndarray:
    """The minimum detectable effect: the true mean difference detected with probability `power` at `alpha`.

    `sd` may be an array (vectorised over simulations); `n_cases` is the number of paired cases.
    """
    ncp = noncentrality_for_power(int(n_cases) - 1, float(alpha), float(power))
    mde = ncp * np.asarray(sd, dtype=float) / math.sqrt(n_cases)
    return float(mde) if mde.ndim == 0 else mde


def compute_power(effect: float, sd: float, n_cases: int, *, alpha: float = 0.05) -> float:
    """Probability that the one-sided paired t-test is significant when the true mean difference is `effect`."""
    _check_levels(alpha)
    if n_cases < 2:
        raise ValueError(f"need at least 2 cases, got {n_cases}")
    if sd <= 0.0:
        return 1.0 if effect > 0.0 else 0.0
    df = n_cases - 1
    return float(stats.nct.sf(stats.t.ppf(1.0 - alpha, df), df, effect * math.sqrt(n_cases) / sd))


def compute_required_cases(effect: float, sd: float, *, alpha: float = 0.05, power: float = 0.8,
                           max_cases: int = 10_000_000) -> int:
    """The smallest number of cases for which the test detects `effect` with probability `power`.

    Raises ValueError when `effect` is not positive or more than `max_cases` would be needed.
    """
    _check_levels(alpha, power)
    if effect <= 0.0:
        raise ValueError(f"effect must be positive, got {effect!r}")
    if sd <= 0.0:
        return 2
    if compute_power(effect, sd, max_cases, alpha=alpha) < power:
        raise ValueError(f"more than {max_cases} cases needed to detect {effect} with sd {sd}")
    # Start from the normal approximation (never more than a few cases off), then walk to the exact answer:
    # power grows with n.
    guess = math.ceil(((stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)) * sd / effect) ** 2)
    n = min(max(guess, 2), max_cases)
    if compute_power(effect, sd, n, alpha=alpha) >= power:
        while n > 2 and compute_power(effect, sd, n - 1, alpha=alpha) >= power:
            n -= 1
        return n
    while compute_power(effect, sd, n, alpha=alpha) < power:
        n += 1
    return n


# ----------------------------------------------------------------------------- the whole decision rule --
@dataclass(frozen=True)
class RuleDesign:
    """The decision rule of `promptcycle.stats.paired` as a design: what it detects, not only what the t-test does.

    A uniform true improvement `effect` is promoted when (1) the one-sided test on cluster totals is significant
    at `level` (the confirmation's share of the error budget, divided by the candidates compared), (2) the
    estimate reaches `min_effect` and (3) no spectrum's harm test fires. `power(effect)` multiplies the
    probability of (1)-and-(2) (noncentral t on `n_clusters - 1` degrees of freedom) with the probability that
    no spectrum is falsely found harmed (noncentral t per spectrum, pooled SD, `spectrum_df` degrees of freedom);
    the correlation between the two is small and ignored. bench/gate_error_rates.py checks the MDE this gives
    against simulated power of the rule (within 10%).

    `sd` is the per-case-equivalent SD of the overall estimate (standard error x sqrt(n_cases)); `spectrum_sd`
    the pooled per-case SD within spectrums.
    """

    sd: float
    n_cases: int
    n_clusters: int
    level: float
    min_effect: float = 0.0
    spectrum_sizes: tuple[int, ...] = ()
    spectrum_sd: float = float("nan")
    spectrum_df: int = 1
    spectrum_margin: float = 0.0
    spectrum_alpha: float = 0.06

    def scaled(self, n_cases: int) -> "RuleDesign":
        """The same design with `n_cases` cases: clusters and spectrum sizes grow in proportion."""
        ratio = n_cases / self.n_cases
        sizes = tuple(max(1, round(s * ratio)) for s in self.spectrum_sizes)
        clusters = max(2, round(self.n_clusters * ratio))
        return RuleDesign(self.sd, n_cases, clusters, self.level, self.min_effect, sizes, self.spectrum_sd,
                          max(1, round(self.spectrum_df * ratio)), self.spectrum_margin, self.spectrum_alpha)

    def power(self, effect: float | np.ndarray) -> float | np.ndarray:
        """Probability that the rule promotes a candidate whose true gain on every case is `effect`."""
        effect = np.asarray(effect, dtype=float)
        df = max(self.n_clusters - 1, 1)
        if not self.sd > 0.0:
            overall = (effect >= self.min_effect) & (effect > 0.0)
            overall = overall.astype(float)
        else:
            se = self.sd / math.sqrt(self.n_cases)
            threshold = max(float(stats.t.ppf(1.0 - self.level, df)), self.min_effect / se)
            overall = stats.nct.sf(threshold, df, effect / se)
        kept = np.ones_like(effect)
        if self.spectrum_sizes and self.spectrum_sd > 0.0:
            critical = float(stats.t.ppf(self.spectrum_alpha, self.spectrum_df))
            for size in self.spectrum_sizes:
                se_s = self.spectrum_sd / math.sqrt(size)
                kept = kept * stats.nct.sf(critical, self.spectrum_df, (effect + self.spectrum_margin) / se_s)
        out = overall * kept
        return float(out) if out.ndim == 0 else out

    def mde(self, power: float = 0.8) -> float:
        """The smallest uniform gain the rule promotes with probability `power` (inf if none below 1)."""
        if not alpha_ok(self.level) or not self.level < power < 1.0:
            raise ValueError(f"need 0 < level < 0.5 and level < power < 1, got {self.level}, {power}")
        if not self.sd > 0.0:  # no spread: any gain reaching min_effect is certain to show
            return self.min_effect
        if self.power(1.0) < power:
            return float("inf")
        return float(optimize.brentq(lambda e: self.power(e) - power, 0.0, 1.0, xtol=1e-7))

    def required_cases(self, effect: float, power: float = 0.8, max_cases: int = 1_000_000) -> int:
        """About how many cases (clusters and spectrums growing in proportion) detect `effect` with `power`."""
        if effect <= 0.0:
            raise ValueError(f"effect must be positive, got {effect!r}")
        low, high = 2, max(self.n_cases, 2)
        while self.scaled(high).power(effect) < power:
            low, high = high, high * 2
            if high > max_cases:
                raise ValueError(f"more than {max_cases} cases needed to detect {effect}")
        while high - low > 1:
            mid = (low + high) // 2
            if self.scaled(mid).power(effect) >= power:
                high = mid
            else:
                low = mid
        return high


def alpha_ok(level: float) -> bool:
    return 0.0 < level < 0.5
