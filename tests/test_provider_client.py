"""The OpenAI-compatible provider client against the simulator over loopback HTTP.

Retries, Retry-After, the breaker, the limits and the error types are driven by the server's own
fault injection; `httpx2.MockTransport` stands in only where the server cannot produce the condition
(a response without `usage`, an error body that echoes the key).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time

import httpx2
import pytest
from pydantic import SecretStr

from promptcycle.config import ModelConfig, ProviderConfig
from promptcycle.errors import (
    CircuitOpenError,
    ConfigError,
    FatalProviderError,
    MalformedResponseError,
    ProviderConnectionError,
    ProviderError,
    RateLimitError,
    RetryableProviderError,
    ServerError,
)
from promptcycle.providers import (
    ChatProvider,
    Completion,
    OpenAICompatibleProvider,
    RateLimiter,
    build_provider,
    parse_retry_after,
)
from promptcycle.sim.server import FaultConfig, LatencyOverride
from promptcycle.sim.world import respond
from simserver import ServerThread, unused_port

CUSTOMER = {"customer_id": "C-77", "credit_score": 688, "credit_utilization_pct": 31.0, "monthly_spend": 2450.5}
MESSAGES = [
    {"role": "system", "content": "You are an analyst at a retail bank. Answer questions about customers accurately."},
    {"role": "user", "content": "Here is the customer record:\n" + json.dumps(CUSTOMER, indent=2)
     + "\n\nWhat are the credit score and monthly spend?\nReply with a JSON object."},
]
PRICES = {"input_cost_per_mtok": 0.5, "output_cost_per_mtok": 1.5}
FAST = LatencyOverride(fixed_ms=5)


def models_for(provider: str) -> dict[str, ModelConfig]:
    return {
        "nano": ModelConfig(provider=provider, model="sim-nano", **PRICES),
        "ghost": ModelConfig(provider=provider, model="sim-ghost"),
        "elsewhere": ModelConfig(provider="another", model="sim-nano"),
    }


def make_provider(base_url: str, *, api_key: str | None = None, transport=None, **config) -> OpenAICompatibleProvider:
    settings = {"backoff_seconds": 0.01, "max_backoff_seconds": 5.0, "timeout_seconds": 5.0, **config}
    return OpenAICompatibleProvider("sim", ProviderConfig(kind="openai", base_url=base_url, **settings),
                                    models_for("sim"), api_key=SecretStr(api_key) if api_key else None,
                                    transport=transport)


def run(coro_fn, *args, **kwargs):
    """Build the provider inside the loop that uses it, run, close."""

    async def go():
        provider = make_provider(*args, **kwargs)
        async with provider:
            return provider, await coro_fn(provider)

    return asyncio.run(go())


def call_once(provider: OpenAICompatibleProvider):
    return provider.complete("nano", MESSAGES)


def test_a_completion_carries_text_tokens_cost_and_the_simulated_label():
    with ServerThread(latency=LatencyOverride(fixed_ms=40)) as server:
        provider, c = run(call_once, server.base_url)
    reply = respond("sim-nano", MESSAGES, temperature=0.0)
    assert isinstance(provider, ChatProvider)
    assert isinstance(c, Completion)
    assert c.text == reply.text and c.model == "nano" and c.raw_model == "sim-nano"
    assert (c.input_tokens, c.output_tokens) == (reply.input_tokens, reply.output_tokens)
    assert c.cost_usd == pytest.approx((reply.input_tokens * 0.5 + reply.output_tokens * 1.5) / 1e6)
    assert c.simulated is True and c.attempts == 1
    assert 40 <= c.latency_ms < 1000
    assert c.finish_reason == "stop" and c.tokens_source == "provider"


def test_429_retry_after_is_honoured_and_not_counted_as_latency():
    faults = FaultConfig(fail_first=1, fail_kind="rate_limit", retry_after_seconds=1)
    with ServerThread(faults, FAST) as server:
        start = time.perf_counter()
        _, c = run(call_once, server.base_url)  # its own backoff would be ~10 ms
        wall = time.perf_counter() - start
        gap = server.state.arrivals[1] - server.state.arrivals[0]
    assert c.attempts == 2
    assert 1.0 <= gap < 1.5 and wall >= 1.0
    assert c.latency_ms < 500


def test_retry_after_is_capped_by_max_backoff():
    faults = FaultConfig(fail_first=1, fail_kind="rate_limit", retry_after_seconds=30)
    with ServerThread(faults, FAST) as server:
        start = time.perf_counter()
        _, c = run(call_once, server.base_url, max_backoff_seconds=0.2)
        assert time.perf_counter() - start < 2
    assert c.attempts == 2


def test_rate_limit_after_the_last_retry_is_a_typed_error_with_retry_after():
    faults = FaultConfig(fail_first=5, fail_kind="rate_limit", retry_after_seconds=0.05)
    with ServerThread(faults, FAST) as server:
        with pytest.raises(RateLimitError) as info:
            run(call_once, server.base_url, max_retries=1)
        assert server.state.requests == 2
    assert info.value.status == 429 and info.value.retry_after == pytest.approx(0.05)
    assert "after 2 attempts" in str(info.value)


def test_server_errors_are_retried_until_success():
    with ServerThread(FaultConfig(fail_first=3), FAST) as server:
        provider, c = run(call_once, server.base_url, max_retries=4)
        statuses = dict(server.state.statuses)
    assert c.attempts == 4
    assert sum(n for s, n in statuses.items() if s >= 500) == 3 and statuses[200] == 1
    assert provider.stats.retries == {"ServerError": 3} and provider.stats.attempts == 4


def test_server_errors_exhaust_retries_into_a_typed_error():
    with ServerThread(FaultConfig(fail_first=10), FAST) as server:
        with pytest.raises(ServerError) as info:
            run(call_once, server.base_url, max_retries=2)
        assert server.state.requests == 3
    assert info.value.status in (500, 502, 503)
    assert info.value.provider == "sim"


def test_timeouts_are_retried():
    faults = FaultConfig(fail_first=1, fail_kind="timeout", hang_seconds=3)
    with ServerThread(faults, FAST) as server:
        start = time.perf_counter()
        provider, c = run(call_once, server.base_url, timeout_seconds=0.3)
        wall = time.perf_counter() - start
    assert c.attempts == 2 and provider.stats.retries == {"ProviderTimeoutError": 1}
    assert 0.3 <= wall < 2.0
    assert c.latency_ms < 300


def test_malformed_bodies_are_retried_then_terminal():
    with ServerThread(FaultConfig(fail_first=2, fail_kind="malformed"), FAST) as server:
        _, c = run(call_once, server.base_url, max_retries=3)
    assert c.attempts == 3

    with ServerThread(FaultConfig(fail_first=50, fail_kind="malformed"), FAST) as server:
        with pytest.raises(MalformedResponseError) as info:
            run(call_once, server.base_url, max_retries=2)
        assert server.state.requests == 3
    assert info.value.status == 200


def test_wrong_key_is_fatal_at_once_and_the_key_never_leaks(caplog):
    secret = "sk-test-WRONG-0123456789"
    caplog.set_level(logging.DEBUG)
    with ServerThread(latency=FAST, require_api_key="sk-test-right") as server:
        with pytest.raises(FatalProviderError) as info:
            run(call_once, server.base_url, api_key=secret, max_retries=3)
        assert server.state.requests == 1
        provider, c = run(call_once, server.base_url, api_key="sk-test-right")
    assert info.value.status == 401 and not isinstance(info.value, RetryableProviderError)
    assert c.attempts == 1
    provider = make_provider("http://127.0.0.1:1/v1", api_key=secret)
    for text in (str(info.value), repr(info.value), repr(info.value.args), repr(provider), str(vars(info.value)),
                 caplog.text):
        assert secret not in text
    asyncio.run(provider.aclose())


def test_an_error_body_that_echoes_the_key_is_scrubbed():
    secret = "sk-live-abcdef0123456789"

    def echo(request: httpx2.Request) -> httpx2.Response:
        sent = request.headers["authorization"].removeprefix("Bearer ")
        return httpx2.Response(401, json={"error": {"message": f"Incorrect API key provided: {sent}."}})

    with pytest.raises(FatalProviderError) as info:
        run(call_once, "http://provider.test/v1", api_key=secret, transport=httpx2.MockTransport(echo))
    assert secret not in str(info.value) and "Incorrect API key provided: ***" in str(info.value)


def test_unknown_remote_model_is_fatal_and_not_retried():
    with ServerThread(latency=FAST) as server:
        with pytest.raises(FatalProviderError) as info:
            run(lambda p: p.complete("ghost", MESSAGES), server.base_url, max_retries=3)
        assert server.state.requests == 1
    assert info.value.status == 404 and "sim-ghost" in str(info.value)


def test_a_model_of_another_provider_is_a_config_error():
    with pytest.raises(ConfigError, match="elsewhere"):
        run(lambda p: p.complete("elsewhere", MESSAGES), "http://127.0.0.1:1/v1")


def test_connection_refused_is_retried_then_typed():
    provider, error = run(lambda p: _error_of(p.complete("nano", MESSAGES)),
                          f"http://127.0.0.1:{unused_port()}/v1", max_retries=1)
    assert isinstance(error, ProviderConnectionError)
    assert provider.stats.attempts == 2


async def _error_of(awaitable):
    try:
        await awaitable
    except ProviderError as exc:
        return exc
    raise AssertionError("expected a ProviderError")


def test_breaker_opens_after_consecutive_failures_and_recovers_after_the_cool_down():
    async def scenario(provider: OpenAICompatibleProvider):
        for _ in range(3):
            with pytest.raises(ServerError):
                await provider.complete("nano", MESSAGES)
        start = time.perf_counter()
        with pytest.raises(CircuitOpenError) as info:
            await provider.complete("nano", MESSAGES)
        rejected_in = time.perf_counter() - start
        state_open = provider.breaker.state
        await asyncio.sleep(0.55)
        recovered = await provider.complete("nano", MESSAGES)
        return info.value, rejected_in, state_open, recovered

    with ServerThread(FaultConfig(fail_first=3), FAST) as server:
        provider, (error, rejected_in, state_open, recovered) = run(
            scenario, server.base_url, max_retries=0, circuit_failure_threshold=3, circuit_reset_seconds=0.5)
        assert server.state.requests == 4  # the rejected call never reached the server
    assert state_open == "open" and rejected_in < 0.05
    assert 0 < error.retry_after <= 0.5
    assert recovered.attempts == 1 and provider.breaker.state == "closed"
    assert provider.stats.circuit_rejections == 1


def test_a_breaker_opening_between_retries_stops_the_call_and_keeps_the_cause():
    with ServerThread(FaultConfig(fail_first=10), FAST) as server:
        with pytest.raises(CircuitOpenError) as info:
            run(call_once, server.base_url, max_retries=5, circuit_failure_threshold=2)
        assert server.state.requests == 2
    assert isinstance(info.value.__cause__, ServerError)


def test_a_failed_half_open_probe_reopens_the_breaker():
    async def scenario(provider: OpenAICompatibleProvider):
        for _ in range(2):
            with pytest.raises(ServerError):
                await provider.complete("nano", MESSAGES)
        await asyncio.sleep(0.35)
        with pytest.raises(ServerError):  # the probe reaches the server and fails
            await provider.complete("nano", MESSAGES)
        with pytest.raises(CircuitOpenError):
            await provider.complete("nano", MESSAGES)
        return provider.breaker.state

    with ServerThread(FaultConfig(fail_first=3), FAST) as server:
        _, state = run(scenario, server.base_url, max_retries=0, circuit_failure_threshold=2,
                       circuit_reset_seconds=0.3)
        assert server.state.requests == 3
    assert state == "open"


@pytest.mark.parametrize("limit", [4, 40])
def test_concurrency_limit_holds_at_the_server(limit: int):
    async def burst(provider: OpenAICompatibleProvider):
        return await asyncio.gather(*(provider.complete("nano", MESSAGES, seed=i) for i in range(3 * limit)))

    with ServerThread(latency=LatencyOverride(fixed_ms=60)) as server:
        provider, results = run(burst, server.base_url, max_concurrency=limit)
        assert server.state.max_in_flight == limit  # reached, never exceeded
    assert len(results) == 3 * limit and provider.limits.in_flight == 0


def test_requests_per_minute_limit_holds_at_the_server():
    async def burst(provider: OpenAICompatibleProvider):
        return await asyncio.gather(*(provider.complete("nano", MESSAGES) for _ in range(8)))

    with ServerThread(latency=FAST) as server:
        run(burst, server.base_url, max_concurrency=8, requests_per_minute=600)  # one per 100 ms
        arrivals = list(server.state.arrivals)
    assert len(arrivals) == 8
    # k + 1 consecutive arrivals span at least k limiter intervals, less the scheduling jitter of one
    # delivery on a busy machine (30 ms): a burst would put them all within a few milliseconds.
    for k in range(1, 8):
        spans = [b - a for a, b in zip(arrivals, arrivals[k:])]
        assert min(spans) > 0.1 * k - 0.03, (k, spans)


def test_rate_limiter_paces_with_bursts():
    limiter = RateLimiter(6000, burst=3)  # 10 ms interval
    waits = [limiter.reserve() for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.01, 0.02, 0.03], abs=0.003)


def test_latency_excludes_queueing_for_a_slot():
    async def queue(provider: OpenAICompatibleProvider):
        start = time.perf_counter()
        results = await asyncio.gather(*(provider.complete("nano", MESSAGES) for _ in range(3)))
        return results, time.perf_counter() - start

    with ServerThread(latency=LatencyOverride(fixed_ms=100)) as server:
        _, (results, wall) = run(queue, server.base_url, max_concurrency=1)
    assert wall >= 0.3
    assert all(100 <= c.latency_ms < 190 for c in results)


def test_cost_from_pricing_and_token_estimate_without_usage():
    def reply(request: httpx2.Request) -> httpx2.Response:
        sent = json.loads(request.content)
        assert sent["model"] == "sim-nano" and sent["temperature"] == 0.7 and sent["seed"] in (4, 5)
        assert sent["max_tokens"] == 64 and "authorization" not in request.headers
        body = {"id": "x", "object": "chat.completion", "model": "sim-nano-2025",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "a" * 400},
                             "finish_reason": "stop"}]}
        if sent["seed"] == 4:  # seed 5: a provider that reports no usage
            body["usage"] = {"prompt_tokens": 100, "completion_tokens": 500, "total_tokens": 600}
        return httpx2.Response(200, json=body)

    async def both(provider: OpenAICompatibleProvider):
        with_usage = await provider.complete("nano", MESSAGES, temperature=0.7, seed=4, max_tokens=64)
        without = await provider.complete("nano", MESSAGES, temperature=0.7, seed=5, max_tokens=64)
        return with_usage, without

    _, (with_usage, without) = run(both, "http://provider.test/v1", transport=httpx2.MockTransport(reply))
    assert with_usage.cost_usd == pytest.approx(100 * 0.5 / 1e6 + 500 * 1.5 / 1e6)
    assert with_usage.simulated is False and with_usage.raw_model == "sim-nano-2025"
    assert with_usage.tokens_source == "provider" and without.tokens_source == "estimated"
    chars = sum(len(m["content"]) for m in MESSAGES)
    assert without.input_tokens == pytest.approx(chars / 4, abs=len(MESSAGES))
    assert without.output_tokens == 100
    assert without.cost_usd == pytest.approx((without.input_tokens * 0.5 + 100 * 1.5) / 1e6)


def test_parse_retry_after_reads_seconds_and_http_dates():
    now = time.time()
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 20, usegmt=True), now=now) == pytest.approx(20, abs=1)
    for bad in (None, "", "soon", "nan", "Mon, 99 Foo 2025 00:00:00 GMT"):
        assert parse_retry_after(bad) is None


def test_a_batch_with_injected_faults_loses_nothing():
    faults = FaultConfig(server_error_rate=0.08, rate_limit_rate=0.04, timeout_rate=0.04, malformed_rate=0.04,
                         retry_after_seconds=0.1, hang_seconds=2.0, seed=7)

    async def batch(provider: OpenAICompatibleProvider):
        return await asyncio.gather(*(provider.complete("nano", MESSAGES, seed=i) for i in range(200)),
                                    return_exceptions=True)

    with ServerThread(faults, LatencyOverride(mean_ms=20, seed=3)) as server:
        provider, results = run(batch, server.base_url, max_retries=2, max_concurrency=32, timeout_seconds=0.4)
        requests = server.state.requests
        injected = sum(server.state.faults.values())
    completions = [r for r in results if isinstance(r, Completion)]
    errors = [r for r in results if not isinstance(r, Completion)]
    assert len(results) == 200
    assert all(isinstance(e, RetryableProviderError) for e in errors), errors
    assert len(completions) >= 190
    assert injected >= 25 and provider.stats.attempts == requests  # every attempt reached the server
    assert sum(c.attempts for c in completions) + 3 * len(errors) == requests
    assert provider.stats.completions == len(completions)
    assert sum(provider.stats.errors.values()) == len(errors)


def test_build_provider_runs_the_simulator_in_process_and_openai_over_the_network():
    async def in_process():
        async with build_provider("local", ProviderConfig(kind="simulator"), models_for("local"),
                                  faults=FaultConfig(fail_first=1)) as provider:
            return await provider.complete("nano", MESSAGES)

    c = asyncio.run(in_process())
    assert c.simulated and c.attempts == 2 and c.text == respond("sim-nano", MESSAGES, temperature=0.0).text

    async def networked(base_url: str):
        async with build_provider("sim", ProviderConfig(kind="openai", base_url=base_url), models_for("sim")) as p:
            return await p.complete("nano", MESSAGES)

    with ServerThread(latency=FAST) as server:
        assert asyncio.run(networked(server.base_url)).simulated
        assert server.state.requests == 1


def test_queued_calls_of_the_slowest_model_go_first():
    """Longest-expected-first: among calls waiting for a slot, the model with the longest latency target is
    sent first (a slow model's last calls do not hold up the end of a matrix); equal targets keep arrival order."""
    models = {"nano": ModelConfig(provider="sim", model="sim-nano", latency_target_ms=100, **PRICES),
              "slow": ModelConfig(provider="sim", model="sim-nano", latency_target_ms=3000, **PRICES)}

    async def queue(provider: OpenAICompatibleProvider):
        done: list[str] = []

        async def one(model: str, tag: str):
            await provider.complete(model, MESSAGES, seed=len(done))
            done.append(tag)

        first = asyncio.create_task(one("nano", "first"))  # takes the only slot
        await asyncio.sleep(0.005)
        waiting = [asyncio.create_task(one(m, f"{m}{i}")) for i, m in enumerate(["nano", "nano", "slow", "nano",
                                                                                  "slow"])]
        await asyncio.gather(first, *waiting)
        return done

    with ServerThread(latency=LatencyOverride(fixed_ms=20)) as server:
        async def go():
            config = ProviderConfig(kind="openai", base_url=server.base_url, max_concurrency=1)
            async with OpenAICompatibleProvider("sim", config, models) as provider:
                return await queue(provider)

        done = asyncio.run(go())
    assert done == ["first", "slow2", "slow4", "nano0", "nano1", "nano3"]


def test_a_cancelled_waiter_gives_up_its_place_and_the_slots_stay_whole():
    from promptcycle.providers.limits import RequestLimits

    async def go():
        limits = RequestLimits(1)
        await limits.acquire()
        slow = asyncio.create_task(limits.acquire(expected=5000))
        fast = asyncio.create_task(limits.acquire(expected=10))
        await asyncio.sleep(0)
        slow.cancel()
        await asyncio.gather(slow, return_exceptions=True)
        limits.release()  # the slot goes to the remaining waiter, not to the cancelled one
        await asyncio.wait_for(fast, 1)
        limits.release()
        await asyncio.wait_for(limits.acquire(), 1)  # and one slot is free again afterwards
        return limits.in_flight

    assert asyncio.run(go()) == 1
