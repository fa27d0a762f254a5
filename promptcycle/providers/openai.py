"""The client for any OpenAI-compatible chat-completions endpoint (and the simulator, which speaks the same).

One `OpenAICompatibleProvider` per provider: a pooled aiohttp transport (transport.py; chat calls
go straight through it, the models list through an `httpx2.AsyncClient` over it), a concurrency cap
and rate limiter (`RequestLimits`), a `CircuitBreaker`, and a retry loop with exponential backoff
and full jitter that honours Retry-After. Failures surface as the typed errors of `promptcycle.errors`
(`is_retryable` tells them apart); the API key is sent only as a bearer header and is scrubbed from
every error message. A retry takes the next free slot ahead of calls not yet sent; after a 401/403
(the key) or a 404 (the model) no further call is sent to what refused; an answer larger than
`max_response_bytes` is not read further. `check_model` checks a model before a run spends on it.

A provider instance belongs to one event loop: create it inside the coroutine (or task) that uses it,
and `await provider.aclose()` (or `async with provider:`) when done.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx2
import orjson
from pydantic import SecretStr
from yarl import URL

from promptcycle.config import ModelConfig, ProviderConfig
from promptcycle.errors import (
    CircuitOpenError,
    ConfigError,
    FatalProviderError,
    MalformedResponseError,
    ProviderCheckError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
    ResponseTooLargeError,
    ServerError,
    is_retryable,
)
from promptcycle.providers.base import Completion
from promptcycle.providers.breaker import CircuitBreaker
from promptcycle.providers.limits import RequestLimits
from promptcycle.providers.transport import AiohttpTransport, Answer, ResponseTooLarge
from promptcycle.sim.server import SIMULATED_HEADER, SYSTEM_FINGERPRINT

__all__ = ["OpenAICompatibleProvider", "ProviderStats", "parse_retry_after", "estimate_tokens", "count_tokens",
           "STOP_STATUSES"]

logger = logging.getLogger("promptcycle.providers")

_DEBUG = logging.DEBUG


# Answers that say the request can never succeed for anyone: once one comes back, calls not yet
# sent are refused without sending (401/403 for the whole provider, 404 for the model).
STOP_STATUSES = (401, 403, 404)

# A provider's token count is taken unless it is missing or implausible against the local estimate:
# below a quarter of it (more than 16 tokens short) for either figure, or, for the prompt, above four
# times it plus 64 (chat templates add a few tokens per message). Completion counts may exceed the
# estimate of the visible text freely: reasoning models bill hidden tokens.
_TOKEN_RATIO = 4.0
_TOKEN_SLACK = 16
_PROMPT_OVERHEAD = 64


def estimate_tokens(text: str) -> int:
    """~4 characters per token: the local estimate used when a provider's counts are missing or implausible."""
    return (len(text) + 3) // 4


def count_tokens(usage: object, messages: list[dict[str, str]], text: str) -> tuple[int, int, str]:
    """(input tokens, output tokens, source): the provider's `usage` when plausible, else the local estimate.

    `source` is "provider" when both figures are the provider's, "estimated" when either was replaced
    (the rule is in the comment above; docs/configuration.md states it for users).
    """
    est_in = sum(estimate_tokens(m.get("content") or "") for m in messages)
    est_out = estimate_tokens(text)
    try:
        reported_in = int(usage["prompt_tokens"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        reported_in = None
    try:
        reported_out = int(usage["completion_tokens"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        reported_out = None

    def too_low(reported: int, estimate: int) -> bool:
        return reported < estimate / _TOKEN_RATIO and estimate - reported > _TOKEN_SLACK

    source = "provider"
    if reported_in is None or reported_in < 0 or too_low(reported_in, est_in) \
            or reported_in > est_in * _TOKEN_RATIO + _PROMPT_OVERHEAD:
        reported_in, source = est_in, "estimated"
    if reported_out is None or reported_out < 0 or too_low(reported_out, est_out):
        reported_out, source = est_out, "estimated"
    return reported_in, reported_out, source


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date; None if absent or invalid."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP date is always GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


@dataclass
class ProviderStats:
    """What a provider instance has done so far (for reports and tests; cheap integer counters)."""

    calls: int = 0  # complete() invocations
    attempts: int = 0  # HTTP requests sent
    completions: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # terminal error kind -> count
    retries: dict[str, int] = field(default_factory=dict)  # retried error kind -> count
    circuit_rejections: int = 0
    refused: int = 0  # calls not sent because the provider had refused the key or the model for good


class OpenAICompatibleProvider:
    """A `ChatProvider` for an OpenAI-compatible `/chat/completions` endpoint.

    `models` maps the pipeline's model names to their `ModelConfig` (remote id, prices, defaults);
    only the entries whose `provider` is `name` are served. `transport` replaces the network (an
    `httpx2.ASGITransport` for the in-process simulator, an `httpx2.MockTransport` in tests).
    """

    def __init__(self, name: str, config: ProviderConfig, models: dict[str, ModelConfig],
                 api_key: SecretStr | None = None, transport: httpx2.AsyncBaseTransport | None = None):
        if not config.base_url:
            raise ConfigError(f"provider {name!r} has no base_url", path=f"providers.{name}.base_url",
                              expected="an endpoint base URL such as https://api.openai.com/v1")
        self.name = name
        self.config = config
        self.models = {k: m for k, m in models.items() if m.provider == name}
        self.base_url = config.base_url.rstrip("/")
        self.stats = ProviderStats()
        self.limits = RequestLimits(config.max_concurrency, config.requests_per_minute)
        self.breaker = CircuitBreaker(config.circuit_failure_threshold, config.circuit_reset_seconds, name=name)
        try:  # parsed once: httpx2 would parse a string URL again on every request
            self._url = httpx2.URL(self.base_url + "/chat/completions")
        except httpx2.InvalidURL as exc:
            raise ConfigError(f"provider {name!r} has an invalid base_url: {exc}", path=f"providers.{name}.base_url",
                              found=config.base_url, expected="an http(s) URL such as https://api.openai.com/v1") from exc
        if api_key is not None and not isinstance(api_key, SecretStr):
            raise TypeError("api_key must be a pydantic SecretStr (so that it stays masked), "
                            f"found {type(api_key).__name__}")
        self._secret = api_key.get_secret_value() if api_key is not None else ""
        headers = {"content-type": "application/json", "accept": "application/json", "user-agent": "promptcycle"}
        if self._secret:
            headers["authorization"] = f"Bearer {self._secret}"
        # The network goes through aiohttp's pool: chat calls straight through `AiohttpTransport.send`,
        # the rest under httpx2's client (see transport.py for why). A given transport (the in-process
        # simulator, tests) replaces it, and every request then goes through httpx2.
        self._direct: AiohttpTransport | None = None
        if transport is None:
            transport = self._direct = AiohttpTransport(max_connections=config.max_concurrency, keepalive_expiry=30.0,
                                                        max_body_bytes=config.max_response_bytes)
            self._direct_url = URL(str(self._url), encoded=True)  # httpx2 has percent-encoded it
            self._direct_headers = headers
            self._direct_timeout = transport.client_timeout(config.timeout_seconds)
        self._client = httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(config.timeout_seconds),
            transport=transport,
            follow_redirects=False,
        )
        self._random = random.random
        # Permanent refusals seen so far: None -> for the whole provider (401/403), a remote model id -> 404.
        self._refusals: dict[str | None, FatalProviderError] = {}
        self._models_url = httpx2.URL(self.base_url + "/models")  # parses: the chat URL above did

    def __repr__(self) -> str:
        return f"OpenAICompatibleProvider(name={self.name!r}, base_url={self.base_url!r}, models={sorted(self.models)})"

    async def __aenter__(self) -> "OpenAICompatibleProvider":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def complete(self, model: str, messages: list[dict[str, str]], *, seed: int | None = None,
                       temperature: float | None = None, max_tokens: int | None = None) -> Completion:
        """Complete `messages` with the pipeline model `model`, retrying retryable failures.

        Raises `CircuitOpenError` at once while the breaker is open, a `FatalProviderError` for
        400/401/403/404/422-style answers, or the last retryable error after `max_retries` retries.
        """
        spec = self.models.get(model)
        if spec is None:
            raise ConfigError(f"model {model!r} is not served by provider {self.name!r}; "
                              f"known: {', '.join(sorted(self.models)) or '(none)'}", path="models",
                              found=model, expected=f"a model whose provider is {self.name!r}")
        payload: dict[str, Any] = {"model": spec.model, "messages": messages,
                                   "temperature": spec.temperature if temperature is None else temperature}
        if max_tokens is None:
            max_tokens = spec.max_tokens
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        if seed is not None:
            payload["seed"] = seed
        body = _Body(payload)

        stats = self.stats
        stats.calls += 1
        breaker = self.breaker
        max_attempts = self.config.max_retries + 1
        attempt = 0
        error: ProviderError | None = None
        while True:
            attempt += 1
            try:
                probe = breaker.check()
            except CircuitOpenError as exc:
                stats.circuit_rejections += 1
                self._count(stats.errors, exc)
                exc.attempts = attempt - 1  # this attempt was never sent
                raise exc from error  # when the breaker opened between our retries, keep why
            sent = stats.attempts
            try:
                result = await self._attempt(body, messages, spec, model, attempt, probe)
            except BaseException:
                if probe:
                    breaker.release_probe()
                raise
            if type(result) is Completion:
                breaker.record_success()
                stats.completions += 1
                return result
            if type(result) is CircuitOpenError:  # the breaker opened while this call waited for a slot
                stats.circuit_rejections += 1
                self._count(stats.errors, result)
                raise result from error
            error = result
            error.attempts = attempt
            if not is_retryable(error):
                if stats.attempts == sent:  # refused without sending: the breaker learnt nothing
                    if probe:
                        breaker.release_probe()
                else:
                    breaker.record_success()  # the provider answered; the request itself was wrong
                self._count(stats.errors, error)
                raise error
            breaker.record_failure(str(error))
            if attempt >= max_attempts:
                self._count(stats.errors, error)
                if attempt > 1:
                    error.args = (f"{error.args[0]} (after {attempt} attempts)",)
                raise error
            self._count(stats.retries, error)
            delay = self._backoff(attempt, error.retry_after)
            if logger.isEnabledFor(_DEBUG):
                logger.debug("%s: attempt %d failed (%s); retrying in %.2f s", self.name, attempt,
                             error.kind, delay)
            await asyncio.sleep(delay)

    async def check_model(self, model: str) -> None:
        """Make sure `model` can be called before a run spends on it; raise `ProviderCheckError` if not.

        The provider's `/models` list answers first (free): a 401/403 there is final, and a listed
        model is enough. When the list is missing or does not name the model (some proxies list
        aliases only), one chat completion of one token decides, through the usual retries.
        """
        spec = self.models.get(model)
        if spec is None:
            raise ConfigError(f"model {model!r} is not served by provider {self.name!r}", path="models",
                              found=model, expected=f"a model whose provider is {self.name!r}")
        listed: set[str] | None = None
        try:
            response = await self._client.get(self._models_url)
        except httpx2.HTTPError:
            response = None  # the chat call below reports why, after its retries
        if response is not None:
            if response.status_code in (401, 403):
                error = self._status_error(response, spec)
                self._refusals.setdefault(None, error)  # type: ignore[arg-type]
                raise self._check_error(model, spec, error)
            if response.status_code == 200:
                try:
                    listed = {m["id"] for m in json.loads(response.content)["data"] if isinstance(m, dict)}
                except (ValueError, KeyError, TypeError):
                    listed = None
        if listed is not None and spec.model in listed:
            return
        try:
            await self.complete(model, [{"role": "user", "content": "Reply with OK."}], max_tokens=1)
        except ProviderError as exc:
            raise self._check_error(model, spec, exc) from None

    def _check_error(self, model: str, spec: ModelConfig, error: ProviderError) -> ProviderCheckError:
        what = {401: "the API key was refused", 403: "the API key may not use this model",
                404: "the provider does not know this model id"}.get(error.status or 0, "the provider cannot be used")
        return ProviderCheckError(
            f"provider {self.name!r}, model {model!r} (id {spec.model!r} at {self.base_url}): {what} — "
            f"{type(error).__name__}: {error}", provider=self.name, model=model, status=error.status)

    async def _attempt(self, body: _Body, messages: list[dict[str, str]], spec: ModelConfig, model: str,
                       attempt: int, probe: bool = False) -> Completion | ProviderError:
        """One HTTP request: a Completion, or the typed error it ended with (returned, not raised).

        A retry (attempt > 1) takes the next free slot before calls not yet sent, so it waits about
        its backoff, not its backoff plus the queue; among calls not yet sent, those of the models with
        the longest latency target go first. A call is not sent at all once the provider has
        refused the key or the model for good (see STOP_STATUSES).
        """
        limits = self.limits
        await limits.acquire(priority=attempt > 1, expected=spec.latency_target_ms)
        try:
            refusal = self._refusals.get(None) or self._refusals.get(spec.model)
            if refusal is not None:
                self.stats.refused += 1
                return FatalProviderError(f"not sent: {refusal}", provider=self.name, status=refusal.status)
            if not probe and self.breaker.state == "open":  # opened while this call queued: do not send it
                return self.breaker.rejection()
            self.stats.attempts += 1
            start = time.perf_counter()
            try:
                direct = self._direct
                if direct is not None:
                    response = await direct.send("POST", self._direct_url, headers=self._direct_headers,
                                                 body=body.encoded(), timeout=self._direct_timeout)
                else:
                    response = await self._client.post(self._url, content=body.encoded())
            except ResponseTooLarge as exc:
                return ResponseTooLargeError(
                    f"{self.name}: the answer from {spec.model!r} is larger than max_response_bytes "
                    f"({exc.limit} bytes); it was not read further or stored", provider=self.name)
            except httpx2.TimeoutException as exc:
                return ProviderTimeoutError(self._scrub(f"{self.name}: no answer within "
                                                        f"{self.config.timeout_seconds:g} s ({type(exc).__name__})"),
                                            provider=self.name)
            except httpx2.DecodingError as exc:
                return MalformedResponseError(self._scrub(f"{self.name}: undecodable response body: {exc}"),
                                              provider=self.name)
            except httpx2.TransportError as exc:
                return ProviderConnectionError(self._scrub(f"{self.name}: {type(exc).__name__} "
                                                           f"connecting to {self.base_url}: {exc}"),
                                               provider=self.name)
            latency_ms = (time.perf_counter() - start) * 1000.0
        finally:
            limits.release()
        status = response.status_code
        if status != 200:
            error = self._status_error(response, spec)
            if status in STOP_STATUSES and isinstance(error, FatalProviderError):
                self._refusals.setdefault(spec.model if status == 404 else None, error)
            return error
        content = response.content
        if len(content) > self.config.max_response_bytes:  # transports that read whole bodies (in-process, tests)
            return ResponseTooLargeError(
                f"{self.name}: the answer from {spec.model!r} is larger than max_response_bytes "
                f"({self.config.max_response_bytes} bytes); it was not stored", provider=self.name, status=status)
        try:
            data = orjson.loads(content)
            choice = data["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("message.content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return MalformedResponseError(self._scrub(
                f"{self.name}: malformed chat completion from {spec.model!r} ({type(exc).__name__}: {exc}): "
                f"{content[:200]!r}"), provider=self.name, status=status)
        input_tokens, output_tokens, tokens_source = count_tokens(data.get("usage"), messages, text)
        finish_reason = choice.get("finish_reason")
        reported_model = data.get("model")
        simulated = (data.get("system_fingerprint") == SYSTEM_FINGERPRINT
                     or response.headers.get(SIMULATED_HEADER) == "true")
        return Completion(
            text=text,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=latency_ms,
            cost_usd=(input_tokens * spec.input_cost_per_mtok + output_tokens * spec.output_cost_per_mtok) / 1e6,
            attempts=attempt,
            simulated=simulated,
            raw_model=reported_model if isinstance(reported_model, str) and reported_model else spec.model,
            finish_reason=finish_reason if isinstance(finish_reason, str) else None,
            tokens_source=tokens_source,
        )

    def _status_error(self, response: httpx2.Response | Answer, spec: ModelConfig) -> ProviderError:
        status = response.status_code
        detail = self._scrub(_error_message(response))
        message = f"{self.name}: HTTP {status} for model {spec.model!r}: {detail}"
        if status == 429 or status == 503:
            headers = response.headers
            retry_after = parse_retry_after(headers.get("retry-after"))
            retry_after_ms = parse_retry_after(headers.get("retry-after-ms"))
            if retry_after_ms is not None:
                retry_after = retry_after_ms / 1000.0
            cls = RateLimitError if status == 429 else ServerError
            return cls(message, provider=self.name, status=status, retry_after=retry_after)
        if status >= 500:
            return ServerError(message, provider=self.name, status=status)
        if status == 408:
            return ProviderTimeoutError(message, provider=self.name, status=status)
        return FatalProviderError(message, provider=self.name, status=status)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before the next attempt: Retry-After (plus up to 10% jitter) or full-jitter exponential."""
        cap = self.config.max_backoff_seconds
        if retry_after is not None:
            return min(cap, retry_after * (1.0 + 0.1 * self._random()))
        return self._random() * min(cap, self.config.backoff_seconds * 2.0 ** (attempt - 1))

    def _scrub(self, text: str) -> str:
        """Remove the API key from text that may reach logs or exceptions (error bodies can echo it)."""
        secret = self._secret
        if secret and secret in text:
            text = text.replace(secret, "***")
        return text

    @staticmethod
    def _count(counter: dict[str, int], error: ProviderError) -> None:
        kind = error.kind
        counter[kind] = counter.get(kind, 0) + 1


class _Body:
    """A request body, encoded once and only when a request slot is free.

    Encoding waits for the slot because many calls may queue for few slots: their bodies would
    otherwise be encoded all at once, stalling the event loop for the calls under way.
    """

    __slots__ = ("payload", "_encoded")

    def __init__(self, payload: dict[str, Any]):
        self.payload = payload
        self._encoded: bytes | None = None

    def encoded(self) -> bytes:
        if self._encoded is None:
            self._encoded = orjson.dumps(self.payload)  # ~10x faster than json.dumps: it runs once per request
        return self._encoded


def _error_message(response: httpx2.Response | Answer) -> str:
    """The provider's own error message (OpenAI style `{"error": {"message": …}}`), else the body's start."""
    text = response.text
    try:
        data = json.loads(text)
        message = data["error"]["message"] if isinstance(data.get("error"), dict) else data.get("error")
        if isinstance(message, str) and message:
            return message[:300]
    except (ValueError, AttributeError, TypeError, KeyError):
        pass
    return text[:300].strip() or "(empty body)"
