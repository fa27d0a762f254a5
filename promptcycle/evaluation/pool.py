"""Live provider clients, one per (event loop, provider) in the process.

Tasks receive names and config, never clients (a client is not hashable and not serialisable); they
ask the pool, so every cell of a flow shares one client per provider — and with it one
concurrency limit, one rate limiter and one circuit breaker.
"""

from __future__ import annotations

import asyncio
import json

from pydantic import SecretStr

from promptcycle.config import PromptcycleConfig
from promptcycle.providers import build_provider
from promptcycle.providers.base import ChatProvider

__all__ = ["get_provider", "close_providers"]

_providers: dict[tuple[int, str, str], ChatProvider] = {}


def get_provider(config: PromptcycleConfig, name: str, api_key: SecretStr | None = None) -> ChatProvider:
    loop = asyncio.get_running_loop()
    pconf = config.providers[name]
    models = {m: c for m, c in config.models.items() if c.provider == name}
    identity = json.dumps([pconf.model_dump(), {m: c.model_dump() for m, c in models.items()}], sort_keys=True)
    key = (id(loop), name, identity)
    provider = _providers.get(key)
    if provider is None:
        provider = _providers[key] = build_provider(name, pconf, models, api_key=api_key)
    return provider


async def close_providers() -> None:
    """Close the clients created on the running loop."""
    loop_id = id(asyncio.get_running_loop())
    for key in [k for k in _providers if k[0] == loop_id]:
        await _providers.pop(key).aclose()
