"""One assessment of one quality series: new observations in, findings and the detectors' new state out.

    result = assess(series, state, thresholds=pipeline.thresholds, settings=pipeline.monitor, now=clock())
    store(result.state); alert(result.findings)

`series` is the series' recent observations (at least the last `trend_window` runs; more is fine), `state` what
the previous assessment returned (None the first time) — a JSON-safe dict holding the baseline, each detector's
state and the time of the last observation seen. Observations at or before that time are not fed to the sequential
detectors again, so assessing the same series twice (a monitor resumed after a kill) changes nothing.

Times are timezone-aware (UTC), as the store keeps them. `reset_at` (the time of the pipeline's latest deployment)
resets the baseline: when it is later than the state's,
everything starts again from the observations after it, and CUSUM and EWMA wait for `in_control_runs` of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from promptcycle.config import MonitorConfig, Thresholds
from promptcycle.monitor.detectors import PAGING_SEVERITIES, DetectorContext, Finding, Observation, detectors
from promptcycle.stats.drift import DEFAULT_CLIP, Baseline, standardize

__all__ = ["STATE_VERSION", "Assessment", "assess"]

STATE_VERSION = 1


@dataclass(frozen=True)
class Assessment:
    findings: list[Finding]
    state: dict[str, Any]  # JSON-safe: store it and pass it back next time

    @property
    def paging(self) -> list[Finding]:
        return [f for f in self.findings if f.severity in PAGING_SEVERITIES]

    @property
    def in_control(self) -> bool:
        """No paging detector is out of control."""
        return all(f.in_control for f in self.findings if detectors.get(f.detector).pages)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _fresh_state(settings: MonitorConfig, reset_at: datetime | None) -> dict[str, Any]:
    return {"version": STATE_VERSION, "reset_at": _iso(reset_at), "last_time": None,
            "baseline": Baseline(settings.in_control_runs, reset_at=_iso(reset_at)).to_dict(), "detectors": {}}


def assess(series: Sequence[Observation], state: dict[str, Any] | None, *, thresholds: Thresholds,
           settings: MonitorConfig, now: datetime, reset_at: datetime | None = None,
           names: Sequence[str] | None = None) -> Assessment:
    """Run the detectors (`names`, default all registered) on the new part of `series`; see the module docstring."""
    if (state is None or state.get("version") != STATE_VERSION
            or (reset_at is not None and (state.get("reset_at") is None
                                          or datetime.fromisoformat(state["reset_at"]) < reset_at))):
        state = _fresh_state(settings, reset_at)
    since = datetime.fromisoformat(state["reset_at"]) if state.get("reset_at") else None
    # A run with no cases (no outcomes) is no observation: the stale detector reports the gap.
    history = sorted((o for o in series if o.n >= 1 and (since is None or o.time > since)), key=lambda o: o.time)
    last_seen = datetime.fromisoformat(state["last_time"]) if state.get("last_time") else None
    new = [o for o in history if last_seen is None or o.time > last_seen]

    baseline = Baseline.from_dict(state["baseline"])
    z: list[float] = []
    for obs in new:
        if baseline.ready:
            z.append(float(standardize(obs.value, baseline.run_sd(obs.n), baseline.mean, DEFAULT_CLIP)))
        else:
            baseline = baseline.add(obs.value, obs.n, obs.case_var)

    ctx = DetectorContext(settings, thresholds, now, history, new, baseline, z)
    findings, states = [], {}
    for name in names if names is not None else detectors.names():
        if not history and name != "stale":
            continue
        finding, det_state = detectors.get(name)().assess(ctx, state["detectors"].get(name))
        findings.append(finding)
        if det_state is not None:
            states[name] = det_state
    new_state = {"version": STATE_VERSION, "reset_at": state.get("reset_at"),
                 "last_time": _iso(history[-1].time) if history else state.get("last_time"),
                 "baseline": baseline.to_dict(), "detectors": states}
    return Assessment(findings, new_state)
