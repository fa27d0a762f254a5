"""Prefect tasks of the report: write the HTML file, and publish the same figures as artifacts."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from promptcycle.catalog import load_config
from promptcycle.evaluation.context import resolve_store_path
from promptcycle.report import ReportSummary, artifact_pieces, build_report, default_report_path, write_report
from promptcycle.store.remote import open_store
from promptcycle_tasks.reports import artifact_key

__all__ = ["write_pipeline_report"]


@task(name="write-report", cache_policy=NO_CACHE)
def write_pipeline_report(config_path: str, pipeline: str, store_path: str | None, out: str | None,
                          artifacts: bool = True, images: bool = True) -> ReportSummary:
    """Read the pipeline's state from the store, write the self-contained HTML report to `out` (default:
    `reports/<pipeline>.html` beside the store) and, with `artifacts`, publish each figure as a markdown artifact
    (with a static PNG when `images`) and its numbers as a table artifact."""
    config = load_config(config_path)
    path = resolve_store_path(config, store_path)
    report = build_report(open_store(path), config, pipeline)
    write_report(report, out or default_report_path(path, pipeline))
    summary = report.summary()
    if artifacts:
        for piece in artifact_pieces(report.data, report.figures, html_path=report.path, images=images):
            key = artifact_key("report", piece.name, pipeline)
            if piece.kind == "table":
                create_table_artifact(key=key, table=piece.content, description=piece.description)
            else:
                create_markdown_artifact(key=key, markdown=piece.content, description=piece.description)
            summary.artifacts.append(key)
    return summary
