"""`MetricsStore`: every number promptcycle produces, in one DuckDB file.

While one process has a DuckDB file open for writing, no other process can open it at all. So the
store never keeps a connection: each call opens the file, does its work in one transaction and
closes it. A call that finds the file locked by another process (a scheduled run, a notebook)
waits with exponential back-off and jitter, and raises `StoreError` only when the lock has not
come free within `lock_timeout_s`. Inside one process a lock per file serialises our own
connections, so threads never collide on it.

Every write is keyed and idempotent: writing the same keys again changes nothing, or replaces
rows with the same values. Rows go in as one columnar insert per table (an Arrow table), never
row by row.
"""

from __future__ import annotations

from promptcycle.store.alerts import AlertsTables
from promptcycle.store.incidents import IncidentsTables
from promptcycle.store.langsmith import LangSmithTables
from promptcycle.store.learning import LearningTables
from promptcycle.store.monitoring import MonitoringTables
from promptcycle.store.deployments import DeploymentsTables
from promptcycle.store.history import HistoryTables
from promptcycle.store.production import ProductionTables
from promptcycle.store.prompts import PromptsTables
from promptcycle.store.runs import RunsTables

__all__ = ["MetricsStore"]


class MetricsStore(RunsTables, PromptsTables, DeploymentsTables, ProductionTables, AlertsTables, LearningTables,
                   MonitoringTables, IncidentsTables, HistoryTables, LangSmithTables):
    """The DuckDB metrics store at `path`: runs, the paid-call ledger, results, prompt versions and
    their labels, decisions with their evidence, diagnoses, data-quality results and dataset splits.

    Opening a store creates the file (and its parent directory) when missing and applies any
    pending schema migrations. Instances hold no connection, so they are cheap, picklable and safe
    to share between threads and to create in several processes at once.

    Each table group is a class of its own module (store/runs.py, prompts.py, deployments.py, production.py,
    alerts.py), all on `StoreConnection` (store/connection.py: opening, lock retries, migrations); this class composes
    them, so a new table group is one more base here.
    """
