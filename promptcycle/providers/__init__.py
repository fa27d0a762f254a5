"""Model providers: one async `ChatProvider` interface, one OpenAI-compatible client behind it.

`build_provider(name, config, models)` turns a `providers:` entry of pipelines.yaml into a provider:
kind "openai" talks to its `base_url` over the network; kind "simulator" sends the same requests
through the same client to the simulator app in-process (no socket), so both paths exercise pooling,
limits, retries and the breaker alike.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import SecretStr

from promptcycle.config import ModelConfig, ProviderConfig
from promptcycle.providers.base import ChatProvider, Completion
from promptcycle.providers.breaker import CircuitBreaker
from promptcycle.providers.limits import RateLimiter, RequestLimits
from promptcycle.providers.openai import OpenAICompatibleProvider, ProviderStats, parse_retry_after
from promptcycle.registry import Registry

__all__ = [
    "ChatProvider",
    "Completion",
    "OpenAICompatibleProvider",
    "ProviderStats",
    "CircuitBreaker",
    "RateLimiter",
    "RequestLimits",
    "parse_retry_after",
    "provider_kinds",
    "build_provider",
    "SIMULATOR_BASE_URL",
]

SIMULATOR_BASE_URL = "http://simulator/v1"

ProviderBuilder = Callable[..., ChatProvider]

provider_kinds: Registry[ProviderBuilder] = Registry("provider kind")


@provider_kinds.register("openai")
def _build_openai(name: str, config: ProviderConfig, models: dict[str, ModelConfig],
                  api_key: SecretStr | None = None) -> ChatProvider:
    return OpenAICompatibleProvider(name, config, models, api_key=api_key)


@provider_kinds.register("simulator")
def _build_simulator(name: str, config: ProviderConfig, models: dict[str, ModelConfig],
                     api_key: SecretStr | None = None, *, faults: object = None,
                     latency: object = None, drift: object = None) -> ChatProvider:
    import httpx2

    from promptcycle.sim.server import create_app

    transport = httpx2.ASGITransport(app=create_app(faults, latency, drift=drift))
    # The host is never resolved: the ASGI transport hands requests straight to the app. Client
    # timeouts do not apply in-process either, so a simulated hang lasts its full `hang_seconds`.
    config = config.model_copy(update={"base_url": SIMULATOR_BASE_URL})
    return OpenAICompatibleProvider(name, config, models, api_key=api_key, transport=transport)


def build_provider(name: str, config: ProviderConfig, models: dict[str, ModelConfig],
                   api_key: SecretStr | None = None, **options: object) -> ChatProvider:
    """The provider for `providers.<name>` of pipelines.yaml, serving the `models` whose provider is `name`.

    Options for kind "simulator": `faults=FaultConfig(...)`, `latency=LatencyOverride(...)` and
    `drift=DriftSchedule(...)` (simulated drifts; promptcycle.sim.drift).
    Create it inside the event loop that uses it, and `await provider.aclose()` when done.
    """
    return provider_kinds.get(config.kind)(name, config, models, api_key=api_key, **options)
