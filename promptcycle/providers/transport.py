"""Requests over aiohttp's connection pool: an httpx2 transport, and a leaner direct path.

`AiohttpTransport` is an `httpx2` transport: `httpx2.AsyncClient` stays the interface (URLs,
headers, timeouts, response decoding, the typed `httpx2` errors the provider maps) while the
bytes on the wire go through aiohttp, whose HTTP/1.1 parser is compiled. Its `send` skips httpx2's
Request and Response objects altogether; the provider's chat calls use it. `bench/http_client_cpu.py`
measures why, with 64 connections to the sim-server: httpx2's own pool costs about 1.0 ms of CPU
per request, httpx2 over this transport about 0.5 ms, `send` about 0.3 ms — what decides whether
one event loop keeps 64 requests in flight.

Behaviour kept from httpx2's default transport: the whole body is read before the response is
returned (responses here are small JSON documents, never streamed); under httpx2 content decoding
is left to httpx2 (aiohttp's own decompression is off), through `send` aiohttp decodes gzip and
deflate; the pool holds `max_connections` keep-alive connections; HTTPS is verified with httpx2's
own default context (the system's trust store, or SSL_CERT_FILE / SSL_CERT_DIR); aiohttp's errors
surface as the matching `httpx2` exceptions, so callers see one error vocabulary.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Any

import aiohttp
import httpx2
from yarl import URL

from promptcycle.errors import ConfigError

__all__ = ["AiohttpTransport", "Answer", "ResponseTooLarge"]

_TIMEOUT_KEYS = ("connect", "read", "write", "pool")


class Answer:
    """A response read whole: what the provider needs of it, named as on `httpx2.Response`."""

    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: Any, content: bytes):
        self.status_code = status_code
        self.headers = headers  # case-insensitive, multi-valued (aiohttp's CIMultiDictProxy)
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class ResponseTooLarge(httpx2.TransportError):
    """The response body was larger than the transport's `max_body_bytes`: reading stopped there."""

    def __init__(self, message: str, *, limit: int, request: httpx2.Request | None = None):
        super().__init__(message, request=request)
        self.limit = limit


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """Send httpx2 requests through one `aiohttp.ClientSession` (created on first use, on the running loop).

    Args:
        max_connections: connections kept open at most (aiohttp queues further requests).
        keepalive_expiry: seconds an idle connection is kept before it is closed.
        max_body_bytes: the largest response body read; a larger one (by its Content-Length, or
            once that many bytes have arrived) raises `ResponseTooLarge` and closes the connection,
            so a runaway answer never sits in memory whole. None reads any size.
    """

    def __init__(self, *, max_connections: int, keepalive_expiry: float = 15.0, max_body_bytes: int | None = None):
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, found {max_connections!r}")
        self.max_connections = max_connections
        self.max_body_bytes = max_body_bytes
        self.keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None
        self._timeouts: dict[tuple, aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0,
                                         keepalive_timeout=self.keepalive_expiry)
        # No cookie jar: an API client must not carry state between requests.
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                              cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout())
        return self._session

    def _ssl_context(self) -> ssl.SSLContext:
        """httpx2's own default, built on the first HTTPS request: the system's trust store, or
        SSL_CERT_FILE / SSL_CERT_DIR when set."""
        if self._ssl is None:
            try:
                self._ssl = httpx2.create_ssl_context()
            except (OSError, ssl.SSLError) as exc:
                found = ", ".join(f"{k}={os.environ[k]}" for k in ("SSL_CERT_FILE", "SSL_CERT_DIR")
                                  if os.environ.get(k)) or "the system's trust store"
                expected = "a readable PEM bundle (SSL_CERT_FILE) or certificate directory (SSL_CERT_DIR)"
                raise ConfigError(f"cannot load the certificate authorities that verify HTTPS from {found}: "
                                  f"{exc}; expected {expected}, or neither set to use the system's trust store",
                                  path="environment", found=found, expected=expected) from exc
        return self._ssl

    def _timeout_of(self, key: tuple) -> aiohttp.ClientTimeout:
        """httpx2's per-phase timeouts (connect, read, write, pool) in aiohttp's terms (cached: most
        requests share one)."""
        timeout = self._timeouts.get(key)
        if timeout is None:
            connect, read, _write, pool = key
            # aiohttp's `connect` covers waiting for a pooled connection and opening a new one.
            waits = [t for t in (connect, pool) if t is not None]
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, connect=sum(waits) if waits else None, sock_connect=connect, sock_read=read)
        return timeout

    def client_timeout(self, seconds: float | None) -> aiohttp.ClientTimeout:
        """`httpx2.Timeout(seconds)` in aiohttp's terms, for `send`."""
        return self._timeout_of((seconds, seconds, seconds, seconds))

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        spec = request.extensions.get("timeout") or {}
        # httpx2 has already percent-encoded the URL and decodes the content itself.
        answer = await self.send(request.method, URL(str(request.url), encoded=True),
                                 headers=request.headers.multi_items(), body=body or None,
                                 timeout=self._timeout_of(tuple(spec.get(k) for k in _TIMEOUT_KEYS)),
                                 decompress=False, request=request)
        return httpx2.Response(answer.status_code, headers=list(answer.headers.items()), content=answer.content,
                               request=request, extensions={"http_version": b"HTTP/1.1"})

    async def send(self, method: str, url: URL, *, headers: Any, body: bytes | None,
                   timeout: aiohttp.ClientTimeout, decompress: bool = True,
                   request: httpx2.Request | None = None) -> Answer:
        """One request straight through the pool, without httpx2's Request and Response objects.

        The provider's chat calls take this path (about half the CPU per request of going through
        `httpx2.AsyncClient`, which decides how many calls one event loop keeps in flight); the errors
        are the same `httpx2` exceptions. With `decompress`, a gzip or deflate body is decoded
        here (the `max_body_bytes` cap applies to the decoded bytes).
        """
        session = self._session or self._open()
        options = {"ssl": self._ssl_context()} if url.scheme == "https" else {}
        try:
            async with session.request(method, url, headers=headers, data=body, timeout=timeout,
                                       allow_redirects=False, skip_auto_headers=("Content-Type",),
                                       auto_decompress=decompress, **options) as response:
                limit = self.max_body_bytes
                content = await response.read() if limit is None else await _read_capped(response, limit,
                                                                                           request)
                return Answer(response.status, response.headers, content)
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx2.ConnectTimeout(_describe(exc), request=request) from exc
        except aiohttp.SocketTimeoutError as exc:
            raise httpx2.ReadTimeout(_describe(exc), request=request) from exc
        except asyncio.TimeoutError as exc:
            raise httpx2.TimeoutException(_describe(exc), request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx2.ConnectError(_describe(exc), request=request) from exc
        except aiohttp.InvalidURL as exc:
            raise httpx2.UnsupportedProtocol(_describe(exc), request=request) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
            raise httpx2.RemoteProtocolError(_describe(exc), request=request) from exc
        except (aiohttp.ClientOSError, aiohttp.ClientError) as exc:
            raise httpx2.ReadError(_describe(exc), request=request) from exc

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def _read_capped(response: aiohttp.ClientResponse, limit: int, request: httpx2.Request | None) -> bytes:
    """The body, read chunk by chunk up to `limit` bytes; past it the connection is closed, not drained."""
    length = response.content_length
    if length is not None and length > limit:
        response.close()
        raise ResponseTooLarge(f"the response declares {length} bytes, more than the {limit} allowed",
                               limit=limit, request=request)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            response.close()
            raise ResponseTooLarge(f"the response body passed the {limit} bytes allowed; reading stopped",
                                   limit=limit, request=request)
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
