"""Prefect tasks of alerting, and the Prefect side of the alert channels.

    events = record_alerts(config_path, pipeline, store_path, findings)    # policy + store, nothing sent
    report = deliver_alerts(config_path, pipeline, store_path)             # send what is due, record it

`PrefectChannelBridge` is what connects the channels that live in Prefect to promptcycle/alerts:
notification blocks by name (Slack, Teams, PagerDuty …), Prefect events
(`promptcycle.alert.raised` …, for automations) and the credentials blocks of blocks/channels.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from promptcycle.alerts import Finding, deliver_alerts as _deliver_alerts, process_findings
from promptcycle.catalog import load_config
from promptcycle.errors import AlertDeliveryError
from promptcycle.evaluation.context import PipelineRef, resolve_store_path
from promptcycle.store.remote import open_store

__all__ = ["PrefectChannelBridge", "record_alerts", "deliver_alerts"]


class PrefectChannelBridge:
    """The channels' way into Prefect: blocks and events. Built inside the task that delivers."""

    def credentials(self, block_type: str, name: str) -> dict[str, Any]:
        from promptcycle_blocks.channels import AlertWebhookCredentials, SmtpCredentials

        cls = {"webhook": AlertWebhookCredentials, "smtp": SmtpCredentials}[block_type]
        try:
            return cls.load(name).get_credentials()
        except ValueError:
            raise AlertDeliveryError(f"no {cls._block_type_name} block named {name!r} (create it in the Prefect UI "
                                     f"or with {cls.__name__}(...).save({name!r}))", retryable=False) from None

    def notify(self, block: str, subject: str, body: str) -> None:
        from prefect.blocks.abstract import NotificationBlock
        from prefect.blocks.core import Block

        try:
            loaded = Block.load(block)  # "<block type slug>/<name>", e.g. "slack-webhook/ops"
        except ValueError:
            raise AlertDeliveryError(f"no Prefect notification block named {block!r}", retryable=False) from None
        if not isinstance(loaded, NotificationBlock):
            raise AlertDeliveryError(f"Prefect block {block!r} is a {type(loaded).__name__}, not a notification "
                                     "block", retryable=False)
        try:
            with loaded.raise_on_failure():  # otherwise a failed notification is only logged
                loaded.notify(body, subject)
        except Exception as exc:  # noqa: BLE001 - apprise and httpx raise many types; all mean "not sent"
            raise AlertDeliveryError(f"Prefect notification block {block!r}: {type(exc).__name__}: {exc}",
                                     retryable=True) from None

    def emit(self, event: str, resource: dict[str, str], payload: dict[str, Any]) -> str:
        from prefect.events import emit_event
        from prefect.runtime import flow_run

        related = []
        if flow_run.get_id():
            related.append({"prefect.resource.id": f"prefect.flow-run.{flow_run.get_id()}",
                            "prefect.resource.role": "flow-run", "prefect.resource.name": flow_run.get_name() or ""})
        emitted = emit_event(event=event, resource=resource, related=related, payload=payload)
        if emitted is None:
            raise AlertDeliveryError(f"Prefect did not emit {event} (events are off in this process)")
        return str(emitted.id)


@task(name="record-alerts", cache_policy=NO_CACHE)
def record_alerts(ref: PipelineRef, findings: list[Finding], now: datetime | None = None) -> list:
    """Apply the alert policy to the monitor's findings; store alerts, events and pending deliveries."""
    config = load_config(ref.config_path)  # the config only: alerts need no dataset
    store = open_store(resolve_store_path(config, ref.store_path))
    return process_findings(store, config, ref.pipeline, findings, now)


@task(name="deliver-alerts", cache_policy=NO_CACHE)
def deliver_alerts(ref: PipelineRef, now: datetime | None = None) -> dict:
    """Send the pipeline's due pages to its channels (retrying within the pass) and record each outcome."""
    config = load_config(ref.config_path)
    store = open_store(resolve_store_path(config, ref.store_path))
    report = _deliver_alerts(store, config, ref.pipeline, now, bridge=PrefectChannelBridge())
    return report.to_dict() | {"summary": report.summary()}
