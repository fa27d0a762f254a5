"""Arrow tables of store records, for fast `INSERT … SELECT` into DuckDB (used by metrics.py only)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any

import pyarrow as pa

__all__ = ["RESPONSE_COLUMNS", "RESULT_COLUMNS", "PRODUCTION_COLUMNS", "responses_table", "results_table",
           "splits_table", "keys_table", "production_results_table"]

from promptcycle.store.records import (
    ProductionResult,
    ResponseRecord,
    ResultRecord,
    dump_json,
    to_db_time,
)


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
    "simulated": pa.bool_(), "created_at": pa.timestamp("us"), "run_id": pa.string(), "wait_ms": pa.float64(),
    "provider_model": pa.string(), "finish_reason": pa.string(), "tokens_source": pa.string(),
}

_RESULT_TYPES: dict[str, pa.DataType] = {
    "run_id": pa.string(), "model": pa.string(), "case_id": pa.string(), "repeat": pa.int32(),
    "spectrum": pa.string(), "split": pa.string(), "prompt_hash": pa.string(), "call_key": pa.string(),
    "scores": pa.map_(pa.string(), pa.float64()), "overall": pa.float64(), "explanation": pa.string(),
    "latency_ms": pa.float64(), "input_tokens": pa.int32(), "output_tokens": pa.int32(),
    "cost_usd": pa.float64(), "attempts": pa.int32(), "error": pa.string(), "error_kind": pa.string(),
    "simulated": pa.bool_(), "created_at": pa.timestamp("us"), "wait_ms": pa.float64(),
    "finish_reason": pa.string(), "tokens_source": pa.string(),
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


_PRODUCTION_TYPES: dict[str, pa.DataType] = {
    "pipeline": pa.string(), "request_id": pa.string(), "prompt_hash": pa.string(), "scope": pa.string(),
    "canary_id": pa.string(), "arm": pa.string(), "model": pa.string(), "score": pa.float64(),
    "error": pa.bool_(), "latency_ms": pa.float64(), "metadata_json": pa.string(), "created_at": pa.timestamp("us"),
}
PRODUCTION_COLUMNS: tuple[str, ...] = tuple(_PRODUCTION_TYPES)


def production_results_table(records: Sequence[ProductionResult], now: datetime) -> pa.Table:
    """Production results as an Arrow table: metadata as compact JSON, a missing time becomes `now`."""
    names = [n for n in PRODUCTION_COLUMNS if n != "metadata_json"] + ["metadata"]
    data = _transpose(records, names)
    data["metadata_json"] = [dump_json(m) for m in data.pop("metadata")]
    data["created_at"] = _db_times(data["created_at"], now)
    data["error"] = [bool(e) for e in data["error"]]
    return _table({name: (t, data[name]) for name, t in _PRODUCTION_TYPES.items()})
