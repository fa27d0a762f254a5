"""The one async interface every model provider implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["Completion", "ChatProvider"]


@dataclass(frozen=True)
class Completion:
    """A successful chat completion.

    `latency_ms` is the duration of the successful HTTP attempt only: time spent queueing for a
    concurrency slot, waiting on the rate limiter or sleeping between retries is not latency.
    """

    text: str
    model: str  # the pipeline's model name (not the provider's remote id)
    input_tokens: int
    output_tokens: int
    latency_ms: float
    cost_usd: float
    attempts: int = 1
    simulated: bool = False
    raw_model: str = ""  # the model id the provider reported
    finish_reason: str | None = None  # "stop", "length" (cut by max_tokens: a truncated answer) …
    tokens_source: str = "provider"  # "provider", or "estimated" when its counts were missing or implausible
    extra: dict = field(default_factory=dict)


@runtime_checkable
class ChatProvider(Protocol):
    """An async chat-completions provider. Errors are raised as `promptcycle.errors.ProviderError`s."""

    name: str

    async def complete(self, model: str, messages: list[dict[str, str]], *, seed: int | None = None,
                       temperature: float | None = None, max_tokens: int | None = None) -> Completion:
        """Complete `messages` with the pipeline model named `model`; retries are done inside."""
        ...

    async def aclose(self) -> None: ...
