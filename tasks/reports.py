"""Publishing what a run found as Prefect artifacts (readable in the UI's Artifacts tab)."""

from __future__ import annotations

import asyncio

from prefect import task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from promptcycle.config import Thresholds
from promptcycle.evaluation.summary import RunSummary, cells_table, latency_cost_markdown, quality_markdown
from promptcycle_tasks.runs import flow_run_url

__all__ = ["publish_baseline_report", "artifact_key"]


def artifact_key(*parts: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    raw = "-".join(parts).lower()
    return "".join(ch if ch.isalnum() else "-" for ch in raw).strip("-")[:120]


@task(name="publish-baseline-report", cache_policy=NO_CACHE)
async def publish_baseline_report(summary: RunSummary, thresholds: Thresholds) -> None:
    """The run's four artifacts, created together (each is one request to the Prefect API)."""
    url = flow_run_url(flow_run.get_id())
    await asyncio.gather(
        acreate_markdown_artifact(key=artifact_key("baseline-quality", summary.pipeline),
                                  markdown=quality_markdown(summary, thresholds),
                                  description=f"Model x spectrum quality of run {summary.run_id}"),
        acreate_markdown_artifact(key=artifact_key("baseline-latency-cost", summary.pipeline),
                                  markdown=latency_cost_markdown(summary),
                                  description=f"Latency and cost of run {summary.run_id}"),
        acreate_table_artifact(key=artifact_key("baseline-cells", summary.pipeline),
                               table=cells_table(summary),
                               description=f"Every cell of run {summary.run_id}" +
                               (" (simulated)" if summary.simulated else "")),
        acreate_markdown_artifact(key=artifact_key("baseline-run", summary.pipeline),
                                  markdown=f"Run id: `{summary.run_id}` · status {summary.status} · "
                                           f"{summary.rows} results, {summary.errors} errors"
                                           + (" · simulated" if summary.simulated else "")
                                           + (f" · [flow run]({url})" if url else
                                              f" · flow run `{flow_run.get_id()}`"),
                                  description="The run id, for `promptcycle optimize --baseline`"))
