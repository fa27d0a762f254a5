"""The DuckDB metrics store: migrations, idempotent and atomic writes, queries, and several
processes sharing one file (DuckDB lets only one process open it at a time)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import random
import threading
import time
import traceback
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from promptcycle.errors import StoreError
from promptcycle.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Migration,
    MetricsStore,
    PromptVersionRecord,
    ResponseRecord,
    ResultRecord,
    RunRecord,
)
from promptcycle.store.schema import apply_migrations

T0 = datetime(2026, 1, 5, 9, 30, tzinfo=timezone.utc)
SPECTRUMS = ("customer_profile", "credit_analysis", "transaction_history", "call_center_operations")
FIELDS = ("credit_score", "credit_utilization_pct", "annual_income", "account_open_date", "num_accounts",
          "monthly_spend", "city", "risk_tier", "last_call_date", "is_delinquent", "segment", "customer_since")
WORDS = ("the customer has a strong credit history with low utilization and stable income over recent "
         "months while spending rose slightly in the last quarter").split()


def answer_text(rng: random.Random) -> str:
    """A ~400-character JSON answer stating facts, like a model's output (varied, so it compresses honestly)."""
    facts = {}
    for name in rng.sample(FIELDS, 7):
        facts[name] = rng.choice([rng.randint(300, 850), round(rng.uniform(0, 100), 1),
                                  f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                                  rng.choice(["Austin", "Boston", "Denver", "Seattle"]), rng.random() < 0.5])
    facts["summary"] = " ".join(rng.choice(WORDS) for _ in range(30)).capitalize() + "."
    return json.dumps(facts, indent=1)


def key_of(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def make_pair(run_id: str, model: str, case_id: str, repeat: int, rng: random.Random,
              *, failed: bool = False) -> tuple[ResponseRecord | None, ResultRecord]:
    """The response and result a cell would write for one observation (or the row of a failed call)."""
    created = T0 + timedelta(seconds=rng.randint(0, 3600))
    spectrum = case_id.rsplit("-", 1)[0]
    if failed:
        return None, ResultRecord(run_id=run_id, model=model, case_id=case_id, repeat=repeat, spectrum=spectrum,
                                  split="test", prompt_hash="p0", call_key=None, scores={}, overall=0.0,
                                  error="HTTP 503 from sim", error_kind="ServerError", created_at=created)
    key = key_of(run_id, model, case_id, repeat)
    output = answer_text(rng)
    latency = round(rng.uniform(60, 900), 1)
    response = ResponseRecord(call_key=key, provider="sim", model=model, prompt_hash="p0", case_id=case_id,
                              repeat=repeat, output=output, input_tokens=rng.randint(150, 400),
                              output_tokens=len(output) // 4, latency_ms=latency, cost_usd=1e-5, attempts=1,
                              simulated=True, created_at=created, run_id=run_id)
    scores = {"accuracy": round(rng.random(), 3), "completeness": round(rng.random(), 3),
              "format": float(rng.random() < 0.8)}
    result = ResultRecord(run_id=run_id, model=model, case_id=case_id, repeat=repeat, spectrum=spectrum,
                          split=rng.choice(["train", "dev", "test"]), prompt_hash="p0", call_key=key, scores=scores,
                          overall=sum(scores.values()) / 3,
                          explanation={"accuracy": {"missed": ["city"]}} if rng.random() < 0.3 else None,
                          latency_ms=latency, input_tokens=response.input_tokens,
                          output_tokens=response.output_tokens, cost_usd=1e-5, attempts=1, simulated=True,
                          created_at=created)
    return response, result


def make_batch(run_id: str, model: str, start: int, n: int, seed: int = 0,
               ) -> tuple[list[ResponseRecord], list[ResultRecord]]:
    rng = random.Random(f"{seed}-{model}-{start}")
    responses, results = [], []
    for i in range(start, start + n):
        response, result = make_pair(run_id, model, f"{SPECTRUMS[i % len(SPECTRUMS)]}-{i:05d}", 0, rng)
        responses.append(response)
        results.append(result)
    return responses, results


def table_rows(path: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(path)) as con:
        return con.execute(sql).fetchall()


def run_record(run_id: str = "baseline-r1", *, fingerprint: str = "fp1", started: datetime = T0) -> RunRecord:
    return RunRecord(run_id=run_id, pipeline="customer-insights", kind="baseline", fingerprint=fingerprint,
                     prompt_hash="p0", dataset_hash="d0", models=["sim-nano", "sim-large"], repeats=2,
                     case_limit=None, simulated=True, config_json='{"repeats":2}', flow_run_id="flow-1",
                     started_at=started)


# -- opening and migrations -------------------------------------------------------------------------

def test_opening_creates_the_file_in_a_new_directory_and_records_the_migrations(tmp_path):
    path = tmp_path / "nested" / "dir" / "metrics.duckdb"
    store = MetricsStore(path)
    assert path.is_file()
    assert store.migrate() == SCHEMA_VERSION == len(MIGRATIONS)
    MetricsStore(path).migrate()  # re-open and re-migrate: nothing new
    versions = table_rows(path, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert versions == [(m.version, m.name) for m in MIGRATIONS]
    tables = {t for (t,) in table_rows(path, "SELECT table_name FROM information_schema.tables")}
    assert {"runs", "responses", "results", "prompt_versions", "dq_results", "splits"} <= tables


def test_a_v1_file_gets_later_steps_and_old_code_then_refuses_it(tmp_path):
    path = tmp_path / "m.duckdb"
    store = MetricsStore(path)
    store.write_splits("ds", {"c1": "train"})
    later = (*MIGRATIONS, Migration(SCHEMA_VERSION + 1, "test: a note on every result",
                                    ("ALTER TABLE results ADD COLUMN note VARCHAR",)))
    with duckdb.connect(str(path)) as con:
        assert apply_migrations(con, later) == SCHEMA_VERSION + 1
        assert apply_migrations(con, later) == SCHEMA_VERSION + 1  # idempotent
        assert [v for (v,) in con.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()] == \
            list(range(1, SCHEMA_VERSION + 2))
        assert "note" in {c for (c,) in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'results'").fetchall()}
    assert store.get_splits("ds") == {"c1": "train"}  # data survives the step
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade promptcycle"):
        MetricsStore(path)


def test_migration_history_is_append_only(tmp_path):
    path = tmp_path / "m.duckdb"
    MetricsStore(path)
    renamed = (Migration(1, "something else", MIGRATIONS[0].statements),)
    gap = (*MIGRATIONS, Migration(SCHEMA_VERSION + 2, "skips a number", ("SELECT 1",)))
    with duckdb.connect(str(path)) as con:
        with pytest.raises(StoreError, match="append-only"):
            apply_migrations(con, renamed)
        with pytest.raises(StoreError, match="numbered 1, 2, 3"):
            apply_migrations(con, gap)


def test_a_failing_step_is_not_recorded(tmp_path):
    path = tmp_path / "m.duckdb"
    MetricsStore(path)
    broken = (*MIGRATIONS, Migration(SCHEMA_VERSION + 1, "test: half a step",
                                     ("CREATE TABLE half (x INTEGER)", "ALTER TABLE no_such_table ADD COLUMN y INT")))
    with duckdb.connect(str(path)) as con:
        with pytest.raises(StoreError, match="half a step"):
            apply_migrations(con, broken)
        assert con.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == SCHEMA_VERSION
        assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'half'"
                           ).fetchone()[0] == 0


def test_bad_paths_give_a_clear_store_error(tmp_path):
    not_db = tmp_path / "notes.duckdb"
    not_db.write_text("these are my notes, not a database\n" * 200)
    with pytest.raises(StoreError, match="notes.duckdb exists but is not a DuckDB database"):
        MetricsStore(not_db)
    empty = tmp_path / "empty.duckdb"
    empty.touch()
    with pytest.raises(StoreError, match="empty.duckdb is an empty file.*delete it"):
        MetricsStore(empty)
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    with pytest.raises(StoreError, match="cannot create the directory"):
        MetricsStore(a_file / "metrics.duckdb")
    with pytest.raises(StoreError, match="is a directory"):
        MetricsStore(tmp_path)
    with pytest.raises(StoreError, match=":memory:"):
        MetricsStore(":memory:")


# -- runs -----------------------------------------------------------------------------------------

def test_run_lifecycle(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    run = run_record()
    assert store.create_run(run) is True
    assert store.create_run(run) is False  # a retried task re-creating the run changes nothing
    with pytest.raises(StoreError, match="another fingerprint"):
        store.create_run(run_record(fingerprint="other"))
    assert store.get_run(run.run_id) == run
    assert store.get_run("nope") is None
    assert store.get_run(run.run_id).config == {"repeats": 2}

    newer = run_record("baseline-r2", started=T0 + timedelta(hours=1))
    store.create_run(newer)
    store.create_run(run_record("baseline-r3", fingerprint="fp-other", started=T0 + timedelta(hours=2)))
    assert store.find_resumable_run("customer-insights", "baseline", "fp1").run_id == "baseline-r2"
    assert store.latest_run("customer-insights") is None  # nothing completed yet

    store.finish_run("baseline-r2", "failed", {"reason": "killed"})
    failed = store.get_run("baseline-r2")
    assert failed.status == "failed" and failed.summary == {"reason": "killed"} and failed.finished_at
    assert store.find_resumable_run("customer-insights", "baseline", "fp1").run_id == "baseline-r2"
    store.resume_run("baseline-r2", flow_run_id="flow-2")
    resumed = store.get_run("baseline-r2")
    assert (resumed.status, resumed.finished_at, resumed.flow_run_id) == ("running", None, "flow-2")

    store.finish_run("baseline-r2", "completed", {"quality": 91.5})
    first_finish = store.get_run("baseline-r2").finished_at
    store.finish_run("baseline-r2", "completed", {"quality": 91.5})
    assert store.get_run("baseline-r2").finished_at == first_finish
    assert store.latest_run("customer-insights").run_id == "baseline-r2"
    assert store.latest_run("customer-insights", status=None).run_id == "baseline-r2"
    assert store.latest_run("customer-insights", kind="optimization") is None
    # r1 is the only unfinished run with fp1 left
    assert store.find_resumable_run("customer-insights", "baseline", "fp1").run_id == "baseline-r1"
    with pytest.raises(StoreError, match="no such run"):
        store.finish_run("missing", "failed", {})
    with pytest.raises(ValueError):
        store.finish_run("baseline-r1", "running", {})


# -- responses and results ------------------------------------------------------------------------

def test_write_batch_twice_leaves_the_same_rows(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    responses, results = make_batch("r1", "sim-nano", 0, 40)
    store.write_batch(responses, results)
    first = store.results_frame("r1")
    ledger = table_rows(store.path, "SELECT * FROM responses ORDER BY call_key")
    store.write_batch(responses, results)
    store.write_batch(responses + responses[:5], results + results[:5])  # duplicates inside one batch too
    assert table_rows(store.path, "SELECT * FROM responses ORDER BY call_key") == ledger
    again = store.results_frame("r1")
    assert len(again) == 40
    assert again.equals(first)


def test_the_ledger_keeps_the_first_payer_and_results_upsert(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    rng = random.Random(3)
    _, failed = make_pair("r1", "sim-nano", "credit_analysis-00001", 0, rng, failed=True)
    store.write_batch([], [failed])
    assert store.results_frame("r1").loc[0, "error_kind"] == "ServerError"

    response, result = make_pair("r1", "sim-nano", "credit_analysis-00001", 0, rng)
    store.write_batch([response], [result])  # the retry succeeded: the row now holds the score
    frame = store.results_frame("r1")
    assert len(frame) == 1
    assert frame.loc[0, "overall"] == pytest.approx(result.overall)
    assert frame.loc[0, "output"] == response.output
    assert frame["error"].isna().all()

    # Another run paying for the same call key: the ledger keeps the original payer and output.
    twin = ResponseRecord(**{**response.__dict__, "run_id": "r2", "output": "different"})
    store.write_batch([twin], [])
    kept = store.get_responses([response.call_key, "never-paid"])
    assert list(kept) == [response.call_key]
    assert kept[response.call_key] == response


def test_a_batch_that_fails_half_way_leaves_nothing(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    responses, results = make_batch("r1", "sim-nano", 0, 30)
    results[-1].repeat = -1  # violates the results table's CHECK: fails after the responses went in
    with pytest.raises(StoreError, match="could not write a batch of 30 responses and 30 results"):
        store.write_batch(responses, results)
    assert table_rows(store.path, "SELECT count(*) FROM responses") == [(0,)]
    assert table_rows(store.path, "SELECT count(*) FROM results") == [(0,)]
    results[-1].repeat = 0
    store.write_batch(responses, results)  # the store is still usable
    assert table_rows(store.path, "SELECT count(*) FROM results") == [(30,)]


def test_a_batch_with_a_wrong_value_is_refused_whole(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    responses, results = make_batch("r1", "sim-nano", 0, 3)
    results[1].scores = {"accuracy": "high"}
    with pytest.raises(StoreError, match="wrong type"):
        store.write_batch(responses, results)
    assert table_rows(store.path, "SELECT count(*) FROM responses") == [(0,)]


def test_completed_keys_counts_scores_and_leaves_terminal_errors_to_retry(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    rng = random.Random(5)
    rows = [make_pair("r1", "sim-nano", "c-1", 0, rng), make_pair("r1", "sim-nano", "c-1", 1, rng),
            make_pair("r1", "sim-nano", "c-2", 0, rng, failed=True), make_pair("r1", "sim-large", "c-3", 0, rng),
            make_pair("r2", "sim-nano", "c-4", 0, rng)]
    store.write_batch([r for r, _ in rows if r], [res for _, res in rows])
    assert store.completed_keys("r1", "sim-nano") == {("c-1", 0), ("c-1", 1)}
    assert store.completed_keys("r1", "sim-nano", ["c-1", "c-2", "c-9"]) == {("c-1", 0), ("c-1", 1)}
    recorded = store.recorded_calls("r1")
    assert set(recorded) == {"sim-nano", "sim-large"}
    assert recorded["sim-nano"][0] == {("c-1", 0), ("c-1", 1)} and set(recorded["sim-nano"][1]) == {("c-2", 0)}
    assert recorded["sim-large"] == ({("c-3", 0)}, {})
    assert store.recorded_calls("r3") == {}
    assert store.run_progress("r1") == {"scored": 3, "failed": 1}
    assert store.completed_keys("r1", "sim-nano", []) == set()
    assert store.completed_keys("r1", "sim-large") == {("c-3", 0)}
    assert store.completed_keys("r3", "sim-nano") == set()


def _run_of_two_models(tmp_path, models: tuple[str, str], seed: int, failed: tuple[str, int, int]):
    """A store holding run r1 (two models x three cases x two repeats, one call `failed`) and another run."""
    store = MetricsStore(tmp_path / "m.duckdb")
    rng = random.Random(seed)
    pairs = [make_pair("r1", model, f"credit_analysis-{c}", rep, rng, failed=(model, c, rep) == failed)
             for model in models for c in range(3) for rep in range(2)]
    store.write_batch([r for r, _ in pairs if r], [res for _, res in pairs])
    store.write_batch(*make_batch("other-run", "sim-nano", 0, 5))
    return store, pairs


def test_results_frame_joins_the_output_and_expands_scores(tmp_path):
    store, pairs = _run_of_two_models(tmp_path, ("sim-nano", "sim-xl"), 7, ("sim-xl", 2, 1))

    frame = store.results_frame("r1", scorers=["judge", "it's"])
    assert frame.shape[0] == 12
    assert list(frame[["model", "case_id", "repeat"]].itertuples(index=False, name=None)) == sorted(
        (m, f"credit_analysis-{c}", r) for m in ("sim-nano", "sim-xl") for c in range(3) for r in range(2))
    for column in ("score_accuracy", "score_completeness", "score_format", "score_judge", "score_it's",
                   "output", "overall", "latency_ms", "error", "error_kind", "spectrum", "split", "explanation"):
        assert column in frame.columns
    assert "scores" not in frame.columns
    assert frame["score_judge"].isna().all()
    failed = frame[frame["error"].notna()]
    assert len(failed) == 1 and failed["output"].isna().all() and failed["score_accuracy"].isna().all()
    ok = frame[frame["error"].isna()]
    by_key = {res.call_key: (resp.output, res.scores["accuracy"]) for resp, res in pairs if resp}
    assert all(by_key[k] == (out, acc) for k, out, acc in ok[["call_key", "output", "score_accuracy"]].itertuples(
        index=False, name=None))
    assert store.results_frame("no-such-run").empty
    without_text = store.results_frame("r1", scorers=["judge", "it's"], text=False)
    assert list(without_text.columns) == [c for c in frame.columns if c not in ("output", "explanation")]
    assert without_text.equals(frame.drop(columns=["output", "explanation"]))


def test_results_columns_reads_only_what_is_asked_in_the_frames_order(tmp_path):
    store, _ = _run_of_two_models(tmp_path, ("sim-xl", "sim-nano"), 3, ("sim-xl", 1, 0))  # written out of order

    lean = store.results_columns("r1", ["model", "overall", "error"])
    full = store.results_frame("r1")
    assert list(lean.columns) == ["model", "overall", "error"] and len(lean) == 12
    assert lean.equals(full[["model", "overall", "error"]])
    assert store.results_columns("no-such-run", ["model"]).empty
    for bad in (["model", "output"], []):
        with pytest.raises(ValueError, match="columns must be some of the results table's"):
            store.results_columns("r1", bad)


# -- prompt versions, data quality, splits --------------------------------------------------------

def test_prompt_versions_are_written_once(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    version = PromptVersionRecord(prompt_hash="abc123", pipeline="customer-insights", system="You are an analyst.",
                                  template="{{customer}}\n\n{{question}}", variables=["customer", "question"],
                                  parent_hash=None, strategy="baseline", rationale="configured", scope=None,
                                  created_at=T0)
    assert store.write_prompt_version(version) is True
    assert store.write_prompt_version(PromptVersionRecord(**{**version.__dict__, "rationale": "later"})) is False
    assert store.get_prompt_version("abc123") == version
    assert store.get_prompt_version("nope") is None
    with pytest.raises(StoreError, match="immutable"):
        store.write_prompt_version(PromptVersionRecord(**{**version.__dict__, "template": "changed"}))


def test_dq_results_are_keyed_by_run_and_suite(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    store.write_dq_result("r1", "dataset", False, {"failed": ["ids unique"], "n": 3})
    store.write_dq_result("r1", "dataset", True, {"failed": [], "n": 3})
    store.write_dq_result("r1", "results", True, {"rows": 12})
    store.write_dq_result("r2", "dataset", True, {})
    got = store.dq_results("r1")
    assert [(d["suite"], d["success"], d["report"]) for d in got] == [
        ("dataset", True, {"failed": [], "n": 3}), ("results", True, {"rows": 12})]
    with pytest.raises(StoreError, match="not JSON"):
        store.write_dq_result("r1", "results", True, {"bad": object()})


def test_splits_are_recorded_once_per_case(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    assert store.get_splits("bundled|seed=7") == {}
    assert store.write_splits("bundled|seed=7", {"a": "train", "b": "dev", "c": "test"}) == 3
    assert store.write_splits("bundled|seed=7", {"a": "test", "d": "train"}) == 1
    assert store.get_splits("bundled|seed=7") == {"a": "train", "b": "dev", "c": "test", "d": "train"}
    assert store.get_splits("other") == {}


# -- sharing the file -----------------------------------------------------------------------------

def test_threads_share_one_store(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    errors: list[BaseException] = []

    def write(model: str) -> None:
        try:
            for b in range(4):
                store.write_batch(*make_batch("r1", model, b * 25, 25))
                store.completed_keys("r1", model)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f"model-{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert table_rows(store.path, "SELECT model, count(*) FROM results GROUP BY 1 ORDER BY 1") == [
        (f"model-{i}", 100) for i in range(3)]


def _hold_lock(path: str, ready, release) -> None:
    with duckdb.connect(path):
        ready.set()
        release.wait(30)


def test_a_lock_held_by_another_process_is_waited_for_then_reported(tmp_path):
    path = tmp_path / "m.duckdb"
    impatient = MetricsStore(path, lock_timeout_s=0.4)
    patient = MetricsStore(path, lock_timeout_s=30)
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(path), ready, release))
    holder.start()
    try:
        assert ready.wait(30), "the lock-holding process did not start"
        started = time.monotonic()
        with pytest.raises(StoreError, match="stayed locked by another process for 0.4 s") as caught:
            impatient.get_splits("ds")
        assert time.monotonic() - started >= 0.4
        assert "Could not set lock" in str(caught.value) and impatient.lock_conflicts > 1

        threading.Timer(0.5, release.set).start()
        assert patient.write_splits("ds", {"c1": "train"}) == 1  # waits for the holder, then writes
        assert patient.lock_conflicts > 0
    finally:
        release.set()
        holder.join(30)
    assert patient.get_splits("ds") == {"c1": "train"}


BATCHES, ROWS = 30, 100


def _write_batches(path: str, model: str, barrier, out) -> None:
    try:
        store = MetricsStore(path, lock_timeout_s=60)  # every process migrates at once on purpose
        barrier.wait(60)
        for b in range(BATCHES):
            store.write_batch(*make_batch("shared-run", model, b * ROWS, ROWS))
        out.put(("ok", model, store.lock_conflicts))
    except BaseException:
        out.put(("error", model, traceback.format_exc()))


def _poll_results(path: str, barrier, stop, out) -> None:
    try:
        store = MetricsStore(path, lock_timeout_s=60)
        barrier.wait(60)
        seen, polls = [], 0
        while not stop.is_set():
            polls += 1
            if polls % 4 == 0:  # the full frame joins each result to its response
                frame = store.results_frame("shared-run")
                if frame["output"].isna().any():
                    raise AssertionError("a result was visible without its response")
                seen.append(len(frame))
            else:
                seen.append(sum(len(store.completed_keys("shared-run", m)) for m in ("sim-nano", "sim-large")))
            time.sleep(0.1)
        out.put(("ok", "reader", seen))
    except BaseException:
        out.put(("error", "reader", traceback.format_exc()))


def test_concurrent_writer_processes_and_a_reader_lose_nothing(tmp_path):
    path = str(tmp_path / "shared.duckdb")  # not created yet: the processes race to create and migrate it
    ctx = multiprocessing.get_context("spawn")
    barrier, stop, out = ctx.Barrier(3), ctx.Event(), ctx.Queue()
    writers = [ctx.Process(target=_write_batches, args=(path, model, barrier, out))
               for model in ("sim-nano", "sim-large")]
    reader = ctx.Process(target=_poll_results, args=(path, barrier, stop, out))
    for p in (*writers, reader):
        p.start()
    reports = [out.get(timeout=120) for _ in writers]
    stop.set()
    reports.append(out.get(timeout=120))
    for p in (*writers, reader):
        p.join(30)
    errors = [r for r in reports if r[0] == "error"]
    assert errors == [], "\n".join(r[2] for r in errors)

    store = MetricsStore(path)
    counts = table_rows(store.path, "SELECT model, count(*), count(DISTINCT case_id) FROM results GROUP BY 1 "
                                    "ORDER BY 1")
    assert counts == [("sim-large", BATCHES * ROWS, BATCHES * ROWS), ("sim-nano", BATCHES * ROWS, BATCHES * ROWS)]
    assert table_rows(store.path, "SELECT count(*) FROM responses") == [(2 * BATCHES * ROWS,)]
    assert table_rows(store.path, "SELECT count(*) FROM schema_migrations") == [(SCHEMA_VERSION,)]
    conflicts = sum(r[2] for r in reports if r[1] != "reader")
    assert conflicts > 0, "the writers never met each other's lock: the test did not test contention"
    seen = next(r[2] for r in reports if r[1] == "reader")
    assert seen, "the reader never got a read in"
    assert seen == sorted(seen) and all(n % ROWS == 0 for n in seen)  # whole batches only, never less later


# -- size and speed -------------------------------------------------------------------------------

def test_size_per_result_row_and_write_throughput(tmp_path):
    """Prints the measured figures; fails if a result row with its ~400-character response costs
    more than 1 KB of file."""
    path = tmp_path / "size.duckdb"
    store = MetricsStore(path)
    empty = path.stat().st_size
    n, batch = 10_000, 1_000
    for start in range(0, n, batch):
        store.write_batch(*make_batch("size-run", f"sim-{start // 2000}", start, batch))
    per_row = (path.stat().st_size - empty) / n
    mean_output = table_rows(path, "SELECT avg(length(output)) FROM responses")[0][0]

    fast = MetricsStore(tmp_path / "speed.duckdb")
    responses, results = make_batch("speed-run", "sim-nano", 0, 10_000, seed=1)
    started = time.perf_counter()
    fast.write_batch(responses, results)
    rate = 10_000 / (time.perf_counter() - started)
    print(f"\nmetrics store: {per_row:.0f} bytes per result row incl. its response "
          f"({n} rows, mean output {mean_output:.0f} chars, batches of {batch}); "
          f"one 10k-row batch (10k responses + 10k results) written at {rate:,.0f} rows/s")
    assert 350 <= mean_output <= 450
    assert per_row <= 1024
    assert len(fast.results_frame("speed-run")) == 10_000
    assert rate > 2_000  # loose floor for a busy 2-core machine; a row-by-row insert manages ~900 rows/s
