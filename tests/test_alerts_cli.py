"""The `alerts:` configuration (bad input named by file, path and expectation) and `promptcycle alerts`
end to end: list, ack, snooze."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from promptcycle.alerts import process_findings
from promptcycle.alerts.policy import Finding
from promptcycle.cli import main
from promptcycle.commands.alerts import parse_duration
from promptcycle.config import effective_alerts, load_config
from promptcycle.errors import ConfigError
from promptcycle.store import MetricsStore

PIPE = "customer-insights"


def write(repo_config: Path, top: dict | None = None, pipeline: dict | None = None) -> Path:
    data = yaml.safe_load(repo_config.read_text())
    if top is not None:
        data["alerts"] = top
    if pipeline is not None:
        data["pipelines"][PIPE]["alerts"] = pipeline
    repo_config.write_text(yaml.safe_dump(data, sort_keys=False))
    return repo_config


@pytest.mark.parametrize(("top", "expect"), [
    ({"channels": [{"kind": "pager"}]},
     ["alerts.channels.0.kind", "unknown alert channel kind 'pager'", "console, email, file, prefect_event, "
      "prefect_notification, webhook"]),
    ({"channels": [{"kind": "webhook", "options": {"url": "ftp://x"}}]},
     ["alerts.channels.0.options.url", "url must start with http:// or https://"]),
    ({"channels": [{"kind": "webhook", "options": {}}]}, ["alerts.channels.0.options.url", "missing required key"]),
    ({"channels": [{"kind": "email", "options": {"host": "h", "from_addr": "a", "to": ["b"], "pasword": "x"}}]},
     ["alerts.channels.0.options.pasword", "unknown key"]),
    ({"channels": [{"kind": "console", "min_severity": "urgent"}]},
     ["alerts.channels.0.min_severity", "'info', 'low', 'medium', 'high' or 'critical'", "found 'urgent'"]),
    ({"channels": [{"kind": "console"}, {"kind": "console"}]}, ["alerts.channels.1.name", "two channels"]),
    ({"cooldown_minutes": -5}, ["alerts.cooldown_minutes", "greater than or equal to 0", "found -5"]),
    ({"escalation": {"after": 30}}, ["alerts.escalation.after", "unknown key"]),
    ({"channels": [{"kind": "prefect_notification", "options": {"block": "ops"}}]},
     ["alerts.channels.0.options.block", "'<block type slug>/<name>'"]),
])
def test_bad_alerts_config_is_rejected_naming_file_path_and_expectation(repo_config, top, expect):
    write(repo_config, top=top)
    with pytest.raises(ConfigError) as caught:
        load_config(repo_config)
    text = str(caught.value)
    assert str(repo_config) in text
    for part in expect:
        assert part in text, text


def test_bad_pipeline_alerts_are_named_under_the_pipeline(repo_config):
    write(repo_config, pipeline={"channels": [{"kind": "sms"}]})
    with pytest.raises(ConfigError, match=rf"pipelines\.{PIPE}\.alerts\.channels\.0\.kind: unknown alert channel"):
        load_config(repo_config)


def test_a_pipeline_overrides_only_the_keys_it_sets(repo_config):
    write(repo_config, top={"cooldown_minutes": 30, "channels": [{"kind": "file", "options": {"path": "a.jsonl"}}]},
          pipeline={"escalation": {"after_minutes": 45}})
    alerts = effective_alerts(load_config(repo_config), PIPE)
    assert (alerts.cooldown_minutes, alerts.escalation.after_minutes) == (30, 45)
    assert [c.kind for c in alerts.channels] == ["file"]
    default = effective_alerts(load_config(write(repo_config, top={}, pipeline=None)), PIPE)
    assert [c.kind for c in default.channels] == ["console"] and default.cooldown_minutes == 15


def test_durations():
    assert parse_duration("2h") == timedelta(hours=2) and parse_duration("90m") == timedelta(minutes=90)
    for bad in ("2", "h", "-1h", "0m", "2 hours"):
        with pytest.raises(ConfigError, match="s, m, h, d or w"):
            parse_duration(bad)


def _cli(capsys, *argv: str) -> tuple[int, dict]:
    code = main(list(argv))
    out = capsys.readouterr().out.strip().splitlines()
    return code, (json.loads(out[-1]) if out else {})


def test_cli_lists_acknowledges_and_snoozes(repo_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PROMPTCYCLE_DATA_IN_PROCESS", "1")
    store_path = tmp_path / "metrics.duckdb"
    store = MetricsStore(store_path)
    config = load_config(repo_config)
    now = datetime.now(timezone.utc)
    process_findings(store, config, PIPE, [
        Finding("cusum", PIPE, "xl", "credit_analysis", "high", False, 5.0, "quality fell 6 points"),
        Finding("stale", PIPE, "*", "*", "medium", False, None, "no outcomes for 3 h")], now - timedelta(minutes=5))
    common = ["--config", str(repo_config), "--store", str(store_path)]

    code, listed = _cli(capsys, "alerts", *common, "--json")
    assert code == 0
    assert sorted((a["detector"], a["severity"], a["status"]) for a in listed["open"]) == [
        ("cusum", "high", "open"), ("stale", "medium", "open")]
    assert [e["kind"] for e in listed["history"]] == ["raised", "raised"]
    ids = {a["detector"]: a["alert_id"] for a in listed["open"]}

    code, acked = _cli(capsys, "alerts", "ack", str(ids["cusum"]), *common, "--json")
    assert code == 0 and acked["alert"]["status"] == "acknowledged" and acked["event"]["kind"] == "acknowledged"
    code, snoozed = _cli(capsys, "alerts", "snooze", str(ids["stale"]), "--for", "2h", *common, "--json")
    assert code == 0 and snoozed["alert"]["status"] == "snoozed"
    until = datetime.fromisoformat(snoozed["alert"]["snoozed_until"])
    assert timedelta(hours=1, minutes=59) < until - now < timedelta(hours=2, minutes=1)

    # Recorded in the store, and shown by the human listing.
    assert store.get_alert(ids["cusum"]).acknowledged_by
    assert main(["alerts", "list", *common]) == 0
    out = capsys.readouterr().out
    assert "2 open alert(s)" in out and "acknowledged" in out and "snoozed until" in out
    assert "snoozed" in out.split("history")[1] and "acknowledged" in out.split("history")[1]

    # Bad input: exit 2 with the reason; an unknown id says where to look.
    assert main(["alerts", "snooze", str(ids["stale"]), "--for", "soon", *common]) == 2
    assert "cannot read 'soon' as a duration" in capsys.readouterr().err
    assert main(["alerts", "ack", *common]) == 2
    assert main(["alerts", "ack", "999", *common]) == 1
    assert "no alert 999" in capsys.readouterr().err
