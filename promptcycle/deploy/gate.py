"""The quality stage — does the optimization evidence hold? — and the gate over all four stages.

The optimization phase stores its verdict on a candidate as a decision of kind "confirmation" whose
evidence is the paired test's result (`ConfirmationResult.to_dict()`). The quality stage re-reads
that evidence against the rules in force now (`deployment.quality`, defaulting to the pipeline's
`optimization` settings and the `warning` threshold):

- the decision was "promote";
- the paired improvement is significant: (Holm-adjusted) p <= alpha;
- the estimated effect reaches the minimum effect;
- no spectrum is shown to regress beyond its margin (each spectrum's harm-test upper bound is not below
  -margin);
- the evidence compares the version with the prompt in production now, not an older one;
- absolute quality: the version's overall score on the serving models, in the runs that produced the
  evidence, is at least `min_quality` points (a terminal error counts as 0, as in every summary);
- the results data-quality suite(s) of those runs passed.

`decide_gate` turns the four stage reports into the gate's decision: "pass", "block" (a stage
failed) or "forced" (a stage failed and the deployment was forced past it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from promptcycle.deploy.validation import Check, StageReport
from promptcycle.store import MetricsStore

__all__ = ["GateDecision", "check_quality", "decide_gate"]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _regresses(spectrum: dict[str, Any], margin: float) -> bool:
    """The harm test of the evidence (its one-sided upper bound below -margin); evidence written before the
    harm test carries only a non-inferiority lower bound, judged as it was then."""
    if "upper_bound" in spectrum:
        upper = _num(spectrum.get("upper_bound"))
        return upper is not None and upper < -margin
    low = _num(spectrum.get("ci_low"))
    return low is None or low <= -margin


def _bound_text(spectrum: dict[str, Any]) -> str:
    name, value = ("upper bound", spectrum.get("upper_bound")) if "upper_bound" in spectrum else \
        ("lower bound", spectrum.get("ci_low"))
    return f"{name} {format(value, '+.3f') if _num(value) is not None else value}"


def _evidence_runs(run_id: str, version: str, scope: str | None) -> list[str]:
    """Where the evidence's observations of `version` live: the decision's run and the run of its
    confirmation arm (`<optimization run>/confirm/<version>[/<model>]`, as the optimization phase names it)."""
    return [run_id, f"{run_id}/confirm/{version}" + (f"/{scope}" if scope else "")]


def check_quality(store: MetricsStore, pipeline: str, pipe: Any, version: str, production: str | None) -> StageReport:
    """The quality stage for `version` of `pipeline` (`pipe` is its `PipelineConfig`)."""
    started = time.perf_counter()
    rules, opt = pipe.deployment.quality, pipe.optimization
    alpha = rules.alpha if rules.alpha is not None else opt.alpha
    min_effect = rules.min_effect if rules.min_effect is not None else opt.min_effect
    margin = rules.spectrum_margin if rules.spectrum_margin is not None else opt.spectrum_margin
    min_quality = rules.min_quality if rules.min_quality is not None else pipe.thresholds.warning
    serving = list(pipe.deployment.serving_models or pipe.models)
    found = [d for d in store.decisions(pipeline=pipeline, kind="confirmation") if d.prompt_hash == version]
    if not found:
        return StageReport.from_checks("quality", [Check(
            "optimization evidence", False, f"no confirmation decision for version {version} of {pipeline}: run "
            "the optimization phase on it, or deploy with --force (recorded as forced)")], started=started)
    decision = found[-1]  # the newest
    ev = decision.evidence or {}
    if ev.get("scope"):  # a prompt for one model is judged on that model
        serving = [ev["scope"]]
    checks = [Check("optimization evidence", True, f"decision {decision.decision!r} of run {decision.run_id}")]
    checks.append(Check("decision", decision.decision == "promote",
                        f"the optimization decided {decision.decision!r}" + (f": {ev['reason']}" if ev.get("reason")
                                                                             else "")))
    p = _num(ev.get("adjusted_p_value", ev.get("p_value")))
    checks.append(Check("significant", p is not None and p <= alpha,
                        f"one-sided p = {p:.3g} (adjusted), alpha {alpha}" if p is not None else
                        "the evidence has no p-value"))
    effect, low, high = _num(ev.get("effect")), _num(ev.get("ci_low")), _num(ev.get("ci_high"))
    interval = f" (CI {low:+.3f} to {high:+.3f})" if low is not None and high is not None else ""
    checks.append(Check("minimum effect", effect is not None and effect >= min_effect - 1e-12,
                        f"effect {effect:+.3f}{interval}, minimum {min_effect}" if effect is not None else
                        "the evidence has no effect size"))
    spectra = ev.get("per_spectrum") or []
    regressing = [s for s in spectra if _regresses(s, margin)]
    if spectra:
        shown = "; ".join(f"{s.get('spectrum')} {_num(s.get('delta')) or 0:+.3f} ({_bound_text(s)})"
                          for s in regressing[:3])
        checks.append(Check("no spectrum regresses", not regressing,
                            f"{len(regressing)} spectrum(s) shown to lose more than {margin}: {shown}" if regressing
                            else f"no spectrum of {len(spectra)} shown to lose more than {margin}"))
    else:
        checks.append(Check("no spectrum regresses", False, "the evidence has no per-spectrum results"))
    if pipe.deployment.quality.require_current_baseline and production is not None:
        same = decision.baseline_hash in (None, production)
        checks.append(Check("compared with production", same,
                            f"the evidence compares against {decision.baseline_hash}, but production is "
                            f"{production}: re-run the optimization against production" if not same else
                            f"compared against {decision.baseline_hash or 'the baseline (not recorded)'}"))
    runs = _evidence_runs(decision.run_id, version, ev.get("scope"))
    frame = store.results_frame_many(runs)
    rows = frame[(frame["prompt_hash"] == version) & frame["model"].isin(serving)] if len(frame) else frame
    quality = None
    if len(rows):
        quality = float(rows["overall"].where(rows["error"].isna(), 0.0).fillna(0.0).mean() * 100.0)
        checks.append(Check("absolute quality", quality >= min_quality,
                            f"{quality:.1f} points on {', '.join(sorted(set(rows['model'])))} over {len(rows)} "
                            f"observations; minimum {min_quality:g}"))
    else:
        checks.append(Check("absolute quality", False, f"the evidence's runs ({', '.join(runs)}) have no results of "
                            f"version {version} on the serving models ({', '.join(serving)})"))
    suites = [d for run in runs for d in store.dq_results(run) if str(d["suite"]).startswith("results")]
    failed = [d["suite"] for d in suites if not d["success"]]
    checks.append(Check("results data quality", bool(suites) and not failed,
                        f"suite(s) failed: {', '.join(failed)}" if failed else
                        f"passed: {', '.join(d['suite'] for d in suites)}" if suites else
                        f"no results data-quality suite recorded for {', '.join(runs)}"))
    details = {"decision_id": decision.decision_id, "run_id": decision.run_id, "evidence_runs": runs,
               "decision": decision.decision,
               "baseline_hash": decision.baseline_hash, "effect": effect, "p_value": p, "alpha": alpha,
               "min_effect": min_effect, "spectrum_margin": margin, "min_quality": min_quality,
               "quality": round(quality, 2) if quality is not None else None, "serving_models": serving}
    return StageReport.from_checks("quality", checks, started=started, details=details,
                                   ok=f"the evidence holds: effect {effect:+.3f}, p = {p:.3g}, quality "
                                      f"{quality:.1f} >= {min_quality:g}" if effect is not None and p is not None
                                   and quality is not None else "")


@dataclass(frozen=True)
class GateDecision:
    """The gate over the stage reports: 'pass', 'block' or 'forced', the failed stages, and why."""

    decision: str
    reason: str
    failed_stages: list[str] = field(default_factory=list)
    stages: dict[str, str] = field(default_factory=dict)  # stage -> status

    @property
    def blocked(self) -> bool:
        return self.decision == "block"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_gate(reports: Sequence[StageReport], *, force: bool = False) -> GateDecision:
    """Pass when no stage failed; otherwise block, or — with `force` — let it through as forced."""
    failed = [r for r in reports if r.status == "failed"]
    stages = {r.stage: r.status for r in reports}
    if not failed:
        ran = [r.stage for r in reports if r.status == "passed"]
        return GateDecision("pass", f"passed: {', '.join(ran) or 'no stage ran'}", [], stages)
    why = "; ".join(f"{r.stage}: {r.reason}" for r in failed)
    if force:
        return GateDecision("forced", f"FORCED past failing stage(s) — {why}", [r.stage for r in failed], stages)
    return GateDecision("block", f"blocked by {', '.join(r.stage for r in failed)} — {why}",
                        [r.stage for r in failed], stages)
