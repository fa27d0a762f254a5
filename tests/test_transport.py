"""The aiohttp transport, under httpx2's AsyncClient and through its direct `send`, against real loopback servers.

A small ASGI app served by uvicorn records what arrives (headers, the client's port) and answers
gzip bodies, slow bodies and chunked bodies; the simulator is not needed to see the wire.
"""

from __future__ import annotations

import asyncio
import gzip
import json

import httpx2
import pytest
import trustme
from yarl import URL

from promptcycle.errors import ConfigError
from promptcycle.providers.transport import AiohttpTransport
from simserver import ServerThread, unused_port


class Recorder:
    """ASGI app: /echo answers what it received; /gzip a gzip-encoded JSON body; /slow after a delay;
    /chunked a body sent in pieces without a content-length."""

    def __init__(self):
        self.seen: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, scope, receive, send):  # HTTP only: served with lifespan="off"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k.decode().lower(), v.decode()) for k, v in scope["headers"]]
        self.seen.append({"path": scope["path"], "client_port": scope["client"][1], "headers": headers,
                          "body": body})
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            path = scope["path"]
            if path == "/slow":
                await asyncio.sleep(2.0)
            if path == "/gzip":
                payload = gzip.compress(json.dumps({"ok": True, "text": "é" * 50}).encode())
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]})
                await send({"type": "http.response.body", "body": payload})
            elif path == "/chunked":
                await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
                for part in (b"one ", b"two ", b"three"):
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                if path == "/busy":
                    await asyncio.sleep(0.05)
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json"), (b"x-multi", b"a"), (b"x-multi", b"b")]})
                await send({"type": "http.response.body", "body": json.dumps({"path": path}).encode()})
        finally:
            self.in_flight -= 1


class Http:
    """The two ways a request goes through `AiohttpTransport`: "httpx2" (an `httpx2.AsyncClient` over
    it) and "send" (its direct path, which the provider's chat calls take). Both answer
    (status, headers, content)."""

    def __init__(self, way: str, *, max_connections: int = 8, timeout: float = 5.0,
                 headers: dict[str, str] | None = None):
        self.way = way
        self.transport = AiohttpTransport(max_connections=max_connections)
        self.headers = headers or {}
        self.timeout = timeout
        self.client = httpx2.AsyncClient(transport=self.transport, headers=self.headers,
                                         timeout=httpx2.Timeout(timeout)) if way == "httpx2" else None

    async def __aenter__(self) -> "Http":
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self.client is not None:
            await self.client.aclose()
        await self.transport.aclose()

    async def request(self, method: str, url: str, content: bytes | None = None,
                      headers: dict[str, str] | None = None):
        if self.client is not None:
            response = await self.client.request(method, url, content=content, headers=headers)
            return response.status_code, response.headers, response.content
        answer = await self.transport.send(method, URL(url), headers={**self.headers, **(headers or {})},
                                           body=content, timeout=self.transport.client_timeout(self.timeout))
        return answer.status_code, answer.headers, answer.content


WAYS = pytest.mark.parametrize("way", ["httpx2", "send"])


@WAYS
def test_requests_arrive_as_built_and_responses_come_back_whole(way):
    app = Recorder()
    with ServerThread(app=app, lifespan="off") as server:
        async def go():
            async with Http(way, headers={"authorization": "Bearer k-123"}) as http:
                return await http.request("POST", f"http://127.0.0.1:{server.port}/echo", content=b'{"a": 1}',
                                          headers={"content-type": "application/json"})

        status, headers, content = asyncio.run(go())
    assert status == 200 and json.loads(content) == {"path": "/echo"}
    assert list(headers.getall("x-multi") if way == "send" else headers.get_list("x-multi")) == ["a", "b"]
    (seen,) = app.seen
    names = [name for name, _ in seen["headers"]]
    assert dict(seen["headers"])["authorization"] == "Bearer k-123"
    assert dict(seen["headers"])["content-type"] == "application/json"
    assert seen["body"] == b'{"a": 1}'
    for name in ("host", "content-type", "content-length", "user-agent", "accept-encoding"):
        assert names.count(name) == 1, f"{name} sent {names.count(name)} times: {seen['headers']}"


@WAYS
def test_gzip_and_chunked_bodies_are_decoded(way):
    with ServerThread(app=Recorder(), lifespan="off") as server:
        async def go():
            async with Http(way) as http:
                return (await http.request("GET", f"http://127.0.0.1:{server.port}/gzip"),
                        await http.request("GET", f"http://127.0.0.1:{server.port}/chunked"))

        gzipped, chunked = asyncio.run(go())
    assert json.loads(gzipped[2]) == {"ok": True, "text": "é" * 50}
    assert chunked[2] == b"one two three"


@WAYS
def test_connections_are_kept_alive_and_capped(way):
    app = Recorder()
    with ServerThread(app=app, lifespan="off") as server:
        async def go():
            async with Http(way, max_connections=3) as http:
                for _ in range(5):  # one after another: one connection
                    await http.request("GET", f"http://127.0.0.1:{server.port}/echo")
                await asyncio.gather(*(http.request("GET", f"http://127.0.0.1:{server.port}/busy")
                                       for _ in range(20)))

        asyncio.run(go())
    sequential = {s["client_port"] for s in app.seen[:5]}
    assert len(sequential) == 1
    assert app.max_in_flight == 3
    assert len({s["client_port"] for s in app.seen}) <= 3


@WAYS
def test_a_slow_answer_is_an_httpx2_read_timeout(way):
    with ServerThread(app=Recorder(), lifespan="off") as server:
        async def go():
            async with Http(way, timeout=0.3) as http:
                await http.request("GET", f"http://127.0.0.1:{server.port}/slow")

        with pytest.raises(httpx2.ReadTimeout):
            asyncio.run(go())


@WAYS
def test_a_refused_connection_is_an_httpx2_connect_error(way):
    async def go():
        async with Http(way) as http:
            await http.request("GET", f"http://127.0.0.1:{unused_port()}/echo")

    with pytest.raises(httpx2.ConnectError):
        asyncio.run(go())


@WAYS
def test_https_is_verified_against_the_trusted_authorities(way, tmp_path, monkeypatch):
    """A certificate no trusted authority signed is refused before any request is sent; once its
    authority is trusted (SSL_CERT_FILE, as httpx2 reads it), the same server is reached."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    app = Recorder()
    with ServerThread(app=app, lifespan="off", scheme="https", ssl_certfile=str(certfile),
                      ssl_keyfile=str(keyfile)) as server:
        async def go():
            async with Http(way) as http:
                return await http.request("GET", f"https://127.0.0.1:{server.port}/echo")

        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other))
        monkeypatch.setenv("SSL_CERT_FILE", str(other))
        with pytest.raises(httpx2.ConnectError, match="(?i)certificate"):
            asyncio.run(go())
        assert app.seen == []

        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))
        with pytest.raises(ConfigError, match="SSL_CERT_FILE") as info:
            asyncio.run(go())
        assert "no-such-bundle.pem" in str(info.value)

        monkeypatch.setenv("SSL_CERT_FILE", str(cafile))
        status, _, content = asyncio.run(go())
    assert status == 200 and json.loads(content) == {"path": "/echo"}
    assert len(app.seen) == 1
