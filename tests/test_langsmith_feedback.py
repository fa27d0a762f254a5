"""Production feedback read from LangSmith as the monitor's production outcomes (promptcycle/langsmith/feedback.py):
runs and user scores fed into the fake LangSmith period by period, read incrementally from a stored cursor (each
run once), and a degradation in the fed scores raising the monitor's alert. Real YAML, DuckDB in tmp_path, the
fake over loopback through the langsmith SDK."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta
from pathlib import Path

import langsmith
import pytest
from pydantic import SecretStr

from promptcycle.alerts import process_findings
from promptcycle.catalog import load_config
from promptcycle.errors import ConfigError, LangSmithUnavailableError
from promptcycle.evaluation.context import load_pipeline
from promptcycle.langsmith.connection import LangSmithConnection
from promptcycle.langsmith.feedback import read_production_feedback
from promptcycle.langsmith.mirror import multipart_body
from promptcycle.monitor.watch import alert_findings, assess_series, collect_observations, plan_monitor
from promptcycle.store import MetricsStore
from test_monitor_loop import INTERVAL, PIPE, T0, period_time
from test_monitor_loop import write_config as monitor_config

PROJECT = "support-prod"


def write_config(tmp_path: Path, **feedback) -> Path:
    """The monitor loop's pipelines.yaml, observing the LangSmith project PROJECT (with `feedback` over its
    observe.langsmith defaults), healing off."""
    return monitor_config(tmp_path, observe={"langsmith": {"project": PROJECT, **feedback}},
                          healing={"enabled": False})


def feed_period(fake, i: int, version: str, means: dict[str, float], n: int = 40) -> int:
    """`n` production runs per spectrum served by `version` during period i, each with a user_score ~ N(mean, 0.08);
    plus runs of another prompt version and runs without feedback. Returns how many runs `version` served."""
    from langsmith._internal._operations import serialize_feedback_dict, serialize_run_dict

    rng = random.Random(i)
    client = langsmith.Client(api_url=fake.url, api_key=fake.api_key, auto_batch_tracing=False)
    ops = []

    def run(tag: str, spectrum: str, k: int, score: float | None) -> None:
        rid = uuid.uuid4()
        start = period_time(i) - timedelta(minutes=INTERVAL * (k + 1) / (n + 2))
        ops.append(serialize_run_dict("post", {
            "id": str(rid), "trace_id": str(rid), "dotted_order": f"{start.strftime('%Y%m%dT%H%M%S%fZ')}{rid}",
            "name": "answer", "run_type": "chain", "session_name": PROJECT, "start_time": start.isoformat(),
            "end_time": (start + timedelta(seconds=1.2)).isoformat(), "inputs": {"q": k}, "outputs": {"a": k},
            "tags": [tag], "extra": {"metadata": {"spectrum": spectrum}}}))
        if score is not None:
            ops.append(serialize_feedback_dict({"id": uuid.uuid4(), "run_id": rid, "trace_id": rid,
                                                "key": "user_score", "score": score}))

    for spectrum, mean in means.items():
        for k in range(n):
            run(f"prompt:{version}", spectrum, k, min(1.0, max(0.0, rng.gauss(mean, 0.08))))
        run("prompt:some-other-version", spectrum, n, 0.0)  # another version's traffic: not this pipeline's
    run(f"prompt:{version}", list(means)[0], 0, None)  # no feedback (yet)
    body, content_type = multipart_body(ops)
    client.request_with_retries("POST", f"{fake.url}/runs/multipart",
                                request_kwargs={"data": body, "headers": {"Content-Type": content_type}})
    return n * len(means) + 1


def monitor_pass(conn, config_path: Path, i: int):
    ctx = load_pipeline(config_path, PIPE)
    store = MetricsStore(ctx.store_path)
    now = period_time(i)
    read = read_production_feedback(conn, store, PIPE, ctx.pipeline.observe.langsmith, {"xl": ctx.prompt.hash}, now,
                                    timedelta(minutes=INTERVAL))
    plan = plan_monitor(ctx, store, now)
    observations = collect_observations(ctx, store, plan)
    series = assess_series(ctx, store, plan)
    events = process_findings(store, load_config(config_path), PIPE, alert_findings(PIPE, series), now)
    return read, plan, observations, events


def test_degrading_langsmith_feedback_raises_the_monitors_alert_reading_each_run_once(tmp_path, langsmith_fake):
    config_path = write_config(tmp_path)
    ctx = load_pipeline(config_path, PIPE)
    spectrums = list(ctx.pipeline.dataset.spectrums)
    conn = LangSmithConnection(api_url=langsmith_fake.url, api_key=SecretStr(langsmith_fake.api_key))
    fed, read_runs, pages = 0, 0, []
    for i in range(1, 16):
        drifted = i >= 10
        fed += feed_period(langsmith_fake, i, ctx.prompt.hash, {spectrums[0]: 0.95,
                                                                 spectrums[1]: 0.82 if drifted else 0.95})
        read, plan, observations, events = monitor_pass(conn, config_path, i)
        read_runs += read.runs
        assert read.unscored == 1 and read.recorded == read.runs  # every run new: none read twice
        assert {o.source for o in observations} == {"production"} and len(observations) == 2
        assert all(o.n == 40 for o in observations)  # this period's runs only
        pages += [(i, e) for e in events if e.notify and e.severity in ("high", "critical")]
        if not drifted:
            assert not pages, f"a stable period paged: {pages}"
    assert read_runs == fed
    raised = [(i, e) for i, e in pages if e.kind == "raised"]
    assert len(raised) == 1, [(i, e.kind, e.reason) for i, e in pages]
    i, event = raised[0]
    assert 10 <= i <= 12, f"detected {i - 9} periods after the scores began to fall"
    store = MetricsStore(ctx.store_path)
    alert = store.get_alert(event.alert_id)
    assert (alert.model, alert.spectrum, alert.detector) == ("xl", spectrums[1], "quality")

    # The cursor is stored: a pass at the same time reads nothing again.
    before = len(langsmith_fake.requests)
    read, *_ = monitor_pass(conn, config_path, 15)
    assert read.runs == 0 and read.recorded == 0
    assert store.langsmith_cursor(PIPE, f"project:{PROJECT}") == (period_time(15), fed)
    assert len(langsmith_fake.requests) == before  # an empty window: nothing to ask
    outcomes = store.production_results(PIPE, scope=None)
    assert len(outcomes) == fed and len({o.request_id for o in outcomes}) == fed
    assert langsmith_fake.api_key.encode() not in (tmp_path / "metrics.duckdb").read_bytes()


def test_an_outage_leaves_the_cursor_and_the_next_pass_reads_the_missed_window(tmp_path, langsmith_fake):
    config_path = write_config(tmp_path, settle_minutes=5)
    ctx = load_pipeline(config_path, PIPE)
    spectrums = list(ctx.pipeline.dataset.spectrums)[:1]
    conn = LangSmithConnection(api_url=langsmith_fake.url, api_key=SecretStr(langsmith_fake.api_key), max_retries=0)
    store = MetricsStore(ctx.store_path)
    settings = ctx.pipeline.observe.langsmith
    serving = {"xl": ctx.prompt.hash}
    first = feed_period(langsmith_fake, 1, ctx.prompt.hash, {spectrums[0]: 0.9}, n=10)
    langsmith_fake.fail(503, path="/runs/query")
    with pytest.raises(LangSmithUnavailableError) as info:
        read_production_feedback(conn, store, PIPE, settings, serving, period_time(1) + timedelta(minutes=5),
                                 timedelta(minutes=INTERVAL))
    assert langsmith_fake.api_key not in str(info.value)
    start = period_time(1) - timedelta(minutes=INTERVAL)  # the first window: one interval back, settled
    assert store.langsmith_cursor(PIPE, f"project:{PROJECT}") == (start, 0)  # where reading starts, kept
    assert store.production_results(PIPE, scope=None) == []
    langsmith_fake.clear_faults()
    second = feed_period(langsmith_fake, 2, ctx.prompt.hash, {spectrums[0]: 0.9}, n=10)
    read = read_production_feedback(conn, store, PIPE, settings, serving, period_time(2) + timedelta(minutes=5),
                                    timedelta(minutes=INTERVAL))
    # The next pass reads the window the failed one missed, and its own.
    assert read.runs == first + second and read.recorded == first + second
    assert store.langsmith_cursor(PIPE, f"project:{PROJECT}") == (period_time(2), first + second)


@pytest.mark.parametrize("feedback, message", [
    ({"version_tag": "prompt"}, "must contain {version}"),
    ({"version_tag": None}, "exactly one of version_tag and version_metadata_key"),
    ({"project": ""}, "observe.langsmith.project"),
])
def test_a_bad_feedback_source_is_refused_naming_the_path(tmp_path, feedback, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(write_config(tmp_path, **feedback))
    assert "pipelines.customer-insights.observe.langsmith" in str(info.value)


def test_metadata_can_name_the_version_instead_of_a_tag(tmp_path):
    config = load_config(write_config(tmp_path, version_metadata_key="prompt_version"))
    settings = config.pipeline(PIPE).observe.langsmith
    assert settings.version_tag is None and settings.version_metadata_key == "prompt_version"
    from promptcycle.langsmith.feedback import run_filter

    text = run_filter(settings, ["abc"], T0, T0 + timedelta(minutes=30))
    assert 'eq(metadata_key, "prompt_version")' in text and 'eq(metadata_value, "abc")' in text
