"""A run's shared store traffic (promptcycle/evaluation/runio.py): when its first calls can go out.

A real DuckDB store in tmp_path; `under_way` is what the baseline flow waits on before it starts
its other cells, and before Great Expectations imports (flows/baseline.py).
"""

from __future__ import annotations

import asyncio
import time

from promptcycle.evaluation.runio import run_io, under_way
from promptcycle.store.metrics import MetricsStore
from test_store import make_batch


def _store_with_answers(tmp_path) -> tuple[MetricsStore, list[str]]:
    store = MetricsStore(tmp_path / "m.duckdb")
    responses, results = make_batch("earlier-run", "sim-small", 0, 6)
    store.write_batch(responses, results)
    return store, [r.call_key for r in responses]


def test_under_way_returns_once_the_runs_first_ledger_lookup_is_answered(tmp_path):
    store, keys = _store_with_answers(tmp_path)

    async def go():
        async def first_cell():
            await asyncio.sleep(0.2)  # its start-up
            found = await run_io(store, "run-1").paid(keys[:3] + ["never-paid"])
            await asyncio.sleep(5)  # its calls
            return found

        cell = asyncio.ensure_future(first_cell())
        start = time.perf_counter()
        await under_way(store, "run-1", [cell], timeout=10)
        waited = time.perf_counter() - start
        looked_up = run_io(store, "run-1").lookups
        cell.cancel()
        return waited, looked_up

    waited, looked_up = asyncio.run(go())
    assert looked_up == 1
    assert 0.2 <= waited < 3, waited  # after the lookup, long before the cell or the timeout ends


def test_under_way_returns_when_the_cell_ends_without_a_lookup_or_at_the_timeout(tmp_path):
    store, _ = _store_with_answers(tmp_path)

    async def go():
        async def recorded_cell():  # everything recorded already: it looks nothing up
            await asyncio.sleep(0.1)

        start = time.perf_counter()
        await under_way(store, "run-2", [asyncio.ensure_future(recorded_cell())], timeout=10)
        ended = time.perf_counter() - start

        stuck = asyncio.ensure_future(asyncio.sleep(10))
        start = time.perf_counter()
        await under_way(store, "run-3", [stuck], timeout=0.3)
        timed_out = time.perf_counter() - start
        left_running = not stuck.done()
        stuck.cancel()
        # Another run's lookup does not count.
        await run_io(store, "run-4").paid(["k"])
        return ended, timed_out, left_running, run_io(store, "run-5").lookups

    ended, timed_out, left_running, other_run = asyncio.run(go())
    assert 0.1 <= ended < 3, ended
    assert 0.3 <= timed_out < 3 and left_running, timed_out  # the cell itself is left to run
    assert other_run == 0


def test_under_way_of_several_cells_waits_for_each_lookup_or_end(tmp_path):
    store, keys = _store_with_answers(tmp_path)

    async def go():
        async def looking_cell(delay: float):
            await asyncio.sleep(delay)  # its start-up
            await run_io(store, "run-6").paid(keys[:2])
            await asyncio.sleep(5)  # its calls

        async def recorded_cell():  # nothing left to call: ends without a lookup
            await asyncio.sleep(0.3)

        cells = [asyncio.ensure_future(looking_cell(0.1)), asyncio.ensure_future(looking_cell(0.6)),
                 asyncio.ensure_future(recorded_cell())]
        start = time.perf_counter()
        await under_way(store, "run-6", cells, timeout=10)
        waited = time.perf_counter() - start
        lookups = run_io(store, "run-6").lookups
        for cell in cells:
            cell.cancel()
        return waited, lookups

    waited, lookups = asyncio.run(go())
    assert lookups == 2
    assert 0.6 <= waited < 3, waited  # after the slowest cell's lookup, not after the first one's
