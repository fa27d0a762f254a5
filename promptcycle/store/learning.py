"""The learning tables: what each optimization candidate did, per strategy and context (schema step 9 in schema.py).

`strategy_outcomes` holds one row per (optimization run, candidate, scope): the strategy, the context
(pipeline, model scope, spectrum, failure kind), the effect on dev and on test in points over the
current prompt, the minimum effect it was judged against, and the calls and cost its evaluation paid.
`promptcycle.optimize.learning` turns them into posteriors. Writes are keyed: recording an
optimization again replaces its rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from promptcycle.store.records import to_db_time, utc_now

__all__ = ["LearningTables"]

_COLUMNS = ("run_id", "candidate", "scope", "pipeline", "strategy", "spectrum", "failure_kind", "dev_effect",
            "test_effect", "min_effect", "success", "calls", "cost_usd", "simulated", "recorded_at")


class LearningTables:
    """MetricsStore methods for the learning tables (a mixin: it uses the store's `_transaction`/`_connect`)."""

    def record_strategy_outcomes(self, rows: Sequence[dict[str, Any]]) -> int:
        """Write candidates' outcomes (dicts with the table's columns; `StrategyOutcome.to_row()`); rows of
        the same (run, candidate, scope) replace earlier ones. Returns the number written."""
        if not rows:
            return 0
        now = to_db_time(utc_now())
        values = [[(to_db_time(r["recorded_at"]) if r.get("recorded_at") else now) if c == "recorded_at"
                   else r.get(c) if c not in ("scope", "spectrum", "failure_kind") else (r.get(c) or "")
                   for c in _COLUMNS] for r in rows]
        runs = sorted({r["run_id"] for r in rows})
        with self._transaction(f"record the strategy outcomes of {', '.join(runs)}") as con:
            con.executemany(f"INSERT OR REPLACE INTO strategy_outcomes ({', '.join(_COLUMNS)}) "
                            f"VALUES ({', '.join('?' * len(_COLUMNS))})", values)
        return len(values)

    def strategy_outcomes(self, pipeline: str | None = None, *, last_runs: int | None = None) -> list[dict[str, Any]]:
        """Stored outcomes, oldest first (optionally of one pipeline, and of its `last_runs` newest
        optimizations)."""
        where, params = ("WHERE pipeline = ?", [pipeline]) if pipeline else ("", [])
        with self._connect("read the strategy outcomes") as con:
            rows = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM strategy_outcomes {where} "
                               "ORDER BY recorded_at, run_id, candidate, scope", params).fetchall()
        out = [dict(zip(_COLUMNS, r, strict=True)) for r in rows]
        if last_runs is not None:
            runs = list(dict.fromkeys(r["run_id"] for r in out))[-last_runs:] if last_runs > 0 else []
            keep = set(runs)
            out = [r for r in out if r["run_id"] in keep]
        return out
