"""What a healing repairs and how its incident ends, with real pieces: a running canary refuses a healing (the refusal
stored); a model's first own prompt canaries against the pipeline's prompt; the canary's simulated traffic lives in
the drifted world; a healing's evaluations are keyed in a ledger epoch of their own; a canary a healing handed over
closes its incident when it concludes — through `promptcycle canary` (the CLI and the engine) or any other path —
resolved when it promoted, escalated (with its alert) when it rolled back, and learning keeps the effect it measured.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import pytest
import yaml

from deploy_support import better_prompt
from promptcycle.catalog import load_config
from promptcycle.deploy.canary import begin_canary, look_at_canary
from promptcycle.deploy.release import conclude_canary, plan_release
from promptcycle.deploy.serving import clear_cache, resolve_prompt
from promptcycle.deploy.traffic import simulate_traffic
from promptcycle.evaluation.cells import call_keys
from promptcycle.evaluation.context import load_pipeline
from promptcycle.monitor.repair import after_canary, finish_healing_incident, plan_healing
from promptcycle.monitor.response import record_canary
from promptcycle.prompts import PromptTemplate
from promptcycle.store import MetricsStore
from promptcycle.store.records import PromptVersionRecord
from test_monitor_loop import PIPE, ingest_period, means, monitor_pass, period_time, write_config


def run(coro):
    return asyncio.run(coro)


def record(store: MetricsStore, prompt: PromptTemplate, scope: str | None = None, parent: str | None = None) -> str:
    store.write_prompt_version(PromptVersionRecord(
        prompt_hash=prompt.hash, pipeline=PIPE, system=prompt.system, template=prompt.template,
        variables=prompt.variables, parent_hash=parent, strategy="combined", rationale="written by a test",
        scope=scope, created_at=datetime.now(timezone.utc)))
    return prompt.hash


def deployed(tmp_path, **kwargs):
    """The monitor loop's pipeline (served by xl) with its configured prompt in production."""
    clear_cache()
    config = write_config(tmp_path, **kwargs)
    store = MetricsStore(tmp_path / "metrics.duckdb")
    first = record(store, load_config(config).pipeline(PIPE).prompt.to_template())
    store.move_label(PIPE, "production", first, actor="test", reason="initial")
    return config, store, first


def degrade(tmp_path, config, store, periods=range(1, 13)):
    """Monitor passes over production outcomes that drop on the second spectrum from period 9 on."""
    starts = []
    for i in periods:
        ingest_period(tmp_path, store.path, i, means(0.95, 0.95 if i < 9 else 0.80))
        *_, found = monitor_pass(config, i)
        starts += found
    return starts


def drive(config, store, canary_id, *, budget=4000, error_rates=None):
    ctx = load_pipeline(config, PIPE)
    sent = 0
    while sent < budget:
        run(simulate_traffic(ctx, requests=200, seed=sent, error_rates=error_rates))
        sent += 200
        look = look_at_canary(store, canary_id)
        if look.action != "continue":
            return look
    raise AssertionError(f"canary {canary_id} did not decide within {budget} requests")


def test_a_running_canary_refuses_healing_and_the_refusal_is_stored(tmp_path):
    config, store, first = deployed(tmp_path, healing={"cooldown_minutes": 0})
    cfg = load_config(config)
    treatment = record(store, better_prompt(cfg.pipeline(PIPE).prompt.to_template()), parent=first)
    canary = begin_canary(store, pipeline=PIPE, control_hash=first, treatment_hash=treatment,
                          config=cfg.pipeline(PIPE).deployment.canary, actor="a person")
    assert degrade(tmp_path, config, store) == [], "no healing starts while a canary runs"
    refused = store.healing_decisions(PIPE)
    assert refused and all(not d["eligible"] and d["status"] == "refused" for d in refused)
    assert all(d["reason"] == f"canary {canary.canary_id} is already running for the pipeline" for d in refused)
    incident = store.incidents(PIPE)[0]
    assert incident["status"] == "open"
    lines = [e["summary"] for e in incident["timeline"] if e["kind"] == "healing_decision"]
    assert lines == [f"no healing: canary {canary.canary_id} is already running for the pipeline"], \
        "the same refusal is stored each pass but written on the timeline once"
    # The canary ends: the next pass may heal.
    store.update_canary(canary.canary_id, status="rolled_back", split_pct=0.0, reason="a person", finished=True)
    starts = degrade(tmp_path, config, store, periods=[13])
    assert len(starts) == 1 and store.healing_decision(starts[0].decision_id)["eligible"]


def test_a_healing_plans_a_prompt_for_the_degraded_model_against_the_one_serving_it_in_its_own_epoch(tmp_path):
    config, store, first = deployed(tmp_path)
    ctx = load_pipeline(config, PIPE)
    plan = plan_healing(ctx, store, "xl", "heal-1")
    assert (plan.model, plan.version, plan.epoch, plan.strategies) == ("xl", first, "healing:heal-1", ["auto"])
    own = record(store, better_prompt(ctx.prompt), scope="xl", parent=first)
    store.move_label(PIPE, "production", own, scope="xl", actor="test", reason="xl's own prompt")
    assert plan_healing(ctx, store, "xl", "heal-2").version == own
    # A healing's calls are other calls than the same ones outside its epoch; without an epoch, the ledger keys
    # are the bytes existing stores hold.
    mconf = ctx.config.models["xl"]
    messages = ctx.messages(ctx.prompt, ctx.configured_cases[0])
    plain = call_keys("simulator", mconf, messages, [0, 1])
    assert plain == call_keys("simulator", mconf, messages, [0, 1], "")
    assert set(plain).isdisjoint(call_keys("simulator", mconf, messages, [0, 1], "healing:heal-1"))
    assert call_keys("simulator", mconf, messages, [0], "healing:heal-1") != \
        call_keys("simulator", mconf, messages, [0], "healing:heal-2")


@pytest.mark.slow
def test_a_models_first_own_prompt_canaries_against_the_pipeline_prompt_and_promotes_for_that_model(tmp_path):
    config, store, first = deployed(tmp_path)
    cfg = load_config(config)
    scoped = record(store, better_prompt(cfg.pipeline(PIPE).prompt.to_template()), scope="xl", parent=first)
    plan = plan_release(cfg, PIPE, store, version=scoped, canary=True, actor="healing")
    store.release_deploy_lock(PIPE, plan.deployment_id)
    assert (plan.kind, plan.scope, plan.production) == ("canary", "xl", first), \
        "the control is what serves xl now: the pipeline's production prompt"
    canary = begin_canary(store, pipeline=PIPE, control_hash=first, treatment_hash=scoped, scope="xl",
                          config=cfg.pipeline(PIPE).deployment.canary, actor="healing")
    served = {resolve_prompt(PIPE, f"user-{k}", model="xl", store=store.path).arm for k in range(200)}
    assert served == {"control", "treatment"}
    assert resolve_prompt(PIPE, "user-1", model="small", store=store.path).version == first
    look = drive(config, store, canary.canary_id)
    assert look.action == "promote", look.reason
    conclude_canary(cfg, store, look, actor="test")
    assert store.get_label(PIPE, "production", "xl") == scoped
    assert store.get_label(PIPE, "production") == first, "the other models keep the pipeline's prompt"
    clear_cache()


def test_the_canarys_simulated_traffic_lives_in_the_drifted_world(tmp_path):
    config, store, first = deployed(tmp_path)
    spectrums = load_config(config).pipeline(PIPE).dataset.spectrums
    calm = run(simulate_traffic(load_pipeline(config, PIPE), requests=300, seed=3))
    data = yaml.safe_load(config.read_text())
    data["simulation"] = {"drifts": [{"kind": "skill_loss", "model": "sim-xl", "spectrum": s, "size": 20}
                                     for s in spectrums]}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    drifted = run(simulate_traffic(load_pipeline(config, PIPE), requests=300, seed=3))
    assert drifted.mean_score["production"] < calm.mean_score["production"] - 0.08, (calm, drifted)
    data["simulation"] = {"drifts": [{"kind": "error_rate", "model": "sim-xl", "size": 1.0}]}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    failing = run(simulate_traffic(load_pipeline(config, PIPE), requests=50, seed=3))
    assert failing.errors == {"production": 50}, "every attempt of every request fails"
    clear_cache()


def hand_over(tmp_path, prompt_of):
    """A healing that ended with its canary still running: incident in healing, decision finished as
    `canary_running`, the candidate's strategy outcome recorded by its optimization."""
    config, store, first = deployed(tmp_path, healing={"cooldown_minutes": 120})
    cfg = load_config(config)
    start, = degrade(tmp_path, config, store)
    now = period_time(13)
    treatment = record(store, prompt_of(cfg.pipeline(PIPE).prompt.to_template()), scope="xl", parent=first)
    store.record_strategy_outcomes([{
        "run_id": "optimization-heal", "candidate": treatment, "scope": "xl", "pipeline": PIPE, "strategy": "combined",
        "spectrum": start.spectrum, "failure_kind": "missed_fields", "dev_effect": 6.0, "test_effect": 5.0,
        "min_effect": 1.0, "success": True, "calls": 300, "cost_usd": 0.5, "simulated": True}])
    store.add_incident_event(start.incident_id, "deployment", now, "deployment started as a canary",
                             ref="deployment-heal")
    canary = begin_canary(store, pipeline=PIPE, control_hash=first, treatment_hash=treatment, scope="xl",
                          config=cfg.pipeline(PIPE).deployment.canary, actor="healing",
                          deployment_id="deployment-heal")
    record_canary(store, start.incident_id, None, now, canary.canary_id)
    finish_healing_incident(store, cfg, start.decision_id, start.incident_id, "canary_running",
                            "the canary is running on production traffic", now, calls=700, cost_usd=1.5,
                            alert_id=start.alert_id)
    assert store.incident(start.incident_id)["status"] == "healing"
    return config, store, start, canary


@pytest.mark.slow
def test_a_handed_over_canary_that_rolls_back_ends_its_incident_escalated_and_learning_hears_it(tmp_path):
    config, store, start, canary = hand_over(tmp_path, better_prompt)
    cfg = load_config(config)
    escalations = store.get_alert(start.alert_id).escalations
    look = drive(config, store, canary.canary_id, error_rates={"treatment": 0.3})
    assert look.action == "rollback"
    conclude_canary(cfg, store, look, actor="test")
    assert after_canary(store, cfg, canary.canary_id, period_time(14)) == start.incident_id
    incident = store.incident(start.incident_id)
    assert incident["status"] == "escalated" and incident["closed_at"] == period_time(14)
    assert [e["kind"] for e in incident["timeline"]][-2:] == ["canary", "escalated"]
    decision = store.healing_decision(start.decision_id)
    assert (decision["outcome"], decision["calls"]) == ("escalated", 700)
    assert store.get_alert(start.alert_id).escalations == escalations + 1
    outcome, = [r for r in store.strategy_outcomes(PIPE) if r["candidate"] == canary.treatment_hash]
    effect = store.get_canary(canary.canary_id).decision["effect"]
    assert outcome["test_effect"] == pytest.approx(100 * effect) and outcome["dev_effect"] == 6.0
    # Concluding again, or another canary, touches nothing more.
    assert after_canary(store, cfg, canary.canary_id, period_time(15)) is None
    clear_cache()


@pytest.mark.engine
@pytest.mark.slow
def test_promptcycle_canary_concludes_a_healings_canary_and_resolves_its_incident(prefect_harness, tmp_path, capsys):
    from promptcycle_cli.main import main

    config, store, start, canary = hand_over(tmp_path, better_prompt)
    code = main(["canary", "--config", str(config), "--simulate-traffic", "4000", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and out["status"] == "promoted", out
    incident = store.incident(start.incident_id)
    assert incident["status"] == "resolved"
    kinds = [e["kind"] for e in incident["timeline"]]
    assert kinds[0] == "alert" and kinds[-2:] == ["canary", "resolved"]
    assert "promoted" in incident["timeline"][-1]["summary"]
    assert store.healing_decision(start.decision_id)["outcome"] == "healed"
    assert store.get_label(PIPE, "production", "xl") == canary.treatment_hash
    outcome, = [r for r in store.strategy_outcomes(PIPE) if r["candidate"] == canary.treatment_hash]
    assert outcome["test_effect"] == pytest.approx(100 * store.get_canary(canary.canary_id).decision["effect"])
    clear_cache()
