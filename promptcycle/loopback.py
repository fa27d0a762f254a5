"""An ASGI app served by uvicorn on 127.0.0.1 in a daemon thread — the fake LangSmith's and the tests' simulator.

    with LoopbackServer(app, name="the fake LangSmith", thread_name="fake-langsmith") as server:
        server.port    # bound before the thread starts: known at once, and no race for it

The socket is TCP explicitly (IPPROTO_TCP): asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
without it every keep-alive answer stalls ~40 ms on delayed ACKs.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from typing import Any, Self

__all__ = ["LoopbackServer", "free_port"]


def free_port(within: range | None = None) -> int:
    """A loopback port nothing listens on (bound, then released): any the system gives, or one drawn at random
    `within` a range (e.g. 42000-42999, for servers started by a test or a bench beside others). Raises
    RuntimeError when the range has none free."""
    for _ in range(1 if within is None else 100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", 0 if within is None else random.choice(within)))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free loopback port in {within.start}-{within.stop - 1}")


class LoopbackServer:
    """`app` served by uvicorn in a daemon thread on 127.0.0.1:`port` (0: a free one); a context manager yielding
    itself. `uvicorn_options` go to uvicorn.Config over the defaults (quiet, no access log, lifespan on)."""

    def __init__(self, app: Any, *, name: str, thread_name: str, port: int = 0, **uvicorn_options: Any):
        import uvicorn

        self.name = name
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port: int = self._sock.getsockname()[1]
        options = dict(log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=75,
                       timeout_graceful_shutdown=1, server_header=False) | uvicorn_options
        self._server = uvicorn.Server(uvicorn.Config(app, **options))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name=f"{thread_name}-{self.port}", daemon=True)

    def start(self, timeout: float = 10.0) -> Self:
        """Start serving; RuntimeError when uvicorn has not started within `timeout` seconds."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start on port {self.port}")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
