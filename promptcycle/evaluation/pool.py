"""Live provider clients, one per (event loop, provider) in the process.

Tasks receive names and config, never clients (a client is not hashable and not serialisable); they
ask the pool, so every cell of a flow shares one client per provider — and with it one
concurrency limit, one rate limiter and one circuit breaker.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Callable, Iterable

from pydantic import SecretStr

from promptcycle.config import PromptcycleConfig
from promptcycle.errors import ProviderCheckError
from promptcycle.providers import build_provider
from promptcycle.providers.base import ChatProvider

__all__ = ["get_provider", "close_providers", "check_models"]

# Keyed by the loop object itself (weakly): a client's pool and locks belong to one loop, and a new
# loop may reuse a dead one's id().
_providers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], ChatProvider]]" = \
    weakref.WeakKeyDictionary()


def get_provider(config: PromptcycleConfig, name: str, api_key: SecretStr | None = None) -> ChatProvider:
    loop = asyncio.get_running_loop()
    pconf = config.providers[name]
    models = {m: c for m, c in config.models.items() if c.provider == name}
    identity = json.dumps([pconf.model_dump(), {m: c.model_dump() for m, c in models.items()},
                           config.simulation.model_dump(mode="json") if pconf.kind == "simulator" else None],
                          sort_keys=True)
    per_loop = _providers.setdefault(loop, {})
    provider = per_loop.get((name, identity))
    if provider is None:
        # the built-in simulator carries the configured simulated drifts (`simulation:` in pipelines.yaml)
        options = ({"drift": config.simulation.schedule()} if pconf.kind == "simulator" and config.simulation.drifts
                   else {})
        provider = per_loop[(name, identity)] = build_provider(name, pconf, models, api_key=api_key, **options)
    return provider


async def check_models(config: PromptcycleConfig, models: Iterable[str],
                       key_of: Callable[[str], SecretStr | None]) -> None:
    """Check every model with its provider (its models list, or one 1-token call) before a run spends.

    All are checked at once; the first failure is raised as a `ProviderCheckError` naming provider,
    model, status and the provider's message, with the other failures appended.
    """
    names = list(dict.fromkeys(models))
    results = await asyncio.gather(*(
        get_provider(config, config.models[m].provider, key_of(config.models[m].provider)).check_model(m)
        for m in names), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    unexpected = [r for r in failures if not isinstance(r, ProviderCheckError)]
    if unexpected:
        raise unexpected[0]
    if failures:
        # A refused key is one problem however many models share it: named once, with its other models.
        shown: list[ProviderCheckError] = []
        refused: dict[tuple, list[str]] = {}  # (provider, status) -> models whose check met the refusal
        for f in failures:
            if f.status in (401, 403):
                models_refused = refused.setdefault((f.provider, f.status), [])
                models_refused.append(str(f.model))
                if len(models_refused) > 1:
                    continue
            shown.append(f)

        def line(f: ProviderCheckError) -> str:
            others = refused.get((f.provider, f.status), [])[1:]
            return str(f) + (f" (the same for {', '.join(others)})" if others else "")

        first = shown[0]
        more = "".join(f"\n  also: {line(f)}" for f in shown[1:])
        raise ProviderCheckError(f"{line(first)}{more}\nnothing was run; fix the key, model id or base_url in "
                                 "pipelines.yaml (or the provider) and run again",
                                 provider=first.provider, model=first.model, status=first.status)


async def close_providers() -> None:
    """Close the clients created on the running loop."""
    for provider in _providers.pop(asyncio.get_running_loop(), {}).values():
        await provider.aclose()
