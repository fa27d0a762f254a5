"""The report: the state of a pipeline's loop as figures — one HTML file people open, and the same figures as
artifacts in the Prefect UI.

    read the store → draw the figures → write the self-contained HTML → publish markdown + table artifacts

It only reads the metrics store and calls no model: run it after a cycle, on a schedule, or by hand
(`promptcycle report`).
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from promptcycle.report import ReportSummary
from promptcycle_tasks.report import write_pipeline_report
from promptcycle_tasks.runs import is_simulated, run_name, tag_flow_run

__all__ = ["report"]


@flow(name="report", flow_run_name=run_name("report"))
async def report(pipeline: str = "customer-insights", config_path: str = "pipelines.yaml",
                 store_path: str | None = None, out: str | None = None, images: bool = True) -> ReportSummary:
    """Write the pipeline's report and publish its figures as artifacts.

    Args:
        pipeline: the pipeline's name in pipelines.yaml.
        config_path: path to pipelines.yaml.
        store_path: the DuckDB file (default: the config's `store`).
        out: the HTML file to write (default: `reports/<pipeline>.html` beside the store).
        images: embed a static PNG of each figure in its markdown artifact.
    """
    await tag_flow_run(pipeline, "report", is_simulated(config_path, pipeline))
    summary = write_pipeline_report(config_path, pipeline, store_path, out, artifacts=True, images=images)
    shown = sum(f.shown for f in summary.figures)
    get_run_logger().info("report of %s: %d of %d figures drawn, written to %s", pipeline, shown,
                          len(summary.figures), summary.path)
    return summary
