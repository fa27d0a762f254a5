"""Outcomes of production traffic: which prompt served each request and how it scored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from promptcycle.errors import StoreError
from promptcycle.store.arrow import PRODUCTION_COLUMNS, production_results_table
from promptcycle.store.connection import StoreConnection, _load_json, _rows
from promptcycle.store.records import (
    ProductionResult,
    from_db_time,
    to_db_time,
    utc_now,
)

__all__ = ["ProductionTables"]


def _production_from_row(row: dict[str, Any]) -> ProductionResult:
    row = dict(row)
    row["metadata"] = _load_json(row.pop("metadata_json"))
    row["created_at"] = from_db_time(row["created_at"])
    return ProductionResult(**row)


class ProductionTables(StoreConnection):
    """Production outcomes, written by the serving side and read by canaries and monitoring."""

    # -- production results --------------------------------------------------------------------

    def write_production_results(self, results: Sequence[ProductionResult]) -> int:
        """Record production outcomes in one transaction; return how many were new. A request id the
        pipeline already recorded keeps its first outcome (re-reporting changes nothing)."""
        return len(self.insert_production_results(results))

    def insert_production_results(self, results: Sequence[ProductionResult]) -> list[tuple[str, str]]:
        """Record production outcomes in one transaction; return the (pipeline, request_id) of those that were
        new. A request id already recorded, or repeated in `results`, keeps its first outcome."""
        if not results:
            return []
        for r in results:
            if r.score is not None and not 0.0 <= float(r.score) <= 1.0:
                raise ValueError(f"request {r.request_id!r}: score {r.score!r} is outside [0, 1]")
        try:
            table = production_results_table(list(results), utc_now())
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise StoreError(f"production results for {self.path} have a value of the wrong type: {exc}") from exc
        with self._transaction(f"write {len(results)} production results") as con:
            con.register("new_production", table)
            # With ON CONFLICT DO NOTHING, RETURNING yields the rows actually inserted.
            new = con.execute(f"INSERT INTO production_results ({', '.join(PRODUCTION_COLUMNS)}) "
                              f"SELECT {', '.join(PRODUCTION_COLUMNS)} FROM new_production ON CONFLICT DO NOTHING "
                              "RETURNING pipeline, request_id").fetchall()
        return [(pipeline, request_id) for pipeline, request_id in new]

    def production_results(self, pipeline: str, *, prompt_hashes: Sequence[str] | None = None,
                           scope: str | None = "", since: Any = None, until: Any = None,
                           canary_id: str | None = None) -> list[ProductionResult]:
        """The pipeline's production outcomes in arrival order (created_at, request_id).

        Filters: served by one of `prompt_hashes`; of `scope` (None: any); and either tagged with
        `canary_id` or, untagged, reported between `since` and `until` (UTC datetimes; None: open).
        """
        where, params = ["pipeline = ?"], [pipeline]
        if scope is not None:
            where.append("scope = ?")
            params.append(scope)
        if prompt_hashes is not None:
            hashes = list(dict.fromkeys(prompt_hashes))
            if not hashes:
                return []
            where.append(f"prompt_hash IN ({', '.join('?' for _ in hashes)})")
            params += hashes
        window, window_params = [], []
        if since is not None:
            window.append("created_at >= ?")
            window_params.append(to_db_time(since))
        if until is not None:
            window.append("created_at <= ?")
            window_params.append(to_db_time(until))
        window_sql = " AND ".join(window) or "TRUE"
        if canary_id is not None:
            where.append(f"(canary_id = ? OR (canary_id IS NULL AND {window_sql}))")
            params += [canary_id, *window_params]
        else:
            where.append(window_sql)
            params += window_params
        with self._connect(f"read the production results of {pipeline}") as con:
            rows = _rows(con.execute(f"SELECT {', '.join(PRODUCTION_COLUMNS)} FROM production_results "
                                     f"WHERE {' AND '.join(where)} ORDER BY created_at, request_id", params))
        return [_production_from_row(r) for r in rows]
