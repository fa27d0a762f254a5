"""Provider limits shared across flows and processes: Prefect global concurrency limits.

Inside one process the provider client enforces `max_concurrency` and `requests_per_minute` per
call. Across processes (several flows, scheduled runs, workers) a provider's
`global_concurrency_limit` names a Prefect global concurrency limit; each cell holds one slot of it
while it runs, so at most that many cells call the provider at once, wherever they run. Create it
once: `prefect gcl create NAME --limit N`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from promptcycle.config import PromptcycleConfig
from promptcycle.errors import ConfigError

__all__ = ["provider_slot", "check_provider_limits"]


def _missing_limit(config: PromptcycleConfig, provider: str, name: str, detail: str) -> ConfigError:
    return ConfigError(f"Prefect global concurrency limit {name!r} {detail}; create it with "
                       f"`prefect gcl create {name} --limit N` (N: cells of this provider at once, across "
                       "processes), or remove `global_concurrency_limit`",
                       file=str(config.source_path) if config.source_path else None,
                       path=f"providers.{provider}.global_concurrency_limit", found=name,
                       expected="the name of an existing global concurrency limit")


def check_provider_limits(config: PromptcycleConfig, providers: list[str]) -> None:
    """Before any call: every configured global concurrency limit exists on the Prefect server."""
    names = {p: config.providers[p].global_concurrency_limit for p in providers}
    if not any(names.values()):
        return
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for provider, name in names.items():
            if not name:
                continue
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                raise _missing_limit(config, provider, name, "does not exist") from None


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
        raise _missing_limit(config, provider, name, f"does not exist or cannot be acquired ({exc})") from None
