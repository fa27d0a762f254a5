"""Live provider clients, one per (event loop, provider) in the process.

Tasks receive names and config, never clients (a client is not hashable and not serialisable); they
ask the pool, so every cell of a flow shares one client per provider — and with it one
concurrency limit, one rate limiter and one circuit breaker.
"""

from __future__ import annotations

import asyncio
import json
import weakref

from pydantic import SecretStr

from promptcycle.config import PromptcycleConfig
from promptcycle.providers import build_provider
from promptcycle.providers.base import ChatProvider

__all__ = ["get_provider", "close_providers"]

# Keyed by the loop object itself (weakly): a client's pool and locks belong to one loop, and a new
# loop may reuse a dead one's id().
_providers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], ChatProvider]]" = \
    weakref.WeakKeyDictionary()


def get_provider(config: PromptcycleConfig, name: str, api_key: SecretStr | None = None) -> ChatProvider:
    loop = asyncio.get_running_loop()
    pconf = config.providers[name]
    models = {m: c for m, c in config.models.items() if c.provider == name}
    identity = json.dumps([pconf.model_dump(), {m: c.model_dump() for m, c in models.items()}], sort_keys=True)
    per_loop = _providers.setdefault(loop, {})
    provider = per_loop.get((name, identity))
    if provider is None:
        provider = per_loop[(name, identity)] = build_provider(name, pconf, models, api_key=api_key)
    return provider


async def close_providers() -> None:
    """Close the clients created on the running loop."""
    for provider in _providers.pop(asyncio.get_running_loop(), {}).values():
        await provider.aclose()
