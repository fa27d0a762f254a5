"""The four validation stages and the gate: syntax, content, integration (a real smoke run on the simulator),
quality (the optimization evidence), each with a stored, readable report."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from deploy_support import PIPE, better_prompt, deploy_inline, make_candidate, worse_prompt, write_config
from promptcycle.catalog import load_config
from promptcycle.config import ContentRules
from promptcycle.deploy.gate import check_quality, decide_gate
from promptcycle.deploy.validation import StageReport, validate_content, validate_syntax
from promptcycle.errors import GateError
from promptcycle.prompts import PromptTemplate
from promptcycle.sim.server import FaultConfig
from promptcycle.store import MetricsStore
from simserver import ServerThread

BASE = PromptTemplate(system="You are an analyst.", template="Record:\n{{customer}}\n\n{{question}}\nReply with JSON.")
FAST = {"serving_models": ["xl"], "integration": {"cases_per_spectrum": 1}, "content": {"required_sections": ["json"]},
        "targets": [{"kind": "file", "options": {"path": "deployed/prompt.json"}}]}


def run(coro):
    return asyncio.run(coro)


# -- syntax -----------------------------------------------------------------------------------------------------

def test_syntax_passes_when_the_template_uses_exactly_the_supplied_variables():
    report = validate_syntax(BASE, ["customer", "question"], sample_inputs={"customer": {"id": 1}, "question": "Q?"})
    assert report.status == "passed", report.reason
    assert "customer, question" in report.reason


def test_syntax_reports_unknown_missing_and_malformed_placeholders_with_their_position():
    candidate = PromptTemplate(system="You are {{persona}}.",
                               template="Record:\n{{customer}}\n\n  {{ 2nd }} and {{question\nReply with JSON.")
    report = validate_syntax(candidate, ["customer", "question"], reference=BASE)
    assert report.status == "failed"
    failures = {(c.name, c.location) for c in report.failures}
    assert ("unknown placeholder", "system line 1, column 9") in failures
    assert ("well-formed placeholder", "template line 4, column 3") in failures  # {{ 2nd }}
    assert ("well-formed placeholder", "template line 4, column 17") in failures  # unclosed {{question
    missing = [c for c in report.failures if c.name == "missing placeholder"]
    assert missing and "'question'" in missing[0].detail and "template line 4, column 1" in missing[0].detail
    assert report.reason.startswith("malformed placeholder '{{ 2nd }}'") or "placeholder" in report.reason
    # The report survives the store round trip and reads as a table.
    again = StageReport.from_dict(report.to_dict())
    assert again == report and "| unknown placeholder | **FAIL** |" in again.to_markdown()


# -- content ----------------------------------------------------------------------------------------------------

def test_content_finds_secrets_without_echoing_them():
    leaked = PromptTemplate(system="Use api_key = 'AbCdEf123456789' when asked.",
                            template="{{customer}} {{question}} JSON. Token sk-proj-abcdefghijklmnopqrstu")
    report = validate_content(leaked, ContentRules())
    assert report.status == "failed"
    kinds = [c.detail for c in report.failures]
    assert "looks like an OpenAI-style API key (not shown)" in kinds
    assert "looks like a credential assignment (not shown)" in kinds
    text = str(report.to_dict())
    assert "abcdefghijklmnop" not in text and "AbCdEf123456789" not in text


def test_content_checks_length_required_sections_and_banned_patterns():
    rules = ContentRules(max_chars=60, required_sections=[r"\bJSON\b", "customer record"],
                         banned_patterns=[r"\bTODO\b"])
    prompt = PromptTemplate(template="{{customer}}\n{{question}}\nTODO: reply with JSON and more words here ok")
    report = validate_content(prompt, rules)
    details = [c.detail for c in report.failures]
    assert any("over the limit of 60" in d for d in details)
    assert "required section 'customer record' is absent" in details
    banned = [c for c in report.failures if c.name == "banned pattern"]
    assert banned[0].location == "template line 3, column 1"
    assert validate_content(BASE, ContentRules(required_sections=["json"])).status == "passed"


# -- the stages through a deployment ----------------------------------------------------------------------------

@pytest.fixture
def deployed(tmp_path):
    """A pipeline (models small and xl) whose configured prompt was deployed: production exists."""
    config = write_config(tmp_path, models=["small", "xl"], deployment=FAST)
    first = run(deploy_inline(config))
    return config, first


def test_a_first_deployment_runs_syntax_and_content_and_makes_the_configured_prompt_production(deployed, tmp_path):
    config, first = deployed
    plan, reports = first["plan"], first["reports"]
    assert plan.kind == "initial" and plan.production is None
    assert [reports[s].status for s in ("syntax", "content", "integration", "quality")] == [
        "passed", "passed", "skipped", "skipped"]
    assert "nothing in production yet" in reports["quality"].reason
    store = first["store"]
    configured = load_config(config).pipeline(PIPE).prompt.to_template().hash
    assert store.get_label(PIPE, "production") == plan.version == configured
    stored = store.stage_reports(plan.deployment_id)
    assert [r["stage"] for r in stored] == ["syntax", "content", "integration", "quality"]
    assert stored[0]["report"]["checks"][0]["name"] == "well-formed placeholders"
    assert (tmp_path / "deployed" / "prompt.json").exists()


def test_a_candidate_with_evidence_passes_all_four_stages_and_goes_to_production(deployed, tmp_path):
    config, first = deployed
    base = load_config(config).pipeline(PIPE).prompt.to_template()
    version = make_candidate(config, PIPE, better_prompt(base), models=["small", "xl"])
    second = run(deploy_inline(config))
    reports = second["reports"]
    assert {s: r.status for s, r in reports.items()} == {s: "passed" for s in reports}, \
        {s: r.reason for s, r in reports.items()}
    assert second["gate"].decision == "pass"
    smoke = reports["integration"].details
    assert smoke["simulated"] is True and set(smoke["models"]) == {"small", "xl"}
    assert reports["quality"].details["quality"] >= 90 and reports["quality"].details["p_value"] <= 0.05
    store = second["store"]
    assert store.get_label(PIPE, "production") == version
    assert store.get_label(PIPE, "previous") == first["plan"].version
    gate = [d for d in store.decisions(pipeline=PIPE, kind="gate") if d.prompt_hash == version][-1]
    assert gate.decision == "pass" and gate.evidence["stages"]["quality"]["status"] == "passed"
    record = store.get_deployment(second["plan"].deployment_id)
    assert record.status == "deployed" and record.from_hash == first["plan"].version and not record.forced
    assert (tmp_path / "deployed" / "prompt.json").read_bytes().count(version.encode()) == 1


def test_quality_stage_failures_name_the_rule(deployed):
    config, first = deployed
    cfg = load_config(config)
    pipe, production = cfg.pipeline(PIPE), first["plan"].version
    store = first["store"]
    base = pipe.prompt.to_template()

    report = check_quality(store, PIPE, pipe, "0000000000000000", production)
    assert report.status == "failed" and "no confirmation decision" in report.reason

    worse = make_candidate(config, PIPE, worse_prompt(base), models=["xl"], label=False)
    report = check_quality(store, PIPE, pipe, worse, production)
    failed = {c.name for c in report.failures}
    assert {"decision", "significant", "minimum effect", "absolute quality"} <= failed

    better = make_candidate(config, PIPE, better_prompt(base), models=["small", "xl"], results_suite_ok=False)
    report = check_quality(store, PIPE, pipe, better, production)
    assert [c.name for c in report.failures] == ["results data quality"]
    strict = pipe.model_copy(deep=True)
    strict.deployment.quality.min_quality = 99.0
    assert {c.name for c in check_quality(store, PIPE, strict, better, production).failures} == {
        "results data quality", "absolute quality"}
    report = check_quality(store, PIPE, pipe, better, "ffffffffffffffff")  # production moved since the evidence
    assert "compared with production" in {c.name for c in report.failures}


def test_a_failing_stage_blocks_with_its_reason_and_force_records_it(deployed, tmp_path):
    config, first = deployed
    base = load_config(config).pipeline(PIPE).prompt.to_template()
    store = first["store"]
    from deploy_support import record_version

    worse = record_version(store, PIPE, worse_prompt(base), parent=first["plan"].version)
    blocked = run(deploy_inline(config, version=worse))
    reports = blocked["reports"]
    assert reports["content"].status == "failed" and "required section 'json' is absent" in reports["content"].reason
    assert reports["integration"].status == "skipped" and "the content stage failed" in reports["integration"].reason
    assert blocked["gate"].blocked and blocked["result"] is None
    assert store.get_label(PIPE, "production") == first["plan"].version
    assert store.get_deployment(blocked["plan"].deployment_id).status == "blocked"

    forced = run(deploy_inline(config, version=worse, force=True))
    reports = forced["reports"]
    assert reports["integration"].status == "failed"
    assert "miss the configured format" in reports["integration"].reason
    assert forced["gate"].decision == "forced" and store.get_label(PIPE, "production") == worse
    record = store.get_deployment(forced["plan"].deployment_id)
    assert record.forced and record.status == "deployed"
    [event] = [e for e in store.label_history(PIPE, "production") if e.to_hash == worse]
    assert event.forced is True


def test_integration_fails_on_provider_errors_after_retries(tmp_path):
    with ServerThread(faults=FaultConfig(server_error_rate=1.0)) as server:
        data = yaml.safe_load(write_config(tmp_path, models=["xl"], deployment=FAST).read_text())
        data["providers"]["local"] = {"kind": "openai", "base_url": server.base_url, "max_retries": 1,
                                      "backoff_seconds": 0.01, "max_backoff_seconds": 0.02}
        data["models"]["xl"]["provider"] = "local"
        config = tmp_path / "pipelines.yaml"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        run(deploy_inline(config))
        base = load_config(config).pipeline(PIPE).prompt.to_template()
        store = MetricsStore(tmp_path / "metrics.duckdb")
        from deploy_support import record_version

        version = record_version(store, PIPE, better_prompt(base), parent=base.hash)
        outcome = run(deploy_inline(config, version=version))
    report = outcome["reports"]["integration"]
    assert report.status == "failed"
    assert "calls to xl failed after retries (ServerError" in report.reason
    assert outcome["gate"].blocked and store.get_label(PIPE, "production") == base.hash
    smoke = store.get_run(report.details["run_id"])
    assert smoke.kind == "smoke" and smoke.status == "failed"


def test_the_gate_decision():
    ok = StageReport("syntax", "passed", "fine")
    bad = StageReport("quality", "failed", "no evidence")
    assert decide_gate([ok]).decision == "pass"
    blocked = decide_gate([ok, bad])
    assert blocked.blocked and blocked.failed_stages == ["quality"] and "quality: no evidence" in blocked.reason
    forced = decide_gate([ok, bad], force=True)
    assert forced.decision == "forced" and "FORCED" in forced.reason
    assert issubclass(GateError, Exception)


def test_the_quality_stage_reads_the_spectrum_harm_test_and_still_judges_older_evidence():
    from promptcycle.deploy.gate import _regresses

    # evidence of the harm test: blocked only when a spectrum is shown worse than -margin
    assert not _regresses({"spectrum": "s", "delta": -0.01, "upper_bound": 0.02, "ci_low": -0.04}, 0.0)
    assert _regresses({"spectrum": "s", "delta": -0.06, "upper_bound": -0.01, "ci_low": -0.11}, 0.0)
    assert not _regresses({"spectrum": "s", "delta": -0.06, "upper_bound": -0.01}, 0.02)
    # evidence written before the harm test: its non-inferiority lower bound, as it was judged then
    assert _regresses({"spectrum": "s", "delta": 0.01, "ci_low": -0.04}, 0.03)
    assert not _regresses({"spectrum": "s", "delta": 0.05, "ci_low": 0.01}, 0.03)
