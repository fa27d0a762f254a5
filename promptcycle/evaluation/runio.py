"""The store traffic of one run, shared by all its cells in this process.

Every DuckDB open costs tens of milliseconds and takes the file's lock, so the cells of a run do not
each read and write on their own: reads of what the run already recorded and of the paid-call ledger
are coalesced into a few queries, and new rows go through one buffer that is flushed in batches:
every `flush_seconds` (1 s) by a timer while cells are active, as soon as `flush_rows` rows wait, when
the last active cell finishes, and when a cell fails. So a killed process loses at most the answers
received in its last second (plus those of a write under way) — a re-run pays for those again. What
is buffered counts as recorded for this process, so a retried cell does not call again what an earlier
attempt already answered.

What a call sent before it was answered — requests of attempts that failed with a retryable error and
were left for the next task attempt, or of a terminal error recorded by an earlier run and retried now
— is carried over (`carry`, `carried`) into the row that finally records the call, so `attempts` and
`wait_ms` count every request it took.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterable, Sequence

from promptcycle.store.records import ResponseRecord, ResultRecord

# `store` is a MetricsStore or its data-worker proxy (promptcycle/store/remote.py).

__all__ = ["RunIO", "run_io", "mark_new_run", "under_way"]


class RunIO:
    def __init__(self, store, run_id: str, *, flush_rows: int = 500, flush_seconds: float = 1.0):
        self.store = store
        self.run_id = run_id
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._completed: dict[str, set[tuple[str, int]]] = {}
        self._completed_lock = asyncio.Lock()
        self._run_read = False
        self._ledger: dict[str, ResponseRecord] = {}
        self._looked_up: set[str] = set()
        self._pending: set[str] = set()
        self._ledger_lock = asyncio.Lock()
        self.lookups = 0  # ledger lookups answered (one per cell start, usually): after the first, calls go out
        self._lookup_answered = asyncio.Event()  # set (and replaced) at each
        self._responses: list[ResponseRecord] = []
        self._results: list[ResultRecord] = []
        self._flush_lock = asyncio.Lock()
        self._last_flush = time.monotonic()
        self._active_cells = 0
        self._carried: dict[tuple[str, str, int], tuple[int, float]] = {}
        self._recorded: dict[str, set[tuple[str, int]]] = {}  # model -> (case_id, repeat) recorded by this process
        self._timer: asyncio.Task | None = None

    async def __aenter__(self) -> "RunIO":
        self._active_cells += 1
        if self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._flush_periodically())
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self._active_cells -= 1
        if self._active_cells == 0 and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if exc_type is not None or self._active_cells == 0:
            await self.flush()

    async def _flush_periodically(self) -> None:
        """While cells are active, write what waits at least every `flush_seconds`, even when no new
        answer arrives to trigger it."""
        while True:
            await asyncio.sleep(self.flush_seconds)
            if (self._results or self._responses) and not self._flush_lock.locked():
                try:
                    await self.flush()
                except Exception:  # noqa: BLE001 - the rows stay buffered; the cells' own flush reports it
                    pass

    async def completed(self, model: str) -> set[tuple[str, int]]:
        """(case_id, repeat) of `model` this run need not call again: scored in the store, or recorded by this
        process (scored or terminal error). The store's terminal errors are called again, their requests
        carried over."""
        async with self._completed_lock:
            if not self._run_read:  # every model's rows in one read: the cells' first calls wait on it
                for name, (scored, failed) in (await asyncio.to_thread(self.store.recorded_calls, self.run_id)).items():
                    self._completed.setdefault(name, set()).update(scored)
                    for (case_id, repeat), sent in failed.items():
                        if (case_id, repeat) not in scored:
                            self.carry(name, case_id, repeat, *sent)
                self._run_read = True
            return self._completed.setdefault(model, set())

    def recorded_here(self, model: str) -> set[tuple[str, int]]:
        """(case_id, repeat) of `model` this process recorded (a cell's retry skips them, already counted)."""
        return self._recorded.get(model, set())

    def carry(self, model: str, case_id: str, repeat: int, attempts: int, wait_ms: float) -> None:
        """Remember requests a call sent without being recorded (to add to the row that records it)."""
        before = self._carried.get((model, case_id, repeat), (0, 0.0))
        self._carried[(model, case_id, repeat)] = (before[0] + attempts, before[1] + wait_ms)

    def carried(self, model: str, case_id: str, repeat: int) -> tuple[int, float]:
        """(attempts, wait_ms) carried for a call so far, forgotten once taken."""
        return self._carried.pop((model, case_id, repeat), (0, 0.0))

    async def paid(self, call_keys: Iterable[str]) -> dict[str, ResponseRecord]:
        """Ledger entries for the keys ever paid for; lookups of concurrent cells share one query."""
        keys = list(call_keys)
        self._pending.update(k for k in keys if k not in self._looked_up)
        async with self._ledger_lock:
            if self._pending:
                batch, self._pending = list(self._pending), set()
                self._ledger.update(await asyncio.to_thread(self.store.get_responses, batch))
                self._looked_up.update(batch)
        self.lookups += 1
        self._lookup_answered.set()
        self._lookup_answered = asyncio.Event()
        found = {k: self._ledger[k] for k in keys if k in self._ledger}
        for k in found:  # each paid answer is reused once per run; no need to hold it afterwards
            del self._ledger[k]
        return found

    async def next_lookup(self) -> None:
        """Return once the next ledger lookup is answered."""
        await self._lookup_answered.wait()

    async def add(self, response: ResponseRecord | None, result: ResultRecord) -> None:
        if response is not None:
            self._responses.append(response)
            # Marked as looked up (so never queried) but not kept: its result is recorded below, so
            # this run will not ask for it again, and holding every answer would grow with the run.
            self._looked_up.add(response.call_key)
        self._results.append(result)
        self._recorded.setdefault(result.model, set()).add((result.case_id, result.repeat))
        done = self._completed.get(result.model)
        if done is not None:
            done.add((result.case_id, result.repeat))
        due = (len(self._results) >= self.flush_rows
               or time.monotonic() - self._last_flush >= self.flush_seconds)
        if due and not self._flush_lock.locked():
            await self.flush()

    async def flush(self) -> None:
        """Write everything buffered (one transaction); on failure the rows stay buffered."""
        async with self._flush_lock:
            if not self._results and not self._responses:
                return
            responses, results = self._responses, self._results
            self._responses, self._results = [], []
            try:
                await asyncio.to_thread(self.store.write_batch, responses, results)
            except BaseException:
                self._responses[:0], self._results[:0] = responses, results
                raise
            finally:
                self._last_flush = time.monotonic()


# Keyed by the loop object itself (weakly): asyncio locks belong to one loop, and a new loop may
# reuse a dead one's id().
_ios: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], RunIO]]" = \
    weakref.WeakKeyDictionary()


_new_runs: set[tuple[str, str]] = set()  # (store path, run id) created by this process, no RunIO yet


def mark_new_run(store, run_id: str) -> None:
    """`run_id` was just created by this process: it has recorded nothing, so its first RunIO need not
    read the store for what it recorded (one query less in front of the first calls). Later RunIOs of
    the run (another event loop) read it as usual."""
    _new_runs.add((str(store.path), run_id))


def run_io(store, run_id: str) -> RunIO:
    """The RunIO of `run_id` on the running event loop (created on first use)."""
    per_loop = _ios.setdefault(asyncio.get_running_loop(), {})
    key = (str(store.path), run_id)
    io = per_loop.get(key)
    if io is None:
        io = per_loop[key] = RunIO(store, run_id)
        if key in _new_runs:
            _new_runs.discard(key)
            io._run_read = True  # nothing recorded yet: nothing to read
    return io


async def under_way(store, run_id: str, cells: Sequence[asyncio.Future], *, timeout: float) -> None:
    """Wait until `cells` (of `run_id`, started in this process) are under way — each has had its ledger
    lookup answered (its calls are going out) or has ended — or `timeout` seconds have passed.

    Lookups are counted, not matched to cells: a cell that looked up and then ended counts twice, so
    the wait may end a little early; it never waits past the timeout."""
    io = run_io(store, run_id)
    deadline = asyncio.get_running_loop().time() + timeout
    while io.lookups + sum(c.done() for c in cells) < len(cells):
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return
        answered = asyncio.ensure_future(io.next_lookup())
        try:
            await asyncio.wait([answered, *(c for c in cells if not c.done())], timeout=left,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            answered.cancel()
