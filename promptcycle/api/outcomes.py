"""Outcomes reported over HTTP: the request body, and the writer that records them with group commit.

Every HTTP request hands its outcomes to one writer thread and waits; the thread writes everything
pending in one transaction (`insert_production_results`), then answers every waiting request with
how many of its outcomes were new. So the answer comes after the outcomes are in the store (nothing
acknowledged is lost), and one DuckDB connection serves many requests: under load the batches grow,
which is what makes tens of thousands of outcomes per second possible when opening the file costs
tens of milliseconds.

Recording is idempotent by `request_id`: a pipeline's request id is recorded once, and an outcome
sent again (a retry after a timeout, the same batch twice, two copies in one batch) counts as a
duplicate and changes nothing.

DuckDB lets one process open the file at a time, and opening it costs tens of milliseconds. So
under a steady stream the writer keeps the file open for a burst of back-to-back writes (at most
`hold_s`), then leaves it free for at least `gap_s`: flows in other processes, waiting for the file
with jittered back-off (store/connection.py), get their turn.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from promptcycle.errors import StoreError
from promptcycle.store.records import ProductionResult, to_db_time

__all__ = ["Outcome", "OutcomeBatch", "OutcomesRecorded", "OutcomeWriter", "WriterBusy", "MAX_BATCH"]

MAX_BATCH = 10_000
logger = logging.getLogger("promptcycle.api")


class Outcome(BaseModel):
    """The outcome of one production request (the fields of `log_production_result`)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=256, description="The request's id; an id already recorded "
                            "for the pipeline is a duplicate and changes nothing.")
    version: str = Field(min_length=1, max_length=128, description="The prompt version that served it (the "
                         "`version` the prompt endpoint returned).")
    score: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False,
                                description="Its quality in [0, 1], if the application measures one.")
    error: StrictBool = Field(default=False, description="Whether the request failed.")
    latency_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False, description="How long it took.")
    model: str | None = Field(default=None, max_length=256, description="The model that answered.")
    scope: str = Field(default="", max_length=256, description="The label scope that served it ('' or a model "
                       "name; the prompt endpoint's `scope`).")
    canary_id: str | None = Field(default=None, max_length=128, description="The prompt endpoint's `canary_id`.")
    arm: Literal["production", "control", "treatment", "shadow"] | None = Field(
        default=None, description="The prompt endpoint's `arm` ('shadow' for an unserved shadow answer).")
    metadata: dict[str, Any] | None = Field(default=None, description="Anything else, stored as JSON.")
    at: datetime | None = Field(default=None, description="When it happened (ISO-8601; default: when received).")


class OutcomeBatch(BaseModel):
    """A batch of outcomes of one pipeline."""

    model_config = ConfigDict(extra="forbid")

    outcomes: list[Outcome] = Field(min_length=1, max_length=MAX_BATCH,
                                    description=f"1 to {MAX_BATCH:,} outcomes, recorded in one transaction.")

    def records(self, pipeline: str) -> list[ProductionResult]:
        # Times as the store keeps them, naive UTC: converting an aware time per row costs more than the rest of
        # the row's way into the store.
        received = to_db_time(datetime.now(timezone.utc))
        return [ProductionResult(pipeline=pipeline, request_id=o.request_id, prompt_hash=o.version, error=o.error,
                                 score=o.score, latency_ms=o.latency_ms, model=o.model, scope=o.scope,
                                 canary_id=o.canary_id, arm=o.arm, metadata=o.metadata,
                                 created_at=received if o.at is None else to_db_time(o.at))
                for o in self.outcomes]


class OutcomesRecorded(BaseModel):
    received: int = Field(description="Outcomes in the request.")
    recorded: int = Field(description="Outcomes recorded now.")
    duplicates: int = Field(description="Outcomes whose request id was already recorded (or repeated in the batch).")


class WriterBusy(Exception):
    """The writer holds more outcomes than it accepts in waiting, or is shutting down: retry later."""


@dataclass
class _Submission:
    records: list[ProductionResult]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


def _settle(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the client went away and its request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class OutcomeWriter:
    """Group commit of outcomes into the store's `production_results` (see the module docstring).

    `store` is a MetricsStore (or anything with `insert_production_results`); `max_pending` caps the
    outcomes waiting for a write (beyond it a request gets `WriterBusy` at once, an HTTP 503).
    """

    def __init__(self, store: Any, *, gap_s: float = 0.1, hold_s: float = 0.5, max_pending: int = 200_000):
        self.store = store
        self.gap_s = float(gap_s)
        self.hold_s = float(hold_s)
        self.max_pending = int(max_pending)
        self.writes = 0  # diagnostics: transactions and outcomes written
        self.written = 0
        self._lock = threading.Lock()
        self._pending: list[_Submission] = []
        self._pending_count = 0
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="promptcycle-api-outcomes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is pending, then stop; later submissions get `WriterBusy`."""
        with self._lock:
            self._closing = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    async def record(self, records: list[ProductionResult]) -> dict[str, int]:
        """Record `records` with the next write; once they are in the store, return how many were received,
        recorded (new) and duplicates (the fields of `OutcomesRecorded`)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self._closing:
                raise WriterBusy("the API is shutting down")
            if self._pending_count + len(records) > self.max_pending:
                raise WriterBusy(f"{self._pending_count:,} outcomes are waiting to be written")
            self._pending.append(_Submission(records, future, loop))
            self._pending_count += len(records)
        self._wake.set()
        new = await future
        return {"received": len(records), "recorded": new, "duplicates": len(records) - new}

    def _take(self) -> tuple[list[_Submission], bool]:
        with self._lock:
            batch, self._pending, self._pending_count = self._pending, [], 0
            self._wake.clear()
            return batch, self._closing

    def _run(self) -> None:
        released = 0.0
        while True:
            self._wake.wait()  # set by every submission, and by close()
            pause = self.gap_s - (time.monotonic() - released)
            if pause > 0:
                time.sleep(pause)  # meanwhile requests keep arriving: the next batch grows
            batch, closing = self._take()
            if not batch:
                if closing:
                    return
                continue
            try:
                with self.store.held_open():
                    until = time.monotonic() + self.hold_s
                    while batch:
                        self._write(batch)
                        batch = []
                        if time.monotonic() < until:
                            batch, closing = self._take()  # what arrived during the write
            except Exception as exc:  # noqa: BLE001 - the file could not be opened: those waiting get a 503
                logger.warning("could not open the store to record outcomes: %s", exc)
                for s in batch:
                    s.loop.call_soon_threadsafe(_settle, s.future, None, StoreError(str(exc)))
            released = time.monotonic()
            with self._lock:
                if self._pending or self._closing:
                    self._wake.set()  # work left when the hold ended (or closing): go round again after the gap

    def _write(self, batch: list[_Submission]) -> None:
        owner: dict[tuple[str, str], int] = {}  # the first submission naming each request id
        records = []
        for i, submission in enumerate(batch):
            for r in submission.records:
                key = (r.pipeline, r.request_id)
                if key not in owner:
                    owner[key] = i
                    records.append(r)
        try:
            new = self.store.insert_production_results(records)
        except (StoreError, ValueError) as exc:
            logger.warning("could not record %d outcomes: %s", len(records), exc)
            for s in batch:
                s.loop.call_soon_threadsafe(_settle, s.future, None, StoreError(str(exc)))
            return
        except BaseException as exc:  # noqa: BLE001 - every waiting request gets an answer
            logger.exception("could not record %d outcomes", len(records))
            for s in batch:
                s.loop.call_soon_threadsafe(_settle, s.future, None, StoreError(f"{type(exc).__name__}: {exc}"))
            return
        self.writes += 1
        self.written += len(new)
        per_submission = Counter(owner[key] for key in new)
        for i, s in enumerate(batch):
            s.loop.call_soon_threadsafe(_settle, s.future, per_submission.get(i, 0))
