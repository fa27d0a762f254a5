"""The monitor loop without the engine: production outcomes (JSONL ingestion) → observations → detectors continuing
from their stored state → the alert policy → incidents and healing decisions. Real YAML, a DuckDB file in tmp_path,
real processes for the kill and the cross-process limit."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from promptcycle.alerts import process_findings
from promptcycle.catalog import load_config
from promptcycle.deploy.serving import ingest_production_results
from promptcycle.errors import ConfigError
from promptcycle.evaluation.context import load_pipeline
from promptcycle.monitor.healing import HealingRequest, HealingSettings
from promptcycle.monitor.observations import monitor_period, probe_first_repeat, probe_sample
from promptcycle.monitor.response import respond
from promptcycle.monitor.watch import alert_findings, assess_series, collect_observations, plan_monitor
from promptcycle.store import MetricsStore

REPO = Path(__file__).resolve().parent.parent
PIPE = "customer-insights"
T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
INTERVAL = 30


def write_config(tmp_path: Path, *, monitor: dict | None = None, healing: dict | None = None,
                 observe: dict | None = None) -> Path:
    data = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    pipe = data["pipelines"][PIPE]
    pipe["dataset"]["spectrums"] = pipe["dataset"]["spectrums"][:2]
    pipe.setdefault("deployment", {})["serving_models"] = ["xl"]
    pipe["monitor"] = {"in_control_runs": 6, "interval_minutes": INTERVAL, **(monitor or {})}
    pipe["observe"] = {"probe": False, **(observe or {})}
    if healing is not None:
        pipe["healing"] = healing
    data["store"] = "metrics.duckdb"
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def period_time(i: int) -> datetime:
    return T0 + timedelta(minutes=INTERVAL * i)


def ingest_period(tmp_path: Path, store_path: Path, i: int, means: dict[str, float], n: int = 40) -> None:
    """`n` production outcomes per spectrum of serving model xl, reported during period i (scores ~ N(mean, 0.08))."""
    rng = random.Random(i)
    lines = []
    for spectrum, mean in means.items():
        for k in range(n):
            at = period_time(i) - timedelta(minutes=INTERVAL * (k + 1) / (n + 2))
            lines.append(json.dumps({"pipeline": PIPE, "request_id": f"r-{i}-{spectrum}-{k}", "version": "v1",
                                     "score": min(1.0, max(0.0, rng.gauss(mean, 0.08))), "model": "xl",
                                     "at": at.isoformat(), "metadata": {"spectrum": spectrum}}))
    path = tmp_path / f"outcomes-{i}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    ingest_production_results(path, store=store_path)


def monitor_pass(config_path: Path, i: int):
    """One monitor pass at period i's time, as flows/monitor.py runs it (without the probe and delivery)."""
    ctx = load_pipeline(config_path, PIPE)
    store = MetricsStore(ctx.store_path)
    now = period_time(i)
    plan = plan_monitor(ctx, store, now)
    observations = collect_observations(ctx, store, plan)
    series = assess_series(ctx, store, plan)
    events = process_findings(store, load_config(config_path), PIPE, alert_findings(PIPE, series), now)
    starts = respond(store, PIPE, ctx.pipeline.healing, series, now)
    return plan, observations, series, events, starts


def means(first: float, second: float) -> dict[str, float]:
    spectrums = yaml.safe_load((REPO / "pipelines.yaml").read_text())["pipelines"][PIPE]["dataset"]["spectrums"]
    return {spectrums[0]: first, spectrums[1]: second}


def test_a_drift_in_production_outcomes_pages_once_and_opens_one_incident(tmp_path):
    config_path = write_config(tmp_path, healing={"enabled": False})
    store_path = tmp_path / "metrics.duckdb"
    MetricsStore(store_path)
    pages = []  # pages at a paging severity (high, critical)
    for i in range(1, 16):
        drifted = i >= 10
        ingest_period(tmp_path, store_path, i, means(0.95, 0.82 if drifted else 0.95))
        plan, observations, series, events, _ = monitor_pass(config_path, i)
        assert {o.source for o in observations} == {"production"} and len(observations) == 2
        assert not plan.thin
        pages += [(i, e) for e in events if e.notify and e.severity in ("high", "critical")]
        if not drifted:
            assert not pages, f"a stable period paged: {pages}"
    raised = [(i, e) for i, e in pages if e.kind == "raised"]
    assert len(raised) == 1, [(i, e.kind, e.reason) for i, e in pages]
    i, event = raised[0]
    assert 10 <= i <= 12, f"detected {i - 9} runs after the drift began"
    # The only other page allowed is the policy's rise in severity (the level rule reaching critical).
    assert all(e.kind == "repeated" and e.severity == "critical" and e.alert_id == event.alert_id
               for _, e in pages if e is not event)
    store = MetricsStore(store_path)
    alert = store.get_alert(event.alert_id)
    assert (alert.model, alert.detector) == ("xl", "quality")
    assert alert.spectrum == list(means(0, 0))[1]
    assert {a.detector for a in store.alerts(PIPE)} <= {"quality", "variance", "trend"}
    incidents = store.incidents(PIPE)
    assert len(incidents) == 1 and incidents[0]["spectrum"] == alert.spectrum
    assert incidents[0]["alert_id"] == alert.alert_id
    decision = [e for e in incidents[0]["timeline"] if e["kind"] == "healing_decision"]
    assert len(decision) == 1 and "disabled" in decision[0]["summary"]  # the same refusal is not repeated


def test_a_deployment_resets_what_is_normal(tmp_path):
    config_path = write_config(tmp_path)
    store_path = tmp_path / "metrics.duckdb"
    store = MetricsStore(store_path)
    for i in range(1, 8):
        ingest_period(tmp_path, store_path, i, means(0.95, 0.95))
        monitor_pass(config_path, i)
    state = store.detector_states(PIPE)[("xl", list(means(0, 0))[0])]["state"]
    assert state["assessment"]["baseline"]["ready"] and state["reset_at"] is None
    # The production label moves: the next pass starts a new baseline.
    ctx = load_pipeline(config_path, PIPE)
    from promptcycle.store.records import PromptVersionRecord

    store.write_prompt_version(PromptVersionRecord(
        prompt_hash="new-prompt", pipeline=PIPE, system="s", template=ctx.prompt.template, variables=[],
        parent_hash=None, strategy="test", rationale="", scope=None, created_at=period_time(8)))
    store.move_label(PIPE, "production", "new-prompt", actor="test", reason="a deployment")
    ingest_period(tmp_path, store_path, 8, means(0.95, 0.95))
    monitor_pass(config_path, 8)
    state = store.detector_states(PIPE)[("xl", list(means(0, 0))[0])]["state"]
    assert state["production_hash"] == "new-prompt" and state["reset_at"] is not None
    baseline = state["assessment"]["baseline"]
    assert not baseline["ready"] and len(baseline["values"]) == 1


_KILLED_PASS = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    os.environ["PROMPTCYCLE_DATA_IN_PROCESS"] = "1"
    from pathlib import Path
    import test_monitor_loop as t
    from promptcycle.evaluation.context import load_pipeline
    from promptcycle.monitor.watch import collect_observations, plan_monitor
    from promptcycle.store import MetricsStore
    config_path, i = Path({config!r}), {period}
    for k in range(1, i):
        t.monitor_pass(config_path, k)
    ctx = load_pipeline(config_path, t.PIPE)
    store = MetricsStore(ctx.store_path)
    plan = plan_monitor(ctx, store, t.period_time(i))
    collect_observations(ctx, store, plan)
    os.kill(os.getpid(), signal.SIGKILL)   # killed between recording the observations and assessing them
""")


def test_the_monitor_resumes_after_a_kill_and_its_detectors_continue(tmp_path):
    runs = {}
    for name in ("killed", "straight"):
        root = tmp_path / name
        root.mkdir()
        config_path = write_config(root)
        store_path = root / "metrics.duckdb"
        MetricsStore(store_path)
        for i in range(1, 13):
            ingest_period(root, store_path, i, means(0.95, 0.95 if i < 10 else 0.84))
        if name == "killed":
            code = _KILLED_PASS.format(tests=str(REPO / "tests"), config=str(config_path), period=11)
            proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
            assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
            store = MetricsStore(store_path)
            assert len(store.observations(PIPE)) == 2 * 11  # the killed pass recorded its observations
            assert store.monitor_runs(PIPE, limit=1)[0]["status"] == "running"
            start = 11
        else:
            start = 1
        for i in range(start, 13):
            plan, *_ = monitor_pass(config_path, i)
            if name == "killed" and i == 11:
                assert plan.resumed
        runs[name] = MetricsStore(store_path)
    killed, straight = (runs[n].detector_states(PIPE) for n in ("killed", "straight"))
    assert killed.keys() == straight.keys()
    for key in killed:
        a, b = killed[key]["state"]["assessment"], straight[key]["state"]["assessment"]
        assert a["baseline"] == b["baseline"] and a["detectors"] == b["detectors"]
    assert [(a.alert_id, a.severity, a.detector) for a in runs["killed"].alerts(PIPE)] == \
           [(a.alert_id, a.severity, a.detector) for a in runs["straight"].alerts(PIPE)]
    assert any(a.detector == "quality" for a in runs["killed"].alerts(PIPE))


def test_healing_cooldown_holds_per_pipeline(tmp_path):
    store = MetricsStore(tmp_path / "metrics.duckdb")
    settings = HealingSettings(cooldown=timedelta(hours=2))
    ask = HealingRequest(PIPE, "xl", "credit_analysis", "quality", "high")
    first = store.decide_healing(ask, settings, T0)
    assert first["eligible"] and first["status"] == "running"
    store.finish_healing(first["decision_id"], "escalated", T0 + timedelta(minutes=20), calls=120, cost_usd=0.5)
    again = store.decide_healing(ask, settings, T0 + timedelta(minutes=119))
    assert not again["eligible"] and "cooldown" in again["reason"]
    other = store.decide_healing(HealingRequest("other", "xl", "credit_analysis", "quality", "high"), settings,
                                 T0 + timedelta(minutes=30))
    assert other["eligible"]  # the cooldown is the pipeline's own
    later = store.decide_healing(ask, settings, T0 + timedelta(minutes=121))
    assert later["eligible"]
    low = store.decide_healing(HealingRequest("third", "xl", "x", "quality", "medium"), settings, T0)
    assert not low["eligible"] and "below healing.min_severity" in low["reason"]


def test_healing_daily_budget_and_a_running_canary_refuse(tmp_path):
    store = MetricsStore(tmp_path / "metrics.duckdb")
    settings = HealingSettings(cooldown=timedelta(0), daily_max_calls=100)
    ask = HealingRequest(PIPE, "xl", "credit_analysis", "quality", "critical")
    first = store.decide_healing(ask, settings, T0)
    store.finish_healing(first["decision_id"], "healed", T0, calls=150)
    refused = store.decide_healing(ask, settings, T0 + timedelta(hours=1))
    assert not refused["eligible"] and "daily budget" in refused["reason"]
    assert store.decide_healing(ask, settings, T0 + timedelta(hours=25))["eligible"]


def _decide_many(store_path: str, pipelines: list[str], barrier, out) -> None:
    os.environ["PROMPTCYCLE_DATA_IN_PROCESS"] = "1"
    store = MetricsStore(store_path)
    settings = HealingSettings(max_concurrent=3, cooldown=timedelta(0))
    barrier.wait()
    for p in pipelines:
        d = store.decide_healing(HealingRequest(p, "xl", "s", "quality", "high"), settings, T0)
        out.put((p, d["eligible"], d["reason"]))


def test_at_most_max_concurrent_healings_across_two_processes(tmp_path):
    store_path = str(tmp_path / "metrics.duckdb")
    MetricsStore(store_path)
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_decide_many, args=(store_path, [f"p{k}-{j}" for j in range(3)], barrier, out))
             for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    results = [out.get(timeout=5) for _ in range(6)]
    eligible = [r for r in results if r[1]]
    assert len(eligible) == 3, results
    assert all("healings are running" in r[2] for r in results if not r[1])
    store = MetricsStore(store_path)
    assert len(store.healing_decisions(status="running")) == 3
    # One ends: the next decision gets its slot.
    store.finish_healing(eligible[0][0] and store.healing_decisions(status="running")[0]["decision_id"], "healed", T0)
    assert store.decide_healing(HealingRequest("p9", "xl", "s", "quality", "high"),
                                HealingSettings(max_concurrent=3, cooldown=timedelta(0)), T0)["eligible"]


def test_an_incident_whose_optimization_finds_nothing_ends_escalated(tmp_path):
    from promptcycle.evaluation.context import PipelineRef
    from promptcycle_tasks.healing import end_healing

    config_path = write_config(tmp_path, healing={"cooldown_minutes": 120})
    store_path = tmp_path / "metrics.duckdb"
    store = MetricsStore(store_path)
    starts = []
    for i in range(1, 13):
        ingest_period(tmp_path, store_path, i, means(0.95, 0.95 if i < 9 else 0.80))
        *_, found = monitor_pass(config_path, i)
        starts += found
    assert len(starts) == 1, "one healing started; later passes join the incident under healing"
    start = starts[0]
    incident = store.incident(start.incident_id)
    assert incident["status"] == "healing"
    alert_before = store.get_alert(start.alert_id)
    # What flows/healing.py records when the optimization finds nothing significant.
    ref = PipelineRef(config_path=str(config_path), pipeline=PIPE, store_path=str(store_path))
    end_healing.fn(ref, start.decision_id, start.incident_id, "escalated",
                   "optimization found nothing significant (no significant improvement): nothing deployed",
                   240, 0.0, period_time(13), start.alert_id)
    incident = store.incident(start.incident_id)
    assert incident["status"] == "escalated" and incident["closed_at"] == period_time(13)
    kinds = [e["kind"] for e in incident["timeline"]]
    assert kinds[0] == "alert" and "healing_decision" in kinds and kinds[-1] == "escalated"
    decision = store.healing_decision(start.decision_id)
    assert decision["status"] == "finished" and decision["outcome"] == "escalated" and decision["calls"] == 240
    alert = store.get_alert(start.alert_id)
    assert alert.escalations == alert_before.escalations + 1
    assert not store.deployments(PIPE), "nothing deployed"


@pytest.mark.parametrize("section, value, path, expected", [
    ("healing", {"max_concurrent": 0}, "pipelines.customer-insights.healing.max_concurrent", "greater than or equal"),
    ("healing", {"min_severity": "urgent"}, "pipelines.customer-insights.healing.min_severity", "'critical'"),
    ("healing", {"cooldown": 5}, "pipelines.customer-insights.healing.cooldown", "unknown key"),
    ("healing", {"strategies": ["no-such"]}, "pipelines.customer-insights.healing.strategies.0", "known: checklist"),
    ("observe", {"min_production_outcomes": 0}, "pipelines.customer-insights.observe.min_production_outcomes",
     "greater than or equal"),
    ("monitor", {"probe_cases": 3}, "pipelines.customer-insights.monitor.probe_cases", "greater than or equal"),
])
def test_bad_monitor_and_healing_config_is_rejected_with_file_path_and_expectation(tmp_path, section, value, path,
                                                                                   expected):
    data = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    data["pipelines"][PIPE][section] = value
    file = tmp_path / "pipelines.yaml"
    file.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as err:
        load_config(file)
    message = str(err.value)
    assert str(file) in message and path in message and expected in message


def test_probe_sample_is_fixed_stratified_and_each_period_makes_new_calls(tmp_path):
    ctx = load_pipeline(write_config(tmp_path), PIPE)
    spectrums = ctx.pipeline.dataset.spectrums
    a = probe_sample(ctx.configured_cases, spectrums, 10, seed=0)
    b = probe_sample(list(reversed(ctx.configured_cases)), spectrums, 10, seed=0)
    assert a == b and all(len(v) == 10 and {c.spectrum for c in v} == {s} for s, v in a.items())
    assert probe_sample(ctx.configured_cases, spectrums, 10, seed=1) != a
    p1, p2 = monitor_period(period_time(1), INTERVAL), monitor_period(period_time(2), INTERVAL)
    assert p2 == p1 + 1 and monitor_period(period_time(1) + timedelta(minutes=29), INTERVAL) == p1
    assert probe_first_repeat(p2, 5) == probe_first_repeat(p1, 5) + 5  # disjoint repeats, so disjoint call keys
