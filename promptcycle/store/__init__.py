"""The DuckDB metrics store: one module owns the schema, every write is keyed and idempotent.

    store = MetricsStore("metrics.duckdb")      # creates the file and applies migrations
    store.create_run(RunRecord(run_id=..., pipeline=..., kind="baseline", fingerprint=...))
    store.write_batch(responses, results)        # one transaction: both or neither
    frame = store.results_frame(run_id)          # results + output + score_<name> columns
"""

# MetricsStore (duckdb, pyarrow, pandas) is imported on first use: the pipeline process reaches the
# store through the data worker (promptcycle/store/remote.py) and should not pay for those imports.
def __getattr__(name: str):
    if name == "MetricsStore":
        from promptcycle.store.metrics import MetricsStore

        return MetricsStore
    if name in ("MIGRATIONS", "SCHEMA_VERSION", "Migration"):
        from promptcycle.store import schema

        return getattr(schema, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
