"""Rows of the metrics store as dataclasses, and their conversion to and from DuckDB.

Times are UTC. The database keeps them as naive `TIMESTAMP`s in UTC; records read back carry
`tzinfo=timezone.utc`, and an aware time written in another zone is converted first. A naive time
given to a record is taken to be UTC already.

Writes go through Arrow tables with explicit types, so a column that happens to be all-NULL in a
batch still has the right type and DuckDB ingests the batch in one columnar insert.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from datetime import date, datetime, timezone
from typing import Any

import pyarrow as pa

__all__ = [
    "RUN_STATUSES",
    "LABELS",
    "DECISION_KINDS",
    "RESPONSE_COLUMNS",
    "RESULT_COLUMNS",
    "RunRecord",
    "ResponseRecord",
    "ResultRecord",
    "PromptVersionRecord",
    "LabelEvent",
    "DecisionRecord",
    "utc_now",
    "to_db_time",
    "from_db_time",
    "dump_json",
    "responses_table",
    "results_table",
    "splits_table",
    "keys_table",
]

RUN_STATUSES = ("running", "completed", "failed")
# What a label says about the version it points at: serving, being tried, the one to roll back to.
LABELS = ("production", "candidate", "previous")
# Which step took a decision; later phases add theirs here.
DECISION_KINDS = ("confirmation", "gate", "canary")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def to_db_time(value: datetime | None) -> datetime | None:
    """UTC, naive, as the database stores it."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def from_db_time(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=timezone.utc)


def _json_default(value: Any) -> Any:
    # numpy scalars (from pandas aggregates) and times are common in reports; anything else is a bug.
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dump_json(value: Any) -> str | None:
    """Compact JSON (no spaces) for the store's `*_json` and explanation columns; a str passes through."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)


@dataclass
class RunRecord:
    """One run of a phase (`kind`: 'baseline', later 'optimization', 'monitoring', …).

    `fingerprint` hashes what makes two runs the same work: a re-run with the same fingerprint
    resumes the latest unfinished run instead of starting over. `config_json` is the pipeline's
    configuration as JSON — never secrets. `summary_json` is written when the run finishes.
    """

    run_id: str
    pipeline: str
    kind: str
    fingerprint: str
    status: str = "running"
    prompt_hash: str | None = None
    dataset_hash: str | None = None
    models: list[str] = field(default_factory=list)
    repeats: int = 1
    case_limit: int | None = None
    simulated: bool = False
    config_json: str | None = None
    flow_run_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    summary_json: str | None = None

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.config_json) if self.config_json else {}

    @property
    def summary(self) -> dict[str, Any] | None:
        return json.loads(self.summary_json) if self.summary_json else None


@dataclass
class ResponseRecord:
    """One paid model call in the ledger; `call_key` identifies the call (the caller hashes it).

    `model` is the provider's model id, `run_id` the run that paid for the call.
    """

    call_key: str
    provider: str
    model: str
    prompt_hash: str | None
    case_id: str | None
    repeat: int | None
    output: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    attempts: int | None = None
    simulated: bool = False
    created_at: datetime | None = None
    run_id: str | None = None


@dataclass
class ResultRecord:
    """One observation: a (run, model, case, repeat) with its scores, or the terminal error it ended in.

    `scores` maps scorer name to a value in [0, 1]; `explanation` is compact JSON (a dict is
    serialised on write). The output text is not here: it lives once in `responses`, under `call_key`
    (None when the call failed).
    """

    run_id: str
    model: str
    case_id: str
    repeat: int
    spectrum: str | None = None
    split: str | None = None
    prompt_hash: str | None = None
    call_key: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    overall: float | None = None
    explanation: str | dict[str, Any] | None = None
    latency_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    attempts: int | None = None
    error: str | None = None
    error_kind: str | None = None
    simulated: bool | None = None
    created_at: datetime | None = None


@dataclass
class PromptVersionRecord:
    """An immutable prompt version, keyed by its content hash.

    `parent_hash` is the version it was derived from, `strategy` and `rationale` say how and why;
    `scope` is the model it is meant for, or None for every model.
    """

    prompt_hash: str
    pipeline: str
    system: str
    template: str
    variables: list[str] = field(default_factory=list)
    parent_hash: str | None = None
    strategy: str | None = None
    rationale: str | None = None
    scope: str | None = None
    created_at: datetime | None = None


@dataclass
class LabelEvent:
    """One move of a prompt label, as the append-only history records it.

    `from_hash` is the version the label pointed at before (None for its first placement),
    `to_hash` the one it points at after. `actor` is who or what moved it (a user, a flow run),
    `reason` why, `evidence` the numbers behind the move, and `forced` marks a move made by hand
    past the checks that would normally decide it. `scope` is '' for every model, else a model name.
    """

    event_id: str
    pipeline: str
    label: str
    scope: str
    from_hash: str | None
    to_hash: str
    actor: str
    reason: str
    evidence: dict[str, Any] | None = None
    forced: bool = False
    created_at: datetime | None = None


@dataclass
class DecisionRecord:
    """A decision about a candidate prompt (`prompt_hash`) against `baseline_hash`, with its evidence.

    `kind` is the step that decided (one of `DECISION_KINDS`); `decision` is its outcome, e.g.
    'promote', 'no_improvement', 'underpowered', 'regression_in_spectrum' or 'budget_exhausted';
    `evidence` holds the effect, CI, p-value, N, the test used, the MDE, per-spectrum deltas … A
    decision is keyed by (run_id, prompt_hash, kind): writing it again replaces it, keeping its
    `decision_id` (assigned by the store when None).
    """

    run_id: str
    pipeline: str
    kind: str
    prompt_hash: str
    decision: str
    baseline_hash: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    decision_id: str | None = None
    created_at: datetime | None = None


def _table(columns: dict[str, tuple[pa.DataType, Any]]) -> pa.Table:
    return pa.Table.from_arrays([values if isinstance(values, pa.Array) else pa.array(values, type=t)
                                 for t, values in columns.values()], names=list(columns))


def _transpose(records: Sequence[Any], names: Sequence[str]) -> dict[str, list[Any]]:
    """Column lists from records in one pass (attrgetter and zip do the looping in C)."""
    if not records:
        return {n: [] for n in names}
    return dict(zip(names, map(list, zip(*map(attrgetter(*names), records)))))


def _scores_array(scores: list[dict[str, float] | None]) -> pa.Array:
    """A MAP(VARCHAR, DOUBLE) column; an empty or missing dict is NULL (no score was given)."""
    offsets, keys, values, mask = [0], [], [], []
    for row in scores:
        if row:
            keys.extend(row)
            values.extend(row.values())
        offsets.append(len(keys))
        mask.append(not row)
    return pa.MapArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(keys, pa.string()),
                                   pa.array(values, pa.float64()), mask=pa.array(mask, pa.bool_()))


def _db_times(values: list[datetime | None], now: datetime) -> list[datetime]:
    now = to_db_time(now)
    return [now if v is None else to_db_time(v) for v in values]


_RESPONSE_TYPES: dict[str, pa.DataType] = {
    "call_key": pa.string(), "provider": pa.string(), "model": pa.string(), "prompt_hash": pa.string(),
    "case_id": pa.string(), "repeat": pa.int32(), "output": pa.string(), "input_tokens": pa.int32(),
    "output_tokens": pa.int32(), "latency_ms": pa.float64(), "cost_usd": pa.float64(), "attempts": pa.int32(),
    "simulated": pa.bool_(), "created_at": pa.timestamp("us"), "run_id": pa.string(),
}

_RESULT_TYPES: dict[str, pa.DataType] = {
    "run_id": pa.string(), "model": pa.string(), "case_id": pa.string(), "repeat": pa.int32(),
    "spectrum": pa.string(), "split": pa.string(), "prompt_hash": pa.string(), "call_key": pa.string(),
    "scores": pa.map_(pa.string(), pa.float64()), "overall": pa.float64(), "explanation": pa.string(),
    "latency_ms": pa.float64(), "input_tokens": pa.int32(), "output_tokens": pa.int32(),
    "cost_usd": pa.float64(), "attempts": pa.int32(), "error": pa.string(), "error_kind": pa.string(),
    "simulated": pa.bool_(), "created_at": pa.timestamp("us"),
}

RESPONSE_COLUMNS: tuple[str, ...] = tuple(_RESPONSE_TYPES)
RESULT_COLUMNS: tuple[str, ...] = tuple(_RESULT_TYPES)


def responses_table(records: Sequence[ResponseRecord], now: datetime) -> pa.Table:
    """The ledger rows as an Arrow table; a missing `created_at` becomes `now`."""
    data = _transpose(records, RESPONSE_COLUMNS)
    data["created_at"] = _db_times(data["created_at"], now)
    return _table({name: (t, data[name]) for name, t in _RESPONSE_TYPES.items()})


def results_table(records: Sequence[ResultRecord], now: datetime) -> pa.Table:
    """The result rows as an Arrow table: scores as a MAP, explanation as compact JSON."""
    data = _transpose(records, RESULT_COLUMNS)
    data["scores"] = _scores_array(data["scores"])
    data["explanation"] = [dump_json(e) or None for e in data["explanation"]]
    data["created_at"] = _db_times(data["created_at"], now)
    return _table({name: (t, data[name]) for name, t in _RESULT_TYPES.items()})


def splits_table(dataset_key: str, splits: dict[str, str]) -> pa.Table:
    return _table({"dataset_key": (pa.string(), [dataset_key] * len(splits)),
                   "case_id": (pa.string(), list(splits)),
                   "split": (pa.string(), list(splits.values()))})


def keys_table(name: str, keys: Sequence[str]) -> pa.Table:
    """A one-column table of keys to join against (cheaper than a long IN list)."""
    return _table({name: (pa.string(), list(keys))})
