"""Moving production without the engine: bad input, concurrent deployments, rollback byte for byte,
canaries promoted or rolled back on simulated traffic, side by side across pipelines, and the history."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
import time
from datetime import timedelta

import duckdb
import pytest

from deploy_support import (
    PIPE,
    REPO,
    better_prompt,
    deploy_inline,
    make_candidate,
    record_version,
    reload_endpoint,
    worse_prompt,
    write_config,
)
from promptcycle.catalog import load_config
from promptcycle.deploy.canary import look_at_canary
from promptcycle.deploy.locks import DeploymentConflictError, take_lock
from promptcycle.deploy.release import DeploymentError, conclude_canary, plan_release, roll_back
from promptcycle.deploy.serving import clear_cache
from promptcycle.deploy.targets import TargetError
from promptcycle.deploy.traffic import simulate_traffic
from promptcycle.errors import ConfigError
from promptcycle.evaluation.context import load_pipeline
from promptcycle.store import MetricsStore
from promptcycle.store.records import utc_now
from simserver import unused_port

OTHER = "customer-insights-eu"
DEPLOYMENT = {"serving_models": ["xl"], "integration": {"cases_per_spectrum": 1},
              "targets": [{"kind": "file", "options": {"path": "deployed/{pipeline}.json"}}],
              "canary": {"schedule": [10, 50, 100], "look_size": 200, "min_effect": 0.03}}


def run(coro):
    return asyncio.run(coro)


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def live(tmp_path):
    """A pipeline (small and xl, served by xl) whose configured prompt is in production (a file target), and a
    second pipeline with nothing deployed yet."""
    clear_cache()
    config = write_config(tmp_path, models=["small", "xl"], deployment=DEPLOYMENT, second_pipeline=OTHER)
    first = run(deploy_inline(config))
    yield config, first["store"], first["plan"].version
    clear_cache()


@pytest.fixture
def labelled(tmp_path):
    """The same pipelines, with the configured prompt made production by its label alone (no targets written)."""
    clear_cache()
    config = write_config(tmp_path, models=["small", "xl"], deployment=DEPLOYMENT, second_pipeline=OTHER)
    store = MetricsStore(tmp_path / "metrics.duckdb")
    first = record_version(store, PIPE, load_config(config).pipeline(PIPE).prompt.to_template())
    store.move_label(PIPE, "production", first, actor="test", reason="initial")
    yield config, store, first
    clear_cache()


def target_file(config, pipeline=PIPE):
    return config.parent / "deployed" / f"{pipeline}.json"


# -- bad input --------------------------------------------------------------------------------------------------

def test_an_unknown_version_or_another_pipelines_version_is_refused_clearly(labelled):
    config, store, production = labelled
    cfg = load_config(config)
    with pytest.raises(ConfigError, match=r"--version: unknown prompt version 'nope' for pipeline 'customer-insights'; "
                                          r"recent versions: " + production):
        plan_release(cfg, PIPE, store, version="nope", actor="test")
    theirs = record_version(store, OTHER, worse_prompt(cfg.pipeline(OTHER).prompt.to_template()))
    with pytest.raises(ConfigError, match=f"prompt version '{theirs}' belongs to pipeline '{OTHER}'"):
        plan_release(cfg, PIPE, store, version=theirs, actor="test")
    with pytest.raises(DeploymentError, match="has no candidate version"):
        plan_release(cfg, PIPE, store, actor="test")
    with pytest.raises(DeploymentError, match="already in production"):
        plan_release(cfg, PIPE, store, version=production, actor="test")
    # Every refusal gave the lock back.
    assert store.acquire_deploy_lock(PIPE, "probe", 1)["holder"] == "probe"


# -- one deployment at a time -----------------------------------------------------------------------------------

def test_two_deployments_of_one_pipeline_at_once_one_proceeds_the_other_is_refused(labelled):
    config, store, production = labelled
    cfg = load_config(config)
    version = record_version(store, PIPE, better_prompt(cfg.pipeline(PIPE).prompt.to_template()), parent=production)
    barrier = threading.Barrier(2)
    results: list = []

    def attempt(who: str) -> None:
        barrier.wait()
        try:
            results.append(plan_release(cfg, PIPE, MetricsStore(store.path), version=version, actor=who))
        except DeploymentConflictError as exc:
            results.append(exc)

    threads = [threading.Thread(target=attempt, args=(f"engineer-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    plans = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, DeploymentConflictError)]
    assert len(plans) == 1 and len(refused) == 1
    assert f"is being deployed by {plans[0].deployment_id}" in str(refused[0])
    assert "this deployment was refused" in str(refused[0])
    # Another pipeline is not blocked by it.
    assert store.acquire_deploy_lock(OTHER, "someone", 5)["holder"] == "someone"


def test_the_lock_holds_across_processes_and_expires_with_its_lease(labelled):
    config, store, production = labelled
    script = ("from promptcycle.store import MetricsStore\n"
              f"row = MetricsStore({str(store.path)!r}).acquire_deploy_lock({PIPE!r}, "
              "'deploy-in-another-process', 1.0)\n"
              "print(row['holder'])")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "deploy-in-another-process"
    with pytest.raises(DeploymentConflictError, match="deploy-in-another-process"):
        take_lock(store, PIPE, "me", 60)
    time.sleep(1.1)  # the other process died without releasing; its lease runs out
    assert take_lock(store, PIPE, "me", 60)["holder"] == "me"


# -- rollback ---------------------------------------------------------------------------------------------------

def release_directly(cfg, store, version):
    """Deploy `version` past the stages (they are not the subject here): targets, then labels."""
    from promptcycle.deploy.locks import release_lock
    from promptcycle.deploy.release import release_version

    plan = plan_release(cfg, PIPE, store, version=version, force=True, actor="test")
    try:
        return release_version(cfg, store, plan, None)
    finally:
        release_lock(store, PIPE, plan.deployment_id)


def test_rollback_restores_the_previous_prompt_byte_for_byte(live):
    config, store, first = live
    cfg = load_config(config)
    path = target_file(config)
    original = sha(path)
    version = record_version(store, PIPE, better_prompt(cfg.pipeline(PIPE).prompt.to_template()), parent=first)
    release_directly(cfg, store, version)
    assert sha(path) != original and store.get_label(PIPE, "production") == version

    record = roll_back(cfg, PIPE, store, actor="ana via promptcycle rollback", reason="complaints")
    assert sha(path) == original
    assert (store.get_label(PIPE, "production"), store.get_label(PIPE, "previous")) == (first, version)
    assert (record.kind, record.status, record.from_hash, record.to_hash) == ("rollback", "deployed", version, first)
    event = store.label_history(PIPE, "production")[0]
    assert (event.to_hash, event.actor, event.reason) == (first, "ana via promptcycle rollback", "complaints")
    # Rolling back again returns to the version rolled back from (it was production before).
    roll_back(cfg, PIPE, store, actor="ana")
    assert store.get_label(PIPE, "production") == version


def test_a_rollback_with_no_previous_version_or_to_a_never_served_one_is_refused(labelled):
    config, store, first = labelled
    cfg = load_config(config)
    with pytest.raises(DeploymentError, match="has no previous version to roll back to"):
        roll_back(cfg, PIPE, store, actor="ana")
    never = record_version(store, PIPE, better_prompt(cfg.pipeline(PIPE).prompt.to_template()), parent=first)
    with pytest.raises(DeploymentError, match="was never in production"):
        roll_back(cfg, PIPE, store, to=never, actor="ana")
    with pytest.raises(DeploymentError, match="has nothing in production"):
        roll_back(cfg, OTHER, store, actor="ana")
    assert store.get_label(PIPE, "production") == first


def test_a_rollback_to_a_webhook_that_is_down_leaves_nothing_half_deployed(live, tmp_path):
    config, store, first = live
    cfg = load_config(config)
    path = target_file(config)
    with reload_endpoint() as app:
        pipe = cfg.pipeline(PIPE)
        pipe.deployment.targets.append(type(pipe.deployment.targets[0])(
            kind="webhook", name="app", options={"url": app.url}))
        second_version = record_version(store, PIPE, better_prompt(pipe.prompt.to_template()), parent=first)
        release_directly(cfg, store, second_version)
        assert len(app.requests) == 1
    deployed = sha(path)
    pipe.deployment.targets[1].options.update(url=f"http://127.0.0.1:{unused_port()}/reload", max_retries=1,
                                              backoff_seconds=0.01)
    with pytest.raises(TargetError, match="failed at target 'app'.*after 2 attempt"):
        roll_back(cfg, PIPE, store, actor="ana")
    assert sha(path) == deployed
    assert store.get_label(PIPE, "production") == second_version
    failed = store.deployments(PIPE, limit=1)[0]
    assert (failed.kind, failed.status) == ("rollback", "failed")
    assert [(t["target"], t["status"]) for t in failed.targets] == [("file", "restored"), ("app", "failed")]


# -- canaries ---------------------------------------------------------------------------------------------------

def drive(config, store, canary_id, *, pipeline=PIPE, budget=4000, error_rates=None, seed=0):
    """Simulated traffic and looks until the canary decides (or the budget runs out)."""
    ctx = load_pipeline(config, pipeline)
    sent = 0
    while sent < budget:
        run(simulate_traffic(ctx, requests=200, seed=seed + sent, error_rates=error_rates))
        sent += 200
        look = look_at_canary(store, canary_id)
        if look.action != "continue":
            return look, sent
    return look, sent


def test_one_canary_per_pipeline(labelled):
    from promptcycle.deploy.canary import begin_canary
    from promptcycle.deploy.gate import decide_gate
    from promptcycle.deploy.locks import release_lock
    from promptcycle.deploy.release import start_release_canary

    config, store, first = labelled
    cfg = load_config(config)
    version = record_version(store, PIPE, better_prompt(cfg.pipeline(PIPE).prompt.to_template()), parent=first)
    plan = plan_release(cfg, PIPE, store, version=version, canary=True, force=True, actor="test")
    canary = start_release_canary(cfg, store, plan, decide_gate([], force=True))
    release_lock(store, PIPE, plan.deployment_id)
    assert store.get_label(PIPE, "candidate") == version and store.get_label(PIPE, "production") == first
    assert store.get_deployment(plan.deployment_id).status == "canary"
    with pytest.raises(DeploymentConflictError, match=f"has a running canary {canary.canary_id}"):
        plan_release(cfg, PIPE, store, version=version, force=True, actor="test")
    with pytest.raises(DeploymentConflictError, match="already has a running canary"):
        begin_canary(store, pipeline=PIPE, control_hash=first, treatment_hash=version,
                     config=cfg.pipeline(PIPE).deployment.canary, actor="test")


def test_a_better_candidate_goes_through_the_split_schedule_and_is_promoted(live):
    config, store, first = live
    cfg = load_config(config)
    path = target_file(config)
    original = sha(path)
    better = make_candidate(config, PIPE, better_prompt(cfg.pipeline(PIPE).prompt.to_template()))
    started = run(deploy_inline(config, canary=True))
    assert started["gate"].decision == "pass", {s: r.reason for s, r in started["reports"].items()}
    canary = started["result"]
    assert sha(path) == original  # targets keep production during a canary
    look, sent = drive(config, store, canary.canary_id)
    assert look.action == "promote", look.decision.reason
    splits = [x["split_pct"] for x in store.canary_looks(canary.canary_id)]
    assert splits[0] == 10.0 and splits[-1] == 50.0 and splits == sorted(splits)
    record = conclude_canary(cfg, store, look, actor="canary test")
    assert (record.kind, record.status, record.to_hash) == ("promote", "deployed", better)
    assert store.get_label(PIPE, "production") == better and store.get_label(PIPE, "previous") == first
    assert store.get_canary(canary.canary_id).status == "promoted"
    assert json.loads(path.read_text())["version"] == better
    [decision] = store.decisions(run_id=canary.canary_id, kind="canary")
    assert decision.decision == "promote" and decision.evidence["p_value"] <= 0.05


def start_canary(store, cfg, pipeline, treatment, control):
    """A canary started directly (its validation is not the subject here)."""
    from promptcycle.deploy.canary import begin_canary

    return begin_canary(store, pipeline=pipeline, control_hash=control, treatment_hash=treatment,
                        config=cfg.pipeline(pipeline).deployment.canary, actor="test")


def test_a_guardrail_rolls_back_at_once(labelled):
    config, store, first = labelled
    cfg = load_config(config)
    version = record_version(store, PIPE, better_prompt(cfg.pipeline(PIPE).prompt.to_template()), parent=first)
    canary = start_canary(store, cfg, PIPE, version, first)
    look, sent = drive(config, store, canary.canary_id, error_rates={"treatment": 0.3})
    assert look.action == "rollback" and "guardrail" in look.decision.reason
    breached = {g.name for g in look.decision.guardrails if g.breached}
    assert breached and breached <= {"treatment_error_rate", "error_rate_increase"}
    assert sent <= 600  # long before the quality test could decide
    conclude_canary(cfg, store, look, actor="canary test")
    assert store.get_label(PIPE, "production") == first


def test_a_shadow_canary_pairs_both_answers_of_each_request_and_never_serves_the_new_version(tmp_path):
    from promptcycle.deploy.serving import resolve_prompt

    clear_cache()
    shadow = {**DEPLOYMENT, "canary": {**DEPLOYMENT["canary"], "mode": "shadow", "shadow_pct": 50}}
    config = write_config(tmp_path, models=["small", "xl"], deployment=shadow)
    cfg = load_config(config)
    store = MetricsStore(tmp_path / "metrics.duckdb")
    first = record_version(store, PIPE, cfg.pipeline(PIPE).prompt.to_template())
    store.move_label(PIPE, "production", first, actor="test", reason="initial")
    version = record_version(store, PIPE, better_prompt(cfg.pipeline(PIPE).prompt.to_template()), parent=first)
    canary = start_canary(store, cfg, PIPE, version, first)
    plan = canary.settings["plan"]
    assert canary.split_pct == 0.0 and plan["mode"] == "shadow" and "shadowed requests" in canary.reason
    served = [resolve_prompt(PIPE, f"user-{i}", store=store.path) for i in range(400)]
    assert {s.version for s in served} == {first}  # production answers every request
    assert 120 < sum(s.shadow is not None and s.shadow.version == version for s in served) < 280
    look, sent = drive(config, store, canary.canary_id)
    assert look.action == "promote", look.decision.reason
    assert look.decision.mode == "shadow" and "paired" in look.decision.test and look.decision.effect > 0
    rows = store.production_results(PIPE, canary_id=canary.canary_id)
    assert not [r for r in rows if r.prompt_hash == version and r.arm != "shadow"]
    pairs = [r for r in rows if r.arm == "shadow"]
    assert look.decision.n_effective == len(pairs) and all(r.metadata["shadow_of"] for r in pairs)
    conclude_canary(cfg, store, look, actor="canary test")
    assert store.get_label(PIPE, "production") == version
    clear_cache()


def test_a_canary_started_before_plans_existed_is_still_looked_at(labelled):
    import duckdb

    config, store, first = labelled
    cfg = load_config(config)
    version = record_version(store, PIPE, better_prompt(cfg.pipeline(PIPE).prompt.to_template()), parent=first)
    canary = start_canary(store, cfg, PIPE, version, first)
    old = {"schedule": [10.0, 50.0, 100.0], "step_min_requests": 50, "look_size": 200, "look_interval_seconds": 60.0,
           "max_looks": 500, "alpha": 0.05, "min_effect": 0.0, "max_per_arm": 500, "min_per_arm": 20,
           "guardrails": {"max_error_rate": 0.05, "max_error_rate_increase": 0.02, "max_p95_latency_ms": None,
                          "max_p95_latency_increase_ms": None, "min_requests": 20}}
    with duckdb.connect(str(store.path)) as con:
        con.execute("UPDATE canaries SET settings_json = ? WHERE canary_id = ?", [json.dumps(old), canary.canary_id])
    run(simulate_traffic(load_pipeline(config, PIPE), requests=200, seed=1))
    look = look_at_canary(store, canary.canary_id)
    assert look.decision.plan["variance"] == 0.25 and "before canary plans" in look.decision.plan["variance_source"]
    assert look.decision.min_effect == 0.03


def test_strong_early_evidence_moves_the_split_on_before_it_promotes(labelled):
    from promptcycle.deploy.serving import log_production_results

    config, store, first = labelled
    cfg = load_config(config)
    version = record_version(store, PIPE, better_prompt(cfg.pipeline(PIPE).prompt.to_template()), parent=first)
    canary = start_canary(store, cfg, PIPE, version, first)

    def report(start: int, n: int) -> None:
        log_production_results([{"pipeline": PIPE, "request_id": f"r{start + i}", "canary_id": canary.canary_id,
                                 "version": version if i % 2 else first, "score": 0.95 if i % 2 else 0.55,
                                 "latency_ms": 100.0} for i in range(n)], store=store.path)

    report(0, 60)
    look = look_at_canary(store, canary.canary_id)
    assert look.decision.action == "promote"  # the test alone would promote at 10%…
    assert (look.action, look.split_pct, look.next_split_pct) == ("continue", 10.0, 50.0)  # …the schedule goes on
    assert look.reason.startswith("Continue at 50%: the test favours the new version")
    report(60, 60)
    look = look_at_canary(store, canary.canary_id)
    assert (look.action, look.split_pct) == ("promote", 50.0)
    assert [x["action"] for x in store.canary_looks(canary.canary_id)] == ["continue", "promote"]


def test_two_pipelines_canaries_run_side_by_side(labelled):
    config, store, first = labelled
    cfg = load_config(config)
    other_first = record_version(store, OTHER, cfg.pipeline(OTHER).prompt.to_template())
    store.move_label(OTHER, "production", other_first, actor="test", reason="initial")
    mine = record_version(store, PIPE, better_prompt(cfg.pipeline(PIPE).prompt.to_template()), parent=first)
    theirs = record_version(store, OTHER, worse_prompt(cfg.pipeline(OTHER).prompt.to_template()), parent=other_first)
    a = start_canary(store, cfg, PIPE, mine, first)
    b = start_canary(store, cfg, OTHER, theirs, other_first)
    ctx_a, ctx_b = load_pipeline(config, PIPE), load_pipeline(config, OTHER)
    run(simulate_traffic(ctx_a, requests=400, seed=1))
    run(simulate_traffic(ctx_b, requests=200, seed=2))
    look_a, look_b = look_at_canary(store, a.canary_id), look_at_canary(store, b.canary_id)
    assert look_a.requests_control + look_a.requests_treatment == 400
    assert look_b.requests_control + look_b.requests_treatment == 200
    look_b, _ = drive(config, store, b.canary_id, pipeline=OTHER, seed=50)
    assert look_b.action == "rollback"
    conclude_canary(cfg, store, look_b, actor="test")
    assert store.get_canary(a.canary_id).status == "running"  # untouched by the other pipeline's rollback
    assert store.get_label(OTHER, "production") == other_first and store.get_label(PIPE, "production") == first


# -- history ----------------------------------------------------------------------------------------------------

def test_the_last_500_deployments_are_listed_instantly_and_queryable_in_duckdb(labelled):
    config, store, first = labelled
    now = utc_now().replace(tzinfo=None)
    with duckdb.connect(str(store.path)) as con:
        con.execute("INSERT INTO deployments SELECT 'bulk-' || i, 100 + i, ?, '', 'deploy', 'deployed', ?, ?, false, "
                    "'bulk', 'history test', '[]', '{}', NULL, ? + to_seconds(i), NULL FROM range(1000) t(i)",
                    [PIPE, first, first, now])
    started = time.perf_counter()
    listed = store.deployments(PIPE, limit=500)
    assert time.perf_counter() - started < 1.0
    assert len(listed) == 500 and listed[0].deployment_id == "bulk-999"
    assert [d.seq for d in listed] == sorted((d.seq for d in listed), reverse=True)
    with duckdb.connect(str(store.path)) as con:
        count, = con.execute("SELECT count(*) FROM deployments WHERE pipeline = ? AND status = 'deployed'",
                             [PIPE]).fetchone()
    assert count == 1000
    assert timedelta(0) <= listed[0].created_at - listed[-1].created_at
