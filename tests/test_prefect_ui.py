"""What a Prefect user sees of promptcycle's runs: logs in the API, distinct names, tags, the flow run's URL,
progress off a terminal, canary outcomes as distinct states and events, and artifacts that fit and explain."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from promptcycle_cli.main import main

REPO = Path(__file__).resolve().parent.parent
PIPE = "customer-insights"
NAME = re.compile(rf"^baseline-{PIPE}-\d{{8}}-\d{{4}}-[0-9a-f]{{4}}$")


async def _flow_run(flow_run_id: str):
    from prefect import get_client

    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


async def _logs(flow_run_id: str):
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        return await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


@pytest.mark.engine
def test_a_piped_cli_baseline_logs_to_the_api_names_tags_and_links_its_run_and_prints_progress(prefect_harness,
                                                                                                repo_config):
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_LEVEL"}  # the CLI's own defaults
    env |= {"PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO)}
    store = repo_config.parent / "metrics.duckdb"
    done = subprocess.run([sys.executable, "-m", "promptcycle_cli.main", "baseline", "--config", str(repo_config),
                           "--store", str(store), "--limit", "1"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    # Plain progress lines off a terminal, naming the phase; the flow run's UI URL.
    assert "baseline: 0/49 calls, 0 errors" in done.stderr
    assert "baseline: 49/49 calls, 0 errors" in done.stderr
    urls = re.findall(r"flow run: (http://\S+/runs/flow-run/([0-9a-f-]{36}))", done.stderr)
    assert len(urls) == 1, done.stderr[-2000:]
    flow_run_id = urls[0][1]

    run = asyncio.run(_flow_run(flow_run_id))
    assert NAME.match(run.name), run.name
    assert {f"pipeline:{PIPE}", "phase:baseline", "simulated"} <= set(run.tags)

    # INFO logs of the flow run reach the API although the console stays quiet.
    deadline = time.monotonic() + 30
    logs = []
    while time.monotonic() < deadline:
        logs = asyncio.run(_logs(flow_run_id))
        if any(log.level == 20 and "starting run" in log.message for log in logs):
            break
        time.sleep(0.5)
    assert any(log.level == 20 and "starting run" in log.message for log in logs), [log.message for log in logs]
    # The console shows the one plain note a user reads, not Prefect's INFO records of the run.
    assert not [line for line in done.stderr.splitlines() if "| INFO" in line or "INFO |" in line], done.stderr

    # Another run of the same pipeline gets another name.
    from promptcycle_flows.baseline import baseline

    state = asyncio.run(baseline(pipeline=PIPE, config_path=str(repo_config), store_path=str(store), limit=1,
                                 return_state=True))
    again = asyncio.run(_flow_run(str(state.state_details.flow_run_id)))
    assert NAME.match(again.name) and again.name != run.name


@pytest.mark.engine
def test_canary_outcomes_end_in_distinct_states_and_emit_events(prefect_harness, tmp_path, capsys):
    from deploy_support import better_prompt, record_version, worse_prompt, write_config
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.events.worker import EventsWorker

    from promptcycle.catalog import load_config
    from promptcycle.deploy.canary import begin_canary
    from promptcycle.store import MetricsStore

    config = write_config(tmp_path, models=["xl"], deployment={
        "serving_models": ["xl"], "canary": {"schedule": [50, 100], "step_min_requests": 1}})
    cfg = load_config(config)
    store = MetricsStore(tmp_path / "metrics.duckdb")
    base = cfg.pipeline(PIPE).prompt.to_template()
    first = record_version(store, PIPE, base)
    store.move_label(PIPE, "production", first, actor="test", reason="initial")

    def run_canary(control: str, treatment: str, treatment_score: float, batch: str) -> dict:
        outcomes = tmp_path / f"{batch}.jsonl"
        outcomes.write_text("".join(json.dumps({
            "request_id": f"{batch}-{i}", "version": treatment if i % 2 else control,
            "score": treatment_score if i % 2 else 0.6, "latency_ms": 90.0}) + "\n" for i in range(120)))
        code = main(["canary", "--config", str(config), "--ingest", outcomes.name, "--json"])
        out = capsys.readouterr().out.strip().splitlines()
        assert code == 0, out
        return json.loads(out[-1])

    better = record_version(store, PIPE, better_prompt(base), parent=first)
    begin_canary(store, pipeline=PIPE, control_hash=first, treatment_hash=better,
                 config=cfg.pipeline(PIPE).deployment.canary, actor="test")
    promoted = run_canary(first, better, 0.98, "a")
    assert (promoted["status"], promoted["final_state"]) == ("promoted", "Promoted")

    worse = record_version(store, PIPE, worse_prompt(base), parent=better)
    begin_canary(store, pipeline=PIPE, control_hash=better, treatment_hash=worse,
                 config=cfg.pipeline(PIPE).deployment.canary, actor="test")
    rolled = run_canary(better, worse, 0.1, "b")
    assert (rolled["status"], rolled["final_state"]) == ("rolled_back", "RolledBack")

    async def events() -> list:
        async with get_client() as client:
            page = await client.read_events(limit=50, filter=EventFilter(event=EventNameFilter(
                name=["promptcycle.canary.promoted", "promptcycle.canary.rolled_back"])))
            return page.events

    ours = {promoted["canary_id"], rolled["canary_id"]}  # other tests' canaries emit events too
    EventsWorker.drain_all()
    deadline, found = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        found = [e for e in asyncio.run(events()) if e.payload.get("canary_id") in ours]
        if len(found) >= 2:
            break
        time.sleep(1)
    by_name = {e.event: e for e in found}
    assert set(by_name) == {"promptcycle.canary.promoted", "promptcycle.canary.rolled_back"}, found
    up, down = by_name["promptcycle.canary.promoted"], by_name["promptcycle.canary.rolled_back"]
    assert up.resource.id == down.resource.id == f"promptcycle.pipeline.{PIPE}"
    assert (up.payload["control"], up.payload["treatment"], up.payload["production"]) == (first, better, better)
    assert (down.payload["control"], down.payload["treatment"], down.payload["production"]) == (better, worse, better)
    assert (up.payload["canary_id"], down.payload["canary_id"]) == (promoted["canary_id"], rolled["canary_id"])
    assert any(r.id == f"prefect.flow-run.{rolled['flow_run_id']}" for r in down.related)


# -- without the engine -------------------------------------------------------------------------------------------

def test_progress_off_a_terminal_prints_plain_lines_naming_the_phase():
    from promptcycle_cli.main import _progress_bar
    from promptcycle.evaluation import progress

    err = io.StringIO()
    with redirect_stderr(err), _progress_bar(False, plain=True, interval=0.2):
        progress.report_total(5000, phase="screening on dev")
        progress.report_done(1234, errors=3)
        time.sleep(0.7)  # a periodic line while the phase runs
        worker = threading.Thread(target=progress.report_done, args=(3766,))
        worker.start()
        worker.join()
    lines = err.getvalue().splitlines()
    assert lines[0] == "screening on dev: 0/5,000 calls, 0 errors"
    assert "screening on dev: 1,234/5,000 calls, 3 errors" in lines
    assert lines[-1] == "screening on dev: 5,000/5,000 calls, 3 errors"


def test_the_quality_matrix_fits_the_ui():
    from promptcycle.config import Thresholds
    from promptcycle.evaluation.summary import CellQuality, Ranked, RunSummary, quality_markdown

    models = ["nano", "mini", "small", "medium", "large", "xl", "reasoner"]
    spectrums = ["customer_profile", "credit_analysis", "transaction_history", "call_center_operations",
                 "entity_relationship", "geographic_analysis", "temporal_analysis"]
    cells = [CellQuality(model=m, spectrum=s, quality=88.8, level="warning", n=30, errors=0, mean_latency_ms=100.0,
                         p95_latency_ms=150.0, cost_usd=0.01) for m in models for s in spectrums]
    summary = RunSummary(run_id="baseline-x", pipeline=PIPE, status="completed", simulated=True, prompt_hash="abc",
                         rows=1470, errors=0, cost_usd=0.1, quality=88.8, level="warning", cells=cells,
                         models=[Ranked(name=m, quality=88.8, level="warning") for m in models],
                         spectrums=[Ranked(name=s, quality=88.8, level="warning") for s in spectrums])
    table = [line for line in quality_markdown(summary, Thresholds()).splitlines() if line.startswith("|")]
    assert table[0] == "| spectrum | " + " | ".join(models) + " | all |"
    assert len(table) == 2 + len(spectrums) + 1
    assert max(len(line) for line in table) <= 110, max(table, key=len)
    assert table[2] == "| customer_profile | " + " | ".join(["88.8 🟠"] * 7) + " | **88.8** |"


def test_the_optimization_report_shows_the_candidate_its_diff_and_links_the_runs():
    from promptcycle.optimize.search import OptimizationSummary, confirmation_markdown

    summary = OptimizationSummary(
        run_id="optimization-x", pipeline=PIPE, outcome="candidate_found", reason="Better.", simulated=True,
        baseline_run_id="baseline-y", current_hash="aaa", strategies=["checklist"], min_effect=0.01, alpha=0.05,
        candidate_hash="bbb", candidate_strategy="checklist", candidate_system="Be exact.",
        candidate_template="Record:\n{{customer}}\n\n{{question}}\nCover every field.\nReply with JSON.",
        compared_hash="aaa", compared_label="production", compared_system="Be exact.",
        compared_template="Record:\n{{customer}}\n\n{{question}}\nReply with JSON.",
        flow_run_id="11111111-1111-1111-1111-111111111111", baseline_flow_run_id="22222222-2222-2222-2222-222222222222")
    text = confirmation_markdown(summary, url_of=lambda run: f"http://127.0.0.1:4200/runs/flow-run/{run}")
    assert "Run [`optimization-x`](http://127.0.0.1:4200/runs/flow-run/11111111-1111-1111-1111-111111111111)" in text
    assert "baseline run [`baseline-y`](http://127.0.0.1:4200/runs/flow-run/22222222-2222-2222-2222-222222222222)" \
        in text
    assert "## Candidate `bbb` (checklist)" in text and "Cover every field." in text
    assert "## Diff against production `aaa`" in text
    diff = text.split("```diff\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert diff[:2] == ["--- production aaa", "+++ candidate bbb"]
    assert "+Cover every field." in diff and not any(line.startswith("-") and "JSON" in line for line in diff)
    # Without a UI the runs are named by id.
    plain = confirmation_markdown(summary)
    assert "Run `optimization-x` (flow run `11111111-1111-1111-1111-111111111111`)" in plain


def test_the_printed_evidence_names_the_clustering_unit_the_rule_used(capsys):
    from promptcycle_cli.commands.optimize import print_report
    from promptcycle.optimize.search import OptimizationSummary

    summary = OptimizationSummary(
        run_id="optimization-x", pipeline=PIPE, outcome="candidate_found", reason="Better.", simulated=True,
        baseline_run_id="baseline-y", current_hash="aaa", strategies=["checklist"], min_effect=0.01, alpha=0.05,
        decision="promote", effect=0.05, ci_low=0.02, ci_high=0.08, ci_level=0.92, p_value=0.001,
        adjusted_p_value=0.003, n_cases=60, n_observations=1260, repeats=21, cluster_unit="template", n_clusters=23,
        test="exact sign-flip on cluster totals, one-sided")
    print_report(summary)
    out = capsys.readouterr().out
    assert "clustered by template" in out and "clustered by case" not in out, out


def test_the_printed_legend_shows_the_pipelines_own_thresholds(capsys):
    from promptcycle_cli.main import _print_summary
    from promptcycle.config import Thresholds
    from promptcycle.evaluation.summary import CellQuality, Ranked, RunSummary

    cells = [CellQuality(model="nano", spectrum="s", quality=72.0, level="ok", n=3, errors=0, mean_latency_ms=100.0,
                         p95_latency_ms=150.0, cost_usd=0.01)]
    summary = RunSummary(run_id="baseline-x", pipeline=PIPE, status="completed", simulated=True, prompt_hash="abc",
                         rows=3, errors=0, cost_usd=0.01, quality=72.0, level="ok", cells=cells,
                         models=[Ranked(name="nano", quality=72.0, level="ok")],
                         spectrums=[Ranked(name="s", quality=72.0, level="ok")])
    _print_summary(summary, Thresholds(critical=50, warning=60, target=80, excellent=90))
    out = " ".join(capsys.readouterr().out.split())
    assert "critical < 50 ≤ warning < 60 ≤ ok < 80 ≤ target < 90 ≤ excellent" in out, out
