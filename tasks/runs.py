"""How a flow run presents itself in Prefect: a distinct readable name, tags, its URL, outcome events.

    baseline-customer-insights-20261202-1405-ab12     tags: pipeline:customer-insights, phase:baseline, simulated

Names and tags are set by the flows themselves, so runs started from the UI, a schedule or the CLI
look the same.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

__all__ = ["run_name", "run_tags", "tag_flow_run", "flow_run_url", "is_simulated", "emit_outcome"]


def run_name(phase: str) -> Callable[[], str]:
    """A `flow_run_name` callable: `<phase>-<pipeline>-<UTC yyyymmdd-hhmm>-<4 hex>`, distinct per run."""

    def name() -> str:
        from prefect.runtime import flow_run

        pipeline = (flow_run.parameters or {}).get("pipeline", "")
        return f"{phase}-{pipeline}-{datetime.now(timezone.utc):%Y%m%d-%H%M}-{secrets.token_hex(2)}"

    name.__name__ = f"{phase}_run_name"
    return name


def run_tags(pipeline: str, phase: str, simulated: bool) -> list[str]:
    """The tags automations and the UI's filters select runs by."""
    return [f"pipeline:{pipeline}", f"phase:{phase}"] + (["simulated"] if simulated else [])


def is_simulated(config_path: str, pipeline: str) -> bool:
    """Whether any of the pipeline's models is served by the built-in simulator."""
    from promptcycle.catalog import load_config

    config = load_config(config_path)
    pipe = config.pipeline(pipeline)
    return any(config.providers[config.models[m].provider].kind == "simulator" for m in pipe.models)


async def tag_flow_run(pipeline: str, phase: str, simulated: bool) -> list[str]:
    """Add the run's tags to the current flow run (keeping any it was started with); returns them."""
    from prefect import get_client
    from prefect.runtime import flow_run

    tags = run_tags(pipeline, phase, simulated)
    run_id = flow_run.get_id()
    if run_id is None:  # called outside a flow run (flow.fn in tests)
        return tags
    async with get_client() as client:
        current = await client.read_flow_run(run_id)
        merged = list(dict.fromkeys([*(current.tags or []), *tags]))
        await client.update_flow_run(run_id, tags=merged)
    return merged


def flow_run_url(flow_run_id: Any) -> str | None:
    """The flow run's page in the Prefect UI, or None when no UI serves it (Prefect's temporary server)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    if flow_run_id is None or not PREFECT_API_URL.value() or not PREFECT_UI_URL.value():
        return None
    from prefect.utilities.urls import url_for

    return url_for("flow-run", obj_id=str(flow_run_id)) or None


def emit_outcome(event: str, pipeline: str, payload: dict[str, Any]) -> None:
    """A Prefect event about a pipeline (e.g. `promptcycle.canary.rolled_back`), for automations to react to.

    The resource is the pipeline (`promptcycle.pipeline.<name>`); the current flow run is related."""
    from prefect.events import emit_event
    from prefect.runtime import flow_run

    related = []
    if flow_run.get_id():
        related.append({"prefect.resource.id": f"prefect.flow-run.{flow_run.get_id()}",
                        "prefect.resource.role": "flow-run", "prefect.resource.name": flow_run.get_name() or ""})
    emit_event(event=event, resource={"prefect.resource.id": f"promptcycle.pipeline.{pipeline}",
                                      "prefect.resource.name": pipeline, "promptcycle.pipeline": pipeline},
               related=related, payload=payload)
