"""The monitor's detectors and assessment against known streams, with the state stored as JSON between runs."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import yaml

from promptcycle.catalog import load_config
from promptcycle.config import MonitorConfig, Thresholds
from promptcycle.errors import ConfigError
from promptcycle.monitor import Observation, assess, detectors
from promptcycle.registry import UnknownNameError
from promptcycle.stats import drift

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
SIGMA, N = 13.0, 150
SETTINGS = MonitorConfig()
TH = Thresholds()


def observations(seed: int, mu: np.ndarray, *, start: int = 0, case_var: bool = True) -> list[Observation]:
    rng = np.random.default_rng(seed)
    sd = SIGMA / math.sqrt(N)
    return [Observation(T0 + timedelta(minutes=30 * (start + i)), float(m + rng.normal(0, sd)), N,
                        float(SIGMA**2 * rng.chisquare(N - 1) / (N - 1)) if case_var else None)
            for i, m in enumerate(mu)]


def monitor(series: list[Observation], state=None, *, reset_at=None, window: int = 40):
    """One assessment per run, the state stored as JSON in between, as the monitor flow does."""
    results = []
    for i in range(len(series)):
        a = assess(series[max(0, i + 1 - window):i + 1], state, thresholds=TH, settings=SETTINGS,
                   now=series[i].time, reset_at=reset_at)
        state = json.loads(json.dumps(a.state))
        results.append(a)
    return results, state


def paged(a) -> set[str]:
    return {f.detector for f in a.paging}


def test_registry_lists_the_detectors_and_names_unknown_ones():
    assert detectors.names() == ["cusum", "ewma", "level", "stale", "trend", "variance"]
    assert {n for n in detectors.names() if detectors.get(n).pages} == {"cusum", "ewma", "level"}
    with pytest.raises(UnknownNameError, match="known: cusum, ewma"):
        detectors.get("cusm")


def test_monitor_config_defaults_are_the_calibrated_ones():
    assert (SETTINGS.probe_cases, SETTINGS.in_control_runs) == (drift.DEFAULT_PROBE_CASES,
                                                               drift.DEFAULT_IN_CONTROL_RUNS)
    assert (SETTINGS.cusum_k, SETTINGS.cusum_h) == (drift.DEFAULT_CUSUM_K, drift.DEFAULT_CUSUM_H)
    assert (SETTINGS.ewma_lambda, SETTINGS.ewma_l) == (drift.DEFAULT_EWMA_LAMBDA, drift.DEFAULT_EWMA_L)
    assert (SETTINGS.level_window, SETTINGS.level_z) == (drift.DEFAULT_LEVEL_WINDOW, drift.DEFAULT_LEVEL_Z)
    assert SETTINGS.stale_after == 90


def test_bad_monitor_config_names_file_and_path(tmp_path):
    data = yaml.safe_load((Path(__file__).parents[1] / "pipelines.yaml").read_text())
    data["pipelines"]["customer-insights"]["monitor"] = {"probe_cases": 0, "cusum_hh": 4}
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "pipelines.customer-insights.monitor.probe_cases" in text and "greater than or equal to 10" in text
    assert "pipelines.customer-insights.monitor.cusum_hh: unknown key" in text
    assert str(path) in text


def test_stable_stream_never_pages():
    results, _ = monitor(observations(1, np.full(220, 92.0)))
    assert not any(a.paging for a in results)
    assert results[-1].in_control


def test_step_drop_pages_within_a_few_runs_and_recovers():
    mu = np.full(60, 92.0)
    mu[40:50] -= 5
    results, _ = monitor(observations(2, mu))
    assert not any(a.paging for a in results[:40])
    first = next(i for i, a in enumerate(results) if a.paging)
    assert 40 <= first <= 42
    assert paged(results[45]) >= {"cusum"} and all(f.severity == "high" for f in results[45].paging)
    assert results[-1].in_control  # back in control a few runs after the drop ended


def test_slow_drift_pages_before_it_is_complete():
    mu = np.full(140, 92.0)
    mu[30:] -= np.minimum(np.arange(1, 111), 100) * 0.05
    results, _ = monitor(observations(3, mu))
    first = next(i for i, a in enumerate(results) if a.paging)
    assert 30 < first < 130


def test_assessment_matches_the_bench_arithmetic():
    bench_path = Path(__file__).parents[1] / "bench" / "monitor_error_rates.py"
    spec = importlib.util.spec_from_file_location("monitor_error_rates", bench_path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["monitor_error_rates"] = bench
    spec.loader.exec_module(bench)
    mu = np.full(80, 92.0)
    mu[45:] -= 2.5
    series = observations(4, mu)
    results, _ = monitor(series, window=3)
    ours = np.array([any(f.in_control is False for f in a.findings if f.detector in ("cusum", "ewma"))
                     for a in results[SETTINGS.in_control_runs:]])
    x = np.array([[o.value for o in series]])
    cv = np.array([[o.case_var for o in series]])
    expected = bench.page_matrix(x, cv, bench.Params(cases=N), critical=0.0)[0]  # level rule off: critical 0
    assert ours.any() and (ours == expected).all()


def test_state_round_trip_continues_identically_and_reassessing_is_idempotent():
    mu = np.full(50, 92.0)
    mu[35:] -= 3
    series = observations(5, mu)
    _, stored = monitor(series)
    state = None
    for i in range(len(series)):  # in memory, never serialized
        state = assess(series[:i + 1], state, thresholds=TH, settings=SETTINGS, now=series[i].time).state
    assert json.loads(json.dumps(state)) == stored
    again = assess(series, stored, thresholds=TH, settings=SETTINGS, now=series[-1].time)
    assert again.state == stored  # nothing new: no detector moves


def test_deployment_resets_the_baseline():
    before = observations(6, np.full(40, 92.0))
    after = observations(7, np.full(40, 88.0), start=40)  # the new prompt sits 4 points lower: its normal
    deployed = before[-1].time + timedelta(minutes=1)
    _, state = monitor(before)
    assert state["baseline"]["ready"]
    results, state = monitor(after, state, reset_at=deployed)
    first = {f.detector: f for f in results[0].findings}
    assert "collecting the baseline" in first["cusum"].message
    assert state["reset_at"] == deployed.isoformat()
    assert state["baseline"]["mean"] == pytest.approx(np.mean([o.value for o in after[:20]]))
    assert not any(f.detector in ("cusum", "ewma") for a in results for f in a.paging)
    # Without the reset the same runs are a 4-point drop
    results, _ = monitor(after, monitor(before)[1])
    assert any("cusum" in paged(a) for a in results)


def test_stale_data_is_its_own_finding():
    series = observations(8, np.full(25, 92.0))
    late = series[-1].time + timedelta(hours=3)
    a = assess(series, None, thresholds=TH, settings=SETTINGS, now=late)
    stale = next(f for f in a.findings if f.detector == "stale")
    assert stale.severity == "medium" and not stale.in_control and stale.statistic == pytest.approx(180)
    assert not a.paging
    empty = assess([], None, thresholds=TH, settings=SETTINGS, now=late)
    assert [f.detector for f in empty.findings] == ["stale"] and "no observations yet" in empty.findings[0].message
    fresh = assess(series, None, thresholds=TH, settings=SETTINGS, now=series[-1].time + timedelta(minutes=30))
    assert next(f for f in fresh.findings if f.detector == "stale").in_control


def test_a_single_run_under_a_threshold_does_not_page():
    series = observations(9, np.full(40, 92.0))
    series.append(Observation(series[-1].time + timedelta(minutes=30), 70.0, N, SIGMA**2))
    results, _ = monitor(series)
    last = {f.detector: f for f in results[-1].findings}
    assert not results[-1].paging
    assert last["level"].severity == "low" and "not yet beyond noise" in last["level"].message


def test_a_falling_slope_over_the_last_runs_does_not_page():
    mu = np.full(40, 92.0)
    mu[-5:] = [92.0, 91.5, 91.0, 90.5, 90.0]  # a visible slope, within noise
    results, _ = monitor(observations(10, mu))
    assert not results[-1].paging
    assert {f.detector: f for f in results[-1].findings}["trend"].severity in ("info", "low")


def test_sustained_breach_of_the_critical_level_pages_even_while_collecting_the_baseline():
    results, _ = monitor(observations(11, np.full(5, 80.0)))
    assert not results[1].paging  # two runs are not the window
    level = {f.detector: f for f in results[2].findings}["level"]
    assert level.severity == "critical" and not level.in_control and level.statistic > SETTINGS.level_z
    without_noise, _ = monitor(observations(11, np.full(5, 80.0), case_var=False))
    assert not any(a.paging for a in without_noise)  # noise unknown yet: no evidence, no page


def test_trend_and_variance_never_page():
    rng = np.random.default_rng(12)
    mu = np.full(60, 92.0)
    series = observations(12, mu)
    series = [Observation(o.time, o.value + (rng.normal(0, 4) if i >= 30 else 0.0), o.n, o.case_var)
              for i, o in enumerate(series)]
    a = monitor(series)[0][-1]
    f = {x.detector: x for x in a.findings}
    assert f["variance"].severity == "low" and not f["variance"].in_control
    assert all(x.severity in ("info", "low") for x in (f["trend"], f["variance"]))


def test_findings_are_json_safe():
    a = monitor(observations(13, np.full(30, 92.0)))[0][-1]
    assert json.loads(json.dumps([f.to_dict() for f in a.findings]))


def test_a_run_without_cases_is_no_observation():
    series = observations(14, np.full(22, 92.0))
    gap = Observation(series[-1].time + timedelta(minutes=30), 0.0, 0, None)
    a = assess([*series, gap], None, thresholds=TH, settings=SETTINGS, now=gap.time + timedelta(hours=2))
    assert not a.paging
    assert a.state["last_time"] == series[-1].time.isoformat()
    assert next(f for f in a.findings if f.detector == "stale").severity == "medium"


def test_detectors_import_no_prefect():
    code = ("import sys, promptcycle.monitor, promptcycle.stats.drift; "
            "sys.exit(any(m == 'prefect' or m.startswith('prefect.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ}).returncode == 0


def test_observation_from_per_case_scores():
    o = Observation.from_scores(T0, [1.0, 0.8, 0.6])
    assert (o.value, o.n) == (pytest.approx(80.0), 3) and o.case_var == pytest.approx(400.0)
    assert Observation.from_scores(T0, []).n == 0 and Observation.from_scores(T0, [0.5]).case_var is None


def test_the_trend_artifact_names_levels_as_the_thresholds_do():
    from promptcycle.config import Thresholds
    from promptcycle.monitor.report import trend_markdown
    from promptcycle.monitor.watch import SeriesAssessment

    thresholds = Thresholds()  # 85 critical / 90 warning / 95 target / 98 excellent
    rows = {value: SeriesAssessment(model="xl", spectrum=f"s{i}", value=value, n=20, source="probe", in_control=True,
                                    findings=[])
            for i, value in enumerate((83.6, 87.2, 92.0, 96.0, 99.0))}
    text = trend_markdown("p", list(rows.values()), {}, thresholds, simulated=True)
    bands = {line.split("|")[2].strip(): line.split("|")[4].strip() for line in text.splitlines()
             if line.startswith("| xl |")}
    assert bands == {"s0": "critical", "s1": "warning", "s2": "ok", "s3": "target", "s4": "excellent"}
    assert [thresholds.level(v) for v in rows] == list(bands.values())
