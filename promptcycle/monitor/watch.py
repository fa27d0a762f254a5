"""One monitor pass over a pipeline, as plain steps the monitor flow calls in order.

    plan = plan_monitor(ctx, store, now)                  # the period, production series, which series to probe
    ... the flow evaluates plan.probe_cells with probe_cell_spec(...) through the cell tasks ...
    observations = collect_observations(ctx, store, plan)  # production + probe points, stored
    result = assess_series(ctx, store, plan)               # detectors continue from their stored state
    findings = alert_findings(plan.pipeline, result)       # to the alert policy

What is "normal" resets when the serving model's production prompt changes: the stored state remembers the
production hash it was built on, and a new hash starts a new baseline from this pass's observation on.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from promptcycle.evaluation.cells import CellSpec
from promptcycle.monitor.assessment import assess
from promptcycle.monitor.detectors import Observation, detectors
from promptcycle.monitor.observations import (
    monitor_period,
    period_window,
    points_observation,
    probe_first_repeat,
    probe_repeats,
    probe_sample,
    production_points,
)
from promptcycle.prompts import PromptTemplate
from promptcycle.store.monitoring import ObservationRecord
from promptcycle.store.records import RunRecord

QUALITY_KEY = "quality"  # the alert key's detector for the paging detectors together (see alert_findings)

__all__ = ["QUALITY_KEY", "MonitorPlan", "SeriesAssessment", "plan_monitor", "production_prompt", "probe_cell_spec",
           "collect_observations", "assess_series", "alert_findings"]


class MonitorPlan(BaseModel):
    monitor_run_id: str
    pipeline: str
    period: int
    now: datetime
    resumed: bool
    serving_models: list[str]
    spectrums: list[str]
    production: dict[str, str]  # serving model -> production prompt hash
    production_points: dict[str, list[float | None]]  # "model|spectrum" -> scores (None: error), enough outcomes
    thin: list[tuple[str, str]]  # series whose production feedback is thin
    unattributed: int = 0
    probe_run_id: str | None = None
    probe_cells: list[tuple[str, str]] = []  # (model, spectrum) the probe evaluates
    probe_repeats: int = 0
    probe_first_repeat: int = 0
    simulated: bool = False


class SeriesAssessment(BaseModel):
    model: str
    spectrum: str
    value: float | None  # the latest observation (points)
    n: int
    source: str | None
    in_control: bool
    findings: list[dict[str, Any]]
    baseline_mean: float | None = None
    baseline_ready: bool = False


def production_prompt(ctx, store, model: str) -> tuple[str, PromptTemplate]:
    """The prompt serving `model`: its model-scoped `production` label, else the pipeline's, else (never deployed)
    the configured prompt."""
    h = store.get_label(ctx.name, "production", scope=model) or store.get_label(ctx.name, "production")
    if h:
        version = store.get_prompt_version(h)
        if version is not None:
            return h, PromptTemplate(template=version.template, system=version.system)
    prompt = ctx.prompt
    return prompt.hash, prompt


def plan_monitor(ctx, store, now: datetime, *, flow_run_id: str | None = None) -> MonitorPlan:
    """Start (or resume) the pass of `now`'s period: read the period's production outcomes, decide which series
    the probe observes, and record the monitor run (and the probe's run)."""
    pipe = ctx.pipeline
    period = monitor_period(now, pipe.monitor.interval_minutes)
    run_id = f"monitor-{ctx.name}-{period}"
    models = list(pipe.deployment.serving_models or pipe.models)
    spectrums = list(pipe.dataset.spectrums)
    production = {m: production_prompt(ctx, store, m)[0] for m in models}
    since, until = period_window(now, pipe.monitor.interval_minutes)
    outcomes = store.production_results(ctx.name, scope=None, since=since, until=until)
    case_spectrums = {c.id: c.spectrum for c in ctx.all_cases}
    groups, unattributed = production_points(outcomes, case_spectrums)
    enough = {f"{m}|{s}": v for (m, s), v in groups.items()
              if m in models and s in spectrums and len(v) >= pipe.observe.min_production_outcomes}
    thin = [(m, s) for m in models for s in spectrums if f"{m}|{s}" not in enough]
    simulated = all(ctx.config.providers[ctx.config.models[m].provider].kind == "simulator" for m in models)
    resumed = not store.start_monitor_run(run_id, ctx.name, period, now, production_hash=production[models[0]],
                                          flow_run_id=flow_run_id)
    plan = MonitorPlan(monitor_run_id=run_id, pipeline=ctx.name, period=period, now=now, resumed=resumed,
                       serving_models=models, spectrums=spectrums, production=production, production_points=enough,
                       thin=thin, unattributed=unattributed, simulated=simulated)
    if thin and pipe.observe.probe:
        sample = probe_sample(ctx.configured_cases, spectrums, pipe.monitor.probe_cases, pipe.observe.probe_seed)
        smallest = min((len(v) for v in sample.values() if v), default=1)
        repeats = probe_repeats(pipe.monitor.probe_cases, smallest)
        plan.probe_run_id = f"probe-{ctx.name}-{period}"
        plan.probe_cells = [(m, s) for m, s in thin if sample.get(s)]
        plan.probe_repeats = repeats
        plan.probe_first_repeat = probe_first_repeat(period, repeats)
        store.create_run(RunRecord(
            run_id=plan.probe_run_id, pipeline=ctx.name, kind="probe", fingerprint=f"probe-{period}",
            status="running", prompt_hash=production[models[0]], dataset_hash=ctx.dataset_hash, models=models,
            repeats=repeats, case_limit=pipe.monitor.probe_cases, simulated=simulated,
            config_json=pipe.monitor.model_dump_json(), flow_run_id=flow_run_id, started_at=now))
    return plan


def probe_cell_spec(ctx, store, plan: MonitorPlan, model: str, spectrum: str) -> CellSpec:
    """The probe of one series: the serving model's production prompt on the spectrum's monitoring sample, with
    this period's repeats."""
    pipe = ctx.pipeline
    _, prompt = production_prompt(ctx, store, model)
    cases = probe_sample(ctx.configured_cases, [spectrum], pipe.monitor.probe_cases, pipe.observe.probe_seed)[spectrum]
    return CellSpec(run_id=plan.probe_run_id, pipeline=ctx.name, model_name=model, model=ctx.config.models[model],
                    spectrum=spectrum, prompt=prompt, cases=cases, splits=ctx.splits, repeats=plan.probe_repeats,
                    weights=ctx.weights, render_case=functools.partial(ctx.messages, prompt),
                    first_repeat=plan.probe_first_repeat)


def collect_observations(ctx, store, plan: MonitorPlan) -> list[ObservationRecord]:
    """This period's observation of every series that has one, stored (idempotently) and returned."""
    rows: list[ObservationRecord] = []

    def add(model: str, spectrum: str, source: str, scores: list[float | None], run_id: str | None) -> None:
        obs = points_observation(plan.now, scores)
        rows.append(ObservationRecord(
            pipeline=plan.pipeline, model=model, spectrum=spectrum, source=source, period=plan.period,
            observed_at=plan.now, value=obs.value, n=obs.n, case_var=obs.case_var,
            errors=sum(1 for s in scores if s is None), monitor_run_id=plan.monitor_run_id,
            prompt_hash=plan.production.get(model), run_id=run_id))

    for key, scores in plan.production_points.items():
        model, spectrum = key.split("|", 1)
        add(model, spectrum, "production", scores, None)
    if plan.probe_run_id:
        frame = store.results_frame(plan.probe_run_id)
        cells = set(plan.probe_cells)
        for (model, spectrum), part in frame.groupby(["model", "spectrum"]) if len(frame) else []:
            if (model, spectrum) in cells:
                scores = [None if isinstance(e, str) and e else float(o)
                          for o, e in zip(part["overall"], part["error"])]
                add(model, spectrum, "probe", scores, plan.probe_run_id)
        store.finish_run(plan.probe_run_id, "completed", {"observations": sum(r.source == "probe" for r in rows)})
    store.write_observations(rows)
    return rows


def assess_series(ctx, store, plan: MonitorPlan, *, history_runs: int | None = None) -> list[SeriesAssessment]:
    """Run the detectors on every series from its stored state, and store the new states in one transaction.

    Assessing the same period again (a monitor resumed after a kill) changes nothing: the assessment skips
    observations its state has already seen."""
    pipe = ctx.pipeline
    keep = history_runs or max(pipe.monitor.trend_window, pipe.monitor.in_control_runs) * 3
    stored = store.detector_states(ctx.name)
    out: list[SeriesAssessment] = []
    new_states: dict[tuple[str, str], dict[str, Any]] = {}
    for model in plan.serving_models:
        for spectrum in plan.spectrums:
            records = store.observations(ctx.name, model=model, spectrum=spectrum, limit=keep)
            series = [Observation(r.observed_at, r.value, r.n, r.case_var) for r in records]
            held = (stored.get((model, spectrum)) or {}).get("state") or {}
            production_hash = plan.production[model]
            reset_at = held.get("reset_at")
            reset_at = datetime.fromisoformat(reset_at) if reset_at else None
            if held.get("production_hash") not in (None, production_hash):
                # A deployment: what is normal starts again with this pass's observation.
                reset_at = plan.now - timedelta(microseconds=1)
            result = assess(series, held.get("assessment"), thresholds=pipe.thresholds, settings=pipe.monitor,
                            now=plan.now, reset_at=reset_at)
            findings = [f.to_dict() for f in result.findings]
            new_states[(model, spectrum)] = {
                "state": {"production_hash": production_hash, "reset_at": reset_at.isoformat() if reset_at else None,
                          "assessment": result.state},
                "findings": findings}
            latest = records[-1] if records and records[-1].observed_at == plan.now else None
            base = result.state.get("baseline") or {}
            out.append(SeriesAssessment(
                model=model, spectrum=spectrum, value=latest.value if latest else None, n=latest.n if latest else 0,
                source=latest.source if latest else None, in_control=result.in_control, findings=findings,
                baseline_mean=base.get("mean"), baseline_ready=bool(base.get("ready"))))
    store.write_detector_states(ctx.name, new_states, plan.monitor_run_id, plan.now)
    return out


def alert_findings(pipeline: str, series: list[SeriesAssessment]) -> list:
    """The assessment's findings as the alert policy takes them.

    The paging detectors (cusum, ewma, level) speak for one thing — the series' quality fell — so they go to the
    policy as ONE finding per series under the detector name `quality`: the worst of them, with each detector's
    verdict in the evidence. A drop that trips all three then pages once, and recovers once. The dashboard
    detectors (trend, variance, stale) keep their own keys."""
    from promptcycle.alerts import Finding

    rank = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}
    paging = paging_detectors()
    out = []
    for s in series:
        quality = [f for f in s.findings if f["detector"] in paging]
        if quality:
            out_of_control = [f for f in quality if not f["in_control"]]
            worst = max(out_of_control or quality, key=lambda f: rank[f["severity"]])
            out.append(Finding(detector=QUALITY_KEY, pipeline=pipeline, model=s.model, spectrum=s.spectrum,
                               severity=worst["severity"], in_control=not out_of_control,
                               statistic=worst["statistic"], message=f"{worst['detector']}: {worst['message']}",
                               evidence={"value": s.value, "n": s.n, "source": s.source,
                                         "baseline_mean": s.baseline_mean,
                                         "detectors": {f["detector"]: {k: f[k] for k in ("severity", "in_control",
                                                                                          "statistic", "message")}
                                                       for f in quality}}))
        for f in s.findings:
            if f["detector"] not in paging:
                out.append(Finding(detector=f["detector"], pipeline=pipeline, model=s.model, spectrum=s.spectrum,
                                   severity=f["severity"], in_control=f["in_control"], statistic=f["statistic"],
                                   message=f["message"], evidence=f.get("evidence") or {}))
    return out


def paging_detectors() -> set[str]:
    return {name for name in detectors.names() if detectors.get(name).pages}
