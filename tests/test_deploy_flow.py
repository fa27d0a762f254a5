"""The deployment and canary flows end to end, through the CLI and the Prefect engine, on the default pipeline
offline: the configured prompt goes out first, a candidate with evidence passes the four stages and is promoted
by a canary on simulated traffic, a deliberately worse version is blocked — then, forced, rolled back by its
canary — and `status`, the artifacts and `rollback` show and undo it all."""

from __future__ import annotations

import hashlib
import json

import pytest

from deploy_support import PIPE, better_prompt, make_candidate, record_version, worse_prompt
from promptcycle_cli.main import main
from promptcycle.catalog import load_config
from promptcycle.deploy.serving import clear_cache
from promptcycle.store import MetricsStore


def cli(capsys, *argv: str) -> tuple[int, dict]:
    code = main(list(argv))
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1]) if out else {}


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.engine
@pytest.mark.slow
def test_the_default_pipeline_deploys_canaries_and_rolls_back_offline(prefect_harness, repo_config, capsys):
    clear_cache()
    config = str(repo_config)
    target = repo_config.parent / "deployed" / "customer-insights.prompt.json"
    base = load_config(repo_config).pipeline(PIPE).prompt.to_template()

    code, first = cli(capsys, "deploy", "--config", config, "--json")
    assert code == 0, first
    assert (first["kind"], first["version"], first["gate"]["decision"]) == ("initial", base.hash, "pass")
    assert [first["stages"][s]["status"] for s in ("syntax", "content", "integration", "quality")] == [
        "passed", "passed", "skipped", "skipped"]
    assert json.loads(target.read_text())["version"] == base.hash
    initial_bytes = sha(target)

    better = make_candidate(repo_config, PIPE, better_prompt(base))  # what the optimization phase records
    code, second = cli(capsys, "deploy", "--config", config, "--canary", "--simulate-traffic", "3000", "--json")
    assert code == 0, second
    assert all(s["status"] == "passed" for s in second["stages"].values()), second["stages"]
    canary = second["canary"]
    assert canary["status"] == "promoted", canary["reason"]
    assert canary["outcome"]["version"] == better and canary["simulated_requests"] <= 3000
    assert json.loads(target.read_text())["version"] == better
    promoted_bytes = sha(target)

    store = MetricsStore(repo_config.parent / "promptcycle.duckdb")
    worse = record_version(store, PIPE, worse_prompt(base), parent=better)
    code, blocked = cli(capsys, "deploy", "--config", config, "--version", worse, "--canary", "--json")
    assert code == 1 and blocked["error"] == "GateError"
    assert "blocked by content" in blocked["message"] and "required section 'json' is absent" in blocked["message"]

    code, third = cli(capsys, "deploy", "--config", config, "--version", worse, "--canary", "--force",
                      "--simulate-traffic", "2000", "--seed", "3", "--json")
    assert code == 0, third
    assert third["gate"]["decision"] == "forced"
    assert third["canary"]["status"] == "rolled_back" and "worse than control" in third["canary"]["reason"]
    assert sha(target) == promoted_bytes

    code, status = cli(capsys, "status", "--config", config, "--json")
    assert code == 0
    s = status["pipelines"][PIPE]
    assert s["labels"][""]["production"]["version"] == better
    assert s["labels"][""]["previous"]["version"] == base.hash
    assert s["labels"][""]["candidate"]["version"] == worse
    assert s["canary"] is None
    assert [d["kind"] for d in s["decisions"]][:2] == ["canary", "gate"] and s["decisions"][0]["decision"] == "rollback"
    kinds = [d["kind"] for d in s["deployments"]]
    assert kinds[0] == "canary_rollback" and "promote" in kinds
    forced = [d for d in s["deployments"] if d["forced"]]
    assert forced and forced[0]["to"] == worse

    from prefect.artifacts import Artifact

    assert "rolled_back" in Artifact.get("canary-customer-insights").data
    gate = Artifact.get("deploy-gate-customer-insights").data
    assert "FORCED" in gate
    # The deployed version's text and its diff against production.
    assert f"## Version `{worse}`" in gate and f"## Diff against production `{better}`" in gate
    assert f"--- production {better}\n+++ version {worse}" in gate
    assert "quality" in Artifact.get("deploy-customer-insights-quality").data

    code, rolled = cli(capsys, "rollback", "--config", config, "--reason", "demo", "--json")
    assert code == 0, rolled
    assert (rolled["production"], rolled["rolled_back"]) == (base.hash, better)
    assert sha(target) == initial_bytes  # byte for byte


def test_cli_bad_input_and_refusals_are_clear(repo_config, capsys):
    config = str(repo_config)
    store = repo_config.parent / "promptcycle.duckdb"
    for command in ("rollback", "status"):  # no store yet: refused, and none created
        code, out = cli(capsys, command, "--config", config, "--json")
        assert code == 2 and out["error"] == "StorePathError" and f"no metrics store at {store}" in out["message"]
        assert not store.exists()
    MetricsStore(store)
    code, out = cli(capsys, "rollback", "--config", config, "--json")
    assert code == 1 and out["error"] == "DeploymentError" and "nothing in production" in out["message"]
    code, out = cli(capsys, "deploy", "--config", config, "--simulate-traffic", "10", "--json")
    assert code == 2 and "--simulate-traffic" in out["message"] and "--canary" in out["message"]
    code, out = cli(capsys, "deploy", "--config", config, "--pipeline", "nope", "--json")
    assert code == 2 and "unknown pipeline 'nope'" in out["message"]
    code, out = cli(capsys, "status", "--config", config, "--json")
    assert code == 0 and out["pipelines"][PIPE]["labels"] == {} and out["pipelines"][PIPE]["deployments"] == []


@pytest.mark.engine
def test_the_canary_flow_ingests_reported_outcomes_and_looks(prefect_harness, tmp_path, capsys):
    from deploy_support import write_config
    from promptcycle.deploy.canary import begin_canary

    config = write_config(tmp_path, models=["xl"], deployment={"serving_models": ["xl"]})
    cfg = load_config(config)
    store = MetricsStore(tmp_path / "metrics.duckdb")
    base = cfg.pipeline(PIPE).prompt.to_template()
    first = record_version(store, PIPE, base)
    store.move_label(PIPE, "production", first, actor="test", reason="initial")
    new = record_version(store, PIPE, better_prompt(base), parent=first)
    canary = begin_canary(store, pipeline=PIPE, control_hash=first, treatment_hash=new,
                          config=cfg.pipeline(PIPE).deployment.canary, actor="test")
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("".join(json.dumps({"request_id": f"r{i}", "version": new if i % 2 else first,
                                            "score": 0.95 if i % 2 else 0.55, "latency_ms": 90.0}) + "\n"
                                for i in range(80)))
    code, out = cli(capsys, "canary", "--config", str(config), "--ingest", "outcomes.jsonl", "--json")
    assert code == 0, out
    assert out["ingested"] == {"path": str(outcomes), "lines": 80, "new": 80, "duplicates": 0}
    assert (out["looks"], out["action"], out["split_pct"], out["status"]) == (1, "continue", 50.0, "running")
    assert store.get_canary(canary.canary_id).split_pct == 50.0
