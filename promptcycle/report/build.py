"""Build the report of one pipeline of a loaded configuration, and write it as one HTML file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel

from promptcycle.errors import ConfigError
from promptcycle.report.data import ReportData, gather_report
from promptcycle.report.figures import Figure, build_figures
from promptcycle.report.page import render_html

__all__ = ["Report", "ReportSummary", "FigureStatus", "build_report", "write_report", "default_report_path"]


class FigureStatus(BaseModel):
    """One figure of a written report: drawn, or what is missing."""

    figure: str
    title: str
    shown: bool
    simulated: bool
    missing: str | None = None


class ReportSummary(BaseModel):
    """The typed result of writing a report (what `promptcycle report --json` prints and the flow returns)."""

    pipeline: str
    path: str | None
    bytes: int
    simulated: bool
    empty: bool
    generated_at: datetime
    figures: list[FigureStatus]
    artifacts: list[str] = []  # keys of the Prefect artifacts published with it


@dataclass
class Report:
    """A pipeline's report: the data read from the store, its figures, and where its HTML was written."""

    data: ReportData
    figures: list[Figure]
    path: Path | None = None
    bytes_written: int = 0

    def summary(self) -> ReportSummary:
        """Per figure, drawn or what is missing; where the HTML went."""
        return ReportSummary(pipeline=self.data.pipeline, path=None if self.path is None else str(self.path),
                             bytes=self.bytes_written, simulated=self.data.any_simulated, empty=self.data.empty,
                             generated_at=self.data.generated_at,
                             figures=[FigureStatus(figure=f.key, title=f.heading, shown=f.chart is not None,
                                                   simulated=f.simulated, missing=f.missing) for f in self.figures])


def build_report(store, config, pipeline: str, *, now: datetime | None = None) -> Report:
    """Read `pipeline`'s state from `store` (a MetricsStore or the data worker's proxy) and draw its figures.
    `config` is the loaded `PromptcycleConfig` (for the thresholds, models and spectrums)."""
    pipe = config.pipeline(pipeline)
    data = gather_report(store, pipeline, thresholds=pipe.thresholds, models=list(pipe.models),
                         spectrums=list(pipe.dataset.spectrums), now=now)
    return Report(data=data, figures=build_figures(data))


def default_report_path(store_path: str | Path, pipeline: str) -> Path:
    """Where a report goes when no --out is given: `reports/<pipeline>.html` beside the metrics store."""
    return Path(store_path).resolve().parent / "reports" / f"{pipeline}.html"


def write_report(report: Report, out: str | Path) -> Report:
    """Write the report's HTML to `out` atomically (a reader never sees half a file); returns the report."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise ConfigError(f"the report path {path} is a directory; give an HTML file name such as "
                          f"{path / 'report.html'}", path="--out", found=str(path),
                          expected=f"an HTML file name such as {path / 'report.html'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = render_html(report.data, report.figures)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {path}: {exc}", path="--out", found=str(path),
                          expected="a file in a directory this user can write") from exc
    report.path, report.bytes_written = path.resolve(), len(text.encode("utf-8"))
    return report
