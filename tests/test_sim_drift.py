"""Simulated drift: each kind changes what it should, from its start and not before; same seed, same answers."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import httpx2
import pytest
import yaml

from promptcycle.config import load_config
from promptcycle.errors import ConfigError
from promptcycle.sim.calibration import LEVER_PROMPTS, load_bundled_cases, measure
from promptcycle.sim.drift import Drift, DriftSchedule, parse_drift
from promptcycle.sim.server import LatencyOverride, create_app
from promptcycle.sim.world import respond

from test_config import REPO, repo_yaml, write

CASES = load_bundled_cases()
CREDIT = [c for c in CASES if c["spectrum"] == "credit_analysis"]
PROFILE = [c for c in CASES if c["spectrum"] == "customer_profile"]


def quality(model, prompt, cases, drifts=()):
    return measure(model, LEVER_PROMPTS[prompt], cases, temperature=0.7, repeats=3, drifts=tuple(drifts)).quality


@pytest.mark.parametrize("model", ["sim-small", "sim-large"])
def test_skill_loss_costs_about_its_size_on_its_spectrum_only(model):
    drift = Drift("skill_loss", 5, model=model, spectrum="credit_analysis")
    lost = quality(model, "default", CREDIT) - quality(model, "default", CREDIT, [drift])
    assert 2.5 <= lost <= 8.0, lost
    assert quality(model, "default", PROFILE, [drift]) == quality(model, "default", PROFILE)
    assert quality("sim-medium", "default", CREDIT, [drift]) == quality("sim-medium", "default", CREDIT)


def test_field_omission_costs_points_and_a_prompt_naming_the_fields_repairs_it():
    drift = Drift("field_omission", 5, model="sim-large", spectrum="credit_analysis")
    lost = quality("sim-large", "default", CREDIT) - quality("sim-large", "default", CREDIT, [drift])
    assert 3.0 <= lost <= 9.0, lost
    # the per-topic checklist names the credit fields: the drift no longer costs anything
    with_checklist = quality("sim-large", "checklist", CREDIT, [drift])
    assert with_checklist == quality("sim-large", "checklist", CREDIT)
    assert with_checklist > quality("sim-large", "default", CREDIT)  # a real repair, above pre-drift quality


def test_latency_drift_raises_latency_by_its_factor():
    before = measure("sim-small", LEVER_PROMPTS["default"], CREDIT)
    after = measure("sim-small", LEVER_PROMPTS["default"], CREDIT, drifts=(Drift("latency", 1.0, "sim-small"),))
    assert after.latency_ms == pytest.approx(2 * before.latency_ms, rel=1e-9)
    assert after.latency < before.latency
    assert (after.completeness, after.accuracy) == (before.completeness, before.accuracy)


def test_schedule_starts_after_its_call_count_and_before_it_nothing_changes():
    schedule = DriftSchedule([Drift("skill_loss", 8, "sim-small", "credit_analysis", start_after_calls=3)])
    case = CREDIT[0]
    messages = LEVER_PROMPTS["default"].render(case["inputs"])
    plain = respond("sim-small", messages, temperature=0.7, seed=1)
    assert [bool(schedule.on_call("sim-small")) for _ in range(5)] == [False, False, False, True, True]
    assert schedule.on_call("sim-medium") == ()  # another model
    assert respond("sim-small", messages, temperature=0.7, seed=1, drifts=()) == plain
    active = schedule.active("sim-small")
    assert respond("sim-small", messages, temperature=0.7, seed=1, drifts=active) == \
        respond("sim-small", messages, temperature=0.7, seed=1, drifts=active)  # deterministic


def test_schedule_follows_an_injected_clock_and_shifts_the_question_mix():
    now = [datetime(2026, 1, 1, tzinfo=timezone.utc)]
    schedule = DriftSchedule([Drift("question_mix", 3, spectrum="credit_analysis",
                                    start_at=datetime(2026, 1, 1, 6, tzinfo=timezone.utc))], clock=lambda: now[0])
    spectrums = ["customer_profile", "credit_analysis"]
    assert schedule.spectrum_weights(spectrums) == {"customer_profile": 0.5, "credit_analysis": 0.5}
    now[0] += timedelta(hours=6)  # six simulated hours, no waiting
    assert schedule.spectrum_weights(spectrums) == {"customer_profile": 0.25, "credit_analysis": 0.75}


def _post(app, n, model="sim-small"):
    body = {"model": model, "messages": LEVER_PROMPTS["default"].render(CREDIT[0]["inputs"]), "temperature": 0}

    async def go():
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://sim/v1") as c:
            return [(await c.post("/chat/completions", json=body)).status_code for _ in range(n)]

    return asyncio.run(go())


def test_error_rate_drift_raises_errors_from_its_start_over_the_server():
    drift = DriftSchedule([Drift("error_rate", 0.3, "sim-small", start_after_calls=100)])
    app = create_app(latency=LatencyOverride(fixed_ms=0), drift=drift)
    statuses = _post(app, 500)
    assert all(s == 200 for s in statuses[:100])
    errors = sum(s == 503 for s in statuses[100:])
    assert 0.22 * 400 <= errors <= 0.38 * 400, errors
    assert _post(app, 50, model="sim-medium") == [200] * 50  # only the drifted model
    # same seed, same faults
    again = create_app(latency=LatencyOverride(fixed_ms=0),
                       drift=DriftSchedule([Drift("error_rate", 0.3, "sim-small", start_after_calls=100)]))
    assert _post(again, 500) == statuses


def test_drift_flag_parses_and_bad_ones_are_explained():
    d = parse_drift("skill_loss:sim-small:credit_analysis:5@1000")
    assert (d.kind, d.model, d.spectrum, d.size, d.start_after_calls) == (
        "skill_loss", "sim-small", "credit_analysis", 5.0, 1000)
    assert parse_drift("latency:*:*:0.5@2026-01-01T06:00:00+00:00").start_at.hour == 6
    with pytest.raises(ValueError, match="kind:model:spectrum:size"):
        parse_drift("skill_loss-sim-small")
    with pytest.raises(ValueError, match="unknown drift kind"):
        parse_drift("meltdown:sim-small:credit_analysis:5")


def test_simulation_section_in_pipelines_yaml(tmp_path):
    data = repo_yaml()
    data["simulation"] = {"drifts": [{"kind": "field_omission", "model": "sim-large", "spectrum": "credit_analysis",
                                      "size": 6, "start_after_calls": 50}]}
    cfg = load_config(write(tmp_path, data))
    schedule = cfg.simulation.schedule()
    assert schedule.drifts == (Drift("field_omission", 6, "sim-large", "credit_analysis", start_after_calls=50),)
    data["simulation"]["drifts"][0]["kind"] = "meltdown"
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, data))
    assert "simulation.drifts.0.kind" in str(exc.value)
    data["simulation"]["drifts"][0].update(kind="skill_loss", colour="red")
    with pytest.raises(ConfigError, match="simulation.drifts.0.colour: unknown key"):
        load_config(write(tmp_path, data))
    data["simulation"]["drifts"][0].pop("colour")
    data["simulation"]["drifts"][0]["model"] = "gpt-9"
    with pytest.raises(ConfigError, match="unknown simulated model 'gpt-9'"):
        load_config(write(tmp_path, data))


def test_the_in_process_simulator_provider_applies_the_configured_drifts(tmp_path):
    from promptcycle.evaluation.pool import close_providers, get_provider

    data = repo_yaml()
    small = next(name for name, m in data["models"].items() if m["model"] == "sim-small")
    data["simulation"] = {"drifts": [{"kind": "skill_loss", "model": "sim-small", "spectrum": "credit_analysis",
                                      "size": 30, "start_after_calls": 2}]}
    drifted = load_config(write(tmp_path, data))
    plain = load_config(REPO / "pipelines.yaml")
    prompts = [LEVER_PROMPTS["default"].render(c["inputs"]) for c in CREDIT[:12]]

    async def answers(config):
        provider = get_provider(config, config.models[small].provider)
        try:
            return [(await provider.complete(small, m, seed=0, temperature=0)).text for m in prompts]
        finally:
            await close_providers()

    before, after = asyncio.run(answers(plain)), asyncio.run(answers(drifted))
    assert after[:2] == before[:2]  # the first two calls come before the drift's start
    assert sum(a != b for a, b in zip(after[2:], before[2:])) >= 3  # then the model answers worse
