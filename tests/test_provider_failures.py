"""Provider failures a user meets: named before spending, not re-sent when final, shown with the provider's words.

Over loopback HTTP: the simulator (`require_api_key`, unknown model ids), a dead port, and a raw
asyncio server for answers no sane provider sends (a 64 MB body).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import tracemalloc

import pytest
from pydantic import SecretStr

from promptcycle.config import ModelConfig, ProviderConfig, PromptcycleConfig
from promptcycle.datasets import load_cases
from promptcycle.errors import FatalProviderError, ProviderCheckError, ResponseTooLargeError
from promptcycle.evaluation.cells import CellSpec, evaluate_cell
from promptcycle.evaluation.pool import check_models, close_providers
from promptcycle.evaluation.summary import provider_error_lines
from promptcycle.prompts import PromptTemplate
from promptcycle.providers import OpenAICompatibleProvider
from promptcycle.scoring import build_scorers
from promptcycle.sim.server import FaultConfig, LatencyOverride, create_app
from promptcycle.store import MetricsStore
from simserver import ServerThread, unused_port

KEY = "sk-right-key-0123456789"
WRONG = "sk-wrong-key-9876543210"
MESSAGES = [{"role": "user", "content": "Customer record: {\"name\": \"Ada\"}. What is the name?"}]
PROMPT = PromptTemplate(system="You are an analyst at a retail bank.",
                        template="Customer record:\n{{customer}}\n\nQuestion: {{question}}")


def config_for(base_url: str, *, model_id: str = "sim-nano", **provider) -> PromptcycleConfig:
    """Providers and models only (check_models needs no pipeline)."""
    return PromptcycleConfig.model_construct(
        providers={"sim": ProviderConfig(kind="openai", base_url=base_url, max_retries=1, backoff_seconds=0.01,
                                         **provider)},
        models={"nano": ModelConfig(provider="sim", model=model_id)}, pipelines={})


def check(config: PromptcycleConfig, key: str | None) -> None:
    async def go():
        try:
            await check_models(config, ["nano"], lambda _: SecretStr(key) if key else None)
        finally:
            await close_providers()

    asyncio.run(go())


# -- the check before a run ------------------------------------------------------------------------------------

def test_a_wrong_key_is_named_before_any_chat_call():
    with ServerThread(require_api_key=KEY) as server:
        with pytest.raises(ProviderCheckError) as caught:
            check(config_for(server.base_url), WRONG)
        assert server.state.requests == 0  # the models list said no: not one completion was sent
        check(config_for(server.base_url), KEY)  # the right key passes (the model is listed)
        assert server.state.requests == 0
    message = str(caught.value)
    assert caught.value.status == 401 and caught.value.provider == "sim" and caught.value.model == "nano"
    assert "'sim'" in message and "'nano'" in message and "HTTP 401" in message
    assert "Incorrect API key provided" in message and "the API key was refused" in message
    assert WRONG not in message and KEY not in message


def test_a_mistyped_model_id_is_named_with_the_providers_404():
    with ServerThread(require_api_key=KEY) as server:
        with pytest.raises(ProviderCheckError) as caught:
            check(config_for(server.base_url, model_id="sim-nanoo"), KEY)
        assert server.state.statuses == {404: 1}  # one cheap call, not retried
    message = str(caught.value)
    assert caught.value.status == 404 and "sim-nanoo" in message and "HTTP 404" in message
    assert "does not exist" in message and "does not know this model id" in message


def test_a_dead_server_is_named_after_the_clients_retries():
    base_url = f"http://127.0.0.1:{unused_port()}/v1"
    with pytest.raises(ProviderCheckError) as caught:
        check(config_for(base_url), None)
    message = str(caught.value)
    assert "ProviderConnectionError" in message and base_url in message and "after 2 attempts" in message


def test_a_permanent_429_is_named_with_its_status():
    with ServerThread(faults=FaultConfig(rate_limit_rate=1.0, retry_after_seconds=0.05)) as server:
        with pytest.raises(ProviderCheckError) as caught:
            check(config_for(server.base_url, model_id="sim-nano-unlisted"), None)
        assert server.state.statuses == {429: 2}
    assert caught.value.status == 429 and "Rate limit reached" in str(caught.value)


# -- a final refusal mid-run stops the sends -------------------------------------------------------------------

def test_after_a_401_the_calls_not_yet_sent_are_not_sent():
    models = {"nano": ModelConfig(provider="sim", model="sim-nano")}
    with ServerThread(latency=LatencyOverride(fixed_ms=30), require_api_key=KEY) as server:
        async def go():
            provider = OpenAICompatibleProvider("sim", ProviderConfig(kind="openai", base_url=server.base_url,
                                                                      max_concurrency=4), models,
                                                api_key=SecretStr(WRONG))
            async with provider:
                results = await asyncio.gather(*(provider.complete("nano", MESSAGES, seed=i) for i in range(200)),
                                               return_exceptions=True)
            return provider, results

        provider, results = asyncio.run(go())
        sent = server.state.requests
    assert sent <= 4, f"{sent} requests sent after the provider refused the key"
    assert all(isinstance(r, FatalProviderError) and r.status == 401 for r in results)
    assert provider.stats.refused == 200 - sent
    assert all("Incorrect API key provided" in str(r) and WRONG not in str(r) for r in results)


def test_after_a_404_only_that_model_stops():
    models = {"nano": ModelConfig(provider="sim", model="sim-nano"),
              "typo": ModelConfig(provider="sim", model="sim-nanoo")}
    with ServerThread(latency=LatencyOverride(fixed_ms=10)) as server:
        async def go():
            provider = OpenAICompatibleProvider("sim", ProviderConfig(kind="openai", base_url=server.base_url,
                                                                      max_concurrency=2), models)
            async with provider:
                bad = await asyncio.gather(*(provider.complete("typo", MESSAGES, seed=i) for i in range(20)),
                                           return_exceptions=True)
                good = await asyncio.gather(*(provider.complete("nano", MESSAGES, seed=i) for i in range(5)))
            return bad, good

        bad, good = asyncio.run(go())
        statuses = dict(server.state.statuses)
    assert statuses[404] <= 2 and statuses[200] == 5
    assert all(isinstance(r, FatalProviderError) and r.status == 404 for r in bad) and len(good) == 5


def test_a_cell_under_a_wrong_key_records_the_providers_words_and_sends_little(tmp_path):
    cases = load_cases("bundled:customer_insights")[:30]
    models = {"nano": ModelConfig(provider="sim", model="sim-nano")}
    store = MetricsStore(tmp_path / "m.duckdb")
    with ServerThread(latency=LatencyOverride(fixed_ms=20), require_api_key=KEY) as server:
        async def go():
            provider = OpenAICompatibleProvider("sim", ProviderConfig(kind="openai", base_url=server.base_url,
                                                                      max_concurrency=4), models,
                                                api_key=SecretStr(WRONG))
            async with provider:
                spec = CellSpec(run_id="run-1", pipeline="p", model_name="nano", model=models["nano"],
                                spectrum="mixed", prompt=PROMPT, cases=cases, splits={}, repeats=2,
                                weights={"completeness": 1.0})
                return await evaluate_cell(spec, provider=provider, provider_name="sim",
                                           scorers=build_scorers({"completeness": {"weight": 1.0}}), store=store,
                                           concurrency=4)

        outcome = asyncio.run(go())
        sent = server.state.requests
    assert outcome.errors == 60 and sent <= 4
    frame = store.results_frame("run-1")
    assert len(frame) == 60 and frame["error_kind"].eq("FatalProviderError").all()
    lines = provider_error_lines(frame)
    assert len(lines) == 1 and lines[0].startswith("nano: FatalProviderError ×60 — sim: HTTP 401")
    assert "Incorrect API key provided" in lines[0] and WRONG not in lines[0]


# -- a retry after 429 waits its Retry-After, not the queue ------------------------------------------------------

class _Recorder:
    """ASGI middleware over the simulator: when each request (by its seed) arrived and when a 429 left."""

    def __init__(self, app):
        self.app = app
        self.events: list[tuple[int, str, float]] = []  # (seed, "arrived" | "429", monotonic time)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            return await self.app(scope, receive, send)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seed = json.loads(body)["seed"]
        self.events.append((seed, "arrived", time.monotonic()))
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def record(message):
            if message["type"] == "http.response.start" and message["status"] == 429:
                self.events.append((seed, "429", time.monotonic()))
            await send(message)

        await self.app(scope, replay, record)

    @property
    def state(self):
        return self.app.state


def test_a_retry_after_429_waits_about_its_retry_after_not_the_queue():
    # The first 8 requests get a 429 with Retry-After 1 s while 600 calls queue for 8 slots of ~50 ms
    # each (about 3.7 s of queue): a retry queued behind them would wait ~4 s.
    faults = FaultConfig(script=("rate_limit",) * 8, rate_limit_rate=0.02, retry_after_seconds=1.0, seed=3)
    recorder = _Recorder(create_app(faults, LatencyOverride(fixed_ms=50)))
    models = {"nano": ModelConfig(provider="sim", model="sim-nano")}
    with ServerThread(app=recorder) as server:
        async def go():
            provider = OpenAICompatibleProvider("sim", ProviderConfig(kind="openai", base_url=server.base_url,
                                                                      max_concurrency=8), models)
            async with provider:
                return await asyncio.gather(*(provider.complete("nano", MESSAGES, seed=i) for i in range(600)))

        results = asyncio.run(go())
    assert len(results) == 600
    waits = []
    last_429: dict[int, float] = {}
    for seed, what, at in recorder.events:
        if what == "429":
            last_429[seed] = at
        elif seed in last_429:
            waits.append(at - last_429.pop(seed))
    assert len(waits) >= 8
    median = statistics.median(waits)
    print(f"retry waits after a 1 s Retry-After: n={len(waits)} median={median:.2f} s max={max(waits):.2f} s")
    assert 1.0 <= median <= 1.5, sorted(waits)


# -- answers larger than the cap -------------------------------------------------------------------------------

class _HugeAnswer:
    """A raw HTTP/1.1 server that answers every request with a `size`-byte 200 (chunked, or with a
    Content-Length); `written` is the most one connection managed to write before the client hung up."""

    def __init__(self, size: int, *, declare_length: bool):
        self.size = size
        self.declare_length = declare_length
        self.written = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), b"0"))
        await reader.readexactly(length)
        framing = f"Content-Length: {self.size}" if self.declare_length else "Transfer-Encoding: chunked"
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{framing}\r\n\r\n".encode())
        chunk = b'{"x":"' + b"a" * (256 * 1024 - 6)
        sent = 0
        try:
            while sent < self.size:
                piece = chunk[: self.size - sent]
                writer.write(piece if self.declare_length else b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                sent += len(piece)
                self.written = max(self.written, sent)
            if not self.declare_length:
                writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


def _call_huge(server: _HugeAnswer, **provider_options):
    models = {"nano": ModelConfig(provider="big", model="big-model")}

    async def go():
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        server.port = listener.sockets[0].getsockname()[1]
        provider = OpenAICompatibleProvider("big", ProviderConfig(
            kind="openai", base_url=f"http://127.0.0.1:{server.port}/v1", max_retries=0, **provider_options), models)
        tracemalloc.start()
        try:
            async with provider:
                try:
                    await provider.complete("nano", MESSAGES)
                except ResponseTooLargeError as exc:
                    error = exc
                else:
                    error = None
            await asyncio.sleep(0.2)  # let the server notice the hang-up
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            listener.close()
        return error, peak

    return asyncio.run(go())


@pytest.mark.parametrize("declare_length", [False, True], ids=["chunked", "content-length"])
def test_a_64_mb_answer_is_refused_at_the_cap_without_reading_it(declare_length):
    server = _HugeAnswer(64 * 1024 * 1024, declare_length=declare_length)
    error, peak = _call_huge(server)  # the default cap: 1 MiB
    assert isinstance(error, ResponseTooLargeError) and "max_response_bytes" in str(error) and "1048576" in str(error)
    assert peak < 16 * 1024 * 1024, f"peak traced memory {peak / 2**20:.1f} MiB"
    assert server.written < 32 * 1024 * 1024  # the client hung up long before the end


def test_the_cap_is_configurable_per_provider():
    error, _ = _call_huge(_HugeAnswer(300_000, declare_length=False), max_response_bytes=2048)
    assert isinstance(error, ResponseTooLargeError) and "2048 bytes" in str(error)
    with pytest.raises(Exception, match="max_response_bytes"):
        ProviderConfig(kind="openai", base_url="http://x/v1", max_response_bytes=10)


def test_an_oversize_answer_is_a_recorded_case_error(tmp_path):
    server = _HugeAnswer(8 * 1024 * 1024, declare_length=False)
    cases = load_cases("bundled:customer_insights")[:3]
    models = {"nano": ModelConfig(provider="big", model="big-model")}
    store = MetricsStore(tmp_path / "m.duckdb")

    async def go():
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        try:
            provider = OpenAICompatibleProvider("big", ProviderConfig(
                kind="openai", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2), models)
            async with provider:
                spec = CellSpec(run_id="run-1", pipeline="p", model_name="nano", model=models["nano"],
                                spectrum="mixed", prompt=PROMPT, cases=cases, splits={}, repeats=1,
                                weights={"completeness": 1.0})
                return await evaluate_cell(spec, provider=provider, provider_name="big",
                                           scorers=build_scorers({"completeness": {"weight": 1.0}}), store=store,
                                           final_attempt=False)  # not retried, even on a non-final task attempt
        finally:
            listener.close()

    outcome = asyncio.run(go())
    assert outcome.errors == 3 and outcome.deferred == 0, outcome.error_messages
    frame = store.results_frame("run-1")
    assert frame["error_kind"].eq("ResponseTooLargeError").all() and frame["output"].isna().all()
    spend = store.spend("run-1")
    assert spend["answered"] == 0  # nothing of it reached the ledger
    assert spend["calls"] == 3  # but each request reached the provider, so it counts as sent


# -- through the CLI and the engine ------------------------------------------------------------------------------

@pytest.mark.engine
def test_cli_baseline_with_a_wrong_key_stops_before_the_matrix_with_the_providers_words(
        prefect_harness, repo_config, monkeypatch, capsys):
    import yaml

    from promptcycle_cli.main import main

    with ServerThread(require_api_key=KEY) as server:
        data = yaml.safe_load(repo_config.read_text())
        data["providers"]["simulator"] = {"kind": "openai", "base_url": server.base_url,
                                          "api_key_env": "PROMPTCYCLE_TEST_KEY", "max_concurrency": 8}
        repo_config.write_text(yaml.safe_dump(data))
        monkeypatch.setenv("PROMPTCYCLE_TEST_KEY", WRONG)
        store = repo_config.parent / "metrics.duckdb"
        code = main(["baseline", "--config", str(repo_config), "--store", str(store), "--limit", "2", "--json"])
        out = capsys.readouterr().out
        assert server.state.requests == 0  # not one of the 98 completions was sent
    result = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and result["success"] is False and result["error"] == "ProviderCheckError"
    message = result["message"]
    assert "HTTP 401" in message and "Incorrect API key provided" in message and "'simulator'" in message
    assert WRONG not in out
    assert MetricsStore(store).spend("baseline-")["calls"] == 0


def test_an_open_breaker_says_why_it_opened():
    """A dead server mid-run: the calls the breaker rejects carry the connection error that opened it."""
    base_url = f"http://127.0.0.1:{unused_port()}/v1"
    models = {"nano": ModelConfig(provider="sim", model="sim-nano")}

    async def go():
        provider = OpenAICompatibleProvider("sim", ProviderConfig(
            kind="openai", base_url=base_url, max_retries=0, circuit_failure_threshold=2, max_concurrency=1), models)
        async with provider:
            return await asyncio.gather(*(provider.complete("nano", MESSAGES, seed=i) for i in range(6)),
                                        return_exceptions=True)

    results = asyncio.run(go())
    rejected = [r for r in results if type(r).__name__ == "CircuitOpenError"]
    assert rejected and all("last: sim: " in str(r) and "connecting to " + base_url in str(r) for r in rejected)


def test_the_deployment_smoke_stage_checks_the_providers_before_its_calls(tmp_path):
    import yaml

    from deploy_support import write_config
    from promptcycle.deploy.smoke import run_smoke
    from promptcycle.evaluation.context import load_pipeline

    path = write_config(tmp_path)
    with ServerThread(require_api_key=KEY) as server:
        data = yaml.safe_load(path.read_text())
        data["providers"]["simulator"] = {"kind": "openai", "base_url": server.base_url, "api_key_env": "UNUSED"}
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        ctx = load_pipeline(path, "customer-insights")
        store = MetricsStore(ctx.store_path)

        async def go():
            try:
                return await run_smoke(ctx, ctx.prompt, run_id="smoke-1", store=store,
                                       key_of=lambda _: SecretStr(WRONG), cases_per_spectrum=1,
                                       max_format_error_rate=0.1)
            finally:
                await close_providers()

        report = asyncio.run(go())
        assert server.state.requests == 0
    assert report.status == "failed" and [c.name for c in report.checks] == ["providers answer"]
    assert "HTTP 401" in report.reason and "Incorrect API key provided" in report.reason and WRONG not in report.reason
    assert store.get_run("smoke-1") is None


def test_a_refused_key_is_named_once_for_all_its_models():
    with ServerThread(require_api_key=KEY) as server:
        config = config_for(server.base_url)
        config.models.update({"mini": ModelConfig(provider="sim", model="sim-mini"),
                              "typo": ModelConfig(provider="sim", model="sim-nanoo")})

        async def go():
            try:
                await check_models(config, ["nano", "mini", "typo"], lambda _: SecretStr(WRONG))
            finally:
                await close_providers()

        with pytest.raises(ProviderCheckError) as caught:
            asyncio.run(go())
    message = str(caught.value)
    assert message.count("HTTP 401") == 1 and "(the same for mini, typo)" in message
    assert message.endswith("and run again")


def test_a_dead_server_is_named_once_for_all_its_models():
    base_url = f"http://127.0.0.1:{unused_port()}/v1"
    config = config_for(base_url)
    config.models.update({"mini": ModelConfig(provider="sim", model="sim-mini"),
                          "small": ModelConfig(provider="sim", model="sim-small")})

    async def go():
        try:
            await check_models(config, ["nano", "mini", "small"], lambda _: None)
        finally:
            await close_providers()

    with pytest.raises(ProviderCheckError) as caught:
        asyncio.run(go())
    message = str(caught.value)
    assert message.count("ConnectError connecting") == 1 and "also:" not in message, message
    assert "(the same for mini, small)" in message and message.endswith("and run again")
