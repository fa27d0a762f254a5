"""The simulated LLM world served over the OpenAI chat-completions protocol, with fault injection.

`create_app()` returns a small ASGI application:

    POST /v1/chat/completions   answered by `promptcycle.sim.world.respond`, after sleeping the reply's
                                simulated latency (or a `LatencyOverride`); an unknown model id is a 404
    GET  /v1/models             the simulated models

With `require_api_key`, both answer 401 to a request without that bearer key (`promptcycle sim-server
--api-key-env VAR`).
    GET  /health                liveness

Every completion is labelled simulated: `system_fingerprint: "promptcycle-simulator"` in the body and an
`x-promptcycle-simulated: true` header. `FaultConfig` injects 5xx, 429 with Retry-After, hangs and
malformed bodies, at seeded rates or scripted for the first requests. `run_server()` serves it with
uvicorn (`promptcycle sim-server --help`); in-process callers wrap it in `httpx2.ASGITransport`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Literal

from promptcycle.sim.drift import DriftSchedule
from promptcycle.sim.drift import error_rate as drift_error_rate
from promptcycle.sim.world import SIM_MODELS, UnknownSimModelError, respond

__all__ = [
    "FaultConfig",
    "FaultKind",
    "LatencyOverride",
    "ServerState",
    "SimServerApp",
    "create_app",
    "run_server",
    "SYSTEM_FINGERPRINT",
    "SIMULATED_HEADER",
]

SYSTEM_FINGERPRINT = "promptcycle-simulator"
SIMULATED_HEADER = "x-promptcycle-simulated"

FaultKind = Literal["server_error", "rate_limit", "timeout", "malformed"]
FAULT_KINDS: tuple[str, ...] = ("server_error", "rate_limit", "timeout", "malformed")
_NO_FAULT = "none"

logger = logging.getLogger("promptcycle.sim.server")


@dataclass(frozen=True)
class FaultConfig:
    """Which faults the simulator injects into chat completions, and how often.

    Rates are probabilities per request (their sum is at most 1), drawn from an RNG seeded with
    `seed`, so a run with the same requests in the same order sees the same faults. For exact
    tests, `fail_first=N` gives the first N requests the fault `fail_kind`, and `script` gives the
    first requests explicit faults in order ("none" for a normal answer); random rates apply after.
    """

    server_error_rate: float = 0.0
    server_error_statuses: tuple[int, ...] = (500, 502, 503)
    rate_limit_rate: float = 0.0
    retry_after_seconds: float = 1.0  # sent as the 429's Retry-After header
    timeout_rate: float = 0.0
    hang_seconds: float = 30.0  # how long a "timeout" request hangs before it answers normally
    malformed_rate: float = 0.0  # half invalid JSON, half a JSON body without `choices`
    fail_first: int = 0
    fail_kind: FaultKind = "server_error"
    script: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        rates = (self.server_error_rate, self.rate_limit_rate, self.timeout_rate, self.malformed_rate)
        if any(not 0.0 <= r <= 1.0 for r in rates) or sum(rates) > 1.0 + 1e-9:
            raise ValueError(f"fault rates must be in [0, 1] and sum to at most 1, found {rates}")
        if not self.server_error_statuses or any(not 500 <= s <= 599 for s in self.server_error_statuses):
            raise ValueError(f"server_error_statuses must be 5xx codes, found {self.server_error_statuses}")
        if self.retry_after_seconds < 0 or self.hang_seconds < 0 or self.fail_first < 0:
            raise ValueError("retry_after_seconds, hang_seconds and fail_first must be >= 0")
        if self.fail_kind not in FAULT_KINDS:
            raise ValueError(f"fail_kind must be one of {FAULT_KINDS}, found {self.fail_kind!r}")
        if self.script and self.fail_first:
            raise ValueError("give either script or fail_first, not both")
        unknown = [k for k in self.script if k not in FAULT_KINDS and k != _NO_FAULT]
        if unknown:
            raise ValueError(f"unknown fault kinds in script: {unknown}; known: {FAULT_KINDS + (_NO_FAULT,)}")

    @property
    def scripted(self) -> tuple[str, ...]:
        """The explicit fault of each of the first requests."""
        return self.script or (self.fail_kind,) * self.fail_first

    @property
    def enabled(self) -> bool:
        return bool(self.scripted) or (self.server_error_rate + self.rate_limit_rate + self.timeout_rate
                                       + self.malformed_rate) > 0


@dataclass(frozen=True)
class LatencyOverride:
    """Replace the simulated models' own latency: a fixed `fixed_ms`, or lognormal around `mean_ms`."""

    fixed_ms: float | None = None
    mean_ms: float | None = None
    sigma: float = 0.3  # of the underlying normal; 0.3 gives a p95/median of about 1.6
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.fixed_ms is None) == (self.mean_ms is None):
            raise ValueError("give exactly one of fixed_ms and mean_ms")
        if (self.fixed_ms or 0) < 0 or (self.mean_ms is not None and self.mean_ms <= 0) or self.sigma < 0:
            raise ValueError("fixed_ms must be >= 0, mean_ms > 0 and sigma >= 0")


@dataclass
class ServerState:
    """Counters the app keeps, read by tests and benchmarks (one event loop writes them)."""

    requests: int = 0  # chat-completion requests received
    in_flight: int = 0
    max_in_flight: int = 0
    faults: Counter = field(default_factory=Counter)  # fault kind -> count
    statuses: Counter = field(default_factory=Counter)  # HTTP status -> count (chat completions)
    arrivals: deque = field(default_factory=lambda: deque(maxlen=10_000))  # time.monotonic() per request

    def reset(self) -> None:
        self.requests = self.in_flight = self.max_in_flight = 0
        self.faults.clear()
        self.statuses.clear()
        self.arrivals.clear()


_JSON = b"application/json"
_BASE_HEADERS = [(b"content-type", _JSON), (SIMULATED_HEADER.encode(), b"true")]


def _error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": "..."}]
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)
    raise _BadRequest("each message needs a string `content`", "messages")


def _parse_chat(body: bytes) -> tuple[str, list[dict[str, str]], float, int | None, int | None]:
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest("the request body is not valid JSON") from None
    if not isinstance(req, dict):
        raise _BadRequest("the request body must be a JSON object")
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("`model` is required and must be a string", "model")
    raw = req.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _BadRequest("`messages` is required and must be a non-empty array", "messages")
    messages = []
    for m in raw:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _BadRequest("each message needs a string `role`", "messages")
        messages.append({"role": m["role"], "content": _text_of(m.get("content"))})
    if req.get("stream"):
        raise _BadRequest("streaming is not supported by the simulator", "stream")
    temperature = req.get("temperature")
    if temperature is None:
        temperature = 1.0  # the protocol's default
    elif isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise _BadRequest("`temperature` must be a number in [0, 2]", "temperature")
    seed = req.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _BadRequest("`seed` must be an integer", "seed")
    max_tokens = req.get("max_tokens", req.get("max_completion_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise _BadRequest("`max_tokens` must be a positive integer", "max_tokens")
    return model, messages, float(temperature), seed, max_tokens


class SimServerApp:
    """The ASGI app. `state` holds its counters; `faults` and `latency` are fixed at creation."""

    def __init__(self, faults: FaultConfig | None = None, latency: LatencyOverride | None = None, *,
                 require_api_key: str | None = None, drift: DriftSchedule | None = None):
        if not isinstance(faults, (FaultConfig, type(None))) or not isinstance(latency, (LatencyOverride, type(None))):
            raise TypeError(f"expected FaultConfig and LatencyOverride, found {type(faults).__name__} and "
                            f"{type(latency).__name__}")
        self.faults = faults or FaultConfig()
        self.latency = latency
        self.state = ServerState()
        self.drift = drift or DriftSchedule()  # simulated drifts; their call counter counts chat requests
        self._drift_rng = random.Random(self.faults.seed + 1)
        self._fault_rng = random.Random(self.faults.seed)
        self._latency_rng = random.Random(latency.seed if latency else 0)
        self._ids = itertools.count(1)
        self._fault_index = 0  # chat requests that reached fault injection
        # Compared as bytes against the raw header: the server never formats or logs the key.
        self._auth = f"Bearer {require_api_key}".encode() if require_api_key else None
        self._models_body = json.dumps({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": SYSTEM_FINGERPRINT} for name in SIM_MODELS
        ]}).encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            method = scope["method"]
            if path == "/v1/chat/completions":
                if method == "POST":
                    await self._chat(scope, receive, send)
                else:
                    await self._send(send, 405, _error_body("use POST", "invalid_request_error"))
            elif path in ("/v1/models", "/health"):
                if path == "/v1/models" and not self._authorized(scope):
                    await self._send_unauthorized(send)
                elif method == "GET":
                    body = self._models_body if path == "/v1/models" else b'{"status":"ok","simulated":true}'
                    await self._send(send, 200, body)
                else:
                    await self._send(send, 405, _error_body("use GET", "invalid_request_error"))
            else:
                await self._send(send, 404, _error_body(f"no route {path}", "invalid_request_error"))
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    def _authorized(self, scope: dict) -> bool:
        return self._auth is None or dict(scope["headers"]).get(b"authorization") == self._auth

    async def _send_unauthorized(self, send: Any) -> None:
        await self._send(send, 401, _error_body("Incorrect API key provided.", "invalid_request_error",
                                                code="invalid_api_key"))

    @staticmethod
    async def _send(send: Any, status: int, body: bytes, extra: list | None = None) -> None:
        headers = _BASE_HEADERS + [(b"content-length", str(len(body)).encode())]
        if extra:
            headers += extra
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _next_fault(self) -> str:
        faults = self.faults
        self._fault_index += 1
        n = self._fault_index
        scripted = faults.scripted
        if n <= len(scripted):
            return scripted[n - 1]
        if not faults.enabled:
            return _NO_FAULT
        u = self._fault_rng.random()
        for kind, rate in (("server_error", faults.server_error_rate), ("rate_limit", faults.rate_limit_rate),
                           ("timeout", faults.timeout_rate), ("malformed", faults.malformed_rate)):
            if u < rate:
                return kind
            u -= rate
        return _NO_FAULT

    def _latency_s(self, reply_latency_s: float) -> float:
        lat = self.latency
        if lat is None:
            return reply_latency_s
        if lat.fixed_ms is not None:
            return lat.fixed_ms / 1000.0
        mu = math.log(lat.mean_ms) - lat.sigma * lat.sigma / 2  # so that the mean is mean_ms
        return self._latency_rng.lognormvariate(mu, lat.sigma) / 1000.0

    async def _chat(self, scope: dict, receive: Any, send: Any) -> None:
        state = self.state
        state.requests += 1
        arrived = time.monotonic()
        state.arrivals.append(arrived)
        state.in_flight += 1
        if state.in_flight > state.max_in_flight:
            state.max_in_flight = state.in_flight
        try:
            status = await self._answer_chat(scope, receive, send, arrived)
        finally:
            state.in_flight -= 1
        state.statuses[status] += 1

    async def _answer_chat(self, scope: dict, receive: Any, send: Any, arrived: float) -> int:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if not self._authorized(scope):
            await self._send_unauthorized(send)
            return 401
        fault = self._next_fault()
        if fault != _NO_FAULT:
            self.state.faults[fault] += 1
        if fault == "server_error":
            status = self._fault_rng.choice(self.faults.server_error_statuses)
            await self._send(send, status, _error_body("The simulated server had an error (injected fault).",
                                                       "server_error"))
            return status
        active = self.drift.on_call(_peek_model(body)) if self.drift else ()
        if fault == _NO_FAULT and active:
            if self._drift_rng.random() < drift_error_rate(active):
                self.state.faults["drift_error"] += 1
                await self._send(send, 503, _error_body("The simulated model is failing (simulated error_rate "
                                                        "drift).", "server_error"))
                return 503
        if fault == "rate_limit":
            retry_after = f"{self.faults.retry_after_seconds:g}".encode()
            await self._send(send, 429, _error_body("Rate limit reached (injected fault).", "rate_limit_error",
                                                    code="rate_limit_exceeded"), [(b"retry-after", retry_after)])
            return 429
        try:
            model, messages, temperature, seed, max_tokens = _parse_chat(body)
        except _BadRequest as exc:
            await self._send(send, 400, _error_body(str(exc), "invalid_request_error", param=exc.param))
            return 400
        if model not in SIM_MODELS:
            await self._send(send, 404, _error_body(f"The model `{model}` does not exist; known: "
                                                    f"{', '.join(SIM_MODELS)}", "invalid_request_error",
                                                    param="model", code="model_not_found"))
            return 404
        try:
            reply = respond(model, messages, temperature=temperature, seed=seed, max_tokens=max_tokens,
                            drifts=active)
        except UnknownSimModelError as exc:
            await self._send(send, 404, _error_body(str(exc), "invalid_request_error", param="model",
                                                    code="model_not_found"))
            return 404
        except Exception:  # a simulator bug: answer like a real server would, in-process and over HTTP alike
            logger.exception("simulated model %s failed to respond", model)
            await self._send(send, 500, _error_body("The simulator failed to respond.", "server_error"))
            return 500
        # The latency counts from the request's arrival: reading the body and computing the reply
        # happen within it, as a real model's processing does, not on top of it.
        delay = self._latency_s(reply.latency_s) - (time.monotonic() - arrived)
        if fault == "timeout":
            delay += self.faults.hang_seconds
        if delay > 0:
            await asyncio.sleep(delay)
        n = next(self._ids)
        if fault == "malformed":
            if self._fault_rng.random() < 0.5:
                out = b'{"id": "chatcmpl-sim-truncated", "choices": [{"message": {"content": "'
            else:
                out = json.dumps({"id": f"chatcmpl-sim{n:08x}", "object": "chat.completion",
                                  "model": model, "system_fingerprint": SYSTEM_FINGERPRINT}).encode()
            await self._send(send, 200, out)
            return 200
        finish = getattr(reply, "finish_reason", None) or (
            "length" if max_tokens is not None and reply.output_tokens >= max_tokens else "stop")
        out = json.dumps({
            "id": f"chatcmpl-sim{n:08x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
                      "total_tokens": reply.input_tokens + reply.output_tokens},
        }).encode()
        await self._send(send, 200, out)
        return 200


def create_app(faults: FaultConfig | None = None, latency: LatencyOverride | None = None, *,
               require_api_key: str | None = None, drift: DriftSchedule | None = None) -> SimServerApp:
    """The simulator as an ASGI app. With `require_api_key`, requests without that bearer key get 401;
    with `drift`, its simulated drifts apply from their start (promptcycle.sim.drift)."""
    return SimServerApp(faults, latency, require_api_key=require_api_key, drift=drift)


def _peek_model(body: bytes) -> str:
    # the model of a request, for the drift schedule, before the full parse (which reports bad bodies)
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return ""
    return model if isinstance(model, str) else ""


def run_server(host: str = "127.0.0.1", port: int = 8787, faults: FaultConfig | None = None,
               latency: LatencyOverride | None = None, *, require_api_key: str | None = None,
               log_level: str = "warning", drift: DriftSchedule | None = None) -> None:
    """Serve the simulator over HTTP until interrupted (blocking). Base URL: http://HOST:PORT/v1."""
    import uvicorn

    uvicorn.run(create_app(faults, latency, require_api_key=require_api_key, drift=drift), host=host, port=port,
                log_level=log_level, access_log=False, lifespan="on", timeout_keep_alive=75,
                server_header=False)
