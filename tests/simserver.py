"""Run the simulator's HTTP server on a free loopback port in a background thread, for tests.

    with ServerThread(faults=FaultConfig(fail_first=2)) as server:
        server.base_url        # "http://127.0.0.1:PORT/v1"
        server.state.requests  # the app's counters (ServerState)

The socket is bound before the thread starts, so the port is known and there is no race for it.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from promptcycle.sim.server import FaultConfig, LatencyOverride, ServerState, SimServerApp, create_app

__all__ = ["ServerThread", "unused_port"]


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """The simulator served by uvicorn in a daemon thread; a context manager yielding itself."""

    def __init__(self, faults: FaultConfig | None = None, latency: LatencyOverride | None = None, *,
                 require_api_key: str | None = None, app=None, scheme: str = "http", **uvicorn_options):
        """`app` serves another ASGI app instead of the simulator; `uvicorn_options` go to uvicorn.Config
        over the defaults (e.g. lifespan="off" for an app without one; ssl_certfile and ssl_keyfile,
        with scheme="https")."""
        self.app: SimServerApp = app or create_app(faults, latency, require_api_key=require_api_key)
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
        # without it every keep-alive response stalls ~40 ms on delayed ACKs.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"{scheme}://127.0.0.1:{self.port}/v1"
        options = dict(log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=75,
                       timeout_graceful_shutdown=1, server_header=False) | uvicorn_options
        config = uvicorn.Config(self.app, **options)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name=f"sim-server-{self.port}", daemon=True)

    @property
    def state(self) -> ServerState:
        return self.app.state

    def start(self, timeout: float = 10.0) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the simulator server did not start on port {self.port}")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
