"""The detectors registry: small plug-ins that turn a quality series into findings.

A detector sees one series (pipeline x serving model x spectrum) through a `DetectorContext` — the runs since the
last reset, which of them are new, the baseline and the new runs' standardized values — plus the state it returned
last time (a JSON-safe dict, or None the first time), and returns one `Finding` and its new state. It keeps no other
memory, so the monitor can store the state and continue in another process.

Severities: info < low < medium < high < critical. Only `high` and `critical` page (`PAGING_SEVERITIES`), and only
the paging detectors can return them: `cusum`, `ewma` (a drop from the baseline) and `level` (the window mean below
the critical threshold beyond noise). `trend` and `variance` are for the dashboard (at most `low`); `stale` is its
own finding (`medium`). A slope over the last few runs or a single run under a threshold never pages: with a probe's
noise both happen on about half of the runs of a stable series (bench/monitor_error_rates.py).

Adding one:

    @detectors.register("my-detector")
    class MyDetector(Detector):
        name = "my-detector"
        def assess(self, ctx, state): ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal

import numpy as np

from promptcycle.config import MonitorConfig, Thresholds
from promptcycle.registry import Registry
from promptcycle.stats.drift import (
    DEFAULT_CUSUM_CAP,
    Baseline,
    CusumState,
    EwmaState,
    ewma_limit,
    level_breach,
    mann_kendall,
    staleness,
    variance_ratio,
)

__all__ = [
    "PAGING_SEVERITIES",
    "SEVERITIES",
    "Detector",
    "DetectorContext",
    "Finding",
    "Observation",
    "Severity",
    "detectors",
]

Severity = Literal["info", "low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "low", "medium", "high", "critical")
PAGING_SEVERITIES: frozenset[str] = frozenset({"high", "critical"})


@dataclass(frozen=True)
class Observation:
    """One monitor run of one series: quality in points (0-100) over `n` cases, and the per-case variance of the
    scores (points^2) when known (a probe knows it; production means may not)."""

    time: datetime
    value: float
    n: int
    case_var: float | None = None

    @classmethod
    def from_scores(cls, time: datetime, scores: Sequence[float]) -> "Observation":
        """From one run's per-case overall scores in [0, 1] (a call with no answer counts as 0): the mean and the
        per-case variance in points. An empty run gives n = 0, which the assessment skips."""
        x = np.asarray(scores, dtype=float) * 100.0
        if len(x) == 0:
            return cls(time, 0.0, 0, None)
        return cls(time, float(x.mean()), len(x), float(x.var(ddof=1)) if len(x) >= 2 else None)


@dataclass(frozen=True)
class Finding:
    detector: str
    severity: Severity
    in_control: bool
    statistic: float | None
    threshold: float | None
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def pages(self) -> bool:
        return self.severity in PAGING_SEVERITIES

    def to_dict(self) -> dict[str, Any]:
        return {"detector": self.detector, "severity": self.severity, "in_control": self.in_control,
                "statistic": self.statistic, "threshold": self.threshold, "message": self.message,
                "evidence": self.evidence}


@dataclass(frozen=True)
class DetectorContext:
    settings: MonitorConfig
    thresholds: Thresholds
    now: datetime
    history: Sequence[Observation]  # runs since the last reset, oldest first, including `new`
    new: Sequence[Observation]  # runs no earlier assessment has seen, oldest first
    baseline: Baseline  # ready once `settings.in_control_runs` runs are in
    z: Sequence[float]  # standardized new runs that came after the baseline was ready, oldest first

    def run_sd(self, obs: Observation) -> float | None:
        """A run's standard error (points): from the baseline once ready, else from the run's own per-case variance."""
        if self.baseline.ready:
            return float(self.baseline.run_sd(obs.n))
        if obs.case_var is not None and obs.n >= 2:
            return float(np.sqrt(obs.case_var / obs.n))
        return None


class Detector:
    """Base class: subclasses set `name` and implement `assess`."""

    name: ClassVar[str]
    pages: ClassVar[bool] = False  # may return a paging severity

    def assess(self, ctx: DetectorContext, state: dict[str, Any] | None) -> tuple[Finding, dict[str, Any] | None]:
        raise NotImplementedError


detectors: Registry[type[Detector]] = Registry("detector")


def _collecting(name: str, ctx: DetectorContext, state: dict[str, Any] | None) -> tuple[Finding, dict | None]:
    got, need = len(ctx.baseline.values), ctx.baseline.runs_needed
    return (Finding(name, "info", True, None, None,
                    f"collecting the baseline after the last reset ({got} of {need} runs)",
                    {"baseline_runs": got, "baseline_runs_needed": need}), state)


def _baseline_evidence(ctx: DetectorContext) -> dict[str, Any]:
    last = ctx.history[-1]
    return {"baseline_mean": ctx.baseline.mean, "latest": last.value, "latest_n": last.n,
            "run_sd": float(ctx.baseline.run_sd(last.n)), "drop_points": ctx.baseline.mean - last.value}


@detectors.register("cusum")
class CusumDetector(Detector):
    """Lower CUSUM of standardized runs: pages (high) while it is above h — a sustained drop from the baseline."""

    name = "cusum"
    pages = True

    def assess(self, ctx, state):
        if not ctx.baseline.ready:
            return _collecting(self.name, ctx, state)
        s = CusumState.from_dict(state) if state else CusumState()
        cfg = ctx.settings
        for z in ctx.z:
            s = s.update(z, cfg.cusum_k, cfg.cusum_h, DEFAULT_CUSUM_CAP)
        out = s.c > cfg.cusum_h
        ev = {**_baseline_evidence(ctx), "k": cfg.cusum_k, "runs": s.runs,
              "out_of_control_since_run": s.out_of_control_since}
        msg = (f"quality dropped from its baseline {ctx.baseline.mean:.1f}: CUSUM {s.c:.2f} > {cfg.cusum_h:g}"
               if out else f"in control: CUSUM {s.c:.2f} <= {cfg.cusum_h:g}")
        return Finding(self.name, "high" if out else "info", not out, s.c, cfg.cusum_h, msg, ev), s.to_dict()


@detectors.register("ewma")
class EwmaDetector(Detector):
    """EWMA of standardized runs: pages (high) while below its lower limit — small drops and slow drifts."""

    name = "ewma"
    pages = True

    def assess(self, ctx, state):
        if not ctx.baseline.ready:
            return _collecting(self.name, ctx, state)
        s = EwmaState.from_dict(state) if state else EwmaState()
        cfg = ctx.settings
        for z in ctx.z:
            s = s.update(z, cfg.ewma_lambda, cfg.ewma_l, ctx.baseline.runs_needed)
        limit = -ewma_limit(cfg.ewma_lambda, cfg.ewma_l, ctx.baseline.runs_needed)
        out = s.e < limit
        ev = {**_baseline_evidence(ctx), "lambda": cfg.ewma_lambda, "runs": s.runs,
              "out_of_control_since_run": s.out_of_control_since}
        msg = (f"quality drifted below its baseline {ctx.baseline.mean:.1f}: EWMA {s.e:.2f} < {limit:.2f}"
               if out else f"in control: EWMA {s.e:.2f} >= {limit:.2f}")
        return Finding(self.name, "high" if out else "info", not out, s.e, limit, msg, ev), s.to_dict()


@detectors.register("level")
class LevelDetector(Detector):
    """The thresholds as levels. The window mean below `critical` beyond noise pages (critical); below `warning`
    beyond noise is medium; the latest run alone under a threshold is low (critical) or info (warning)."""

    name = "level"
    pages = True

    def assess(self, ctx, state):
        th, cfg = ctx.thresholds, ctx.settings
        window = list(ctx.history[-cfg.level_window:])
        last = window[-1]
        sds = [ctx.run_sd(o) for o in window]
        known = None if any(sd is None for sd in sds) or len(window) < cfg.level_window else sds
        values = [o.value for o in window]
        ev: dict[str, Any] = {"level": th.level(last.value), "latest": last.value, "window_runs": len(window),
                              "thresholds": th.model_dump()}
        for name, severity in (("critical", "critical"), ("warning", "medium")):
            b = level_breach(values, known, getattr(th, name), cfg.level_z)
            if b.breached:
                ev.update(window_mean=b.window_mean, se=b.se, z=b.z)
                return (Finding(self.name, severity, False, b.z, cfg.level_z,
                                f"quality {b.window_mean:.1f} over the last {b.runs} runs is below the {name} "
                                f"threshold {getattr(th, name):g} by {b.z:.1f} standard errors", ev), None)
        if last.value < th.critical:
            return Finding(self.name, "low", True, last.value, th.critical,
                           f"the latest run ({last.value:.1f}) is under the critical threshold {th.critical:g}, "
                           "not yet beyond noise", ev), None
        msg = f"level {ev['level']} ({last.value:.1f})"
        return Finding(self.name, "info", True, last.value, th.warning, msg, ev), None


@detectors.register("trend")
class TrendDetector(Detector):
    """Mann–Kendall, prewhitened against autocorrelation, over the last `trend_window` runs: a significant decline is low."""

    name = "trend"
    alpha: ClassVar[float] = 0.05

    def assess(self, ctx, state):
        values = [o.value for o in ctx.history[-ctx.settings.trend_window:]]
        r = mann_kendall(values)
        declining = r.p_value < self.alpha and r.declining
        ev = {"slope_per_run": r.slope, "p_value": r.p_value, "runs": r.n, "z": r.z,
              "lag1_autocorrelation": r.lag1}
        msg = (f"declining {r.slope:+.2f} points per run over {r.n} runs (p = {r.p_value:.3f})" if declining
               else f"no significant trend over {r.n} runs (slope {r.slope:+.2f}, p = {r.p_value:.3f})")
        return Finding(self.name, "low" if declining else "info", not declining, r.z, None, msg, ev), None


@detectors.register("variance")
class VarianceDetector(Detector):
    """Run-to-run variance of the last `trend_window` runs against the baseline's (chi-square): an increase is low."""

    name = "variance"
    alpha: ClassVar[float] = 0.01

    def assess(self, ctx, state):
        if not ctx.baseline.ready:
            return _collecting(self.name, ctx, state)
        runs = list(ctx.history[ctx.baseline.runs_needed:])[-ctx.settings.trend_window:]
        if len(runs) < 4:
            return Finding(self.name, "info", True, None, None, f"{len(runs)} runs since the baseline", {}), None
        base_var = float(np.mean([ctx.baseline.run_sd(o.n) ** 2 for o in runs]))
        r = variance_ratio([o.value - ctx.baseline.mean for o in runs], base_var)
        up = r.p_value < self.alpha
        ev = {"ratio": r.ratio, "p_value": r.p_value, "runs": r.df, "baseline_var": base_var}
        msg = (f"run-to-run variance is {r.ratio:.1f} x the baseline's (p = {r.p_value:.4f})" if up
               else f"variance {r.ratio:.2f} x the baseline's")
        return Finding(self.name, "low" if up else "info", not up, r.ratio, None, msg, ev), None


@detectors.register("stale")
class StaleDetector(Detector):
    """No observation for longer than `stale_after` (default 3 intervals): medium, its own finding."""

    name = "stale"

    def assess(self, ctx, state):
        last = ctx.history[-1].time if ctx.history else None
        if last is None and state and state.get("last_time"):
            last = datetime.fromisoformat(state["last_time"])
        max_age = timedelta(minutes=ctx.settings.stale_after)
        r = staleness(last, ctx.now, max_age)
        ev = {"age_minutes": None if r.age_seconds is None else r.age_seconds / 60,
              "stale_after_minutes": ctx.settings.stale_after, "last_observation": last.isoformat() if last else None}
        if r.stale:
            msg = ("no observations yet" if last is None
                   else f"no observations for {r.age_seconds / 60:.0f} minutes "
                        f"(expected every {ctx.settings.interval_minutes:g})")
        else:
            msg = "fresh"
        return (Finding(self.name, "medium" if r.stale else "info", not r.stale, ev["age_minutes"],
                        ctx.settings.stale_after, msg, ev),
                {"last_time": last.isoformat() if last else None})

