"""What the serving application calls: resolve_prompt (sticky, following the split, cached), outcome
logging and JSONL ingestion — against a real store file."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from deploy_support import NEW, PIPE, PROD, REPO, record_version, serving_store
from promptcycle.config import CanaryConfig
from promptcycle.deploy.canary import begin_canary
from promptcycle.deploy.serving import (
    ServingError,
    bucket_of,
    clear_cache,
    ingest_production_results,
    log_production_result,
    resolve_prompt,
)
from promptcycle.prompts import PromptTemplate
from promptcycle.store import MetricsStore



@pytest.fixture
def store(tmp_path):
    clear_cache()
    yield serving_store(tmp_path / "m.duckdb")
    clear_cache()


def test_nothing_to_serve_is_a_clear_error(tmp_path):
    clear_cache()
    with pytest.raises(ServingError, match="no metrics store at"):
        resolve_prompt(PIPE, "u1", store=tmp_path / "missing.duckdb")
    empty = MetricsStore(tmp_path / "empty.duckdb")
    with pytest.raises(ServingError, match="has no production prompt.*promptcycle deploy --pipeline"):
        resolve_prompt(PIPE, "u1", store=empty.path)


def test_without_a_canary_every_request_gets_production(store):
    served = resolve_prompt(PIPE, "user-1", store=store.path)
    assert (served.version, served.arm, served.canary_id) == (PROD.hash, "production", None)
    assert served.render({"customer": {"id": 7}, "question": "Q?"})[1]["content"].endswith("Reply with JSON.")


def test_the_split_is_sticky_by_key_and_follows_the_schedule(store):
    canary = begin_canary(store, pipeline=PIPE, control_hash=PROD.hash, treatment_hash=NEW.hash,
                          config=CanaryConfig(), actor="test")
    keys = [f"user-{i}" for i in range(4000)]
    first = {k: resolve_prompt(PIPE, k, store=store.path) for k in keys}
    treated = {k for k, r in first.items() if r.arm == "treatment"}
    assert 0.08 < len(treated) / len(keys) < 0.12
    assert all(first[k].version == (NEW.hash if k in treated else PROD.hash) for k in keys)
    assert all(r.canary_id == canary.canary_id for r in first.values())
    assert all(resolve_prompt(PIPE, k, store=store.path).arm == first[k].arm for k in keys[:200])  # sticky
    assert all((bucket_of(k) < 1000) == (k in treated) for k in keys)

    store.update_canary(canary.canary_id, step=1, split_pct=50.0)
    assert resolve_prompt(PIPE, "user-0", store=store.path).split_pct == 10.0  # cached for a few seconds
    clear_cache()
    second = {k: resolve_prompt(PIPE, k, store=store.path) for k in keys}
    now_treated = {k for k, r in second.items() if r.arm == "treatment"}
    assert treated <= now_treated  # growing the split keeps every treatment key in treatment
    assert 0.47 < len(now_treated) / len(keys) < 0.53

    store.update_canary(canary.canary_id, status="rolled_back", split_pct=0.0, finished=True)
    assert resolve_prompt(PIPE, "user-1", store=store.path, cache_seconds=0).arm == "production"


def test_a_model_scoped_prompt_wins_for_its_model(store):
    scoped = PromptTemplate(system="You are terse.", template="{{customer}}\n{{question}}\nJSON.")
    record_version(store, PIPE, scoped)
    store.move_label(PIPE, "production", scoped.hash, scope="xl", actor="test", reason="per-model prompt")
    assert resolve_prompt(PIPE, "u", model="xl", store=store.path).version == scoped.hash
    assert resolve_prompt(PIPE, "u", model="nano", store=store.path).version == PROD.hash
    assert resolve_prompt(PIPE, "u", store=store.path).version == PROD.hash


def test_a_busy_store_serves_the_last_state_read(store):
    served = resolve_prompt(PIPE, "u", store=store.path, cache_seconds=0.01)
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time\n"
                               f"con = duckdb.connect({str(store.path)!r}); print('held', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(0.05)
        started = time.monotonic()
        again = resolve_prompt(PIPE, "u", store=store.path, cache_seconds=0.01, lock_timeout_s=0.3)
        assert again.version == served.version and time.monotonic() - started < 2
        clear_cache()
        with pytest.raises(ServingError, match="cannot read the metrics store"):
            resolve_prompt(PIPE, "u", store=store.path, lock_timeout_s=0.3)
    finally:
        holder.kill()
        holder.wait()


def test_outcomes_are_recorded_once_per_request(store):
    assert log_production_result(PIPE, "req-1", PROD.hash, score=0.9, latency_ms=120.0, model="xl",
                                 metadata={"source": "test"}, store=store.path) is True
    assert log_production_result(PIPE, "req-1", PROD.hash, score=0.1, store=store.path) is False
    assert log_production_result(PIPE, "req-2", PROD.hash, error=True, store=store.path) is True
    rows = store.production_results(PIPE)
    assert [(r.request_id, r.score, r.error) for r in rows] == [("req-1", 0.9, False), ("req-2", None, True)]
    assert rows[0].metadata == {"source": "test"}
    with pytest.raises(ValueError, match=r"score 1.5 is outside \[0, 1\]"):
        log_production_result(PIPE, "req-3", PROD.hash, score=1.5, store=store.path)
    with pytest.raises(ValueError, match="request_id must be a non-empty string"):
        log_production_result(PIPE, "", PROD.hash, store=store.path)


def test_jsonl_ingestion_is_all_or_nothing_and_idempotent(store, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([
        json.dumps({"request_id": "a", "version": PROD.hash, "score": 0.8}),
        "{not json",
        json.dumps({"request_id": "b", "version": PROD.hash, "score": "high"}),
        json.dumps({"request_id": "c", "version": PROD.hash, "colour": "red"}),
    ]) + "\n")
    with pytest.raises(ValueError) as info:
        ingest_production_results(bad, pipeline=PIPE, store=store.path)
    message = str(info.value)
    assert "3 bad line(s), nothing recorded" in message
    assert "line 2:" in message and "line 3: score must be a number" in message
    assert "line 4: unknown field(s) colour" in message
    assert store.production_results(PIPE) == []

    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps({"request_id": f"r{i}", "version": NEW.hash if i % 2 else PROD.hash,
                                          "score": i / 10, "latency_ms": 100 + i, "at": "2026-05-01T12:00:00Z"})
                              for i in range(10)) + "\n\n")
    report = ingest_production_results(good, pipeline=PIPE, store=store.path)
    assert (report.lines, report.new, report.duplicates) == (10, 10, 0)
    assert ingest_production_results(good, pipeline=PIPE, store=store.path).new == 0
    assert len(store.production_results(PIPE, prompt_hashes=[NEW.hash])) == 5


def test_the_serving_module_stays_light():
    code = ("import sys, promptcycle.deploy.serving\n"
            "print([m for m in ('prefect', 'pandas', 'pyarrow', 'numpy', 'pydantic', 'httpx2') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"
