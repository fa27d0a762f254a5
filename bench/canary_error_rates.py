"""Error rates of the canary's sequential decision rule, by simulation (all data here is simulated).

Each simulated canary looks every 25 requests per arm, up to 500 per arm, and stops at the first look where
`promptcycle.stats.sequential` decides (the horizon forces a decision at 500). The same boundary arithmetic that
`decide_canary` uses (`compute_bounds` + `classify_bounds`) runs here vectorised over sims x looks.

Generative model of graded per-request quality scores: each request's score is an independent draw from a Beta
distribution with the arm's mean and a standard deviation of 0.12 (control: mean 0.85, i.e. Beta(6.68, 1.18):
about 22% of requests score above 0.95 and 4.5% below 0.6 — the long left tail of partly wrong answers that
rubric and judge scorers produce at this quality level). A candidate "3 points worse/better" moves the mean to
0.82/0.88 with the same SD. Two stress scenarios use wider spreads: the +3-point power at SD 0.15 is
shown without a target (there even one fixed-size test at 500 per arm has only about 93% power, so no valid
sequential rule can reach 95%), and the null promotion rate at SD 0.20 keeps its 5% target.

    python bench/canary_error_rates.py [--sims 2000] [--seed 1]

Prints one row per (scenario, metric) and exits non-zero if a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np

from promptcycle.stats.sequential import LookOutcome, classify_bounds, compute_bounds

__all__ = ["Scenario", "SCENARIOS", "simulate_canaries", "run_canary_section", "main"]

BASE_MEAN = 0.85
SCORE_SD = 0.12
LOOK_EVERY = 25
MAX_PER_ARM = 500
ALPHA = 0.05


@dataclass(frozen=True)
class Scenario:
    name: str
    delta: float  # treatment mean minus control mean
    sd: float = SCORE_SD
    max_promoted: float | None = None
    min_promoted: float | None = None
    min_rolled_back: float | None = None


SCENARIOS = [
    Scenario("no true improvement", 0.0, max_promoted=0.05),
    Scenario("candidate 3 points worse", -0.03, max_promoted=0.01, min_rolled_back=0.95),
    Scenario("candidate 3 points better", +0.03, min_promoted=0.95),
    Scenario("stress: 3 points better", +0.03, sd=0.15),
    Scenario("stress: no true improvement", 0.0, sd=0.20, max_promoted=0.05),
]


def draw_scores(rng: np.random.Generator, mean: float, sd: float, shape: tuple[int, ...]) -> np.ndarray:
    """Beta-distributed scores with the given mean and standard deviation."""
    concentration = mean * (1.0 - mean) / sd**2 - 1.0
    if concentration <= 0:
        raise ValueError(f"no Beta distribution has mean {mean} and SD {sd}")
    return rng.beta(mean * concentration, (1.0 - mean) * concentration, size=shape)


def simulate_canaries(rng: np.random.Generator, delta: float, sims: int, *, sd: float = SCORE_SD,
                      alpha: float = ALPHA, min_effect: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Run `sims` canaries; return each one's final `LookOutcome` code and the requests per arm it used."""
    looks = np.arange(LOOK_EVERY, MAX_PER_ARM + 1, LOOK_EVERY)
    stats = []
    for mean in (BASE_MEAN, BASE_MEAN + delta):
        scores = draw_scores(rng, mean, sd, (sims, MAX_PER_ARM))
        sums = np.cumsum(scores, axis=1)[:, looks - 1]
        squares = np.cumsum(scores**2, axis=1)[:, looks - 1]
        means = sums / looks
        variances = (squares - looks * means**2) / (looks - 1)
        stats.append((means, variances))
    (mean_c, var_c), (mean_t, var_t) = stats
    bounds = compute_bounds(mean_c, var_c, looks, mean_t, var_t, looks, alpha=alpha, min_effect=min_effect,
                            max_per_arm=MAX_PER_ARM)
    codes = classify_bounds(bounds, looks, looks, max_per_arm=MAX_PER_ARM)
    decided = codes != LookOutcome.CONTINUE
    if not decided[:, -1].all():
        raise AssertionError("the horizon look must always decide")
    first = np.argmax(decided, axis=1)
    return codes[np.arange(sims), first], looks[first]


def _rate_row(scenario: str, metric: str, hits: np.ndarray, target: str | None, passed: bool | None) -> dict:
    p = float(hits.mean())
    return {"scenario": scenario, "metric": metric, "estimate": p,
            "mc_se": float(np.sqrt(p * (1.0 - p) / hits.size)), "target": target, "passed": passed}


def run_canary_section(sims: int, seed: int) -> list[dict]:
    """Rows {scenario, metric, estimate, mc_se, target, passed}; `passed` is None where there is no target."""
    rows: list[dict] = []
    for index, sc in enumerate(SCENARIOS):
        rng = np.random.default_rng([seed, index])
        outcome, used = simulate_canaries(rng, sc.delta, sims, sd=sc.sd)
        promoted = outcome == LookOutcome.PROMOTE
        rolled_back = ~promoted
        name = f"{sc.name} ({BASE_MEAN:.2f} -> {BASE_MEAN + sc.delta:.2f}, SD {sc.sd:.2f})"
        if sc.max_promoted is not None:
            rows.append(_rate_row(name, "promoted", promoted, f"<= {sc.max_promoted}",
                                  bool(promoted.mean() <= sc.max_promoted)))
        elif sc.min_promoted is not None:
            rows.append(_rate_row(name, "promoted", promoted, f">= {sc.min_promoted}",
                                  bool(promoted.mean() >= sc.min_promoted)))
        else:
            rows.append(_rate_row(name, "promoted", promoted, None, None))
        if sc.min_rolled_back is not None:
            rows.append(_rate_row(name, "rolled back", rolled_back, f">= {sc.min_rolled_back}",
                                  bool(rolled_back.mean() >= sc.min_rolled_back)))
        else:
            rows.append(_rate_row(name, "rolled back", rolled_back, None, None))
        rows.append(_rate_row(name, "rolled back early for harm", outcome == LookOutcome.HARM, None, None))
        rows.append({"scenario": name, "metric": "mean requests per arm to decide", "estimate": float(used.mean()),
                     "mc_se": float(used.std(ddof=1) / np.sqrt(sims)), "target": None, "passed": None})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run_canary_section(args.sims, args.seed)
    elapsed = time.perf_counter() - started
    print(f"Canary sequential rule — SIMULATED scores, {args.sims} canaries per scenario, seed {args.seed}, "
          f"looks every {LOOK_EVERY} per arm up to {MAX_PER_ARM}, alpha {ALPHA}")
    width = max(len(r["scenario"]) for r in rows)
    print(f"{'scenario':<{width}}  {'metric':<32} {'estimate':>9} {'mc_se':>7}  {'target':<8} passed")
    for r in rows:
        estimate = f"{r['estimate']:.1f}" if r["metric"].startswith("mean") else f"{r['estimate']:.4f}"
        mc_se = f"{r['mc_se']:.1f}" if r["metric"].startswith("mean") else f"{r['mc_se']:.4f}"
        passed = "-" if r["passed"] is None else ("yes" if r["passed"] else "NO")
        print(f"{r['scenario']:<{width}}  {r['metric']:<32} {estimate:>9} {mc_se:>7}  {r['target'] or '-':<8} {passed}")
    failed = [r for r in rows if r["passed"] is False]
    print(f"{len(failed)} target(s) missed; {elapsed:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
