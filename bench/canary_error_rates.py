"""Error rates and power of the canary's decision rule, by simulation (all data here is simulated).

Every simulated canary runs the rule `promptcycle.deploy.canary` applies: before it starts it plans its horizon
(`plan_canary`) from the upper 90% confidence bound of the score variance of 1,000 simulated production-history
requests (`history_variance`), for 90% power at a
3-point minimum effect; then requests arrive one by one, each assigned to the new version with the split's
probability; every `look_every` requests it looks — sequential guardrails first, then the stratified quality test
(`stratified_statistics` + `compute_bounds` + `classify_bounds`, the very arithmetic `decide_canary` uses,
vectorised over canaries x looks) — and stops at the first look that decides. Splits: a fixed 10% or 50%, or the
10% -> 50% -> 100% schedule (10% until the new version has served 50 requests at that step, or the test already
favours it; promotion only from 50%). Outcomes are stratified by step, exactly as the canary flow does.

Noise models of per-request quality (control mean 0.85; a candidate "3 points better/worse" moves the mean by
+/-0.03; each request's score independent given its mean):
- pass/fail: Bernoulli(mean) (SD 0.36);
- graded: Beta with the mean and SD 0.12 (Beta(6.68, 1.18) at 0.85: a long left tail of partly wrong answers);
- skewed: a score of exactly 1.0 with probability q, else a Beta(2, 5) draw (mean 0.29) — mostly perfect answers
  and rare bad ones (SD 0.30 at mean 0.85); the mean moves through q;
- skewed-right: 1 minus the skewed score at mean 0.15 — mostly failing answers with rare perfect ones (the
  direction in which a small arm's mean has a heavy upper tail), null rows only.
Drift: the traffic mix changes during the canary — both arms' means move linearly by +/-2 points over the
planned horizon's requests (and keep moving past it). Errors: every request of either arm fails with probability
3% (equal error rates; errored requests are unscored); guardrails `max_error_rate` 0.05 and
`max_error_rate_increase` 0.02 are tested sequentially at every look.

Shadow (paired) rows: each shadowed request has a difficulty p_i (Beta, mean 0.85, SD 0.25); production's and
the candidate's answers pass independently with p_i (candidate: p_i moved towards 1 or 0 in proportion to
its room, so the mean moves by exactly +/-0.03) — within-request
correlation about 0.5 — and `decide_shadow`'s boundary runs on the paired differences.

Targets: null (equal means) promoted <= 5% in every row; -3 points promoted <= 1% and rolled back for harm
(the test or a guardrail, not the horizon) >= 95%; +3 points promoted >= 90% (power at the stated horizon); equal
error rates rolled back by a guardrail <= 5%. Looks after every request are simulated in the null rows (the
worst case for promotion); power and harm rows look every 25 and 200 (looking more often only crosses the
boundaries more often, so their rates at every request are at least those at every 25).

    python bench/canary_error_rates.py [--sims 2000] [--seed 1] [--quick]

Prints one table and exits non-zero if a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np

from promptcycle.stats.sequential import (
    LookOutcome,
    classify_bounds,
    compute_bounds,
    critical_value,
    history_variance,
    paired_skewness,
    plan_canary,
    sequential_exceedance,
    stratified_statistics,
)

__all__ = ["Scenario", "scenarios", "simulate", "run_rows", "main"]

BASE_MEAN = 0.85
GRADED_SD = 0.12
MIN_EFFECT = 0.03
ALPHA = 0.05
ALPHA_HARM = 0.15
ERROR_RATE = 0.03
MAX_ERROR_RATE = 0.05
MAX_ERROR_INCREASE = 0.02
GUARD_ALPHA = 0.05
MIN_PER_ARM = 20
STEP_MIN = 50
HISTORY = 1000
SPLITS = {"10%": [10.0, 100.0], "50%": [50.0, 100.0], "10->50->100%": [10.0, 50.0, 100.0]}
_BAD_MEAN = 2.0 / 7.0  # mean of Beta(2, 5)


@dataclass(frozen=True)
class Scenario:
    split: str  # a key of SPLITS, or "shadow"
    look_every: int
    scores: str  # "pass/fail" | "graded" | "skewed" | "skewed-right"
    delta: float  # treatment mean minus control mean
    drift: float = 0.0  # traffic drift over the planned horizon (both arms)

    @property
    def base(self) -> float:
        return 1.0 - BASE_MEAN if self.scores == "skewed-right" else BASE_MEAN

    @property
    def label(self) -> str:
        d = f"{self.delta * 100:+.0f} pts" if self.delta else "null"
        drift = f", drift {self.drift * 100:+.0f}" if self.drift else ""
        return f"{self.split:<12} look/{self.look_every:<3} {self.scores:<12} {d}{drift}"


def scenarios(quick: bool = False) -> list[Scenario]:
    """Every row of the table (`quick`: a reduced set for the tests)."""
    looks = (1, 25, 200)
    kinds = ("pass/fail", "graded", "skewed")
    rows: list[Scenario] = []
    if quick:
        return [Scenario("10%", 1, "skewed", 0.0), Scenario("10->50->100%", 25, "graded", 0.0, drift=0.02),
                Scenario("10->50->100%", 25, "graded", +MIN_EFFECT), Scenario("50%", 25, "graded", -MIN_EFFECT),
                Scenario("shadow", 25, "pass/fail", +MIN_EFFECT)]
    for split in SPLITS:
        for look in looks:
            for kind in (*kinds, "skewed-right"):
                rows.append(Scenario(split, look, kind, 0.0))
    for split in SPLITS:
        for kind in kinds:
            for drift in (+0.02, -0.02):
                rows.append(Scenario(split, 25, kind, 0.0, drift=drift))
    for delta in (+MIN_EFFECT, -MIN_EFFECT):
        for split in SPLITS:
            for look in looks:
                for kind in kinds:
                    rows.append(Scenario(split, look, kind, delta))
    for delta in (0.0, +MIN_EFFECT, -MIN_EFFECT):
        for look in looks:
            rows.append(Scenario("shadow", look, "pass/fail", delta))
    return rows


def draw(rng: np.random.Generator, kind: str, mean: np.ndarray) -> np.ndarray:
    """Scores of the noise model `kind` with per-entry `mean` (any shape)."""
    mean = np.clip(mean, 0.01, 0.99)
    if kind == "pass/fail":
        return (rng.random(mean.shape) < mean).astype(float)
    if kind == "graded":
        k = mean * (1 - mean) / GRADED_SD**2 - 1
        return rng.beta(mean * k, (1 - mean) * k)
    if kind in ("skewed", "skewed-right"):
        m = mean if kind == "skewed" else 1.0 - mean
        q = np.clip((m - _BAD_MEAN) / (1 - _BAD_MEAN), 0.0, 1.0)
        scores = np.where(rng.random(mean.shape) < q, 1.0, rng.beta(2.0, 5.0, size=mean.shape))
        return scores if kind == "skewed" else 1.0 - scores
    raise ValueError(kind)


def _variance(kind: str, mean: float, rng: np.random.Generator) -> float:
    sample = draw(rng, kind, np.full(200_000, mean))
    return float(sample.var())


def _cum_at(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Cumulative sums of x (sims, requests) at the (1-based, >= 1) request counts idx."""
    c = np.cumsum(x, axis=1)  # float64 sums; the looks' statistics then run in float32 (twice as fast, and
    # their cancellations — variance, third moment — lose at most ~1e-5 relative at these sizes)
    if idx.ndim == 1 and idx.size == x.shape[1]:  # a look after every request
        return c.astype(np.float32)
    return (c[:, idx - 1] if idx.ndim == 1 else np.take_along_axis(c, idx - 1, axis=1)).astype(np.float32)


def _arm_sums(arm: np.ndarray, scores: np.ndarray, scored: np.ndarray, errors: np.ndarray, at: np.ndarray):
    """Per-look cumulative (n scored, sum, sumsq, sumcube, requests, errors) of the requests where `arm` is True."""
    use = arm & scored
    s = np.where(use, scores, 0.0)
    s2 = s * s
    return (_cum_at(use.astype(float), at), _cum_at(s, at), _cum_at(s2, at), _cum_at(s2 * s, at),
            _cum_at(arm.astype(float), at), _cum_at((arm & errors).astype(float), at))


def _decide(strata_c, strata_t, horizon, plan) -> np.ndarray:
    """LookOutcome codes per (sim, look) from per-stratum sums (..., strata): guardrails first, then quality."""
    nc, sc, qc, cc, rc, ec = strata_c
    nt, st, qt, ct, rt, et = strata_t
    effect, variance, n_eff, skew = stratified_statistics(nc, sc, qc, nt, st, qt, cc, ct)
    bounds = compute_bounds(np.nan_to_num(effect), np.nan_to_num(variance, nan=1.0), n_eff, horizon[:, None],
                            alpha=ALPHA, alpha_harm=ALPHA_HARM, skewness=skew, p_values=False)
    codes = classify_bounds(bounds, nc.sum(-1), nt.sum(-1), min_per_arm=MIN_PER_ARM)
    # guardrails: error rate of the treatment, and its increase over control (stratified, pooled rate)
    requests_t = rt.sum(-1)
    rate_t = et.sum(-1) / np.maximum(requests_t, 1)
    z_abs = sequential_exceedance(rate_t, MAX_ERROR_RATE, requests_t, plan["treatment"][:, None], alpha=GUARD_ALPHA)
    gap, _, pairs, _ = stratified_statistics(rc, ec, ec, rt, et, et)
    pooled = (ec.sum(-1) + et.sum(-1) + 1) / (rc.sum(-1) + rt.sum(-1) + 2)
    zb = compute_bounds(np.nan_to_num(gap) - MAX_ERROR_INCREASE, pooled * (1 - pooled), pairs, horizon[:, None],
                        alpha=GUARD_ALPHA, var_floor=1e-12, p_values=False)
    critical = critical_value(GUARD_ALPHA)
    breached = (requests_t >= 20) & ((z_abs >= critical) | ((pairs > 0) & (zb.z_improvement >= critical)))
    return np.where(breached, np.int8(LookOutcome.GUARDRAIL), codes)


def _first(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    decided = codes != LookOutcome.CONTINUE
    first = np.argmax(decided, axis=1)
    final = codes[np.arange(codes.shape[0]), first]
    return np.where(decided.any(axis=1), final, np.int8(LookOutcome.CONTINUE)), first


def _split_batch(rng, sc: Scenario, sims: int, true_var: float):
    """One batch of split canaries: final codes, requests used, stated requests."""
    schedule = SPLITS[sc.split]
    steps = [p / 100.0 for p in schedule if p < 100]
    history = draw(rng, sc.scores, np.full((sims, HISTORY), sc.base))
    var_hat = np.array([max(history_variance(h)[1], 0.05**2) for h in history])
    plan0 = plan_canary(true_var, min_effect=MIN_EFFECT, alpha=ALPHA, alpha_harm=ALPHA_HARM, schedule=schedule,
                        step_min_requests=STEP_MIN, look_size=sc.look_every)
    horizon = np.ceil(plan0.drift**2 * var_hat / MIN_EFFECT**2)
    ratio = horizon / plan0.horizon
    stated = plan0.requests * ratio
    plan = {"treatment": plan0.treatment_requests * ratio}
    n = int(np.ceil(stated.max() * 1.5 / sc.look_every) + 2) * sc.look_every
    drift_per_request = sc.drift / plan0.requests
    trend = sc.base + drift_per_request * np.arange(n)
    u = rng.random((sims, n))
    errors = rng.random((sims, n)) < ERROR_RATE
    scored = ~errors
    c_scores = draw(rng, sc.scores, np.broadcast_to(trend, (sims, n)))
    t_scores = draw(rng, sc.scores, np.broadcast_to(trend + sc.delta, (sims, n)))
    at = np.arange(sc.look_every, n + 1, sc.look_every)

    def sums(p: float, at_idx):
        arm_t = u < p
        c = _arm_sums(~arm_t, c_scores, scored, errors, at_idx)
        t = _arm_sums(arm_t, t_scores, scored, errors, at_idx)
        return c, t

    if len(steps) == 1:
        c, t = sums(steps[0], at)
        codes = _decide(tuple(x[..., None] for x in c), tuple(x[..., None] for x in t), horizon, plan)
        final, first = _first(codes)
        return final, at[first], stated
    # the schedule: step 0 at steps[0] until the step's treatment count reaches STEP_MIN (or the test favours
    # promotion) at a look, then steps[1] until the end
    c0, t0 = sums(steps[0], at)
    codes0 = _decide(tuple(x[..., None] for x in c0), tuple(x[..., None] for x in t0), horizon, plan)
    advance = ((codes0 == LookOutcome.CONTINUE) & (t0[4] >= STEP_MIN)) | (codes0 == LookOutcome.PROMOTE)
    ends0 = (codes0 != LookOutcome.CONTINUE) & (codes0 != LookOutcome.PROMOTE)
    moved = advance.any(axis=1)  # canaries that end at step 0 (harm, a guardrail) never move
    j_raw = np.where(moved, np.argmax(advance, axis=1), at.size)  # the look that moves the split
    j = np.minimum(j_raw, at.size - 1)
    look = np.arange(at.size)
    ended0 = ends0 & (look[None, :] < j_raw[:, None])
    c1, t1 = sums(steps[1], at)
    switch = at[j]  # requests at the advancing look
    c1_at = sums(steps[1], switch[:, None])
    c0_at = tuple(np.take_along_axis(x, j[:, None], axis=1) for x in c0)
    t0_at = tuple(np.take_along_axis(x, j[:, None], axis=1) for x in t0)
    c1_at, t1_at = c1_at
    after = look[None, :] > j_raw[:, None]

    def both(s0, s0_at, s1, s1_at):
        first = np.where(after, s0_at, s0)
        second = np.where(after, s1 - s1_at, 0.0)
        return np.stack([first, second], axis=-1)

    strata_c = tuple(both(a, b, c, d) for a, b, c, d in zip(c0, c0_at, c1, c1_at))
    strata_t = tuple(both(a, b, c, d) for a, b, c, d in zip(t0, t0_at, t1, t1_at))
    codes = _decide(strata_c, strata_t, horizon, plan)
    codes = np.where(after, codes, np.where(ended0, codes0, np.int8(LookOutcome.CONTINUE)))
    final, first = _first(codes)
    return final, at[first], stated


def _shadow_batch(rng, sc: Scenario, sims: int):
    """One batch of shadow (paired) canaries on pass/fail scores of requests with varying difficulty."""
    mean, sd = BASE_MEAN, 0.25
    k = mean * (1 - mean) / sd**2 - 1

    def pairs(size):
        p = rng.beta(mean * k, (1 - mean) * k, size=size)
        a = (rng.random(size) < p).astype(float)
        # the candidate moves every request's pass probability towards 1 (or 0) in proportion to its room, so the
        # mean moves by exactly delta without clipping
        shifted = p + sc.delta * ((1 - p) / (1 - mean) if sc.delta > 0 else p / mean)
        b = (rng.random(size) < shifted).astype(float)
        return a, b

    # history: production's answers to 1,000 requests scored twice (e.g. a re-run) give the differences' variance
    p_hist = rng.beta(mean * k, (1 - mean) * k, size=(sims, HISTORY))
    x = (rng.random((sims, HISTORY)) < p_hist).astype(float)
    y = (rng.random((sims, HISTORY)) < p_hist).astype(float)
    var_hat = np.array([max(history_variance(h, largest=1.0)[1], 0.05**2) for h in y - x])
    true_var = float(2 * (mean * (1 - mean) - sd**2))
    plan0 = plan_canary(true_var, min_effect=MIN_EFFECT, alpha=ALPHA, alpha_harm=ALPHA_HARM, mode="shadow",
                        look_size=sc.look_every)
    horizon = np.ceil(plan0.drift**2 * var_hat / MIN_EFFECT**2)
    n = int(np.ceil(horizon.max() * 1.05 / sc.look_every) + 1) * sc.look_every
    a, b = pairs((sims, n))
    d = b - a
    at = np.arange(sc.look_every, n + 1, sc.look_every)
    s1, s2 = _cum_at(d, at), _cum_at(d * d, at)
    cnt = at[None, :].astype(float)
    mean_d = s1 / cnt
    var_d = (s2 - cnt * mean_d**2) / np.maximum(cnt - 1, 1)
    skew = paired_skewness(cnt, s1, s2, _cum_at(d**3, at))
    bounds = compute_bounds(mean_d, var_d, cnt, horizon[:, None], alpha=ALPHA, alpha_harm=ALPHA_HARM, skewness=skew,
                            p_values=False)
    codes = classify_bounds(bounds, cnt, cnt, min_per_arm=MIN_PER_ARM)
    final, first = _first(codes)
    return final, at[first], horizon


def simulate(sc: Scenario, sims: int, seed: int, *, budget: float = 3e6) -> dict[str, np.ndarray]:
    """Run `sims` canaries of one scenario (in batches that keep arrays near `budget` entries)."""
    rng = np.random.default_rng(seed)
    if sc.split == "shadow":
        true_var = None
    else:
        true_var = _variance(sc.scores, sc.base, np.random.default_rng(0))
        plan = plan_canary(true_var, min_effect=MIN_EFFECT, schedule=SPLITS[sc.split], step_min_requests=STEP_MIN,
                           look_size=sc.look_every)
    finals, used, stated = [], [], []
    done = 0
    while done < sims:
        if sc.split == "shadow":
            batch = max(1, min(sims - done, int(budget / 4000)))
            f, u, s = _shadow_batch(rng, sc, batch)
        else:
            per_sim = plan.requests * 1.3 * (1 + 20 / sc.look_every)  # requests x (arrays per look)
            batch = max(1, min(sims - done, int(budget / per_sim)))
            f, u, s = _split_batch(rng, sc, batch, true_var)
        finals.append(f)
        used.append(u)
        stated.append(s)
        done += batch
    return {"final": np.concatenate(finals), "used": np.concatenate(used), "stated": np.concatenate(stated)}


def _rate(hits: np.ndarray) -> tuple[float, float]:
    p = float(hits.mean())
    return p, float(np.sqrt(max(p * (1 - p), 1e-12) / hits.size))


def run_rows(sims: int, seed: int, quick: bool = False, progress: bool = False, only: str | None = None) -> list[dict]:
    """One row per scenario: its metric, estimate, MC standard error, target and PASS/FAIL (`only`: the
    scenarios whose label contains it, each with the seed it has in the whole table)."""
    rows = []
    for index, sc in enumerate(scenarios(quick)):
        if only is not None and only not in sc.label:
            continue
        started = time.perf_counter()
        out = simulate(sc, sims, seed * 1_000 + index)
        final = out["final"]
        if (final == LookOutcome.CONTINUE).any():
            raise AssertionError(f"{sc.label}: some canaries never decided")
        promoted = final == LookOutcome.PROMOTE
        guard = final == LookOutcome.GUARDRAIL
        harm = (final == LookOutcome.HARM) | guard
        checks = []
        if sc.delta == 0:
            checks.append(("promoted", promoted, "<=", 0.05))
            if sc.split != "shadow":
                checks.append(("guardrail rollback", guard, "<=", 0.05))
        elif sc.delta > 0:
            checks.append(("promoted", promoted, ">=", 0.90))
        else:
            checks.append(("promoted", promoted, "<=", 0.01))
            checks.append(("rolled back for harm", harm, ">=", 0.95))
        for metric, hits, op, target in checks:
            p, se = _rate(hits)
            ok = p <= target if op == "<=" else p >= target
            rows.append({"scenario": sc.label, "metric": metric, "estimate": p, "mc_se": se,
                         "target": f"{op} {target:.2f}", "passed": bool(ok),
                         "requests": float(out["used"].mean()), "stated": float(out["stated"].mean())})
        if progress:
            print(f"  {sc.label}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def format_table(rows: list[dict], sims: int, seed: int, elapsed: float) -> str:
    lines = [f"Canary decision rule — SIMULATED traffic, {sims} canaries per row, seed {seed}; alpha {ALPHA} "
             f"(harm {ALPHA_HARM}), min effect {MIN_EFFECT}, planned 90% power; noise models in the module "
             "docstring",
             f"{'split':<12} {'looks':<9} {'scores':<12} {'case':<20} {'metric':<21} {'estimate':>8} {'mc_se':>7} "
             f"{'target':>7} {'stated':>7} {'used':>7}  result"]
    for r in rows:
        lines.append(f"{r['scenario']:<64} {r['metric']:<21} {r['estimate']:>8.4f} {r['mc_se']:>7.4f} "
                     f"{r['target']:>7} {r['stated']:>7.0f} {r['requests']:>7.0f}  "
                     f"{'PASS' if r['passed'] else 'FAIL'}")
    failed = sum(not r["passed"] for r in rows)
    lines.append(f"{len(rows)} rows, {failed} FAIL; stated = requests the plan says it needs (shadow: shadowed "
                 f"requests), used = mean requests to the decision; {elapsed:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="the reduced scenario set the tests run")
    parser.add_argument("--only", default=None, help="run only the rows whose label contains this text "
                        "(e.g. 'look/1 ')")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run_rows(args.sims, args.seed, quick=args.quick, progress=True, only=args.only)
    print(format_table(rows, args.sims, args.seed, time.perf_counter() - started))
    return 1 if any(not r["passed"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
