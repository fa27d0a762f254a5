"""The report's figures as Prefect artifacts — markdown and tables, since an artifact cannot run JavaScript.

Each figure becomes a markdown piece: its heading (SIMULATED when it is), its caption, the figure as a PNG drawn
offline by vl-convert and embedded as a data URI (`images=False`, or a failed export, leaves the image out and says
so), and where the interactive HTML report is; plus a table piece with the numbers behind it. A figure with nothing
to show becomes one markdown piece saying what is missing. `tasks/report.py` turns the pieces into artifacts.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptcycle.report.data import ReportData
from promptcycle.report.figures import Figure

__all__ = ["ArtifactPiece", "artifact_pieces", "figure_png", "TABLE_ARTIFACT_ROWS"]

TABLE_ARTIFACT_ROWS = 200  # the newest rows of a time series in its table artifact


@dataclass(frozen=True)
class ArtifactPiece:
    """One artifact to create: `kind` is "markdown" (`content` a str) or "table" (`content` a list of dicts)."""

    name: str  # the figure key; the artifact key is built from it and the pipeline
    kind: str
    content: Any
    description: str


def figure_png(fig: Figure, scale: float = 1.0) -> bytes:
    """The figure as a PNG, drawn offline by vl-convert (no browser, no network)."""
    import vl_convert as vlc

    return vlc.vegalite_to_png(fig.titled_spec(), scale=scale)


def _json_safe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (v if v is None or isinstance(v, (int, float, str, bool)) else str(v)) for k, v in r.items()}
            for r in rows]


def artifact_pieces(data: ReportData, figures: list[Figure], *, html_path: str | Path | None = None,
                    images: bool = True) -> list[ArtifactPiece]:
    """The artifacts of a report: per figure a markdown piece (and a table piece when it has rows)."""
    where = (f"Interactive version (self-contained HTML, opens offline): `{html_path}`" if html_path
             else "Interactive version: `promptcycle report --pipeline " + data.pipeline + "`")
    pieces = []
    for fig in figures:
        lines = [f"## {fig.heading}", ""]
        if fig.chart is None:
            lines.append(f"Nothing to show yet: {fig.missing or 'no data'}")
        else:
            lines += [fig.caption, ""]
            if images:
                try:
                    png = base64.b64encode(figure_png(fig)).decode("ascii")
                    lines += [f"![{fig.title}](data:image/png;base64,{png})", ""]
                except Exception as exc:  # a figure the exporter cannot draw still has its caption and table
                    lines += [f"(the static image could not be drawn: {type(exc).__name__}: {exc})", ""]
            lines.append(where)
            if fig.simulated:
                lines += ["", "These figures come from the built-in simulator (SIMULATED): they describe the simulated "
                              "world, not real models."]
        pieces.append(ArtifactPiece(fig.key, "markdown", "\n".join(lines), fig.heading))
        if fig.chart is not None and fig.rows:
            rows = fig.rows[-TABLE_ARTIFACT_ROWS:] if fig.key in ("quality", "spend", "canary") else fig.rows
            pieces.append(ArtifactPiece(f"{fig.key}-table", "table", _json_safe(rows),
                                        f"The numbers behind “{fig.heading}”"
                                        + (f" (the last {len(rows)} of {len(fig.rows)})" if len(rows) < len(fig.rows)
                                           else "")))
    return pieces
