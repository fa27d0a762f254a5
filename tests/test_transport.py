"""httpx2's AsyncClient over the aiohttp transport, against real loopback servers.

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


def client(**options) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=AiohttpTransport(max_connections=options.pop("max_connections", 8)),
                              **options)


def test_requests_arrive_as_httpx2_built_them_and_responses_come_back_whole():
    app = Recorder()
    with ServerThread(app=app, lifespan="off") as server:
        async def go():
            async with client(headers={"authorization": "Bearer k-123"}) as http:
                response = await http.post(f"http://127.0.0.1:{server.port}/echo", content=b'{"a": 1}',
                                           headers={"content-type": "application/json"})
                return response

        response = asyncio.run(go())
    assert response.status_code == 200 and response.json() == {"path": "/echo"}
    assert response.headers.get_list("x-multi") == ["a", "b"]
    (seen,) = app.seen
    names = [name for name, _ in seen["headers"]]
    assert dict(seen["headers"])["authorization"] == "Bearer k-123"
    assert dict(seen["headers"])["content-type"] == "application/json"
    assert seen["body"] == b'{"a": 1}'
    for name in ("host", "content-type", "content-length", "user-agent", "accept-encoding"):
        assert names.count(name) == 1, f"{name} sent {names.count(name)} times: {seen['headers']}"


def test_gzip_and_chunked_bodies_are_decoded_by_httpx2():
    with ServerThread(app=Recorder(), lifespan="off") as server:
        async def go():
            async with client() as http:
                return (await http.get(f"http://127.0.0.1:{server.port}/gzip"),
                        await http.get(f"http://127.0.0.1:{server.port}/chunked"))

        gzipped, chunked = asyncio.run(go())
    assert gzipped.json() == {"ok": True, "text": "é" * 50}
    assert chunked.text == "one two three"


def test_connections_are_kept_alive_and_capped():
    app = Recorder()
    with ServerThread(app=app, lifespan="off") as server:
        async def go():
            async with client(max_connections=3) as http:
                for _ in range(5):  # one after another: one connection
                    await http.get(f"http://127.0.0.1:{server.port}/echo")
                await asyncio.gather(*(http.get(f"http://127.0.0.1:{server.port}/busy") for _ in range(20)))

        asyncio.run(go())
    sequential = {s["client_port"] for s in app.seen[:5]}
    assert len(sequential) == 1
    assert app.max_in_flight == 3
    assert len({s["client_port"] for s in app.seen}) <= 3


def test_a_slow_answer_is_an_httpx2_read_timeout():
    with ServerThread(app=Recorder(), lifespan="off") as server:
        async def go():
            async with client(timeout=httpx2.Timeout(0.3)) as http:
                await http.get(f"http://127.0.0.1:{server.port}/slow")

        with pytest.raises(httpx2.ReadTimeout):
            asyncio.run(go())


def test_a_refused_connection_is_an_httpx2_connect_error():
    async def go():
        async with client() as http:
            await http.get(f"http://127.0.0.1:{unused_port()}/echo")

    with pytest.raises(httpx2.ConnectError):
        asyncio.run(go())


def test_https_is_verified_against_the_trusted_authorities(tmp_path, monkeypatch):
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
            async with client() as http:
                return await http.get(f"https://127.0.0.1:{server.port}/echo")

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
        response = asyncio.run(go())
    assert response.json() == {"path": "/echo"}
    assert len(app.seen) == 1
