"""Schema step 2 of the metrics store: prompt labels and their history, decisions with evidence,
diagnoses, prompt lineage, and spend summed from the call ledger."""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pytest

from promptcycle.errors import StoreError
from promptcycle.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    MetricsStore,
    PromptVersionRecord,
    ResponseRecord,
    ResultRecord,
)
from promptcycle.store.records import DecisionRecord, LabelEvent
from promptcycle.store.schema import apply_migrations

T0 = datetime(2026, 2, 2, 8, 0, tzinfo=timezone.utc)
PIPE = "customer-insights"


def version(prompt_hash: str, parent: str | None = None, *, pipeline: str = PIPE, minutes: int = 0,
            strategy: str | None = None) -> PromptVersionRecord:
    return PromptVersionRecord(prompt_hash=prompt_hash, pipeline=pipeline, system=f"You are analyst {prompt_hash}.",
                               template="{{customer}}", variables=["customer"], parent_hash=parent,
                               strategy=strategy or ("baseline" if parent is None else "add_field_list"),
                               rationale=f"derived from {parent}" if parent else "configured", scope=None,
                               created_at=T0 + timedelta(minutes=minutes))


def store_with(tmp_path: Path, *versions: PromptVersionRecord) -> MetricsStore:
    store = MetricsStore(tmp_path / "m.duckdb")
    for v in versions:
        store.write_prompt_version(v)
    return store


def rows(store: MetricsStore, sql: str) -> list[tuple]:
    with duckdb.connect(str(store.path)) as con:
        return con.execute(sql).fetchall()


def paid(call_key: str, run_id: str, cost: float | None, tokens_in: int, tokens_out: int) -> ResponseRecord:
    return ResponseRecord(call_key=call_key, provider="sim", model="sim-nano", prompt_hash="p0", case_id=call_key,
                          repeat=0, output="simulated answer", input_tokens=tokens_in, output_tokens=tokens_out,
                          latency_ms=100.0, cost_usd=cost, attempts=1, simulated=True, created_at=T0, run_id=run_id)


# -- the migration ----------------------------------------------------------------------------------

def test_a_v1_file_upgrades_to_v2_with_its_data_intact(tmp_path):
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:
        assert apply_migrations(con, MIGRATIONS[:1]) == 1
        con.execute("INSERT INTO runs (run_id, pipeline, kind, fingerprint, status, prompt_hash, models, repeats, "
                    "simulated, started_at) VALUES ('b-1', ?, 'baseline', 'fp', 'completed', 'root', "
                    "['sim-nano'], 1, true, TIMESTAMP '2026-02-02 08:00:00')", [PIPE])
        con.execute("INSERT INTO prompt_versions (prompt_hash, pipeline, system, template, variables, strategy, "
                    "created_at) VALUES ('root', ?, 'You are an analyst.', '{{customer}}', ['customer'], "
                    "'baseline', TIMESTAMP '2026-02-02 08:00:00')", [PIPE])
        con.execute("INSERT INTO responses (call_key, provider, model, output, input_tokens, output_tokens, cost_usd, "
                    "run_id) VALUES ('k1', 'sim', 'sim-nano', 'simulated', 120, 30, 0.002, 'b-1')")
        con.execute("INSERT INTO splits VALUES ('ds', 'c1', 'train')")
        tables_v1 = {t for (t,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert "prompt_labels" not in tables_v1

    store = MetricsStore(path)  # opening applies step 2 and any later ones
    assert SCHEMA_VERSION >= 2
    assert rows(store, "SELECT version, name FROM schema_migrations ORDER BY 1") == [
        (m.version, m.name) for m in MIGRATIONS]
    tables = {t for (t,) in rows(store, "SELECT table_name FROM information_schema.tables")}
    assert {"prompt_labels", "label_events", "decisions", "diagnoses"} <= tables

    run = store.get_run("b-1")
    assert (run.pipeline, run.status, run.models, run.started_at) == (PIPE, "completed", ["sim-nano"], T0)
    assert store.get_prompt_version("root").template == "{{customer}}"
    assert store.get_splits("ds") == {"c1": "train"}
    assert store.spend(["b-1"]) == {"calls": 1, "answered": 1, "cost_usd": 0.002, "input_tokens": 120,
                                    "output_tokens": 30}
    assert store.labels() == [] and store.decisions() == []
    # The new tables work on the upgraded file.
    assert store.move_label(PIPE, "production", "root", actor="test", reason="first deploy").from_hash is None
    assert store.get_label(PIPE, "production") == "root"
    assert MetricsStore(path).migrate() == SCHEMA_VERSION  # re-opening applies nothing twice


# -- labels -----------------------------------------------------------------------------------------

def test_label_moves_record_events_from_and_to_and_are_idempotent(tmp_path):
    store = store_with(tmp_path, version("v0"), version("v1", "v0", minutes=1), version("v2", "v1", minutes=2))
    assert store.get_label(PIPE, "production") is None

    first = store.move_label(PIPE, "production", "v0", actor="baseline-flow/run-1", reason="initial version")
    assert isinstance(first, LabelEvent)
    assert (first.from_hash, first.to_hash, first.forced, first.evidence) == (None, "v0", False, None)
    assert store.move_label(PIPE, "production", "v0", actor="someone", reason="again") is None  # no-op
    assert len(store.label_history(PIPE)) == 1

    evidence = {"effect": 0.042, "ci": [0.011, 0.073], "p": 0.004, "n": 180, "test": "paired_t",
                "per_spectrum": {"credit_analysis": 0.06, "customer_profile": 0.01}}
    kept = store.move_label(PIPE, "previous", "v0", actor="gate/run-9", reason="keep the version to roll back to")
    promoted = store.move_label(PIPE, "production", "v1", actor="gate/run-9", reason="significant improvement",
                                evidence=evidence)
    assert (promoted.from_hash, promoted.to_hash) == ("v0", "v1")
    forced = store.move_label(PIPE, "production", "v2", actor="alice", reason="hotfix", forced=True)
    per_model = store.move_label(PIPE, "candidate", "v2", scope="sim-large", actor="opt/run-3", reason="best variant")

    assert store.get_label(PIPE, "production") == "v2"
    assert store.get_label(PIPE, "previous") == "v0"
    assert store.get_label(PIPE, "candidate", scope="sim-large") == "v2"
    assert store.get_label(PIPE, "candidate") is None  # a model's label is not the every-model label
    assert [(r["label"], r["scope"], r["prompt_hash"], r["updated_by"]) for r in store.labels(PIPE)] == [
        ("candidate", "sim-large", "v2", "opt/run-3"), ("previous", "", "v0", "gate/run-9"),
        ("production", "", "v2", "alice")]
    assert store.labels("another-pipeline") == []

    history = store.label_history(PIPE)
    assert [e.event_id for e in history] == [per_model.event_id, forced.event_id, promoted.event_id,
                                             kept.event_id, first.event_id]
    assert history[2] == promoted  # evidence and times come back as written
    assert history[2].evidence == evidence and history[1].forced is True
    assert [(e.from_hash, e.to_hash) for e in store.label_history(PIPE, "production")] == [
        ("v1", "v2"), ("v0", "v1"), (None, "v0")]
    assert [e.to_hash for e in store.label_history(PIPE, "candidate", scope="")] == []
    assert len(store.label_history(PIPE, limit=2)) == 2
    assert all(e.created_at.tzinfo is timezone.utc for e in history)


def test_a_move_to_an_unknown_or_foreign_version_fails_clearly_and_changes_nothing(tmp_path):
    store = store_with(tmp_path, version("v0"), version("other", pipeline="fraud-screening"))
    store.move_label(PIPE, "production", "v0", actor="test", reason="initial")

    with pytest.raises(StoreError, match="prompt version 'nope': no such version.*write_prompt_version"):
        store.move_label(PIPE, "production", "nope", actor="test", reason="typo")
    with pytest.raises(StoreError, match="prompt version 'other': that version belongs to pipeline "
                                         "'fraud-screening'"):
        store.move_label(PIPE, "production", "other", actor="test", reason="wrong pipeline")
    with pytest.raises(StoreError, match="evidence .* is not JSON"):
        store.move_label(PIPE, "candidate", "v0", actor="test", reason="bad evidence", evidence={"x": object()})
    with pytest.raises(ValueError, match="production, candidate, previous"):
        store.move_label(PIPE, "prod", "v0", actor="test", reason="bad label")
    with pytest.raises(ValueError, match="actor"):
        store.move_label(PIPE, "candidate", "v0", actor=" ", reason="nobody")
    with pytest.raises(ValueError, match="reason"):
        store.move_label(PIPE, "candidate", "v0", actor="test", reason="")

    assert store.get_label(PIPE, "production") == "v0"
    assert store.get_label(PIPE, "candidate") is None
    assert [(e.label, e.to_hash) for e in store.label_history(PIPE)] == [("production", "v0")]
    assert rows(store, "SELECT count(*) FROM prompt_labels") == [(1,)]


def test_label_history_is_newest_first_and_fast_at_a_thousand_events(tmp_path):
    store = store_with(tmp_path, version("a"), version("b", "a"))
    labels = ("production", "candidate", "previous")
    # 1,000 earlier moves written in bulk, all with the same timestamp: the order must come from the
    # store's sequence, not from the clock.
    with duckdb.connect(str(store.path)) as con:
        con.execute(
            "INSERT INTO label_events (event_id, seq, pipeline, label, scope, from_hash, to_hash, actor, reason, "
            "evidence_json, forced, created_at) "
            "SELECT 'bulk-' || i, i + 1, ?, (?::VARCHAR[])[1 + i % 3], '', "
            "CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END, CASE WHEN i % 2 = 0 THEN 'b' ELSE 'a' END, "
            "'scheduler/run-' || i, 'scheduled re-optimization', "
            "'{\"effect\":0.03,\"ci\":[0.01,0.05],\"p\":0.01,\"n\":240,\"test\":\"paired_t\",\"note\":\"' || "
            "repeat('x', 200) || '\"}', false, TIMESTAMP '2026-02-02 08:00:00' FROM range(1000) t(i)",
            [PIPE, list(labels)])
    newest = store.move_label(PIPE, "production", "a", actor="test", reason="after the bulk")

    started = time.perf_counter()
    history = store.label_history(PIPE, limit=500)
    elapsed = time.perf_counter() - started
    print(f"\nlabel_history: newest 500 of 1,001 events in {elapsed * 1000:.1f} ms (incl. opening the file)")
    assert elapsed < 0.5
    assert len(history) == 500
    assert history[0] == newest
    assert [e.event_id for e in history[1:]] == [f"bulk-{i}" for i in range(999, 500, -1)]
    assert history[1].evidence["n"] == 240
    assert [e.event_id for e in store.label_history(PIPE, "candidate", limit=3)] == ["bulk-997", "bulk-994",
                                                                                    "bulk-991"]
    assert len(store.label_history(PIPE, limit=None)) == 1001
    assert store.label_history("another-pipeline") == []


# -- decisions and diagnoses ------------------------------------------------------------------------

def test_decisions_upsert_by_run_candidate_and_kind(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    underpowered = DecisionRecord(run_id="opt-1", pipeline=PIPE, kind="confirmation", prompt_hash="cand-1",
                                  baseline_hash="base", decision="underpowered",
                                  evidence={"effect": 0.01, "n": 40, "mde": np.float64(0.05), "p": math.nan})
    first = store.write_decision(underpowered)
    assert first.decision_id and first.created_at is not None
    stored = store.decisions(run_id="opt-1")
    assert len(stored) == 1 and stored[0].decision_id == first.decision_id
    assert stored[0].evidence["mde"] == 0.05 and math.isnan(stored[0].evidence["p"])

    # The resumed run confirms the same candidate with more data: the decision is replaced, not added.
    evidence = {"effect": 0.04, "ci": [0.02, 0.06], "p": 0.001, "n": 240, "test": "paired_t", "mde": 0.02,
                "per_spectrum": {"credit_analysis": {"delta": 0.05, "ci": [0.01, 0.09]}}}
    again = store.write_decision(DecisionRecord(run_id="opt-1", pipeline=PIPE, kind="confirmation",
                                                prompt_hash="cand-1", baseline_hash="base", decision="promote",
                                                evidence=evidence, created_at=T0))
    assert again.decision_id == first.decision_id
    assert store.decisions(run_id="opt-1") == [again]
    assert again.evidence == evidence and again.created_at == T0

    store.write_decision(DecisionRecord(run_id="opt-1", pipeline=PIPE, kind="confirmation", prompt_hash="cand-2",
                                        baseline_hash="base", decision="no_improvement",
                                        created_at=T0 + timedelta(minutes=1)))
    store.write_decision(DecisionRecord(run_id="gate-1", pipeline=PIPE, kind="gate", prompt_hash="cand-1",
                                        baseline_hash="base", decision="promote",
                                        created_at=T0 + timedelta(minutes=2)))
    store.write_decision(DecisionRecord(run_id="opt-9", pipeline="fraud-screening", kind="confirmation",
                                        prompt_hash="f-1", decision="budget_exhausted"))
    assert [(d.run_id, d.prompt_hash, d.decision) for d in store.decisions(pipeline=PIPE)] == [
        ("opt-1", "cand-1", "promote"), ("opt-1", "cand-2", "no_improvement"), ("gate-1", "cand-1", "promote")]
    assert [d.run_id for d in store.decisions(pipeline=PIPE, kind="gate")] == ["gate-1"]
    assert len(store.decisions()) == 4
    assert rows(store, "SELECT count(*) FROM decisions") == [(4,)]

    with pytest.raises(ValueError, match="confirmation, gate, canary"):
        store.write_decision(DecisionRecord(run_id="x", pipeline=PIPE, kind="vibes", prompt_hash="c",
                                            decision="promote"))
    with pytest.raises(StoreError, match="evidence .* is not JSON"):
        store.write_decision(DecisionRecord(run_id="x", pipeline=PIPE, kind="gate", prompt_hash="c",
                                            decision="promote", evidence={"f": object()}))
    assert store.decisions(run_id="x") == []


def test_diagnoses_are_keyed_by_run_and_baseline(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    assert store.get_diagnosis("opt-1") is None
    store.write_diagnosis("opt-1", "b-1", {"weakest": ["credit_analysis"], "missed_fields": {"city": 12}})
    store.write_diagnosis("opt-1", "b-1", {"weakest": ["credit_analysis"], "missed_fields": {"city": 14}})
    assert store.get_diagnosis("opt-1") == {"weakest": ["credit_analysis"], "missed_fields": {"city": 14}}
    assert rows(store, "SELECT count(*) FROM diagnoses") == [(1,)]
    store.write_diagnosis("opt-1", "b-2", {"weakest": []})
    assert store.get_diagnosis("opt-1", "b-1")["missed_fields"] == {"city": 14}
    assert store.get_diagnosis("opt-1") == {"weakest": []}  # the newest
    assert store.get_diagnosis("opt-2") is None
    with pytest.raises(StoreError, match="not JSON"):
        store.write_diagnosis("opt-3", "b-1", {"bad": object()})


# -- lineage ----------------------------------------------------------------------------------------

def test_lineage_walks_to_the_root_and_children_branch(tmp_path):
    store = store_with(tmp_path, version("root"), version("c1", "root", minutes=1), version("c2", "root", minutes=2),
                       version("g1", "c1", minutes=3), version("gg1", "g1", minutes=4),
                       version("orphan", "never-recorded", minutes=5),
                       version("loop-a", "loop-b", minutes=6), version("loop-b", "loop-a", minutes=7),
                       version("x0", pipeline="fraud-screening"))
    assert [v.prompt_hash for v in store.lineage("gg1")] == ["gg1", "g1", "c1", "root"]
    assert store.lineage("gg1")[-1] == store.get_prompt_version("root")
    assert [v.prompt_hash for v in store.lineage("root")] == ["root"]
    assert [v.prompt_hash for v in store.lineage("orphan")] == ["orphan"]  # its parent was never recorded
    assert [v.prompt_hash for v in store.lineage("loop-a")] == ["loop-a", "loop-b"]  # stops at the repeat
    assert store.lineage("unknown") == []

    assert [v.prompt_hash for v in store.children("root")] == ["c1", "c2"]
    assert [v.prompt_hash for v in store.children("c1")] == ["g1"]
    assert store.children("gg1") == []
    assert [v.prompt_hash for v in store.prompt_versions(PIPE)] == [
        "root", "c1", "c2", "g1", "gg1", "orphan", "loop-a", "loop-b"]
    assert [v.prompt_hash for v in store.prompt_versions("fraud-screening")] == ["x0"]


# -- spend and results over several runs --------------------------------------------------------------

def test_spend_sums_the_ledger_by_run_ids_and_by_prefix(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    ledger = [paid("k1", "opt_7", 0.010, 100, 10), paid("k2", "opt_7-cand-1", 0.020, 200, 20),
              paid("k3", "opt_7-cand-1", None, 300, 30), paid("k4", "opt_7-cand-2", 0.040, 400, 40),
              paid("k5", "optX7-cand-1", 1.000, 1000, 100),  # `_` must not act as a wildcard
              paid("k6", "baseline-1", 2.000, 2000, 200)]
    store.write_batch(ledger, [])
    store.write_batch([paid("k2", "opt_8", 9.0, 9, 9)], [])  # a call already paid for stays with its payer

    assert store.spend(["opt_7-cand-1", "opt_7-cand-2"]) == {
        "calls": 3, "answered": 3, "cost_usd": pytest.approx(0.06), "input_tokens": 900, "output_tokens": 90}
    assert store.spend("opt_7") == {"calls": 4, "answered": 4, "cost_usd": pytest.approx(0.07), "input_tokens": 1000,
                                    "output_tokens": 100}
    assert store.spend("opt_7-cand-") == store.spend(["opt_7-cand-1", "opt_7-cand-2", "opt_7-cand-2"])
    assert store.spend(["opt_8"]) == {"calls": 0, "answered": 0, "cost_usd": 0.0, "input_tokens": 0,
                                      "output_tokens": 0}
    assert store.spend([]) == store.spend("nothing-")
    assert store.spend(("baseline-1",))["cost_usd"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="prefix"):
        store.spend("")


def test_results_frame_many_stacks_runs_with_their_run_id(tmp_path):
    store = MetricsStore(tmp_path / "m.duckdb")
    for run_id, scorer in (("opt-1-base", "accuracy"), ("opt-1-cand", "judge"), ("elsewhere", "accuracy")):
        responses, results = [], []
        for case in range(3):
            key = f"{run_id}-{case}"
            responses.append(paid(key, run_id, 0.001, 100, 20))
            results.append(ResultRecord(run_id=run_id, model="sim-nano", case_id=f"c{case}", repeat=0,
                                        spectrum="credit_analysis", prompt_hash=run_id, call_key=key,
                                        scores={scorer: case / 2}, overall=case / 2, created_at=T0))
        store.write_batch(responses, results)

    frame = store.results_frame_many(["opt-1-cand", "opt-1-base"])
    assert list(frame[["run_id", "case_id"]].itertuples(index=False, name=None)) == [
        (r, f"c{c}") for r in ("opt-1-base", "opt-1-cand") for c in range(3)]
    assert {"score_accuracy", "score_judge", "output"} <= set(frame.columns)
    base = frame[frame["run_id"] == "opt-1-base"].reset_index(drop=True)
    single = store.results_frame("opt-1-base", scorers=["judge"])
    assert base.equals(single)
    assert frame.loc[frame["run_id"] == "opt-1-cand", "score_accuracy"].isna().all()
    assert store.results_frame_many([]).empty
