"""Mirroring stored results to LangSmith (promptcycle/langsmith/mirror.py), against the local fake over loopback:
every result once with its scores, outages that lose nothing, and a sync that finishes the job without duplicates."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import SecretStr

from promptcycle.errors import LangSmithUnavailableError
from promptcycle.langsmith.connection import LangSmithConnection
from promptcycle.langsmith.mirror import (
    BackgroundMirror,
    MirrorSource,
    RunMirror,
    experiment_name,
    mirror_run_id,
    multipart_body,
)
from promptcycle.store import MetricsStore
from promptcycle.store.records import ResponseRecord, ResultRecord, RunRecord

MODELS = ("sim-small", "sim-large")
CASES = [f"case-{i:02d}" for i in range(6)]
REPEATS = 2
SCORERS = ("accuracy", "completeness", "format")


def conn_of(fake, **options) -> LangSmithConnection:
    return LangSmithConnection(api_url=fake.url, api_key=SecretStr(fake.api_key), **options)


def write_run(store: MetricsStore, run_id: str, *, errors: set[tuple[str, str, int]] = frozenset(),
              kind: str = "baseline", prompt_hash: str = "p0") -> int:
    """A run with every model × case × repeat stored (some as terminal errors); returns the row count."""
    store.create_run(RunRecord(run_id=run_id, pipeline="pipe", kind=kind, fingerprint=run_id, status="running",
                               prompt_hash=prompt_hash, models=list(MODELS), repeats=REPEATS, simulated=True,
                               started_at=datetime.now(timezone.utc)))
    responses, results = [], []
    now = datetime.now(timezone.utc)
    for m, model in enumerate(MODELS):
        for c, case in enumerate(CASES):
            for r in range(REPEATS):
                key = f"{run_id}-{model}-{case}-{r}"
                common = dict(run_id=run_id, model=model, case_id=case, repeat=r, spectrum=f"s{c % 2}",
                              split="dev", prompt_hash=prompt_hash, simulated=True, created_at=now)
                if (model, case, r) in errors:
                    results.append(ResultRecord(**common, scores={}, overall=0.0, error="HTTP 503: down",
                                                error_kind="server", attempts=4))
                    continue
                scores = {s: round(0.1 * ((m + c + r + i) % 10), 3) for i, s in enumerate(SCORERS)}
                responses.append(ResponseRecord(call_key=key, provider="sim", model=model, prompt_hash=prompt_hash,
                                                case_id=case, repeat=r, output=f"answer {key}", input_tokens=100,
                                                output_tokens=20 + c, latency_ms=250.0 + c, cost_usd=0.001,
                                                attempts=1, simulated=True, created_at=now, run_id=run_id))
                results.append(ResultRecord(**common, call_key=key, scores=scores,
                                            overall=sum(scores.values()) / 3, latency_ms=250.0 + c,
                                            input_tokens=100, output_tokens=20 + c, cost_usd=0.001, attempts=1))
    store.write_batch(responses, results)
    return len(results)


def source_of(run_id: str, store: MetricsStore, *, publish=None) -> MirrorSource:
    runs = {run_id: {"kind": "baseline", "prompt_hash": "p0", "simulated": True}}
    return MirrorSource(pipeline="pipe", scope=run_id, dataset="promptcycle-pipe",
                        inputs={c: {"customer": c} for c in CASES}, runs=runs, publish=publish)


def make_dataset(fake) -> dict[str, str]:
    import langsmith

    client = langsmith.Client(api_url=fake.url, api_key=fake.api_key)
    dataset = client.create_dataset("promptcycle-pipe")
    examples = client.create_examples(dataset_id=dataset.id, examples=[
        {"inputs": {"customer": c}, "metadata": {"case_id": c}} for c in CASES])
    return {e["metadata"]["case_id"]: str(e["id"]) for e in fake.examples_of("promptcycle-pipe")}


def assert_mirrored_once(fake, run_id: str, rows: int, errors: int = 0) -> None:
    seen = []
    for model in MODELS:
        seen += fake.runs_in(experiment_name(run_id, model))
    assert len(seen) == rows and len({r["id"] for r in seen}) == rows
    assert fake.duplicate_run_posts == []
    scored = [r for r in seen if not r.get("error")]
    assert len(scored) == rows - errors
    for run in scored:
        keys = sorted(f["key"] for f in fake.feedback_for(run["id"]))
        assert keys == sorted([*SCORERS, "overall"])  # every score once
    assert len(fake.feedback) == (rows - errors) * (len(SCORERS) + 1)


def test_a_stored_run_is_mirrored_as_experiments_with_every_score_as_feedback(tmp_path, langsmith_fake):
    store = MetricsStore(tmp_path / "m.duckdb")
    rows = write_run(store, "baseline-pipe-1", errors={("sim-small", "case-03", 1)})
    examples = make_dataset(langsmith_fake)
    report = RunMirror(conn_of(langsmith_fake), store, source_of("baseline-pipe-1", store), batch_size=10).sync()
    assert (report.results, report.mirrored, report.pending, report.sent_now) == (rows, rows, 0, rows)
    assert_mirrored_once(langsmith_fake, "baseline-pipe-1", rows, errors=1)

    project = langsmith_fake.session_by_name(experiment_name("baseline-pipe-1", "sim-large"))
    dataset = langsmith_fake.dataset_by_name("promptcycle-pipe")
    assert project["reference_dataset_id"] == dataset["id"]  # an experiment over the dataset
    assert project["extra"]["metadata"]["prompt_hash"] == "p0"
    rid = str(mirror_run_id("baseline-pipe-1", "sim-large", "case-02", 1))
    run = langsmith_fake.runs[rid]
    assert run["reference_example_id"] == examples["case-02"]
    assert run["inputs"] == {"customer": "case-02"} and run["outputs"]["output"].startswith("answer ")
    assert run["outputs"]["usage_metadata"]["total_tokens"] == 122 and run["run_type"] == "llm"
    assert run["extra"]["metadata"]["repeat"] == 1 and run["extra"]["metadata"]["latency_ms"] == 252.0
    failed = langsmith_fake.runs[str(mirror_run_id("baseline-pipe-1", "sim-small", "case-03", 1))]
    assert "HTTP 503" in failed["error"]

    # Again: nothing left to send, nothing sent.
    again = RunMirror(conn_of(langsmith_fake), store, source_of("baseline-pipe-1", store)).sync()
    assert again.sent_now == 0 and again.pending == 0
    assert langsmith_fake.duplicate_run_posts == []


def test_a_missing_dataset_is_published_once_before_the_experiments(tmp_path, langsmith_fake):
    store = MetricsStore(tmp_path / "m.duckdb")
    rows = write_run(store, "run-a")
    published = []

    def publish():
        published.append(True)
        make_dataset(langsmith_fake)

    RunMirror(conn_of(langsmith_fake), store, source_of("run-a", store, publish=publish)).sync()
    assert published == [True]
    assert all(r["reference_example_id"] for r in langsmith_fake.runs.values())
    assert_mirrored_once(langsmith_fake, "run-a", rows)


def test_an_outage_in_the_middle_loses_nothing_and_sync_finishes_without_duplicates(tmp_path, langsmith_fake):
    store = MetricsStore(tmp_path / "m.duckdb")
    rows = write_run(store, "run-b")
    make_dataset(langsmith_fake)
    conn = conn_of(langsmith_fake, max_retries=0)
    mirror = RunMirror(conn, store, source_of("run-b", store), batch_size=5)
    assert mirror.send_batch() == 5
    assert mirror.send_batch() == 5
    langsmith_fake.fail(503, path="/runs/multipart")  # LangSmith goes down mid-run
    with pytest.raises(LangSmithUnavailableError) as info:
        mirror.send_batch()
    assert langsmith_fake.api_key not in str(info.value)
    status = mirror.status()
    assert (status.results, status.mirrored, status.pending) == (rows, 10, rows - 10)
    assert len(store.results_frame("run-b")) == rows  # DuckDB lost nothing

    langsmith_fake.clear_faults()
    report = RunMirror(conn_of(langsmith_fake), store, source_of("run-b", store)).sync()
    assert (report.mirrored, report.pending) == (rows, 0)
    assert_mirrored_once(langsmith_fake, "run-b", rows)


def test_a_batch_sent_but_not_recorded_is_not_duplicated_when_sent_again(tmp_path, langsmith_fake):
    """A crash between LangSmith's answer and the store's write: the same ids go again, LangSmith keeps one run."""
    store = MetricsStore(tmp_path / "m.duckdb")
    rows = write_run(store, "run-c")
    make_dataset(langsmith_fake)
    mirror = RunMirror(conn_of(langsmith_fake), store, source_of("run-c", store), batch_size=rows)
    batch = store.results_to_mirror("run-c", rows)
    client = mirror._connect()
    mirror._prepare()
    body, content_type = multipart_body(mirror._operations(batch))
    client.request_with_retries("POST", f"{langsmith_fake.url}/runs/multipart",  # sent; "crash" before marking
                                request_kwargs={"data": body, "headers": {"Content-Type": content_type}})
    assert store.mirror_status("run-c")["pending"] == rows
    before = {rid: dict(run) for rid, run in langsmith_fake.runs.items()}
    mirror.sync()
    assert store.mirror_status("run-c")["pending"] == 0
    assert set(langsmith_fake.runs) == set(before)  # no new run: the same ids
    assert len(langsmith_fake.feedback) == rows * (len(SCORERS) + 1)


def test_a_result_rewritten_on_resume_updates_its_mirrored_run(tmp_path, langsmith_fake):
    store = MetricsStore(tmp_path / "m.duckdb")
    write_run(store, "run-d", errors={("sim-large", "case-01", 0)})
    make_dataset(langsmith_fake)
    RunMirror(conn_of(langsmith_fake), store, source_of("run-d", store)).sync()
    rid = str(mirror_run_id("run-d", "sim-large", "case-01", 0))
    assert langsmith_fake.runs[rid]["error"]
    later = datetime.now(timezone.utc) + timedelta(seconds=1)
    store.write_batch([ResponseRecord(call_key="retried", provider="sim", model="sim-large", prompt_hash="p0",
                                      case_id="case-01", repeat=0, output="the retried answer", input_tokens=10,
                                      output_tokens=5, latency_ms=100.0, cost_usd=0.001, attempts=1,
                                      simulated=True, created_at=later, run_id="run-d")],
                      [ResultRecord(run_id="run-d", model="sim-large", case_id="case-01", repeat=0, spectrum="s1",
                                    split="dev", prompt_hash="p0", call_key="retried",
                                    scores={s: 1.0 for s in SCORERS}, overall=1.0, latency_ms=100.0,
                                    created_at=later)])
    assert store.mirror_status("run-d")["pending"] == 1
    report = RunMirror(conn_of(langsmith_fake), store, source_of("run-d", store)).sync()
    assert report.sent_now == 1 and report.pending == 0
    run = langsmith_fake.runs[rid]
    assert run["outputs"]["output"] == "the retried answer"
    assert sorted(f["key"] for f in langsmith_fake.feedback_for(rid)) == sorted([*SCORERS, "overall"])
    assert langsmith_fake.duplicate_run_posts == []


def test_the_background_mirror_backs_off_in_an_outage_and_reports_what_is_left(tmp_path, langsmith_fake):
    store = MetricsStore(tmp_path / "m.duckdb")
    rows = write_run(store, "run-e")
    make_dataset(langsmith_fake)
    langsmith_fake.fail(503, path="/runs/multipart")
    mirror = RunMirror(conn_of(langsmith_fake, max_retries=0), store, source_of("run-e", store), batch_size=8)
    background = BackgroundMirror(mirror, interval_s=0.05, initial_backoff_s=0.05, max_backoff_s=0.2).start()
    waited = time.monotonic()
    while background.failures < 2 and time.monotonic() - waited < 20:
        time.sleep(0.05)
    started = time.monotonic()
    report = background.stop(drain_seconds=5)
    assert time.monotonic() - started < 2.0  # an outage does not hold the evaluation up at the end
    assert report.failures >= 2 and report.pending == rows and report.mirrored == 0
    assert "NOT mirrored" in report.summary() and "promptcycle langsmith sync run-e" in report.summary()
    assert langsmith_fake.api_key not in report.summary()
    attempts = [r for r in langsmith_fake.requests if r.path == "/runs/multipart"]
    assert 2 <= len(attempts) < 60  # backed off, not hammering

    langsmith_fake.clear_faults()
    background = BackgroundMirror(RunMirror(conn_of(langsmith_fake), store, source_of("run-e", store)),
                                  interval_s=0.05).start()
    report = background.stop(drain_seconds=10)
    assert report.pending == 0 and report.mirrored == rows
    assert_mirrored_once(langsmith_fake, "run-e", rows)


def test_a_dead_endpoint_fails_the_probe_fast(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = MetricsStore(tmp_path / "m.duckdb")
    write_run(store, "run-f")
    conn = LangSmithConnection(api_url=f"http://127.0.0.1:{port}", api_key=SecretStr("lsv2_pt_secret_dead"),
                               probe_timeout_s=1.0)
    mirror = RunMirror(conn, store, source_of("run-f", store))
    started = time.monotonic()
    with pytest.raises(LangSmithUnavailableError) as info:
        mirror.sync()
    assert time.monotonic() - started < 3.0 and "lsv2_pt_secret_dead" not in str(info.value)
    assert store.mirror_status("run-f")["mirrored"] == 0


def test_an_optimization_scope_covers_its_arms(tmp_path, langsmith_fake):
    store = MetricsStore(tmp_path / "m.duckdb")
    current = write_run(store, "opt-1/confirm/p0")
    candidate = write_run(store, "opt-1/confirm/p1", prompt_hash="p1")
    write_run(store, "opt-10/confirm/p0")  # another optimization whose id merely starts the same
    make_dataset(langsmith_fake)
    report = RunMirror(conn_of(langsmith_fake), store, source_of("opt-1", store)).sync()
    assert report.results == current + candidate and report.pending == 0
    assert {s["name"] for s in langsmith_fake.sessions.values()} >= {
        experiment_name("opt-1/confirm/p0", "sim-small"), experiment_name("opt-1/confirm/p1", "sim-small")}
    assert not any(s["name"].startswith("opt-10") for s in langsmith_fake.sessions.values())
