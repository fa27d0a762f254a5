"""The alert policy, pure and through the store: dedup, cooldown, a rise bypassing it, recovery, snooze,
acknowledgement and escalation — on a simulated clock, so hours pass in milliseconds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from promptcycle.alerts import process_findings
from promptcycle.alerts.policy import (
    Finding,
    KeyState,
    PolicySettings,
    decide,
    escalation_due,
    raise_severity,
    severity_rank,
)
from promptcycle.config import load_config
from promptcycle.store import MetricsStore

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
PIPE = "customer-insights"


def finding(severity: str = "high", in_control: bool = False, *, model: str = "xl",
            spectrum: str = "credit_analysis", detector: str = "cusum") -> Finding:
    return Finding(detector=detector, pipeline=PIPE, model=model, spectrum=spectrum, severity=severity,
                   in_control=in_control, statistic=5.2, message="quality fell 6 points",
                   evidence={"mean_before": 0.95, "mean_now": 0.89})


# -- pure -----------------------------------------------------------------------------------------------------------

def test_severities_are_ordered_and_escalation_caps_at_critical():
    assert [severity_rank(s) for s in ("info", "low", "medium", "high", "critical")] == [0, 1, 2, 3, 4]
    assert raise_severity("medium") == "high" and raise_severity("high", 5) == "critical"
    with pytest.raises(ValueError, match="info, low, medium, high, critical"):
        Finding("cusum", PIPE, "xl", "s", "severe", False)


def test_pure_policy_cooldown_blocks_a_second_page_but_a_rise_bypasses_it():
    settings = PolicySettings(cooldown=timedelta(minutes=15))
    # The key paged 5 minutes ago at high (its alert since resolved); a new alert at the same severity waits.
    state = KeyState(last_page_at=T0 - timedelta(minutes=5), last_page_severity="high")
    same = decide(finding("high"), state, settings, T0)
    assert (same.kind, same.notify, same.opens) == ("raised", False, True)
    assert "cooldown" in same.reason
    rise = decide(finding("critical"), state, settings, T0)
    assert (rise.kind, rise.notify) == ("raised", True) and "rose" in rise.reason
    later = decide(finding("high"), state, settings, T0 + timedelta(minutes=11))
    assert later.notify


def test_pure_policy_in_control_without_an_alert_records_nothing():
    assert decide(finding(in_control=True), KeyState(), PolicySettings(), T0) is None


def test_pure_escalation_waits_for_the_deadline_and_skips_acknowledged_alerts():
    settings = PolicySettings(escalate_after=timedelta(minutes=60))
    state = KeyState(alert_id="1", severity="medium", status="open", first_seen=T0, first_paged_at=T0,
                     last_paged_severity="medium", last_page_at=T0, last_page_severity="medium")
    assert escalation_due(state, settings, T0 + timedelta(minutes=59)) is None
    due = escalation_due(state, settings, T0 + timedelta(minutes=60))
    assert (due.kind, due.severity, due.notify) == ("escalated", "high", True)
    acked = KeyState(**{**state.__dict__, "acknowledged": True})
    assert escalation_due(acked, settings, T0 + timedelta(hours=5)) is None
    assert escalation_due(state, PolicySettings(), T0 + timedelta(hours=5)) is None  # off by default


# -- through the store ------------------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path) -> MetricsStore:
    return MetricsStore(tmp_path / "metrics.duckdb")


@pytest.fixture
def config(repo_config):
    return load_config(repo_config)


def run(store, config, at: datetime, *findings: Finding) -> list:
    return process_findings(store, config, PIPE, list(findings), at)


def test_one_alert_per_key_pages_once_while_it_lasts_then_one_recovery(store, config):
    pages = []
    for i in range(6):  # six monitor passes 30 minutes apart, out of control
        pages += [e for e in run(store, config, T0 + timedelta(minutes=30 * i), finding("high")) if e.notify]
    assert [(e.kind, e.severity) for e in pages] == [("raised", "high")]
    [alert] = store.alerts(PIPE)
    assert (alert.status, alert.occurrences, alert.pages) == ("open", 6, 1)
    assert [e.kind for e in store.alert_events(alert.alert_id)][::-1] == ["raised"] + ["suppressed"] * 5

    recovered = run(store, config, T0 + timedelta(hours=3), finding(in_control=True))
    assert [(e.kind, e.notify, e.deliveries) for e in recovered] == [("recovered", True, ("console",))]
    assert run(store, config, T0 + timedelta(hours=4), finding(in_control=True)) == []  # once per alert
    assert store.get_alert(alert.alert_id).status == "resolved"


def test_distinct_keys_make_distinct_alerts_and_the_worst_finding_of_a_key_speaks(store, config):
    events = run(store, config, T0, finding("medium"), finding("high"), finding("low", spectrum="customer_profile"),
                 finding("low", detector="ewma"))
    assert sorted((e.kind, e.severity) for e in events) == [("raised", "high"), ("raised", "low"), ("raised", "low")]
    assert len(store.alerts(PIPE, open_only=True)) == 3


def test_cooldown_defers_a_flapping_key_and_a_rise_bypasses_it(store, config):
    run(store, config, T0, finding("high"))
    run(store, config, T0 + timedelta(minutes=1), finding(in_control=True))
    flap = run(store, config, T0 + timedelta(minutes=5), finding("high"))
    assert [(e.kind, e.notify) for e in flap] == [("raised", False)] and "cooldown" in flap[0].reason
    worse = run(store, config, T0 + timedelta(minutes=6), finding("critical"))
    assert [(e.kind, e.severity, e.notify) for e in worse] == [("repeated", "critical", True)]
    # A deferred page goes out once the cooldown has passed, if the key still fires.
    run(store, config, T0 + timedelta(minutes=10), finding(in_control=True))
    waits = run(store, config, T0 + timedelta(minutes=12), finding("high"))  # the key paged 6 min ago
    assert [(e.kind, e.notify) for e in waits] == [("raised", False)]
    assert [(e.kind, e.notify) for e in run(store, config, T0 + timedelta(minutes=20), finding("high"))] == [
        ("suppressed", False)]
    late = run(store, config, T0 + timedelta(minutes=22), finding("high"))
    assert [(e.kind, e.notify) for e in late] == [("repeated", True)] and "cooldown has passed" in late[0].reason


def test_a_recovery_of_an_alert_that_never_paged_is_quiet(store, config):
    run(store, config, T0, finding("high"))
    run(store, config, T0 + timedelta(minutes=1), finding(in_control=True))
    run(store, config, T0 + timedelta(minutes=2), finding("high"))  # deferred by the cooldown
    quiet = run(store, config, T0 + timedelta(minutes=3), finding(in_control=True))
    assert [(e.kind, e.notify) for e in quiet] == [("recovered", False)]


def test_snoozed_key_is_recorded_but_pages_nobody_until_the_snooze_ends(store, config):
    [raised] = run(store, config, T0, finding("medium"))
    store.snooze_alert(raised.alert_id, T0 + timedelta(hours=2), "ops", T0 + timedelta(minutes=1))
    during = run(store, config, T0 + timedelta(minutes=30), finding("critical"))
    assert [(e.kind, e.notify) for e in during] == [("suppressed", False)] and "snoozed" in during[0].reason
    quiet = run(store, config, T0 + timedelta(minutes=60), finding(in_control=True))
    assert [(e.kind, e.notify) for e in quiet] == [("recovered", False)]
    # The snooze holds for the key, so a new alert during it stays quiet too …
    again = run(store, config, T0 + timedelta(minutes=90), finding("critical"))
    assert [(e.kind, e.notify) for e in again] == [("raised", False)]
    # … and pages as soon as the snooze has ended.
    after = run(store, config, T0 + timedelta(hours=2, minutes=1), finding("critical"))
    assert [(e.kind, e.notify, e.severity) for e in after] == [("repeated", True, "critical")]
    assert store.get_alert(after[0].alert_id).status == "open"
    kinds = [e.kind for e in store.alert_events(pipeline=PIPE, limit=None)][::-1]
    assert kinds == ["raised", "snoozed", "suppressed", "recovered", "raised", "repeated"]


def test_acknowledged_alert_stops_escalating_and_pages_again_only_when_worse(store, config, tmp_path):
    cfg = config.model_copy(update={"alerts": config.alerts.model_copy(update={
        "escalation": config.alerts.escalation.model_copy(update={"after_minutes": 60}),
        "renotify_minutes": 30})})
    [raised] = run(store, cfg, T0, finding("medium"))
    store.acknowledge_alert(raised.alert_id, "ops", T0 + timedelta(minutes=5))
    for minutes in (30, 60, 90, 120):
        assert not [e for e in run(store, cfg, T0 + timedelta(minutes=minutes), finding("medium")) if e.notify]
    worse = run(store, cfg, T0 + timedelta(minutes=150), finding("high"))
    assert [(e.kind, e.notify) for e in worse] == [("repeated", True)]
    assert store.get_alert(raised.alert_id).status == "acknowledged"


def test_unacknowledged_alert_escalates_to_the_escalation_channel(store, config):
    from promptcycle.config import AlertChannelConfig, AlertEscalationConfig

    cfg = config.model_copy(update={"alerts": config.alerts.model_copy(update={
        "channels": [AlertChannelConfig(kind="console"), AlertChannelConfig(
            kind="file", name="on-call", escalation_only=True, options={"path": "pages.jsonl"})],
        "escalation": AlertEscalationConfig(after_minutes=60)})})
    [raised] = run(store, cfg, T0, finding("medium"))
    assert raised.deliveries == ("console",)
    assert not [e for e in run(store, cfg, T0 + timedelta(minutes=30), finding("medium")) if e.notify]
    escalated = [e for e in run(store, cfg, T0 + timedelta(minutes=60), finding("medium")) if e.notify]
    assert [(e.kind, e.severity, e.deliveries) for e in escalated] == [("escalated", "high", ("console", "on-call"))]
    # The next escalation waits another hour from this one; it tops out at critical.
    assert not [e for e in run(store, cfg, T0 + timedelta(minutes=90), finding("medium")) if e.notify]
    second = [e for e in run(store, cfg, T0 + timedelta(minutes=120), finding("medium")) if e.notify]
    assert [(e.kind, e.severity) for e in second] == [("escalated", "critical")]
    assert not [e for e in run(store, cfg, T0 + timedelta(hours=5), finding("medium")) if e.notify]
    recovered = run(store, cfg, T0 + timedelta(hours=6), finding(in_control=True))
    assert recovered[0].deliveries == ("console", "on-call")  # the on-call channel hears the all-clear


def test_explicit_escalation_pages_even_without_a_deadline(store, config):
    from promptcycle.alerts import escalate_alert

    [raised] = run(store, config, T0, finding("high"))
    event = escalate_alert(store, config, raised.alert_id, "healing found no prompt that repairs it",
                           actor="healing", now=T0 + timedelta(minutes=40))
    assert (event.kind, event.severity, event.notify, event.actor) == ("escalated", "critical", True, "healing")
    assert store.get_alert(raised.alert_id).escalations == 1


def test_channels_below_their_minimum_severity_get_no_delivery(store, config):
    from promptcycle.config import AlertChannelConfig

    cfg = config.model_copy(update={"alerts": config.alerts.model_copy(update={"channels": [
        AlertChannelConfig(kind="console"), AlertChannelConfig(kind="console", name="pager", min_severity="high")]})})
    low, high = run(store, cfg, T0, finding("low", spectrum="a"), finding("high", spectrum="b"))
    assert {low.severity: low.deliveries, high.severity: high.deliveries} == {
        "low": ("console",), "high": ("console", "pager")}
    assert len(store.alert_deliveries(state="pending")) == 3


def test_the_data_worker_serves_the_alert_store_by_method_name(repo_config, tmp_path, monkeypatch):
    from promptcycle import dataworker
    from promptcycle.alerts import deliver_alerts
    from promptcycle.store.remote import RemoteStore, open_store

    monkeypatch.delenv("PROMPTCYCLE_DATA_IN_PROCESS", raising=False)
    config = load_config(repo_config)
    store = open_store(tmp_path / "metrics.duckdb")
    assert isinstance(store, RemoteStore)
    try:
        [raised] = process_findings(store, config, PIPE, [finding("high")], T0)
        report = deliver_alerts(store, config, PIPE, T0)
        store.acknowledge_alert(raised.alert_id, "ops", T0 + timedelta(minutes=1))
        assert (len(report.sent), store.get_alert(raised.alert_id).status) == (1, "acknowledged")
    finally:
        dataworker.shutdown()


def test_the_alerts_domain_does_not_import_prefect():
    import subprocess
    import sys

    code = ("import sys, promptcycle.alerts, promptcycle.alerts.channels, promptcycle.store.alerts, "
            "promptcycle.commands.alerts; print([m for m in sys.modules if m.split('.')[0] == 'prefect'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
