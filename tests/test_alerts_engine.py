"""The Prefect side of alerting, on the engine: the alert tasks in a flow, a `promptcycle.alert.raised` event for
automations, a Prefect notification block by name, and a webhook token from a credentials block."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timezone

import pytest
import yaml
from simserver import ServerThread
from test_alert_channels import Receiver

PIPE = "customer-insights"


@pytest.mark.engine
def test_alert_tasks_emit_an_event_notify_a_block_and_use_a_credentials_block(prefect_harness, repo_config, tmp_path,
                                                                             monkeypatch):
    from prefect import flow, get_client
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.events.worker import EventsWorker

    from promptcycle_blocks.channels import AlertWebhookCredentials
    from promptcycle.alerts.policy import Finding
    from promptcycle.store import MetricsStore
    from promptcycle.evaluation.context import PipelineRef
    from promptcycle_tasks.alerts import deliver_alerts, record_alerts

    monkeypatch.setenv("PROMPTCYCLE_DATA_IN_PROCESS", "1")
    suffix = uuid.uuid4().hex[:8]
    receiver = Receiver()
    with ServerThread(app=receiver, lifespan="off") as server:
        url = f"http://127.0.0.1:{server.port}"
        CustomWebhookNotificationBlock(name="ops", url=f"{url}/slack", json_data={"text": "{{subject}}"}).save(
            f"ops-{suffix}")
        AlertWebhookCredentials(token="engine-token-123").save(f"hook-{suffix}")
        data = yaml.safe_load(repo_config.read_text())
        data["alerts"] = {"channels": [
            {"kind": "prefect_event"},
            {"kind": "prefect_notification", "options": {"block": f"custom-webhook/ops-{suffix}"}},
            {"kind": "webhook", "options": {"url": f"{url}/hook", "credentials_block": f"hook-{suffix}"}}]}
        repo_config.write_text(yaml.safe_dump(data, sort_keys=False))
        store_path = str(tmp_path / "metrics.duckdb")
        spectrum = f"credit_{suffix}"

        @flow
        def monitor_alerts() -> dict:
            findings = [Finding("cusum", PIPE, "xl", spectrum, "high", False, 5.1, "quality fell 6 points")]
            ref = PipelineRef(config_path=str(repo_config), pipeline=PIPE, store_path=store_path)
            record_alerts(ref, findings, datetime.now(timezone.utc))
            return deliver_alerts(ref)

        report = monitor_alerts()

    assert len(report["sent"]) == 3 and not report["failed"], report
    deliveries = MetricsStore(store_path).alert_deliveries()
    assert {d.channel: d.state for d in deliveries} == {"prefect_event": "sent", "prefect_notification": "sent",
                                                         "webhook": "sent"}
    by_path = {r["headers"].get("authorization"): r for r in receiver.requests}
    assert "Bearer engine-token-123" in by_path  # the webhook's token came from the block
    slack = [r for r in receiver.requests if b"[HIGH]" in r["body"] and "authorization" not in r["headers"]]
    assert len(slack) == 1 and PIPE.encode() in slack[0]["body"]
    assert all("engine-token-123" not in (d.detail or "") + (d.last_error or "") for d in deliveries)

    async def events() -> list:
        async with get_client() as client:
            page = await client.read_events(limit=50, filter=EventFilter(
                event=EventNameFilter(name=["promptcycle.alert.raised"])))
            return page.events

    EventsWorker.drain_all()
    deadline, found = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        found = [e for e in asyncio.run(events()) if e.payload.get("spectrum") == spectrum]
        if found:
            break
        time.sleep(1)
    [event] = found
    assert event.resource.id == f"promptcycle.pipeline.{PIPE}"
    assert (event.resource["promptcycle.model"], event.resource["promptcycle.spectrum"],
            event.resource["promptcycle.severity"]) == ("xl", spectrum, "high")
    assert event.payload["delivery_id"] == next(d.delivery_id for d in deliveries if d.channel == "prefect_event")
