"""The optimization phase: the search's domain pieces, and the flow end to end on the simulator —
a confirmed, labelled candidate with its evidence and lineage; a re-run that pays for nothing; a tiny
budget that stops cleanly with a valid partial result, and resumes with a larger one."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import yaml

from promptcycle_cli.main import main
from promptcycle.optimize.search import CandidateRow, decide_outcome, pair_observations, rank_candidates
from promptcycle.store import MetricsStore

REPO = Path(__file__).resolve().parent.parent
PIPE = "customer-insights"
LIMIT = 15  # cases per spectrum: ~4-5 dev and ~4-5 test cases each


# --- the search, without the engine --------------------------------------------------------------

def row(h: str, strategy: str, dev: float | None, scope: str | None = None, status: str = "screened"):
    return CandidateRow(hash=h, strategy=strategy, scope=scope, status=status, dev_quality=dev)


def test_the_best_candidates_that_beat_the_current_prompt_on_dev_go_to_confirmation():
    rows = [row("a", "checklist", 88.0), row("b", "shorten", 79.0), row("c", "combined", 91.0),
            row("d", "few_shot", 85.0), row("e", "meta", None, status="rejected")]
    ranked = rank_candidates(rows, current_dev={None: 80.0}, top=2)
    assert [(r.hash, r.status) for r in ranked[:2]] == [("c", "selected"), ("a", "selected")]
    by_hash = {r.hash: r for r in ranked}
    assert by_hash["d"].status == "screened" and "not among the best 2" in by_hash["d"].reasons[0]
    assert by_hash["b"].dev_delta == -1.0 and "no better than the current prompt" in by_hash["b"].reasons[0]
    assert by_hash["e"].status == "rejected" and by_hash["e"].dev_delta is None
    # per-model candidates are ranked within their own model, against the current prompt on that model
    scoped = rank_candidates([row("x", "checklist", 70.0, "nano"), row("y", "checklist", 90.0, "xl")],
                             current_dev={"nano": 65.0, "xl": 92.0}, top=3)
    assert {r.hash: r.status for r in scoped} == {"x": "selected", "y": "screened"}


def test_observations_are_paired_by_model_case_and_repeat():
    def arm(run_id: str, scores: dict[tuple[str, str, int], float | None]) -> pd.DataFrame:
        return pd.DataFrame([{"run_id": run_id, "model": m, "case_id": c, "repeat": r, "spectrum": f"s-{c}",
                              "overall": v, "error": None if v is not None else "timeout"}
                             for (m, c, r), v in scores.items()])

    current = arm("cur", {("nano", "c1", 0): 0.5, ("nano", "c2", 0): 0.6, ("xl", "c1", 0): 0.9,
                          ("xl", "c2", 0): 0.8, ("xl", "c3", 0): 0.7})
    cand = arm("new", {("xl", "c2", 0): 0.9, ("nano", "c1", 0): None, ("xl", "c1", 0): 1.0,
                       ("nano", "c2", 0): 0.7, ("nano", "c9", 0): 0.1})
    paired = pair_observations(pd.concat([current, cand]), "cur", {"new": "new"}, models=["nano", "xl"])
    # the same (model, case, repeat) at the same position in both arms; a key missing from one arm is dropped
    assert paired.case_ids == ["c1", "c2", "c1", "c2"]
    assert paired.baseline == [0.5, 0.6, 0.9, 0.8]
    assert paired.candidates["new"] == [0.0, 0.7, 1.0, 0.9]  # a terminal error scores 0
    assert paired.spectrums == ["s-c1", "s-c2", "s-c1", "s-c2"] and paired.dropped == 2


def test_the_outcome_names_the_honest_result():
    def result(decision: str, effect: float, p: float) -> dict:
        return {"decision": decision, "effect": effect, "adjusted_p_value": p}

    assert decide_outcome({"a": result("promote", 0.02, 0.01), "b": result("promote", 0.05, 0.03)}) == \
        ("candidate_found", "b")
    assert decide_outcome({"a": result("underpowered", 0.004, 0.3)}) == ("underpowered", "a")
    assert decide_outcome({"a": result("regression_in_spectrum", 0.03, 0.01),
                           "b": result("no_improvement", 0.0, 0.6)}) == ("no_significant_improvement", "a")
    assert decide_outcome({}, budget_exhausted=True) == ("budget_exhausted", None)
    assert decide_outcome({}) == ("no_significant_improvement", None)


# --- bad input, before Prefect starts ------------------------------------------------------------

def small_config(path: Path, **optimization) -> Path:
    """The repository's pipelines.yaml cut down: two models, three spectrums, a few strategies."""
    data = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    pipe = data["pipelines"][PIPE]
    pipe.pop("deployment", None)  # its serving models are the full pipeline's
    pipe["models"] = ["nano", "small"]
    pipe["dataset"]["spectrums"] = ["customer_profile", "credit_analysis", "temporal_analysis"]
    pipe["optimization"] = {"strategies": ["format_spec", "combined", "shorten"], "confirm_top": 2,
                            "confirm_repeats": 2, **optimization}
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_strategy_or_baseline_is_bad_input(tmp_path, capsys):
    config = small_config(tmp_path / "pipelines.yaml")
    code = main(["optimize", "--config", str(config), "--store", str(tmp_path / "m.duckdb"),
                 "--strategies", "checklist,genetic", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 2 and out["error"] == "ConfigError" and "genetic" in out["message"] and "combined" in out["message"]
    code = main(["optimize", "--config", str(config), "--store", str(tmp_path / "m.duckdb"), "--baseline", "nope"])
    assert code == 2 and "--baseline" in capsys.readouterr().err


@pytest.mark.parametrize("section, path, found", [
    ({"strategies": ["checklist", "genetic"]}, "optimization.strategies.1", "genetic"),
    ({"optimizer_model": "gpt-x"}, "optimization.optimizer_model", "gpt-x"),
])
def test_strategy_and_optimizer_names_are_checked_at_load(tmp_path, section, path, found):
    from promptcycle.catalog import load_config
    from promptcycle.errors import ConfigError

    config = small_config(tmp_path / "pipelines.yaml")
    data = yaml.safe_load(config.read_text())
    data["pipelines"][PIPE]["optimization"] = section
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert f"pipelines.{PIPE}.{path}" in str(info.value) and found in str(info.value)


# --- the flow on the simulator -------------------------------------------------------------------

def _ledger(store: Path) -> list[tuple[str, str]]:
    with duckdb.connect(str(store), read_only=True) as con:
        return con.execute("select call_key, run_id from responses order by call_key").fetchall()


@pytest.fixture(scope="module")
def optimized(prefect_harness, tmp_path_factory):
    """One optimization of the small pipeline (its baseline is run first, inside the flow)."""
    from promptcycle_flows.optimization import optimization

    root = tmp_path_factory.mktemp("optimization")
    config, store = small_config(root / "pipelines.yaml"), root / "metrics.duckdb"
    summary = asyncio.run(optimization(pipeline=PIPE, config_path=str(config), store_path=str(store), limit=LIMIT))
    return config, store, summary


@pytest.mark.engine
@pytest.mark.slow
def test_the_flow_confirms_a_better_prompt_and_labels_it_with_its_evidence(optimized):
    _, store_path, summary = optimized
    store = MetricsStore(store_path)
    assert summary.outcome == "candidate_found" and summary.simulated
    assert summary.effect > 0.01 and summary.ci_low > 0 and summary.adjusted_p_value <= 0.05
    assert summary.n_cases >= 10 and summary.n_observations == summary.n_cases * 2 * 2  # 2 models x 2 repeats

    decisions = {d.prompt_hash: d for d in store.decisions(run_id=summary.run_id, kind="confirmation")}
    decision = decisions[summary.candidate_hash]
    assert decision.decision == "promote" and decision.baseline_hash == summary.current_hash
    for key in ("effect", "ci_low", "ci_high", "p_value", "adjusted_p_value", "n_cases", "n_observations",
                "repeats", "test", "mde", "per_spectrum"):
        assert decision.evidence[key] is not None, key
    assert {s["spectrum"] for s in decision.evidence["per_spectrum"]} == \
        {"customer_profile", "credit_analysis", "temporal_analysis"}
    # the evidence names the clustering unit, the test applied and the error budget this decision spent
    assert decision.evidence["cluster_unit"] in ("case", "template") and decision.evidence["n_clusters"] >= 2
    budget = decision.evidence["error_budget"]
    assert budget["scheme"] == "spending" and budget["index"] == 1 and budget["level"] == pytest.approx(0.04)
    assert decision.evidence["alpha"] == pytest.approx(budget["level_per_scope"])
    assert len(decisions) == 2  # confirm_top: both confirmed candidates keep their evidence

    assert store.get_label(PIPE, "candidate") == summary.candidate_hash
    event = store.label_history(PIPE, "candidate")[0]
    assert event.actor == summary.run_id and event.evidence["effect"] == pytest.approx(summary.effect)

    lineage = store.lineage(summary.candidate_hash)
    assert [v.prompt_hash for v in lineage] == [summary.candidate_hash, summary.current_hash]
    assert lineage[0].strategy == summary.candidate_strategy and lineage[0].rationale
    assert lineage[-1].strategy == "baseline" and lineage[-1].parent_hash is None

    assert store.get_diagnosis(summary.run_id, summary.baseline_run_id) is not None
    assert store.get_run(summary.run_id).status == "completed"
    assert summary.spend["calls"] == store.spend(summary.run_id)["calls"] > 0
    assert summary.estimate is not None and summary.estimate.calls >= summary.spend["calls"] - 1

    from prefect.artifacts import Artifact

    confirmation = Artifact.get(f"optimization-confirmation-{PIPE}")
    assert confirmation is not None and summary.run_id in confirmation.data
    # The candidate's text, its diff against the current prompt (nothing is in production), links to the runs.
    assert summary.candidate_template.splitlines()[-1] in confirmation.data
    assert f"## Diff against current prompt `{summary.current_hash}`" in confirmation.data
    assert f"--- current prompt {summary.current_hash}\n+++ candidate {summary.candidate_hash}" in confirmation.data
    assert summary.flow_run_id and summary.baseline_flow_run_id
    for flow_run_id in (summary.flow_run_id, summary.baseline_flow_run_id):
        assert f"/runs/flow-run/{flow_run_id})" in confirmation.data
    assert Artifact.get(f"optimization-diagnosis-{PIPE}") is not None
    assert Artifact.get(f"optimization-candidates-{PIPE}") is not None


@pytest.mark.engine
@pytest.mark.slow
def test_re_running_the_same_optimization_pays_for_nothing(optimized):
    from promptcycle_flows.optimization import optimization

    config, store, first = optimized
    before = _ledger(store)
    again = asyncio.run(optimization(pipeline=PIPE, config_path=str(config), store_path=str(store), limit=LIMIT))
    assert _ledger(store) == before  # not one new paid call
    assert again.spend["calls"] == 0 and again.run_id != first.run_id
    assert (again.outcome, again.candidate_hash) == (first.outcome, first.candidate_hash)
    assert again.effect == pytest.approx(first.effect)


@pytest.mark.engine
@pytest.mark.slow
def test_a_tiny_budget_stops_cleanly_and_a_larger_one_resumes(optimized, capsys):
    config, store, _ = optimized
    args = ["optimize", "--config", str(config), "--store", str(store), "--limit", str(LIMIT),
            "--strategies", "checklist", "grounding", "step_structure", "--json"]
    code = main([*args, "--max-calls", "5"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["outcome"] == "budget_exhausted" and out["candidate_hash"] is None
    assert out["success"] is True and out["flow_run_id"] and out["flow_run_id"] in out["flow_run_url"]
    assert out["spend"]["calls"] == 5 and "higher cap" in out["reason"]
    paid = [key for key, run in _ledger(store) if run.startswith(out["run_id"])]
    assert len(paid) == 5
    statuses = {r["strategy"]: r["status"] for r in out["candidates"]}
    assert set(statuses) == {"checklist", "grounding", "step_structure"}
    assert "unscreened" in statuses.values()  # the valid part: what was screened, nothing invented

    code = main([*args, "--max-calls", "1000"])
    resumed = json.loads(capsys.readouterr().out)
    assert code == 0 and resumed["resumed"] and resumed["run_id"] == out["run_id"]
    assert resumed["outcome"] != "budget_exhausted"
    assert resumed["spend"]["calls"] <= 1000
    keys = [key for key, run in _ledger(store) if run.startswith(out["run_id"])]
    assert len(keys) == resumed["spend"]["calls"] and set(paid) <= set(keys)
