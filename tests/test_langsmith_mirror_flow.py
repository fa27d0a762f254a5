"""A baseline mirrored to LangSmith end to end: the CLI, the Prefect engine, the simulator and the fake LangSmith
(promptcycle.langsmith.fake) over loopback — and the same run through an outage, finished by `langsmith sync`."""

from __future__ import annotations

import json

import pytest

from promptcycle.langsmith.mirror import experiment_name, mirror_run_id
from promptcycle.store import MetricsStore
from promptcycle_cli.main import main

MODELS = 7
SPECTRUMS = 7


def _env(monkeypatch, fake) -> None:
    monkeypatch.setenv("LANGSMITH_API_KEY", fake.api_key)
    monkeypatch.setenv("LANGSMITH_ENDPOINT", fake.url)


def _scorers(store: MetricsStore, run_id: str) -> list[str]:
    frame = store.results_frame(run_id)
    return sorted(c.removeprefix("score_") for c in frame.columns if c.startswith("score_"))


def _check_every_result_once(fake, store: MetricsStore, run_id: str) -> int:
    frame = store.results_frame(run_id)
    scorers = _scorers(store, run_id)
    assert fake.duplicate_run_posts == []
    for row in frame.itertuples():
        rid = str(mirror_run_id(run_id, row.model, row.case_id, row.repeat))
        run = fake.runs[rid]
        assert run["session_id"] == fake.session_by_name(experiment_name(run_id, row.model))["id"]
        assert run["outputs"]["output"] == row.output and run["reference_example_id"]
        feedback = {f["key"]: f["score"] for f in fake.feedback_for(rid)}
        assert sorted(feedback) == sorted([*scorers, "overall"])  # every score once, as feedback
        assert feedback["overall"] == pytest.approx(row.overall)
    mirrored = [r for r in fake.runs.values() if r["extra"].get("metadata", {}).get("promptcycle_run_id") == run_id]
    assert len(mirrored) == len(frame)
    return len(frame)


@pytest.mark.engine
def test_a_baseline_mirrored_to_langsmith_has_every_result_once_with_its_scores(prefect_harness, repo_config,
                                                                              langsmith_fake, monkeypatch, capsys):
    _env(monkeypatch, langsmith_fake)
    store_path = repo_config.parent / "metrics.duckdb"
    code = main(["baseline", "--config", str(repo_config), "--store", str(store_path), "--limit", "1",
                 "--mirror-langsmith", "--json"])
    out = capsys.readouterr()
    assert code == 0, out
    result = json.loads(out.out)
    store = MetricsStore(store_path)
    rows = _check_every_result_once(langsmith_fake, store, result["run_id"])
    assert rows == result["rows"] == MODELS * SPECTRUMS
    assert result["langsmith"]["pending"] == 0 and result["langsmith"]["mirrored"] == rows
    # The experiments reference the pipeline's dataset, published once by the mirror.
    dataset = langsmith_fake.dataset_by_name("promptcycle-customer-insights")
    projects = [s for s in langsmith_fake.sessions.values() if s["name"].startswith(result["run_id"])]
    assert len(projects) == MODELS and all(p["reference_dataset_id"] == dataset["id"] for p in projects)
    # The key is nowhere in the store, nor in what the command printed.
    assert langsmith_fake.api_key.encode() not in store_path.read_bytes()
    assert langsmith_fake.api_key not in out.out + out.err


@pytest.mark.engine
def test_an_outage_loses_nothing_and_sync_finishes_without_duplicates(prefect_harness, repo_config, langsmith_fake,
                                                                    monkeypatch, capsys):
    _env(monkeypatch, langsmith_fake)
    store_path = repo_config.parent / "metrics.duckdb"
    langsmith_fake.fail(503, path="/runs/multipart")  # LangSmith's ingestion is down for the whole run
    code = main(["baseline", "--config", str(repo_config), "--store", str(store_path), "--limit", "1",
                 "--mirror-langsmith"])
    out = capsys.readouterr()
    assert code == 0, out  # the evaluation did not notice
    assert "NOT mirrored" in out.out and "promptcycle langsmith sync" in out.out
    store = MetricsStore(store_path)
    run_id = store.latest_run("customer-insights").run_id
    assert len(store.results_frame(run_id)) == MODELS * SPECTRUMS  # DuckDB has every result
    status = store.mirror_status(run_id)
    assert status["pending"] == MODELS * SPECTRUMS and langsmith_fake.runs == {}

    langsmith_fake.clear_faults()
    code = main(["langsmith", "sync", run_id, "--config", str(repo_config), "--store", str(store_path), "--json"])
    out = capsys.readouterr()
    assert code == 0, out
    report = json.loads(out.out)
    assert report["pending"] == 0 and report["sent_now"] == MODELS * SPECTRUMS
    _check_every_result_once(langsmith_fake, store, run_id)

    requests = len(langsmith_fake.requests)
    assert main(["langsmith", "sync", run_id, "--config", str(repo_config), "--store", str(store_path)]) == 0
    assert "all 49 results mirrored (0 sent now)" in capsys.readouterr().out
    assert not any(r.path == "/runs/multipart" for r in langsmith_fake.requests[requests:])  # nothing sent again


@pytest.mark.engine
@pytest.mark.slow
def test_an_optimization_mirrors_the_current_prompt_and_each_candidate_side_by_side(prefect_harness, tmp_path,
                                                                                  langsmith_fake, monkeypatch):
    import asyncio

    from test_optimization_flow import LIMIT, PIPE, small_config

    from promptcycle_flows.optimization import optimization

    _env(monkeypatch, langsmith_fake)
    config, store_path = small_config(tmp_path / "pipelines.yaml"), tmp_path / "metrics.duckdb"
    summary = asyncio.run(optimization(pipeline=PIPE, config_path=str(config), store_path=str(store_path),
                                       limit=LIMIT, mirror_langsmith=True))
    store = MetricsStore(store_path)
    assert summary.langsmith["pending"] == 0 and summary.langsmith["mirrored"] == summary.langsmith["results"] > 0
    assert store.mirror_status(summary.baseline_run_id)["pending"] == 0  # its baseline (run first) too
    assert langsmith_fake.duplicate_run_posts == []
    arms = {s["name"]: s for s in langsmith_fake.sessions.values() if s["name"].startswith(summary.run_id + "/")}
    hashes = {s["extra"]["metadata"]["prompt_hash"] for s in arms.values()}
    assert summary.current_hash in hashes and len(hashes) >= 2  # the current prompt and candidates
    dataset = langsmith_fake.dataset_by_name(f"promptcycle-{PIPE}")
    assert {s["reference_dataset_id"] for s in arms.values()} == {dataset["id"]}  # comparable: the same examples
    mirrored = [r for r in langsmith_fake.runs.values()
                if r["extra"]["metadata"]["promptcycle_run_id"].startswith(summary.run_id + "/")]
    assert len(mirrored) == summary.langsmith["results"]
    assert all(langsmith_fake.feedback_for(r["id"]) for r in mirrored if not r.get("error"))
