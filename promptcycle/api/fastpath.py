"""The API's front door: the token check for every /v1 route, and the two hot routes answered directly.

FastAPI's parameter machinery (dependencies, query and body fields, re-validation) costs several
hundred microseconds a request: ten times the prompt lookup itself, and more than the whole budget
of 2,000 lookups a second on one core. So this ASGI middleware answers a well-formed prompt lookup
and a valid outcomes batch itself, with the very functions the FastAPI routes call (`ApiCore`), and
hands anything else to FastAPI: a missing or repeated parameter, a body that fails validation (FastAPI
then answers the 422 naming the field), every other route. The FastAPI routes stay the contract:
the OpenAPI document, the errors, and what a request the fast path declines gets.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from pydantic import ValidationError

from promptcycle.api.auth import BearerToken
from promptcycle.api.core import ApiCore, ApiProblem, dumps
from promptcycle.api.outcomes import OutcomeBatch

__all__ = ["FastPath", "MAX_BODY_BYTES"]

MAX_BODY_BYTES = 16 * 1024 * 1024
_JSON_HEADERS = [(b"content-type", b"application/json")]


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def _answer(send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


async def _problem(send, exc: ApiProblem) -> None:
    await _answer(send, exc.status, dumps({"error": exc.error, "message": exc.message}), exc.headers)


class FastPath:
    """ASGI middleware over the FastAPI app `app` (see the module docstring)."""

    def __init__(self, app: Any, core: ApiCore, token: BearerToken | None):
        self.app = app
        self.core = core
        self.token = token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if self.token is not None and path != "/v1/health":
            authorization = _header(scope, b"authorization")
            if not self.token.accepts(authorization.decode("latin-1") if authorization is not None else None):
                await _problem(send, ApiProblem(
                    401, "unauthorized", f"{'missing' if authorization is None else 'wrong'} bearer token: send "
                    "'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}))
                return
        parts = path.split("/")  # "", "v1", "pipelines", name, "prompt" | "outcomes"
        if len(parts) == 5 and parts[2] == "pipelines" and parts[3]:
            if parts[4] == "prompt" and scope["method"] == "GET":
                if await self._prompt(parts[3], scope, send):
                    return
            elif parts[4] == "outcomes" and scope["method"] == "POST":
                receive = await self._outcomes(parts[3], scope, receive, send)
                if receive is None:
                    return
        await self.app(scope, receive, send)

    async def _prompt(self, name: str, scope, send) -> bool:
        """Answer a well-formed lookup and return True; return False to leave the request to FastAPI."""
        params = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        names = [k for k, _ in params]
        if len(set(names)) != len(names) or not set(names) <= {"key", "model"}:
            return False
        given = dict(params)
        key, model = given.get("key"), given.get("model")
        if key is None or not 1 <= len(key) <= 512 or (model is not None and not 1 <= len(model) <= 256):
            return False
        try:
            payload = self.core.prompt(name, key, model)
        except ApiProblem as exc:
            await _problem(send, exc)
            return True
        await _answer(send, 200, dumps(payload))
        return True

    async def _outcomes(self, name: str, scope, receive, send):
        """Record a valid batch and return None; else return a `receive` that replays the body to FastAPI."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await _problem(send, ApiProblem(413, "too_large", f"the body exceeds {MAX_BODY_BYTES:,} bytes; "
                                                "send the outcomes in several batches"))
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            batch = OutcomeBatch.model_validate_json(body)
        except ValidationError:
            return _replay(body, receive)
        try:
            recorded = await self.core.outcomes(name, batch)
        except ApiProblem as exc:
            await _problem(send, exc)
            return None
        await _answer(send, 200, orjson.dumps(recorded))
        return None


def _replay(body: bytes, original):
    """A `receive` that hands `body` over once, then defers to the connection's own (for its disconnect)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await original()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
