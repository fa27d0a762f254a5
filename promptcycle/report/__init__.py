"""The report people look at: the state of a pipeline's loop as figures, from the metrics store.

    data = gather_report(store, "customer-insights", thresholds=..., models=[...], spectrums=[...])
    figures = build_figures(data)                  # Altair charts + captions + the rows behind them
    html = render_html(data, figures)              # one self-contained HTML file (no network to view it)
    artifacts = artifact_markdown(data, figures)   # the same figures for Prefect markdown artifacts

`write_report(store, ctx_or_config, pipeline, out)` does all of it for a pipeline of a loaded configuration.
Nothing here imports Prefect; `tasks/report.py` publishes the artifacts and `flows/report.py` runs it as a flow.
"""

from promptcycle.report.data import SECTIONS, ReportData, gather_report
from promptcycle.report.figures import Figure, build_figures
from promptcycle.report.page import render_html
from promptcycle.report.build import Report, ReportSummary, build_report, default_report_path, write_report
from promptcycle.report.artifacts import ArtifactPiece, artifact_pieces

__all__ = ["SECTIONS", "ReportData", "gather_report", "Figure", "build_figures", "render_html", "Report",
           "ReportSummary", "default_report_path", "build_report", "write_report", "ArtifactPiece", "artifact_pieces"]
