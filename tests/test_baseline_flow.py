"""The baseline phase end to end: through the CLI and the Prefect engine, on the simulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import yaml

from promptcycle_cli.main import main
from promptcycle.errors import DataQualityError
from promptcycle.store import MetricsStore

REPO = Path(__file__).resolve().parent.parent
SPECTRUMS = 7
MODELS = 7


@pytest.mark.engine
def test_cli_baseline_json_reports_every_cell(prefect_harness, repo_config, capsys, monkeypatch):
    import promptcycle_flows.baseline

    # No update of the progress artifact while cells end: the last one alone must bring it to 100%.
    monkeypatch.setattr(promptcycle_flows.baseline, "PROGRESS_EVERY_S", 1e9)
    store = repo_config.parent / "metrics.duckdb"
    code = main(["baseline", "--config", str(repo_config), "--store", str(store), "--limit", "2", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out)
    assert result["success"] is True
    assert result["flow_run_id"]  # the Prefect flow run, and its page in the UI of the server the run used
    assert result["flow_run_url"].endswith(f"/runs/flow-run/{result['flow_run_id']}")
    assert result["rows"] == MODELS * SPECTRUMS * 2
    assert result["errors"] == 0
    assert result["simulated"] is True
    assert len(result["cells"]) == MODELS * SPECTRUMS
    assert all(0 <= c["quality"] <= 100 and c["n"] == 2 for c in result["cells"])
    assert result["data_quality"] == {"dataset": True, "results": True}
    # Models are ranked best first, and the strongest simulated model beats the weakest.
    names = [m["name"] for m in result["models"]]
    assert names.index("reasoner") < names.index("nano")

    frame = MetricsStore(store).results_frame(result["run_id"])
    assert len(frame) == result["rows"]
    assert frame["output"].notna().all()
    assert set(frame["split"]) <= {"train", "dev", "test"}
    run = MetricsStore(store).get_run(result["run_id"])
    assert run.status == "completed"

    from prefect.artifacts import Artifact

    artifact = Artifact.get("baseline-quality-customer-insights")
    assert artifact is not None and result["run_id"] in artifact.data
    # The run's progress artifact ends at 100%.
    progress = Artifact.get("baseline-progress-customer-insights")
    assert progress is not None and progress.type == "progress" and float(progress.data) == 100.0


def _bad_dataset(tmp_path: Path) -> Path:
    rows = [json.loads(line) for line in
            (REPO / "promptcycle/data/customer_insights.jsonl").read_text().splitlines()]
    rows[5]["id"] = rows[4]["id"]  # a duplicate id
    rows[9]["spectrum"] = "credits"  # not a configured spectrum
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_dataset_suite_stops_the_run_before_any_call(tmp_path, repo_config):
    from promptcycle.evaluation.context import PipelineRef
    from promptcycle_tasks.baseline import prepare_baseline

    data = yaml.safe_load(repo_config.read_text())
    data["pipelines"]["customer-insights"]["dataset"]["source"] = str(_bad_dataset(tmp_path))
    repo_config.write_text(yaml.safe_dump(data))
    store = tmp_path / "m.duckdb"
    with pytest.raises(DataQualityError) as info:
        ref = PipelineRef(config_path=str(repo_config), pipeline="customer-insights", store_path=str(store))
        prepare_baseline.fn(ref, None)
    assert "ids unique" in str(info.value)
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("select count(*) from responses").fetchone()[0] == 0
        suite, success = con.execute("select suite, success from dq_results").fetchone()
        status = con.execute("select status from runs").fetchone()[0]
    assert (suite, success, status) == ("dataset", False, "failed")


def test_cli_validate_rejects_bad_dataset_with_exit_1(tmp_path, repo_config, capsys):
    data = yaml.safe_load(repo_config.read_text())
    data["pipelines"]["customer-insights"]["dataset"]["source"] = str(_bad_dataset(tmp_path))
    repo_config.write_text(yaml.safe_dump(data))
    code = main(["validate", "--config", str(repo_config), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 1 and result["success"] is False
    failed = {f["expectation"] for f in result["pipelines"]["customer-insights"]["dataset_suite"]["failures"]}
    assert any("unique" in f for f in failed)


def test_cli_config_error_exits_2_with_readable_message(tmp_path, capsys):
    path = tmp_path / "pipelines.yaml"
    path.write_text("providers: {}\n")
    code = main(["baseline", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(path) in err and "Traceback" not in err


def _cli(args: list[str], env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "promptcycle_cli.main", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def _rows(store: Path) -> int:
    try:
        with duckdb.connect(str(store), read_only=True) as con:
            return con.execute("select count(*) from results").fetchone()[0]
    except (duckdb.IOException, duckdb.CatalogException):
        return -1  # locked by the writer, or not created yet


@pytest.mark.slow
def test_killed_run_resumes_without_recalling_and_matches_uninterrupted(tmp_path, repo_config):
    env = dict(os.environ)  # the session's Prefect home: its local server serves both commands
    store = tmp_path / "killed.duckdb"
    args = ["baseline", "--config", str(repo_config), "--store", str(store), "--limit", "12", "--json"]
    total = MODELS * SPECTRUMS * 12

    proc = _cli(args, env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if 0 < _rows(store) < total:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the flow process (a hosted data worker ends with it), not the local server
    proc.wait()
    time.sleep(1)
    before = _rows(store)
    assert 0 < before < total
    with duckdb.connect(str(store), read_only=True) as con:
        paid_before = con.execute("select count(*) from responses").fetchone()[0]
        status = con.execute("select status from runs").fetchone()[0]
    assert status == "running"

    resumed = _cli(args, env)
    # The same run uninterrupted, on a store of its own (so a ledger of its own), alongside the resumed one.
    fresh_store = tmp_path / "fresh.duckdb"
    fresh = _cli(["baseline", "--config", str(repo_config), "--store", str(fresh_store), "--limit", "12", "--json"],
                 env)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["resumed"] is True and summary["rows"] == total and summary["errors"] == 0
    with duckdb.connect(str(store), read_only=True) as con:
        paid_after = con.execute("select count(*) from responses").fetchone()[0]
        runs = con.execute("select count(*) from runs").fetchone()[0]
    assert runs == 1
    # Nothing recorded before the kill was called again: the resumed run paid only for the rest.
    assert summary["calls_paid"] == paid_after - paid_before == total - before

    out2, err2 = fresh.communicate(timeout=300)
    assert fresh.returncode == 0, err2[-3000:]
    uninterrupted = json.loads(out2)

    # Answers and content scores are deterministic, so they must match exactly. The latency score is
    # measured wall-clock time, so it may differ between any two runs; with identical content a cell's
    # quality can then differ by at most the latency weight (0.1) x 100 points.
    content = ["model", "case_id", "repeat", "output", "score_completeness", "score_accuracy", "score_format"]
    resumed_frame = MetricsStore(store).results_frame(summary["run_id"])
    fresh_frame = MetricsStore(fresh_store).results_frame(uninterrupted["run_id"])
    assert resumed_frame[content].reset_index(drop=True).equals(fresh_frame[content].reset_index(drop=True))

    def content_quality(frame):
        scored = frame.assign(q=0.4 * frame.score_completeness + 0.4 * frame.score_accuracy + 0.1 * frame.score_format)
        return scored.groupby(["model", "spectrum"])["q"].mean().round(12).to_dict()

    assert content_quality(resumed_frame) == content_quality(fresh_frame)
    cells = {(c["model"], c["spectrum"]): c for c in uninterrupted["cells"]}
    for c in summary["cells"]:
        twin = cells[(c["model"], c["spectrum"])]
        assert (c["n"], c["errors"]) == (twin["n"], twin["errors"])
        assert abs(c["quality"] - twin["quality"]) <= 10.0
