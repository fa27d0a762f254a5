"""One model x spectrum cell: every case of the spectrum, every repeat, through one model.

This is the unit of durable work. The store is the source of truth for resuming: observations
already scored for the run are skipped (a call that ended in a terminal error — a wrong key, an
outage — is called again when the run is resumed), and a call whose identical twin (same provider model,
messages, sampling and repeat) was ever paid for — in any run or phase — is reused from the
`responses` ledger instead of being paid twice. New observations are flushed to the store in
batches (shared by the run's cells, see runio.py), so a killed run loses at most one flush interval
of calls.

An optional `budget` (see `promptcycle.optimize.budget.Budget`) is asked before each *paid* call;
reusing a ledger entry is free and never asks. Once it refuses, no new call starts, the calls in
flight finish and are recorded, nothing is recorded for the calls not made, and the cell raises
`BudgetExceededError` after flushing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import orjson

from promptcycle.config import ModelConfig
from promptcycle.datasets.cases import Case
from promptcycle.errors import (
    BudgetExceededError,
    ProviderError,
    RetryCellError,
    is_retryable,
)
from promptcycle.evaluation import progress
from promptcycle.evaluation.ledger import call_key, call_keys, ledger_entry, pay, reused
from promptcycle.evaluation.runio import run_io
from promptcycle.prompts import PromptTemplate
from promptcycle.providers.base import ChatProvider, Completion
from promptcycle.scoring import overall
from promptcycle.scoring.base import Sample, Scorer
from promptcycle.store.records import ResultRecord

if TYPE_CHECKING:
    from promptcycle.optimize.budget import Budget

__all__ = ["CellSpec", "CellOutcome", "call_key", "call_keys", "evaluate_cell", "RetryCellError"]


@dataclass(frozen=True)
class CellSpec:
    run_id: str
    pipeline: str
    model_name: str
    model: ModelConfig
    spectrum: str
    prompt: PromptTemplate
    cases: Sequence[Case]
    splits: dict[str, str]
    repeats: int
    weights: dict[str, float]
    # The messages of a case (default: `prompt.render(case.inputs)`); PipelineContext.messages
    # shares one rendering between the cells of every model.
    render_case: Callable[[Case], list[dict[str, str]]] | None = None
    # Repeats run first_repeat … first_repeat + repeats - 1: a monitor probe numbers its repeats by its
    # period, so each period makes new calls (promptcycle/monitor/observations.py).
    first_repeat: int = 0
    # The ledger epoch of the cell's calls (see `call_keys`): "" shares the ledger with every run.
    epoch: str = ""


@dataclass
class CellOutcome:
    model: str
    spectrum: str
    skipped: int = 0  # already recorded in this run
    reused: int = 0  # answered from the responses ledger (not paid again)
    called: int = 0  # paid calls made now
    errors: int = 0  # terminal errors recorded
    deferred: int = 0  # retryable failures left for the next task attempt
    stopped: int = 0  # not called because the budget ran out (nothing recorded for them)
    error_messages: list[str] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def _score(scorers: dict[str, Scorer], sample: Sample) -> tuple[dict[str, float], dict]:
    values: dict[str, float] = {}
    explanation: dict[str, dict] = {}
    for name, scorer in scorers.items():
        s = await scorer.ascore(sample)
        values[name] = s.value
        if s.explanation:
            explanation[name] = s.explanation
    return values, explanation


async def evaluate_cell(spec: CellSpec, *, provider: ChatProvider, provider_name: str,
                        scorers: dict[str, Scorer], store,
                        final_attempt: bool = True, budget: Budget | None = None,
                        concurrency: int | None = None) -> CellOutcome:
    """Evaluate every (case, repeat) of the cell that the run has not recorded yet.

    `concurrency` bounds the cell's calls under way at once (the provider's own limit is the
    natural value; None starts them all). With a `budget`, every paid call must be granted by it
    first (see the module docstring).
    """
    outcome = CellOutcome(model=spec.model_name, spectrum=spec.spectrum)
    prompt_hash = spec.prompt.hash
    io = run_io(store, spec.run_id)
    done = await io.completed(spec.model_name)
    here = io.recorded_here(spec.model_name)  # counted in the progress when recorded (by an earlier attempt)
    newly_skipped = 0
    todo: list[tuple[Case, int, list[dict[str, str]], str]] = []
    for case in spec.cases:
        repeats = [r for r in range(spec.first_repeat, spec.first_repeat + spec.repeats) if (case.id, r) not in done]
        outcome.skipped += spec.repeats - len(repeats)
        newly_skipped += sum(1 for r in range(spec.repeats) if (case.id, r) in done and (case.id, r) not in here)
        if not repeats:
            continue
        messages = spec.render_case(case) if spec.render_case is not None else spec.prompt.render(case.inputs)
        keys = call_keys(provider_name, spec.model, messages, repeats, spec.epoch)
        todo.extend((case, repeat, messages, key) for repeat, key in zip(repeats, keys))
    if newly_skipped:
        progress.report_done(newly_skipped)
    if not todo:
        return outcome

    ledger = await io.paid(t[3] for t in todo)

    def result_row(case: Case, repeat: int, key: str | None, **fields) -> ResultRecord:
        return ResultRecord(run_id=spec.run_id, model=spec.model_name, case_id=case.id, repeat=repeat,
                            spectrum=case.spectrum, split=spec.splits.get(case.id), prompt_hash=prompt_hash,
                            call_key=key, created_at=_now(), **fields)

    async def scored_row(case: Case, repeat: int, key: str, completion: Completion, attempts: int | None,
                         wait_ms: float | None) -> ResultRecord:
        sample = Sample(case=case, output=completion.text, model=spec.model_name,
                        latency_ms=completion.latency_ms, latency_target_ms=spec.model.latency_target_ms)
        values, explanation = await _score(scorers, sample)
        return result_row(case, repeat, key, scores=values, overall=overall(values, spec.weights),
                          explanation=orjson.dumps(explanation, default=str,
                                                       option=orjson.OPT_NON_STR_KEYS).decode(),
                          latency_ms=completion.latency_ms, input_tokens=completion.input_tokens,
                          output_tokens=completion.output_tokens, cost_usd=completion.cost_usd,
                          attempts=attempts, wait_ms=wait_ms, simulated=completion.simulated,
                          finish_reason=completion.finish_reason, tokens_source=completion.tokens_source)

    async def one(case: Case, repeat: int, messages: list[dict[str, str]], key: str) -> None:
        entry = ledger.get(key)
        if entry is not None:
            # Paid for once, by the run named in the ledger; the row keeps what the answer cost.
            row = await scored_row(case, repeat, key, reused(entry, spec.model_name), entry.attempts, entry.wait_ms)
            outcome.reused += 1
            await io.add(None, row)
            progress.report_done()
            return
        started = time.perf_counter()
        try:
            completion = await pay(provider, spec.model_name, messages, seed=repeat, budget=budget)
        except ProviderError as exc:
            waited_ms = (time.perf_counter() - started) * 1000.0
            if is_retryable(exc) and not final_attempt:
                io.carry(spec.model_name, case.id, repeat, exc.attempts, waited_ms)  # counted where recorded
                outcome.deferred += 1
                outcome.error_messages.append(str(exc))
                return
            earlier, earlier_wait_ms = io.carried(spec.model_name, case.id, repeat)
            outcome.errors += 1
            outcome.error_messages.append(str(exc))
            await io.add(None, result_row(case, repeat, None, scores={}, overall=0.0, error=str(exc)[:500],
                                               error_kind=exc.kind, attempts=exc.attempts + earlier,
                                               wait_ms=waited_ms + earlier_wait_ms, simulated=None))
            progress.report_done(errors=1)
            return
        if completion is None:  # the budget refused it: nothing sent, nothing recorded
            outcome.stopped += 1
            return
        # Waiting: queueing for a slot, failed attempts and back-off — everything but the answer's latency.
        wait_ms = max(0.0, (time.perf_counter() - started) * 1000.0 - completion.latency_ms)
        earlier, earlier_wait_ms = io.carried(spec.model_name, case.id, repeat)
        attempts, wait_ms = completion.attempts + earlier, wait_ms + earlier_wait_ms
        outcome.called += 1
        response = ledger_entry(key, provider_name, spec.model, completion, run_id=spec.run_id,
                                prompt_hash=prompt_hash, case_id=case.id, repeat=repeat, attempts=attempts,
                                wait_ms=wait_ms)
        row = await scored_row(case, repeat, key, completion, attempts, wait_ms)
        await io.add(response, row)
        progress.report_done()

    pending = iter(todo)  # shared by the workers: each call is taken once

    async def worker() -> None:
        for item in pending:
            await one(*item)

    async with io:  # flushes when the run's last active cell ends, or this one fails
        # At most `concurrency` calls of this cell are under way: a call's request is built only
        # when a worker takes it, not all at once when the cell starts.
        workers = len(todo) if concurrency is None else max(1, min(concurrency, len(todo)))
        await asyncio.gather(*(worker() for _ in range(workers)))
        if outcome.stopped:  # raised inside the block, so what was made is flushed first
            error = BudgetExceededError(
                f"the budget ran out: {outcome.stopped} of {len(todo)} calls to {spec.model_name} on "
                f"{spec.spectrum} were not made ({outcome.called} made, {outcome.reused} reused, all recorded)")
            error.outcome = outcome
            raise error
    if outcome.deferred:
        raise RetryCellError(
            f"{outcome.deferred} of {len(todo)} calls to {spec.model_name} on {spec.spectrum} failed with "
            f"retryable errors (first: {outcome.error_messages[0]}); the cell will be retried",
            provider=provider_name)
    return outcome
