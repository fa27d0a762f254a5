"""The simulator's HTTP server: the OpenAI protocol, latency, fault injection and its counters.

Protocol and fault behaviour are checked through the app (in-process ASGI transport, fast) and over
real loopback HTTP (tests/simserver.py, and `promptcycle sim-server` in a subprocess).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx2
import pytest

from promptcycle.sim.server import SIMULATED_HEADER, SYSTEM_FINGERPRINT, FaultConfig, LatencyOverride, create_app
from promptcycle.sim.world import SIM_MODELS, respond
from simserver import ServerThread, unused_port

CUSTOMER = {"customer_id": "C-1001", "name": "Ada Lovelace", "credit_score": 712, "credit_utilization_pct": 23.5}
MESSAGES = [
    {"role": "system", "content": "You are an analyst at a retail bank. Answer questions about customers accurately."},
    {"role": "user", "content": "Here is the customer record:\n" + json.dumps(CUSTOMER, indent=2)
     + "\n\nWhat are the customer's credit score and credit utilization pct?\nReply with a JSON object."},
]
ZERO = LatencyOverride(fixed_ms=0)


def chat_body(model: str = "sim-small", **extra) -> dict:
    return {"model": model, "messages": MESSAGES, "temperature": 0, **extra}


def run_in_process(app, requests: list[dict], *, concurrent: bool = False) -> list[httpx2.Response]:
    """POST each body to the app through the in-process ASGI transport."""

    async def go():
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://sim/v1") as client:
            if concurrent:
                return await asyncio.gather(*(client.post("/chat/completions", json=b) for b in requests))
            return [await client.post("/chat/completions", json=b) for b in requests]

    return asyncio.run(go())


def is_malformed(r: httpx2.Response) -> bool:
    """Not a usable chat completion: invalid JSON, or JSON without `choices`."""
    try:
        return "choices" not in r.json()
    except ValueError:
        return True


def test_completion_over_loopback_speaks_the_protocol_and_is_labelled_simulated():
    with ServerThread(latency=ZERO) as server, httpx2.Client(base_url=server.base_url) as client:
        r = client.post("/chat/completions", json=chat_body(seed=3))
    assert r.status_code == 200
    assert r.headers[SIMULATED_HEADER] == "true"
    data = r.json()
    reply = respond("sim-small", MESSAGES, temperature=0.0, seed=3)
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-")
    assert isinstance(data["created"], int)
    assert data["model"] == "sim-small"
    assert data["system_fingerprint"] == SYSTEM_FINGERPRINT
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": reply.text}
    assert choice["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
                             "total_tokens": reply.input_tokens + reply.output_tokens}


def test_same_request_gives_the_same_reply_and_max_tokens_truncates():
    app = create_app(latency=ZERO)
    first, second, capped = run_in_process(app, [chat_body("sim-large"), chat_body("sim-large"),
                                                 chat_body("sim-large", max_tokens=5)])
    assert first.json()["choices"][0]["message"]["content"] == second.json()["choices"][0]["message"]["content"]
    cut = capped.json()
    reply = respond("sim-large", MESSAGES, temperature=0.0, max_tokens=5)
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["choices"][0]["message"]["content"] == reply.text
    assert cut["usage"]["completion_tokens"] == reply.output_tokens <= 5


def test_the_server_sleeps_the_models_own_latency_by_default():
    app = create_app()
    reply = respond("sim-nano", MESSAGES, temperature=0.0)
    start = time.perf_counter()
    (r,) = run_in_process(app, [chat_body("sim-nano")])
    elapsed = time.perf_counter() - start
    assert r.status_code == 200
    assert reply.latency_s * 0.95 <= elapsed < reply.latency_s + 1.0


def test_latency_override_fixed_and_lognormal_mean():
    start = time.perf_counter()
    run_in_process(create_app(latency=LatencyOverride(fixed_ms=150)), [chat_body("sim-reasoner")])
    assert 0.15 <= time.perf_counter() - start < 0.6  # sim-reasoner's own latency is far longer

    app = create_app(latency=LatencyOverride(mean_ms=40, sigma=0.5, seed=1))
    samples = [app._latency_s(99.0) for _ in range(4000)]
    mean = sum(samples) / len(samples)
    assert 0.037 < mean < 0.043
    assert max(samples) > 0.08 and min(samples) < 0.02  # spread, not fixed
    with pytest.raises(ValueError):
        LatencyOverride(fixed_ms=10, mean_ms=10)


@pytest.mark.parametrize(("body", "status", "param"), [
    (b"{not json", 400, None),
    (b'["a list"]', 400, None),
    (json.dumps({"model": "sim-small"}).encode(), 400, "messages"),
    (json.dumps({"messages": MESSAGES}).encode(), 400, "model"),
    (json.dumps({**chat_body(), "temperature": "hot"}).encode(), 400, "temperature"),
    (json.dumps({**chat_body(), "stream": True}).encode(), 400, "stream"),
    (json.dumps(chat_body("gpt-imaginary")).encode(), 404, "model"),
])
def test_bad_requests_get_openai_style_errors(body: bytes, status: int, param: str | None):
    async def go():
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=create_app(latency=ZERO))) as client:
            return await client.post("http://sim/v1/chat/completions", content=body)

    r = asyncio.run(go())
    assert r.status_code == status
    error = r.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == param
    if status == 404:
        assert error["code"] == "model_not_found"


def test_models_health_and_unknown_routes():
    async def go():
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=create_app())) as client:
            return (await client.get("http://sim/v1/models"), await client.get("http://sim/health"),
                    await client.get("http://sim/v2/nothing"), await client.get("http://sim/v1/chat/completions"))

    models, health, missing, wrong_method = asyncio.run(go())
    assert [m["id"] for m in models.json()["data"]] == list(SIM_MODELS)
    assert health.json() == {"status": "ok", "simulated": True}
    assert missing.status_code == 404
    assert wrong_method.status_code == 405


def test_fault_rates_are_close_to_configured_and_faults_look_real():
    faults = FaultConfig(server_error_rate=0.10, rate_limit_rate=0.05, malformed_rate=0.10,
                         retry_after_seconds=2.5, seed=11)
    app = create_app(faults, ZERO)
    n = 2000
    responses = run_in_process(app, [chat_body("sim-nano")] * n, concurrent=True)
    kinds = {"server_error": 0, "rate_limit": 0, "malformed": 0, "ok": 0}
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "2.5"
            kinds["rate_limit"] += 1
        elif r.status_code >= 500:
            assert r.status_code in (500, 502, 503) and r.json()["error"]["message"]
            kinds["server_error"] += 1
        else:
            assert r.status_code == 200
            kinds["malformed" if is_malformed(r) else "ok"] += 1
    # Binomial with n = 2000: 4.5 standard deviations either side.
    for kind, rate in (("server_error", 0.10), ("rate_limit", 0.05), ("malformed", 0.10)):
        sd = (n * rate * (1 - rate)) ** 0.5
        assert abs(kinds[kind] - n * rate) < 4.5 * sd, kinds
    assert app.state.requests == n
    assert dict(app.state.faults) == {k: v for k, v in kinds.items() if k != "ok"}
    assert app.state.statuses[429] == kinds["rate_limit"]


def test_faults_are_reproducible_from_the_seed():
    def statuses(seed: int) -> list[int]:
        app = create_app(FaultConfig(server_error_rate=0.3, rate_limit_rate=0.2, seed=seed), ZERO)
        return [r.status_code for r in run_in_process(app, [chat_body("sim-nano")] * 60)]

    assert statuses(5) == statuses(5)
    assert statuses(5) != statuses(6)


def test_scripted_faults_hit_exactly_the_first_requests():
    app = create_app(FaultConfig(script=("rate_limit", "none", "server_error", "malformed")), ZERO)
    r = run_in_process(app, [chat_body("sim-nano")] * 6)
    assert [x.status_code for x in r[:3]] == [429, 200, r[2].status_code]
    assert r[2].status_code in (500, 502, 503)
    assert r[3].status_code == 200 and is_malformed(r[3])
    assert [x.status_code for x in r[4:]] == [200, 200]

    app = create_app(FaultConfig(fail_first=2, fail_kind="rate_limit"), ZERO)
    assert [x.status_code for x in run_in_process(app, [chat_body("sim-nano")] * 4)] == [429, 429, 200, 200]
    with pytest.raises(ValueError):
        FaultConfig(server_error_rate=0.6, timeout_rate=0.5)
    with pytest.raises(ValueError):
        FaultConfig(script=("explode",))


def test_timeout_fault_hangs_then_answers():
    app = create_app(FaultConfig(fail_first=1, fail_kind="timeout", hang_seconds=0.3), ZERO)
    start = time.perf_counter()
    (hung,) = run_in_process(app, [chat_body("sim-nano")])
    assert time.perf_counter() - start >= 0.3
    assert hung.status_code == 200 and hung.json()["choices"]


def test_in_flight_counter_and_api_key_check():
    app = create_app(latency=LatencyOverride(fixed_ms=80), require_api_key="sk-server-side")

    async def go():
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, headers={"authorization": "Bearer sk-server-side"}) as ok, \
                httpx2.AsyncClient(transport=transport) as anonymous:
            good = await asyncio.gather(*(ok.post("http://sim/v1/chat/completions", json=chat_body("sim-nano"))
                                          for _ in range(12)))
            bad = await anonymous.post("http://sim/v1/chat/completions", json=chat_body("sim-nano"))
            return good, bad

    good, bad = asyncio.run(go())
    assert all(r.status_code == 200 for r in good)
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    assert "sk-server-side" not in bad.text
    assert app.state.max_in_flight == 12
    assert app.state.in_flight == 0
    assert app.state.statuses == {200: 12, 401: 1}


def test_sim_server_command_serves_in_its_own_process():
    port = unused_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "promptcycle_cli.main", "sim-server", "--port", str(port),
                             "--latency-ms", "0", "--rate-limit-rate", "1", "--retry-after", "7"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                health = httpx2.get(f"http://127.0.0.1:{port}/health")
                break
            except httpx2.TransportError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        assert health.json()["simulated"] is True
        r = httpx2.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat_body("sim-nano"))
        assert r.status_code == 429 and r.headers["retry-after"] == "7"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
