"""Provider limits shared across flows and processes: Prefect global concurrency limits.

Inside one process the provider client enforces `max_concurrency` and `requests_per_minute` per
call. Across processes (several flows, scheduled runs, workers) a provider's
`global_concurrency_limit` names a Prefect global concurrency limit; each cell holds one slot of it
while it runs, so at most that many cells call the provider at once, wherever they run. Create it
once: `prefect gcl create NAME --limit N`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from collections.abc import AsyncIterator

from promptcycle.config import PromptcycleConfig
from promptcycle.errors import ConfigError

__all__ = ["provider_slot"]


@asynccontextmanager
async def provider_slot(config: PromptcycleConfig, provider: str) -> AsyncIterator[None]:
    """Hold one slot of the provider's global concurrency limit (no-op when none is configured)."""
    name = config.providers[provider].global_concurrency_limit
    if not name:
        yield
        return
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency

    try:
        # strict: a missing limit must stop the run, not silently run unthrottled
        async with concurrency(name, occupy=1, strict=True):
            yield
    except ConcurrencySlotAcquisitionError as exc:
        raise ConfigError(f"Prefect global concurrency limit {name!r} does not exist or cannot be acquired "
                          f"({exc}); create it with `prefect gcl create {name} --limit N`",
                          path=f"providers.{provider}.global_concurrency_limit", found=name,
                          expected="an existing global concurrency limit") from None
