"""Run the simulator's HTTP server on a free loopback port in a background thread, for tests.

    with ServerThread(faults=FaultConfig(fail_first=2)) as server:
        server.base_url        # "http://127.0.0.1:PORT/v1"
        server.state.requests  # the app's counters (ServerState)

The socket is bound before the thread starts, so the port is known and there is no race for it
(`promptcycle.loopback.LoopbackServer`).
"""

from __future__ import annotations


from promptcycle.loopback import LoopbackServer, free_port
from promptcycle.sim.server import FaultConfig, LatencyOverride, ServerState, SimServerApp, create_app

__all__ = ["ServerThread", "unused_port"]


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    return free_port()


class ServerThread(LoopbackServer):
    """The simulator served by uvicorn in a daemon thread; a context manager yielding itself."""

    def __init__(self, faults: FaultConfig | None = None, latency: LatencyOverride | None = None, *,
                 require_api_key: str | None = None, app=None, scheme: str = "http", **uvicorn_options):
        """`app` serves another ASGI app instead of the simulator; `uvicorn_options` go to uvicorn.Config
        over the defaults (e.g. lifespan="off" for an app without one; ssl_certfile and ssl_keyfile,
        with scheme="https")."""
        self.app: SimServerApp = app or create_app(faults, latency, require_api_key=require_api_key)
        super().__init__(self.app, name="the simulator server", thread_name="sim-server", **uvicorn_options)
        self.base_url = f"{scheme}://127.0.0.1:{self.port}/v1"

    @property
    def state(self) -> ServerState:
        return self.app.state
