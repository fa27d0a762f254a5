"""What a run found: quality per model x spectrum cell, rankings, latency and cost.

Quality is the mean weighted overall score in points (0-100); a terminal error counts as 0, because
an answer that never came is a failed answer. Levels come from the pipeline's thresholds.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from promptcycle.config import Thresholds

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CellQuality", "Ranked", "RunSummary", "summarize_results", "summarize_stored_run",
           "quality_markdown", "cells_table", "latency_cost_markdown", "provider_error_lines"]

LEVEL_MARK = {"critical": "🔴 critical", "warning": "🟠 warning", "ok": "🟡 ok", "target": "🟢 target",
              "excellent": "🟣 excellent"}


class CellQuality(BaseModel):
    model: str
    spectrum: str
    quality: float
    level: str
    n: int
    errors: int
    mean_latency_ms: float | None
    p95_latency_ms: float | None
    cost_usd: float
    truncated: int = 0  # answers the provider cut at max_tokens (finish_reason "length")


class Ranked(BaseModel):
    name: str
    quality: float
    level: str


class RunSummary(BaseModel):
    """The typed result of a baseline (or any evaluation) run."""

    run_id: str
    pipeline: str
    kind: str = "baseline"
    status: str
    resumed: bool = False
    simulated: bool
    prompt_hash: str
    rows: int
    errors: int
    calls_paid: int = 0
    calls_reused: int = 0
    cost_usd: float
    quality: float
    level: str
    cells: list[CellQuality]
    models: list[Ranked]
    spectrums: list[Ranked]
    truncated: int = 0  # answers cut at max_tokens (finish_reason "length"); scored as they came
    tokens_estimated: int = 0  # answers whose token counts (and so cost) are the local estimate, not the provider's
    provider_errors: list[str] = []  # the commonest terminal errors: model, kind, count, the provider's message
    data_quality: dict[str, bool] = {}
    started_at: datetime | None = None
    finished_at: datetime | None = None
    langsmith: dict | None = None  # the LangSmith mirror's report, when mirroring was on (MirrorReport.to_dict)

    def cell(self, model: str, spectrum: str) -> CellQuality:
        for c in self.cells:
            if c.model == model and c.spectrum == spectrum:
                return c
        raise KeyError((model, spectrum))


def _points(mean: float) -> float:
    """A mean overall score (0-1) in points (0-100), as the summary shows it."""
    return round(float(mean) * 100, 2)


_AFTER = re.compile(r" \(after \d+ attempts\)$")


def provider_error_lines(frame: pd.DataFrame, *, limit: int = 5) -> list[str]:
    """The commonest terminal errors of a results frame, one line each: "model: kind ×n — message".

    Messages are the provider's own (status and text; keys already scrubbed by the client); calls
    refused without sending after a 401/403/404 count with the error that stopped them.
    """
    if not len(frame) or "error" not in frame.columns:
        return []
    errored = frame[frame["error"].notna()]
    counts: Counter = Counter()
    for model, kind, message in zip(errored["model"], errored.get("error_kind", errored["error"]), errored["error"]):
        message = _AFTER.sub("", str(message))
        if message.startswith("not sent: "):
            message = message[len("not sent: "):]
        counts[(str(model), str(kind), message)] += 1
    return [f"{model}: {kind} ×{n} — {message}" for (model, kind, message), n in counts.most_common(limit)]


# The columns a summary reads: a stored run is read with these only (its answers' text is not needed).
SUMMARY_COLUMNS = ("model", "spectrum", "overall", "error", "error_kind", "latency_ms", "cost_usd", "simulated",
                   "finish_reason", "tokens_source")


def summarize_results(frame: pd.DataFrame, *, thresholds: Thresholds, run_id: str, pipeline: str,
                      prompt_hash: str, status: str, models: list[str], spectrums: list[str],
                      **extra) -> RunSummary:
    """Aggregate a run's results frame (one row per model x case x repeat) into a RunSummary."""
    f = frame.copy()
    failed = f["error"].notna()
    f["overall"] = f["overall"].where(~failed, 0.0).fillna(0.0)
    f["failed"] = failed
    f["cut"] = (f["finish_reason"] == "length") if "finish_reason" in f.columns else False
    f["cost"] = f["cost_usd"].fillna(0.0)
    f["ok_latency"] = f["latency_ms"].where(~failed)  # latency of the answers that came
    by_cell = f.groupby(["model", "spectrum"], sort=False)
    stats = by_cell.agg(n=("overall", "size"), mean=("overall", "mean"), errors=("failed", "sum"),
                        ok=("ok_latency", "count"), latency=("ok_latency", "mean"), cost=("cost", "sum"),
                        truncated=("cut", "sum"))
    p95 = by_cell["ok_latency"].quantile(0.95)
    cells = []
    for model in models:
        for spectrum in spectrums:
            if (model, spectrum) in stats.index:
                row = stats.loc[(model, spectrum)]
                q, n, ok = _points(row["mean"]), int(row["n"]), int(row["ok"])
                cells.append(CellQuality(
                    model=model, spectrum=spectrum, quality=q, level=thresholds.level(q), n=n,
                    errors=int(row["errors"]), mean_latency_ms=round(float(row["latency"]), 1) if ok else None,
                    p95_latency_ms=round(float(p95.loc[(model, spectrum)]), 1) if ok else None,
                    cost_usd=round(float(row["cost"]), 6), truncated=int(row["truncated"])))
            else:
                cells.append(CellQuality(model=model, spectrum=spectrum, quality=0.0, level=thresholds.level(0.0),
                                         n=0, errors=0, mean_latency_ms=None, p95_latency_ms=None, cost_usd=0.0))

    def ranked(column: str, names: list[str]) -> list[Ranked]:
        means = f.groupby(column, sort=False)["overall"].mean()
        qualities = [(n, _points(means[n]) if n in means.index else 0.0) for n in names]
        out = [Ranked(name=n, quality=q, level=thresholds.level(q)) for n, q in qualities]
        return sorted(out, key=lambda r: -r.quality)

    q = _points(f["overall"].mean()) if len(f) else 0.0
    simulated = bool(f["simulated"].fillna(False).astype(bool).any()) if len(f) else False
    return RunSummary(run_id=run_id, pipeline=pipeline, status=status, simulated=simulated, prompt_hash=prompt_hash,
                      rows=len(f), errors=int(failed.sum()),
                      cost_usd=round(float(f["cost"].sum()), 6), quality=q, level=thresholds.level(q),
                      cells=cells, models=ranked("model", models), spectrums=ranked("spectrum", spectrums),
                      truncated=int(f["cut"].sum()), provider_errors=provider_error_lines(frame),
                      tokens_estimated=int((f["tokens_source"] == "estimated").sum())
                      if "tokens_source" in f.columns else 0, **extra)


def _summarize_stored_run(store_path: str, run_id: str, **kwargs) -> RunSummary:
    from promptcycle.store.remote import open_store

    return summarize_results(open_store(store_path).results_columns(run_id, SUMMARY_COLUMNS), run_id=run_id, **kwargs)


def summarize_stored_run(store_path: str | Path, run_id: str, **kwargs) -> RunSummary:
    """`summarize_results` over a stored run, computed in the data worker (where pandas lives)."""
    from promptcycle import dataworker

    return dataworker.call(_summarize_stored_run, str(store_path), run_id, **kwargs)


def quality_markdown(summary: RunSummary, thresholds: Thresholds) -> str:
    """The quality matrix, one row per spectrum and one short column per model (best first), so it fits the
    Prefect UI's artifact pane; each cell shows its points and its level's mark."""
    marks = {level: mark.split(" ")[0] for level, mark in LEVEL_MARK.items()}
    models = [m.name for m in summary.models]  # best first
    lines = [f"# Baseline quality — `{summary.pipeline}`",
             "",
             f"Run `{summary.run_id}` · prompt `{summary.prompt_hash}` · {summary.rows} results · "
             f"{summary.errors} errors · overall **{summary.quality:.1f}** ({summary.level})"
             + (" · **SIMULATED** (built-in simulator: not real model quality)" if summary.simulated else ""),
             "",
             *([f"**{summary.truncated} answers were cut at max_tokens** (finish_reason `length`).", ""]
               if summary.truncated else []),
             *([f"{summary.tokens_estimated} answers' token counts were estimated locally (the provider's were "
                "missing or implausible); their cost uses the estimate (`tokens_source`).", ""]
               if summary.tokens_estimated else []),
             *(["Provider errors (status and message as the provider gave them):", ""]
               + [f"- {line}" for line in summary.provider_errors] + [""] if summary.provider_errors else []),
             f"Levels: {marks['critical']} critical < {thresholds.critical:g} ≤ {marks['warning']} warning < "
             f"{thresholds.warning:g} ≤ {marks['ok']} ok < {thresholds.target:g} ≤ {marks['target']} target < "
             f"{thresholds.excellent:g} ≤ {marks['excellent']} excellent (points of the weighted score).",
             "",
             "| spectrum | " + " | ".join(models) + " | all |",
             "|---" + "|---:" * (len(models) + 1) + "|"]
    for s in summary.spectrums:  # best first, hardest last
        row = [f"{summary.cell(m, s.name).quality:.1f} {marks[summary.cell(m, s.name).level]}" for m in models]
        lines.append(f"| {s.name} | " + " | ".join(row) + f" | **{s.quality:.1f}** |")
    lines.append("| **all** | " + " | ".join(f"**{m.quality:.1f}**" for m in summary.models)
                 + f" | **{summary.quality:.1f}** |")
    return "\n".join(lines)


def cells_table(summary: RunSummary) -> list[dict[str, object]]:
    """Every cell as a row with short headers (the table artifact)."""
    return [{"model": c.model, "spectrum": c.spectrum, "quality": c.quality, "level": c.level, "n": c.n,
             "errors": c.errors, "mean ms": c.mean_latency_ms, "p95 ms": c.p95_latency_ms, "USD": c.cost_usd}
            for c in summary.cells]


def latency_cost_markdown(summary: RunSummary) -> str:
    lines = [f"# Latency and cost — run `{summary.run_id}`", "",
             "| model | mean latency ms | p95 latency ms | errors | cost USD |", "|---|---|---|---|---|"]
    for m in summary.models:
        cells = [c for c in summary.cells if c.model == m.name]
        ok = [c for c in cells if c.mean_latency_ms is not None]
        n_ok = sum(c.n - c.errors for c in ok)
        mean = sum(c.mean_latency_ms * (c.n - c.errors) for c in ok) / n_ok if n_ok else None
        p95 = max((c.p95_latency_ms for c in ok), default=None)
        lines.append(f"| {m.name} | {mean:.0f} | {p95:.0f} | {sum(c.errors for c in cells)} | "
                     f"{sum(c.cost_usd for c in cells):.4f} |" if mean is not None else
                     f"| {m.name} | – | – | {sum(c.errors for c in cells)} | {sum(c.cost_usd for c in cells):.4f} |")
    lines.append("")
    lines.append("p95 column: the worst spectrum's p95 for that model.")
    return "\n".join(lines)
