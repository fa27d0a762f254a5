"""The paid-call ledger: an identical call is paid for once, in any run or phase.

A call is identified by its key (`call_key`: provider, model id, sampling, repeat, messages and, for a
healing, its ledger epoch); the ledger is the store's `responses` table. Before a call is paid its key is looked up: an entry found is
the answer, reused for free (a budget is never asked for it); otherwise the call is paid — granted by
the budget first, given back when it fails, settled when it is answered — and its entry recorded.

    found = store.get_responses(keys)                          # (a run's cells batch this: RunIO.paid)
    completion = reused(found[key], model_name)                # an entry found: nothing is paid
    completion = await pay(provider, model_name, messages, seed=repeat, budget=budget)  # None: refused
    store.write_batch([ledger_entry(key, provider_name, model, completion, run_id=…)], [])

Every paid call goes through here: the cells of every evaluation (`promptcycle.evaluation.cells`, which
records each entry with its scored result) and the strategies' own calls (`ledgered_complete`, e.g.
`meta` asking the optimizer model for rewrites).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from promptcycle.config import ModelConfig, PromptcycleConfig
from promptcycle.errors import BudgetExceededError
from promptcycle.evaluation.pool import get_provider
from promptcycle.providers.base import ChatProvider, Completion
from promptcycle.store.records import ResponseRecord

if TYPE_CHECKING:
    from pydantic import SecretStr

    from promptcycle.optimize.budget import Budget

__all__ = ["call_key", "call_keys", "reused", "pay", "ledger_entry", "ledgered_complete"]


def call_key(provider: str, model: ModelConfig, messages: list[dict[str, str]], repeat: int,
             epoch: str = "") -> str:
    """The identity of a paid call: same key, same call — never paid for twice."""
    return call_keys(provider, model, messages, [repeat], epoch)[0]


def call_keys(provider: str, model: ModelConfig, messages: list[dict[str, str]],
              repeats: Sequence[int], epoch: str = "") -> list[str]:
    """`call_key` of each repeat of one call, encoding the messages once.

    A key hashes the compact JSON of [provider, model id, temperature, max_tokens, repeat, messages];
    ledgers in existing stores depend on these exact bytes. A non-empty `epoch` joins the head: the
    same call in another epoch is another call. A healing evaluates in its own epoch, because answers
    paid before a drift are not evidence about the drifted world (docs/monitoring.md, Healing).
    """
    head = json.dumps([provider, model.model, model.temperature, model.max_tokens] + ([epoch] if epoch else []),
                      separators=(",", ":"), ensure_ascii=False)[:-1]
    tail = json.dumps(messages, separators=(",", ":"), ensure_ascii=False)
    return [hashlib.sha256(f"{head},{int(r)},{tail}]".encode()).hexdigest()[:32] for r in repeats]


def reused(entry: ResponseRecord, model_name: str) -> Completion:
    """The answer a ledger entry paid for, as the completion it was (what it cost, how many attempts)."""
    return Completion(text=entry.output, model=model_name, input_tokens=entry.input_tokens,
                      output_tokens=entry.output_tokens, latency_ms=entry.latency_ms, cost_usd=entry.cost_usd,
                      attempts=entry.attempts, simulated=entry.simulated, raw_model=entry.provider_model or "",
                      finish_reason=entry.finish_reason, tokens_source=entry.tokens_source or "provider")


async def pay(provider: ChatProvider, model_name: str, messages: list[dict[str, str]], *, seed: int,
              budget: Budget | None = None) -> Completion | None:
    """Pay for one call, within `budget` when there is one: None when the budget refuses it (nothing is
    sent). A call that fails gives its grant back (nothing was paid); the provider's error is raised."""
    if budget is not None and not budget.try_acquire(model_name):
        return None
    try:
        completion = await provider.complete(model_name, messages, seed=seed)
    except BaseException:
        if budget is not None:
            budget.release(model_name)
        raise
    if budget is not None:
        budget.settle(model_name, completion.cost_usd)
    return completion


def ledger_entry(key: str, provider_name: str, model: ModelConfig, completion: Completion, *, run_id: str,
                 prompt_hash: str | None = None, case_id: str | None = None, repeat: int = 0,
                 attempts: int | None = None, wait_ms: float | None = None) -> ResponseRecord:
    """The ledger entry of a call `run_id` paid for. `attempts` counts every request the call took
    (default: the completion's own); `wait_ms` the time it waited apart from the answer's latency."""
    return ResponseRecord(
        call_key=key, provider=provider_name, model=model.model, prompt_hash=prompt_hash, case_id=case_id,
        repeat=repeat, output=completion.text, input_tokens=completion.input_tokens,
        output_tokens=completion.output_tokens, latency_ms=completion.latency_ms, cost_usd=completion.cost_usd,
        attempts=completion.attempts if attempts is None else attempts, simulated=completion.simulated,
        created_at=datetime.now(timezone.utc), run_id=run_id, wait_ms=wait_ms,
        provider_model=completion.raw_model or None, finish_reason=completion.finish_reason,
        tokens_source=completion.tokens_source)


CompleteFn = Callable[[str, list[dict[str, str]]], Awaitable[Completion]]
KeyOf = Callable[[str], Awaitable["SecretStr | None"]]


def ledgered_complete(config: PromptcycleConfig, store, run_id: str, *, key_of: KeyOf,
                      budget: Budget | None = None) -> CompleteFn:
    """`complete(model_name, messages)` through the ledger, for calls outside an evaluation (a strategy's
    own): answered from the ledger when the identical call was paid before, else paid for by `run_id`
    within `budget` (`BudgetExceededError` when it refuses) and recorded at once.

    `key_of(provider)` gives a provider's API key; it is asked once per provider, at its first paid call.
    `store` is a MetricsStore or its data-worker proxy."""
    keys: dict[str, SecretStr | None] = {}

    async def complete(model_name: str, messages: list[dict[str, str]]) -> Completion:
        model = config.models[model_name]
        key = call_key(model.provider, model, messages, 0)
        entry = store.get_responses([key]).get(key)
        if entry is not None:
            return reused(entry, model_name)
        if model.provider not in keys:
            keys[model.provider] = await key_of(model.provider)
        provider = get_provider(config, model.provider, keys[model.provider])
        completion = await pay(provider, model_name, messages, seed=0, budget=budget)
        if completion is None:
            raise BudgetExceededError(f"the budget ran out before the call to {model_name}")
        store.write_batch([ledger_entry(key, model.provider, model, completion, run_id=run_id)], [])
        return completion

    return complete
