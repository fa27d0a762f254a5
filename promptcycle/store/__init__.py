"""The DuckDB metrics store: one module owns the schema, every write is keyed and idempotent.

    store = MetricsStore("metrics.duckdb")      # creates the file and applies migrations
    store.create_run(RunRecord(run_id=..., pipeline=..., kind="baseline", fingerprint=...))
    store.write_batch(responses, results)        # one transaction: both or neither
    frame = store.results_frame(run_id)          # results + output + score_<name> columns
"""

from promptcycle.store.metrics import MetricsStore
from promptcycle.store.records import (
    DECISION_KINDS,
    LABELS,
    RUN_STATUSES,
    DecisionRecord,
    LabelEvent,
    PromptVersionRecord,
    ResponseRecord,
    ResultRecord,
    RunRecord,
)
from promptcycle.store.schema import MIGRATIONS, SCHEMA_VERSION, Migration

__all__ = [
    "MetricsStore",
    "RunRecord",
    "ResponseRecord",
    "ResultRecord",
    "PromptVersionRecord",
    "LabelEvent",
    "DecisionRecord",
    "LABELS",
    "DECISION_KINDS",
    "RUN_STATUSES",
    "Migration",
    "MIGRATIONS",
    "SCHEMA_VERSION",
]
