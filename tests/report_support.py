"""A metrics store holding one pipeline's whole loop, written through the store's own methods (fast, no engine):
two baselines, an optimization with screened and confirmed candidates, deployments, a canary with three looks, monitor
observations with an alert, and the paid calls behind it all. Used by test_report.py and test_report_browser.py."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from promptcycle.alerts import process_findings
from promptcycle.alerts.policy import Finding
from promptcycle.catalog import load_config
from promptcycle.config import Thresholds
from promptcycle.evaluation.summary import CellQuality, Ranked, RunSummary
from promptcycle.optimize.search import CandidateRow, OptimizationSummary
from promptcycle.store import MetricsStore, ResponseRecord, ResultRecord, RunRecord
from promptcycle.store.deployments import DeploymentRecord
from promptcycle.store.monitoring import ObservationRecord
from promptcycle.store.records import CanaryRecord, ProductionResult

REPO = Path(__file__).resolve().parent.parent
PIPE = "customer-insights"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
MODELS = ["nano", "xl"]
SPECTRUMS = ["customer_profile", "credit_analysis"]
QUALITY = {("nano", "customer_profile"): 71.5, ("nano", "credit_analysis"): 83.0,
           ("xl", "customer_profile"): 96.0, ("xl", "credit_analysis"): 91.2}


def write_config(tmp_path: Path) -> Path:
    data = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    pipe = data["pipelines"][PIPE]
    pipe["models"] = MODELS
    pipe["dataset"]["spectrums"] = SPECTRUMS
    data["store"] = "metrics.duckdb"
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _paid(store: MetricsStore, run_id: str, at: datetime, calls: int, cost: float, simulated: bool) -> None:
    responses = [ResponseRecord(call_key=f"{run_id}-{i}", provider="simulator", model="sim-xl", prompt_hash="p",
                                case_id=f"c{i}", repeat=0, output="{}", input_tokens=100, output_tokens=20,
                                cost_usd=cost / calls, attempts=1, simulated=simulated, created_at=at, run_id=run_id)
                 for i in range(calls)]
    results = [ResultRecord(run_id=run_id, model="xl", case_id=f"c{i}", repeat=0, spectrum=SPECTRUMS[i % 2],
                            call_key=f"{run_id}-{i}", overall=0.9, cost_usd=cost / calls, attempts=1,
                            simulated=simulated, created_at=at) for i in range(calls)]
    store.write_batch(responses, results)


def _baseline(store: MetricsStore, run_id: str, at: datetime, shift: float, simulated: bool) -> RunSummary:
    t = Thresholds()
    cells = [CellQuality(model=m, spectrum=s, quality=q + shift, level=t.level(q + shift), n=30, errors=0,
                         mean_latency_ms=200.0, p95_latency_ms=300.0, cost_usd=0.01) for (m, s), q in QUALITY.items()]
    overall = sum(c.quality for c in cells) / len(cells)
    summary = RunSummary(run_id=run_id, pipeline=PIPE, status="completed", simulated=simulated, prompt_hash="p" * 16,
                         rows=120, errors=0, cost_usd=0.04, quality=overall, level=t.level(overall), cells=cells,
                         models=[Ranked(name=m, quality=80.0, level="critical") for m in MODELS],
                         spectrums=[Ranked(name=s, quality=80.0, level="critical") for s in SPECTRUMS],
                         started_at=at, finished_at=at)
    store.create_run(RunRecord(run_id=run_id, pipeline=PIPE, kind="baseline", fingerprint=run_id, status="running",
                               prompt_hash="p" * 16, models=MODELS, simulated=simulated, started_at=at))
    _paid(store, run_id, at, 8, 0.04, simulated)
    store.finish_run(run_id, "completed", summary.model_dump(mode="json"))
    return summary


def populate(store_path: Path, config_path: Path, *, simulated: bool = True) -> dict:
    """Write the loop's records; returns what was written, for the assertions."""
    store = MetricsStore(store_path)
    first = _baseline(store, "baseline-1", T0, 0.0, simulated)
    last = _baseline(store, "baseline-2", T0 + timedelta(hours=1), 1.5, simulated)

    rows = [CandidateRow(hash="a" * 16, strategy="combined", status="confirmed", dev_quality=92.0, dev_delta=6.0,
                         decision="promote", effect=0.052, ci_low=0.031, ci_high=0.073, adjusted_p_value=0.001),
            CandidateRow(hash="b" * 16, strategy="format_spec", status="confirmed", dev_quality=88.0, dev_delta=2.0,
                         decision="no_improvement", effect=0.004, ci_low=-0.012, ci_high=0.020,
                         adjusted_p_value=0.4),
            CandidateRow(hash="c" * 16, strategy="examples", status="screened", dev_quality=84.0, dev_delta=-2.0,
                         reasons=["no better than the current prompt on dev (-2.00 points)"]),
            CandidateRow(hash="d" * 16, strategy="shorten", status="rejected", reasons=["leaks a test case"])]
    opt = OptimizationSummary(run_id="opt-1", pipeline=PIPE, outcome="candidate_found", reason="combined wins.",
                              simulated=simulated, baseline_run_id="baseline-1", current_hash="p" * 16,
                              strategies=["combined", "format_spec", "examples", "shorten"], min_effect=0.01,
                              alpha=0.05, ci_level=0.95, candidates=rows, spend={"calls": 12, "cost_usd": 0.06})
    at = T0 + timedelta(hours=1, minutes=20)
    store.create_run(RunRecord(run_id="opt-1", pipeline=PIPE, kind="optimization", fingerprint="o", status="running",
                               simulated=simulated, started_at=at))
    for kind in ("screen", "confirm"):
        arm = f"opt-1/{kind}/{'a' * 16}"
        store.create_run(RunRecord(run_id=arm, pipeline=PIPE, kind=kind, fingerprint=arm, status="running",
                                   simulated=simulated, started_at=at))
        _paid(store, arm, at + timedelta(minutes=5 if kind == "screen" else 10), 6, 0.03, simulated)
        store.finish_run(arm, "completed")
    store.finish_run("opt-1", "completed", opt.model_dump(mode="json"))

    deploy_at = T0 + timedelta(hours=2)
    store.create_deployment(DeploymentRecord(deployment_id="dep-1", pipeline=PIPE, kind="canary", status="canary",
                                             to_hash="a" * 16, from_hash="p" * 16, actor="test",
                                             created_at=deploy_at))
    canary, _ = store.start_canary(CanaryRecord(canary_id="can-1", pipeline=PIPE, control_hash="p" * 16,
                                                treatment_hash="a" * 16, actor="test", deployment_id="dep-1",
                                                split_pct=10.0,
                                                settings={"min_effect": 0.01, "plan": {"mode": "split"}},
                                                started_at=deploy_at))
    looks = [(10.0, 180, 20, "continue", 0.05, -0.20, 0.30), (10.0, 360, 40, "continue", 0.045, -0.08, 0.17),
             (50.0, 560, 240, "promote", 0.048, 0.012, 0.084)]
    for i, (split, n_c, n_t, action, effect, low, high) in enumerate(looks, start=1):
        store.write_canary_look("can-1", i, split_pct=split, n_control=n_c, n_treatment=n_t, action=action,
                                reason=f"look {i}", decision={"effect": effect, "ci_low": low, "ci_high": high,
                                                              "next_split_pct": 50.0 if i >= 2 else 10.0})
    store.update_canary("can-1", status="promoted", finished=True, reason="Promote: the treatment beats control.")
    store.write_production_results([
        ProductionResult(pipeline=PIPE, request_id=f"r{i}", prompt_hash="a" * 16 if i % 2 else "p" * 16,
                         score=0.9, model="xl", canary_id="can-1", arm="treatment" if i % 2 else "control",
                         metadata={"simulated": simulated, "spectrum": SPECTRUMS[0]}, created_at=deploy_at)
        for i in range(4)])

    observations = []
    for period in range(6):
        when = deploy_at + timedelta(minutes=30 * (period + 1))
        for (m, s), q in QUALITY.items():
            if m != "xl":
                continue
            value = q + 2.0 - (12.0 if s == "credit_analysis" and period >= 4 else 0.0)
            observations.append(ObservationRecord(pipeline=PIPE, model=m, spectrum=s, source="probe", period=period,
                                                  observed_at=when, value=value, n=40, case_var=None, errors=0,
                                                  monitor_run_id=f"mon-{period}"))
    store.write_observations(observations)
    alert_at = deploy_at + timedelta(minutes=150)
    events = process_findings(store, load_config(config_path), PIPE, [
        Finding("cusum", PIPE, "xl", "credit_analysis", "high", False, 6.0, "quality fell 12 points")], alert_at)
    return {"baselines": [first, last], "optimization": opt, "observations": observations, "events": events,
            "looks": looks, "paid_runs": ["baseline-1", "baseline-2", f"opt-1/screen/{'a' * 16}",
                                          f"opt-1/confirm/{'a' * 16}"]}
