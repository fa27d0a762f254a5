"""Opening a run: its id, and the dataset suite that must pass before any model call."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone

from promptcycle.errors import DataQualityError
from promptcycle.quality.worker import validate_dataset

__all__ = ["new_run_id", "gate_dataset"]


def new_run_id(kind: str, pipeline: str) -> str:
    """`<kind>-<pipeline>-<UTC yyyymmddThhmmss>-<4 hex>`: readable, ordered by time, distinct per run."""
    return f"{kind}-{pipeline}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"


def gate_dataset(ctx, store, run_id: str) -> dict[str, str]:
    """The dataset suite, before any model call: store its result; on failure close the run and stop
    (`DataQualityError` carrying the report). Returns the splits the store had recorded (case id ->
    split). `ctx` is the pipeline's PipelineContext."""
    recorded = store.get_splits(ctx.dataset_key)
    report = validate_dataset(ctx.configured_cases, ctx.splits, spectrums=ctx.pipeline.dataset.spectrums,
                              min_cases_per_spectrum=ctx.pipeline.dataset.min_cases_per_spectrum,
                              recorded_splits=recorded)
    store.write_dq_result(run_id, "dataset", report.success, report.to_dict())
    if not report.success:
        store.finish_run(run_id, "failed", {"reason": report.summary()})
        raise DataQualityError(report.summary(), report=report)
    return recorded
