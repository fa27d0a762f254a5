"""Monte Carlo error rates of the optimization gate (`promptcycle.stats.paired`) — simulated data only.

    python bench/gate_error_rates.py [--sims 2000] [--seed 1] [--quick]

Prints one row per scenario: the estimated rate, its Monte Carlo standard error and 95% (Wilson) interval, the
target and a status; exits 1 when a target fails. If bench/canary_error_rates.py exists, its section
(`run_canary_section(sims, seed) -> list[Row]`) is printed after this one and counts towards the exit status.

The generative model (a documented, simulated world)
----------------------------------------------------
For case c, arm a (baseline or a candidate), model m and repeat r:

    p[c, a, m] = expit(mu + u_c + o_m + shift_a + w[c, a] + v[c, a, m])    expected score of the answer
    u_c ~ N(0, 1.0)          case difficulty (random effect): case means spread roughly 0.45 .. 0.97
    w[c, a] ~ N(0, 0.35)     the arm's effect on this case: a prompt helps some cases and hurts others,
                             which is what makes the paired difference vary from case to case
    v[c, a, m]               the part of that effect specific to one model (0 unless models are pooled)
    o_m                      fixed model offsets (0 unless models are pooled)
    graded score  ~ Beta(15 p, 15 (1 - p))   repeat noise: SD 0.10 at p = 0.8 (one answer of many facts
                                             covers a fact more or less from one sample to the next)
    pass/fail     ~ Bernoulli(p)

`mu` is set so the mean baseline score is 0.80. `shift_a` is 0 for the baseline and for candidates that are not
better (the arms are then exchangeable: the mean difference is exactly 0); for a true improvement it is solved
(Gauss-Hermite quadrature) so that the population mean of p_candidate - p_baseline is exactly the stated gain
(+0.03 = three points on the score scale).

Noise level assumed for the power targets: a per-case SD of the paired difference of 3-repeat means of graded
scores of about 0.10 (0.104-0.107 as simulated; printed per row as sd). In this world baseline case means spread
with SD 0.16 around 0.80, the two arms' case means correlate at 0.78, the prompt x case interaction alone
contributes an SD of 0.075 and repeat noise (single-answer SD 0.08 on average, 0.10 at p = 0.8) the rest. We
take that as a mid-range assumption for two variants of one prompt on the same models: graded case means that
spread 0.15-0.20 and correlate 0.7-0.85 give sqrt(2 (1 - rho)) * sigma between 0.08 and 0.15. It is an
assumption, not a measurement of any real model: a noisier world (SD about 0.14) is printed as an information
row, and there power at 100 cases falls short of 85% — plan the number of cases for the noise you observe
with `promptcycle.stats.power.compute_required_cases` (a confirmation result reports `sd_difference`).

Every rate is computed by the library's own vectorised functions (`summarize_differences`, `assess_spectrums`,
`adjust_holm`, `classify_decisions`); the first simulations of each scenario are also passed, as raw aligned
observations with string case ids, through the public `confirm_improvement` / `confirm_candidates`, and the
run fails if any decision or p-value differs.

Status: PASS when the estimate meets the target; PASS~ when it misses by less than Monte Carlo error (z = 3
standard errors at the target, a one-sided 0.13% check per row, so a correctly sized test does not fail the
table by chance); FAIL otherwise; info rows have no target.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize
from scipy.special import expit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from promptcycle.stats.paired import (  # noqa: E402
    adjust_holm,
    assess_spectrums,
    classify_decisions,
    confirm_candidates,
    confirm_improvement,
    summarize_differences,
)

__all__ = ["Row", "World", "print_rows", "run_gate_section", "main"]

Z_TOLERANCE = 3.0
ALPHA = 0.05
MIN_EFFECT = 0.01
SPECTRUM_MARGIN = 0.02
POWER = 0.8


# ---------------------------------------------------------------------------------------------- the table --
@dataclass(frozen=True)
class Row:
    """One line of the error-rate table; shared with bench/canary_error_rates.py.

    `estimate` is a proportion over `sims` simulations unless `se` is given (then any statistic with that
    Monte Carlo standard error). `direction` is "max" (estimate must be <= target) or "min" (>= target).
    """

    section: str
    scenario: str
    metric: str
    estimate: float
    sims: int
    target: float | None = None
    direction: str | None = None
    note: str = ""
    se: float | None = None
    passed: bool | None = None  # a verdict computed by the row's producer, overriding the rule below

    @property
    def standard_error(self) -> float:
        if self.se is not None:
            return self.se
        return math.sqrt(max(self.estimate * (1 - self.estimate), 0.0) / self.sims)

    @property
    def interval(self) -> tuple[float, float]:
        """95% interval: Wilson score for proportions, estimate +/- 1.96 se otherwise."""
        if self.se is not None:
            return self.estimate - 1.96 * self.se, self.estimate + 1.96 * self.se
        z, n, p = 1.96, self.sims, self.estimate
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)

    @property
    def status(self) -> str:
        if self.passed is not None:
            return "PASS" if self.passed else "FAIL"
        if self.target is None or self.direction is None:
            return "info"
        shortfall = self.estimate - self.target if self.direction == "max" else self.target - self.estimate
        if shortfall <= 0:
            return "PASS"
        se_at_target = self.se if self.se is not None else math.sqrt(self.target * (1 - self.target) / self.sims)
        return "PASS~" if shortfall <= Z_TOLERANCE * se_at_target else "FAIL"


def _as_row(item: Row | Mapping[str, Any], section: str) -> Row:
    """Accept a Row, or a mapping {scenario, metric, estimate, mc_se, target: "<= 0.05" | None, passed}."""
    if not isinstance(item, Mapping):
        return item
    target, direction = None, None
    if item.get("target"):
        text = str(item["target"]).replace(" ", "")
        direction = "max" if text.startswith("<=") else "min" if text.startswith(">=") else None
        target = float(text.lstrip("<>="))
    return Row(section=section, scenario=str(item["scenario"]), metric=str(item["metric"]),
               estimate=float(item["estimate"]), sims=int(item.get("sims", 0)), target=target,
               direction=direction, note=str(item.get("note", "")), se=float(item["mc_se"]),
               passed=item.get("passed"))


def print_rows(title: str, rows: Sequence[Row | Mapping[str, Any]]) -> list[Row]:
    """Print one section of the table; returns the rows as Row objects (mappings are converted)."""
    rows = [_as_row(r, title) for r in rows]
    wide = max([len("scenario")] + [len(r.scenario) for r in rows])
    metric_wide = max([len("metric")] + [len(r.metric) for r in rows])
    print(f"\n== {title} ==")
    header = (f"{'scenario':<{wide}} {'metric':<{metric_wide}} {'estimate':>8} {'MC SE':>7} {'95% interval':>15} "
              f"{'target':>8}  status")
    print(header)
    print("-" * len(header))
    for row in rows:
        low, high = row.interval
        target = "" if row.target is None else f"{'<=' if row.direction == 'max' else '>='}{row.target:.2f}"
        digits = 4 if abs(row.estimate) <= 1 else 1
        interval = f"[{low:.{digits - 1}f},{high:.{digits - 1}f}]"
        print(f"{row.scenario:<{wide}} {row.metric:<{metric_wide}} {row.estimate:>8.{digits}f} "
              f"{row.standard_error:>7.{digits}f} {interval:>15} {target:>8}  {row.status}")
        if row.note:
            print(f"{'':<4}{row.note}")
    return rows


# ---------------------------------------------------------------------------------- the generative model --
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(80)
_GH_WEIGHTS = _GH_WEIGHTS / _GH_WEIGHTS.sum()


def _mean_expit(location: float, scale: float) -> float:
    """E[expit(location + scale * Z)], Z standard normal."""
    return float(np.dot(_GH_WEIGHTS, expit(location + scale * _GH_NODES)))


@dataclass(frozen=True)
class World:
    """Parameters of the simulated scores (see the module docstring)."""

    mean_score: float = 0.80
    case_sd: float = 1.0
    arm_sd: float = 0.35
    concentration: float = 15.0
    model_offsets: tuple[float, ...] = (0.0,)
    model_arm_sd: float = 0.0

    @property
    def _latent_sd(self) -> float:
        return math.sqrt(self.case_sd ** 2 + self.arm_sd ** 2 + self.model_arm_sd ** 2)

    @property
    def intercept(self) -> float:
        return optimize.brentq(lambda mu: _mean_expit(mu, self._latent_sd) - self.mean_score, -10, 10)

    def shift_for(self, gain: float) -> float:
        """The logit shift that raises the population mean expected score by exactly `gain`."""
        if gain == 0.0:
            return 0.0
        mu = self.intercept
        return optimize.brentq(lambda s: _mean_expit(mu + s, self._latent_sd) - self.mean_score - gain, -10, 10)

    def simulate(self, rng: np.random.Generator, *, sims: int, n_cases: int, repeats: int, kind: str,
                 gains: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Scores of the baseline, shape (sims, cases, models, repeats), and of each candidate (k, ...)."""
        n_models = len(self.model_offsets)
        offsets = np.asarray(self.model_offsets).reshape(1, 1, n_models, 1)
        latent = self.intercept + rng.normal(0.0, self.case_sd, (sims, n_cases, 1, 1)) + offsets

        def arm(shift: float) -> np.ndarray:
            eta = latent + shift + rng.normal(0.0, self.arm_sd, (sims, n_cases, 1, 1))
            if self.model_arm_sd > 0:
                eta = eta + rng.normal(0.0, self.model_arm_sd, (sims, n_cases, n_models, 1))
            p = np.broadcast_to(expit(eta), (sims, n_cases, n_models, repeats))
            if kind == "graded":
                return rng.beta(self.concentration * p, self.concentration * (1.0 - p))
            if kind == "passfail":
                return (rng.random(p.shape) < p).astype(float)
            raise ValueError(f"unknown kind {kind!r}")

        baseline = arm(0.0)
        candidates = np.stack([arm(self.shift_for(g)) for g in gains])
        return baseline, candidates


# ------------------------------------------------------------------------------------------ the scenarios --
@dataclass(frozen=True)
class Scenario:
    label: str
    metric: str
    kind: str
    n_cases: int
    repeats: int
    gains: tuple[float, ...]  # one per candidate
    target: float | None = None
    direction: str | None = None
    world: World = field(default_factory=World)
    n_spectrums: int = 0
    spectrum_margin: float = SPECTRUM_MARGIN
    unit: str = "case"  # or "model x case"
    count: str = "any_promotion"  # or "first_promoted"


def _case_differences(baseline: np.ndarray, candidates: np.ndarray, unit: str) -> np.ndarray:
    """(k, sims, units) differences of arm means: per case (pooled over models and repeats) or per model x case."""
    diff = candidates - baseline[None]
    if unit == "case":
        return diff.mean(axis=(-2, -1))
    k, sims, n_cases, n_models, _ = diff.shape
    return diff.mean(axis=-1).reshape(k, sims, n_cases * n_models)


def _decide(differences: np.ndarray, spectrums: list[str] | None,
            margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Decisions (k, sims) and adjusted p-values with the library's vectorised functions."""
    k = differences.shape[0]
    summary = summarize_differences(differences, alpha=ALPHA, power=POWER, mde_alpha=ALPHA / k)
    p = np.moveaxis(summary.p_value, 0, -1)  # (sims, k): Holm runs over the candidates of each simulation
    adjusted = np.moveaxis(adjust_holm(p), -1, 0) if k > 1 else summary.p_value
    ok: np.ndarray | bool = True
    if spectrums is not None:
        _, ok = assess_spectrums(differences, spectrums, margin=margin, alpha=ALPHA, power=POWER)
    decisions = classify_decisions(adjusted, summary.effect, summary.mde, ok, alpha=ALPHA, min_effect=MIN_EFFECT)
    return decisions, adjusted


def _cross_check(baseline: np.ndarray, candidates: np.ndarray, decisions: np.ndarray, adjusted: np.ndarray,
                 spectrums: list[str] | None, margin: float, unit: str, checks: int) -> int:
    """Run the first `checks` simulations through the public API; return the number of disagreements."""
    k, _, n_cases, n_models, repeats = candidates.shape
    if unit == "case":
        ids = np.repeat([f"case-{c}" for c in range(n_cases)], n_models * repeats).tolist()
    else:
        ids = np.repeat([f"model-{m}:case-{c}" for c in range(n_cases) for m in range(n_models)], repeats).tolist()
    obs_spectrums = None if spectrums is None else np.repeat(spectrums, n_models * repeats).tolist()
    kw = dict(spectrums=obs_spectrums, min_effect=MIN_EFFECT, alpha=ALPHA, spectrum_margin=margin, power=POWER)
    mismatches = 0
    for s in range(min(checks, baseline.shape[0])):
        base = baseline[s].ravel().tolist()
        if k == 1:
            results = [confirm_improvement(candidates[0, s].ravel().tolist(), base, ids, **kw)]
        else:
            arms = {f"candidate-{i}": candidates[i, s].ravel().tolist() for i in range(k)}
            results = list(confirm_candidates(arms, base, ids, **kw).values())
        for i, result in enumerate(results):
            if result.decision != decisions[i, s] or not math.isclose(result.adjusted_p_value, adjusted[i, s],
                                                                      rel_tol=1e-9, abs_tol=1e-12):
                mismatches += 1
    return mismatches


def _run_scenario(scenario: Scenario, *, sims: int, rng: np.random.Generator, checks: int) -> tuple[Row, int]:
    world = scenario.world
    baseline, candidates = world.simulate(rng, sims=sims, n_cases=scenario.n_cases, repeats=scenario.repeats,
                                          kind=scenario.kind, gains=scenario.gains)
    spectrums = None
    if scenario.n_spectrums:
        spectrums = [f"spectrum-{c % scenario.n_spectrums}" for c in range(scenario.n_cases)]
    differences = _case_differences(baseline, candidates, scenario.unit)
    unit_spectrums = spectrums
    if spectrums is not None and scenario.unit != "case":
        unit_spectrums = np.repeat(spectrums, len(world.model_offsets)).tolist()
    decisions, adjusted = _decide(differences, unit_spectrums, scenario.spectrum_margin)
    promoted = decisions == "promote"
    hits = promoted[0] if scenario.count == "first_promoted" else promoted.any(axis=0)
    sd = float(np.sqrt(np.mean(np.var(differences, axis=-1, ddof=1))))
    mismatches = _cross_check(baseline, candidates, decisions, adjusted, spectrums, scenario.spectrum_margin,
                              scenario.unit, checks)
    row = Row(section="gate", scenario=scenario.label, metric=scenario.metric, estimate=float(hits.mean()),
              sims=sims, target=scenario.target, direction=scenario.direction, note=f"sd={sd:.3f}")
    return row, mismatches


# Three models of different skill; most of a prompt's effect on a case is shared by the models (SD 0.4 on the
# logit scale) and a smaller part is model-specific (0.15): a prompt that fixes a case fixes it for most models.
POOLED_WORLD = World(model_offsets=(-0.4, 0.0, 0.4), arm_sd=0.4, model_arm_sd=0.15)


def gate_scenarios() -> list[Scenario]:
    """The validation plan: targets from the design, plus information rows that explain the choices."""
    plan: list[Scenario] = []
    for kind in ("passfail", "graded"):
        for repeats in (1, 3):
            for n in (50, 100, 200, 500):
                plan.append(Scenario(f"no gain, {kind}, {repeats} rep, N={n}", "false promotion", kind, n,
                                     repeats, (0.0,), 0.05, "max"))
    plan += [
        Scenario("+0.03, graded, 3 rep, N=100", "power", "graded", 100, 3, (0.03,), 0.85, "min"),
        Scenario("+0.03, graded, 3 rep, N=200", "power", "graded", 200, 3, (0.03,), 0.95, "min"),
        Scenario("5 candidates no gain (Holm), graded, 3 rep, N=100", "any false promo", "graded", 100, 3,
                 (0.0,) * 5, 0.05, "max"),
        Scenario("5 candidates no gain (Holm), passfail, 1 rep, N=200", "any false promo", "passfail", 200, 1,
                 (0.0,) * 5, 0.05, "max"),
        Scenario("3 models pooled, no gain, graded, 3 rep, N=100, unit=case", "false promotion", "graded", 100, 3,
                 (0.0,), 0.05, "max", POOLED_WORLD),
        # Information rows: the costs of the choices, no target.
        Scenario("same, unit=model x case (ignores clustering)", "false promotion", "graded", 100, 3, (0.0,),
                 world=POOLED_WORLD, unit="model x case"),
        Scenario("+0.03, graded, 3 rep, N=100, 4 spectrums margin .02", "promotion rate", "graded", 100, 3,
                 (0.03,), n_spectrums=4),
        Scenario("+0.03, graded, 3 rep, N=200, 4 spectrums margin .02", "promotion rate", "graded", 200, 3,
                 (0.03,), n_spectrums=4),
        Scenario("+0.03, graded, 3 rep, N=100, 4 spectrums margin .04", "promotion rate", "graded", 100, 3,
                 (0.03,), n_spectrums=4, spectrum_margin=0.04),
        Scenario("+0.03, graded, 3 rep, N=100, noisier world", "power", "graded", 100, 3, (0.03,),
                 world=World(arm_sd=0.5, concentration=8.0)),
        Scenario("+0.03, passfail, 3 rep, N=200", "power", "passfail", 200, 3, (0.03,)),
        Scenario("5 candidates, one +0.03 (Holm), graded, 3 rep, N=200", "power (the good)", "graded", 200, 3,
                 (0.03, 0.0, 0.0, 0.0, 0.0), count="first_promoted"),
    ]
    return plan


def run_gate_section(sims: int, seed: int, checks: int = 25) -> tuple[list[Row], int]:
    """Run every gate scenario; returns the rows and the number of public-API disagreements."""
    rows, mismatches = [], 0
    for index, scenario in enumerate(gate_scenarios()):
        row, bad = _run_scenario(scenario, sims=sims, rng=np.random.default_rng([seed, index]), checks=checks)
        rows.append(row)
        mismatches += bad
    # Each no-gain row tests a gate of size ~alpha against alpha, so single rows scatter around 5%; pooled,
    # the Monte Carlo error is four times smaller.
    grid = [r for r in rows if r.scenario.startswith("no gain,")]
    pooled = sum(r.estimate * r.sims for r in grid) / sum(r.sims for r in grid)
    rows.insert(len(grid), Row(section="gate", scenario=f"all {len(grid)} no-gain rows above, pooled",
                               metric="false promotion", estimate=pooled, sims=sum(r.sims for r in grid),
                               target=0.05, direction="max"))
    return rows, mismatches


def _load_canary_section() -> Callable[[int, int], list[Row]] | None:
    if not (Path(__file__).with_name("canary_error_rates.py")).exists():
        return None
    bench_dir = str(Path(__file__).resolve().parent)
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    return importlib.import_module("canary_error_rates").run_canary_section


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=None, help="simulations per scenario (default 2000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="400 simulations per scenario unless --sims")
    args = parser.parse_args(argv)
    sims = args.sims or (400 if args.quick else 2000)

    # The canary module imports Row from here: make both import paths resolve to this very module.
    this = sys.modules[__name__]
    sys.modules.setdefault("gate_error_rates", this)
    sys.modules.setdefault("bench.gate_error_rates", this)

    print(f"Gate error rates — simulated data, {sims} simulations per scenario, seed {args.seed}; "
          f"alpha={ALPHA}, min_effect={MIN_EFFECT}, spectrum_margin={SPECTRUM_MARGIN}, power={POWER}")
    started = time.perf_counter()
    rows, mismatches = run_gate_section(sims, args.seed)
    print_rows(f"optimization gate: paired t on case means, one-sided ({time.perf_counter() - started:.1f} s)",
               rows)
    failed = [r for r in rows if r.status == "FAIL"]
    if mismatches:
        print(f"\nFAIL: {mismatches} decisions of the public API differ from the vectorised path")

    try:
        canary = _load_canary_section()
    except Exception as exc:  # report another section's import failure as a failure of the run
        print(f"\nFAIL: bench/canary_error_rates.py could not be imported: {exc!r}")
        return 1
    if canary is not None:
        started = time.perf_counter()
        produced = canary(sims, args.seed)
        canary_rows = print_rows(f"canary: sequential test ({time.perf_counter() - started:.1f} s)", produced)
        failed += [r for r in canary_rows if r.status == "FAIL"]

    print(f"\n{len(failed)} target(s) failed." if failed else "\nAll targets met.")
    return 1 if failed or mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
