"""A local fake of the LangSmith REST API — a TEST DOUBLE, not LangSmith.

No machine here reaches LangSmith, so promptcycle ships this small ASGI app (Starlette) for its tests,
demos and benches. It answers the requests that the `langsmith` 0.15 SDK (`langsmith.Client`) and
promptcycle's own hub client (`promptcycle.deploy.hub`) make, keeps what it receives in memory, and
fails on demand. It is not a faithful LangSmith: no auth model beyond one key, no orgs, no
versions of datasets, a subset of the run filter language (`promptcycle.langsmith.fakefilter`).

    fake = FakeLangSmith(api_key="lsv2_test_key")
    with FakeLangSmithServer(fake) as server:             # uvicorn on a free 127.0.0.1 port
        client = langsmith.Client(api_url=server.url, api_key="lsv2_test_key")
        ...
        fake.examples_of("my-dataset"), fake.runs_in("my-experiment"), fake.calls()
        fake.fail(503, path="/runs", times=2)           # the next two /runs* requests answer 503
        fake.fail(429, retry_after=2)                   # every request answers 429 until cleared
        fake.slow(2.0, path="/feedback")                # answers, after two seconds
        fake.clear_faults()

The routes themselves are in `promptcycle.langsmith.fakeroutes`. The same controls over HTTP, for a fake in another process (never behind the key):
    POST   /_fake/faults   {"status": 503, "path": "/runs", "times": 2, "retry_after": 1, "delay_s": 0}
    DELETE /_fake/faults
    GET    /_fake/state    everything stored (datasets, examples, sessions, runs, feedback, repos)
    POST   /_fake/reset    forget everything

Endpoints (paths relative to the API URL; JSON unless noted):
    GET  /info                          version, full batch_ingest_config (the SDK's tracing thread
                                        needs all of it), instance_flags
    GET  /settings                      the tenant (id, display_name, tenant_handle)
    datasets   POST /datasets · GET /datasets (?name, name_contains, id, metadata, offset, limit) ·
               GET|PATCH|DELETE /datasets/{id} · GET|PUT /datasets/{id}/splits
    examples   POST /examples · POST|PATCH /examples/bulk · GET /examples (?dataset, id, splits,
               metadata, offset, limit) · GET|PATCH|DELETE /examples/{id} · DELETE /examples
               A split is kept, as LangSmith does, in metadata["dataset_split"] (a list; "base" when none).
    sessions   POST /sessions (?upsert) · GET /sessions (?name, reference_dataset, offset, limit) ·
               GET|PATCH|DELETE /sessions/{id}; projects and experiments are sessions
    runs       POST /runs · PATCH /runs/{id} · POST /runs/batch · POST /runs/multipart (parts
               post.ID, post.ID.inputs …, patch.ID, feedback.ID, attachment.ID.NAME; plain or zstd) ·
               GET /runs/{id} · POST /runs/query (v1: cursor pages; session, id, trace, parent_run,
               run_type, is_root, reference_example, start_time, error, filter, order). The v2 API
               (`client.runs`) is not implemented; the SDK refuses it on this fake's version anyway.
    feedback   POST /feedback · GET /feedback (?run, key, session, source, offset, limit) ·
               GET|PATCH|DELETE /feedback/{id}; also through /runs/multipart
    prompt hub GET /repos/ · POST /repos[/] · GET|PATCH|DELETE /repos/{owner}/{name} ·
               GET /commits/{owner}/{name}[/] · POST /commits/{owner}/{name} ·
               GET /commits/{owner}/{name}/{hash|tag|latest} · GET|POST /repos/{owner}/{name}/tags
               A commit whose parent is not the latest, or whose manifest equals the latest, is a
               409 ("Nothing to commit", as the hub answers); a tag POST creates or moves the tag.

Runs posted twice keep the first copy; the repeat is counted in `duplicate_run_posts` so a test can
assert that every result was sent once. Token counts and costs come from the run's
`outputs.usage_metadata` (input_tokens, output_tokens, total_tokens, input_cost, output_cost,
total_cost), as LangSmith reads them.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from promptcycle.loopback import LoopbackServer

__all__ = ["Fault", "RecordedRequest", "FakeLangSmith", "FakeLangSmithServer", "FAKE_TENANT_ID", "FAKE_VERSION"]

FAKE_TENANT_ID = "00000000-0000-4000-8000-00000000fa4e"
FAKE_VERSION = "0.12.0"  # >= 0.8.10: the SDK then sends feedback with a trace id through /runs/multipart
_UNGUARDED = ("/info", "/_fake/")


@dataclass
class Fault:
    """One injected failure: requests matching `method` and the `path` prefix get `status` (None: only
    the delay) after `delay_s`; a 429 or 503 carries Retry-After when `retry_after` is set. `times`
    limits how many requests it hits (None: until cleared)."""

    status: int | None = 503
    path: str = ""
    method: str | None = None
    times: int | None = None
    retry_after: int | None = None  # whole seconds, as HTTP says (urllib3 refuses "1.5")
    delay_s: float = 0.0
    hits: int = 0

    def __post_init__(self) -> None:
        if self.retry_after is not None and (int(self.retry_after) != self.retry_after or self.retry_after < 0):
            raise ValueError(f"retry_after is whole seconds >= 0, found {self.retry_after!r}")

    def applies(self, method: str, path: str) -> bool:
        return (path.startswith(self.path) and (self.method is None or self.method.upper() == method)
                and (self.times is None or self.hits < self.times))


@dataclass
class RecordedRequest:
    """A request as the fake received it (headers lower-cased), and the status it answered."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    status: int = 0

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class FakeLangSmith:
    """The fake's state and its ASGI app (`.app`); see the module docstring."""

    def __init__(self, *, api_key: str | None = None, tenant_handle: str = "promptcycle-tests",
                 faults: Iterable[Fault] = (), version: str = FAKE_VERSION,
                 instance_flags: dict[str, Any] | None = None):
        """`api_key`: when set, every request but /info and /_fake/* must carry it in `x-api-key`
        (else 401). `instance_flags` go to /info as they are; by default only zstd_compression_enabled
        (the SDK then sends zstd-compressed multipart ingestion, as to LangSmith today, and uses the
        JSON example endpoints: the multipart example endpoints are not implemented)."""
        self.api_key = api_key
        self.url: str | None = None  # set by FakeLangSmithServer while it serves this fake
        self.tenant_handle = tenant_handle
        self.version = version
        self.instance_flags = {"zstd_compression_enabled": True} if instance_flags is None else dict(instance_flags)
        self._lock = threading.RLock()
        self._closing = threading.Event()  # set while its server shuts down: slow answers stop waiting
        self._faults: list[Fault] = list(faults)
        self.reset()
        self.app = self._build_app()

    def __repr__(self) -> str:
        return f"FakeLangSmith(datasets={len(self.datasets)}, runs={len(self.runs)})"

    # -- control ---------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything stored (but the "default" project) and every recorded request; faults stay."""
        with self._lock:
            self.datasets: dict[str, dict[str, Any]] = {}
            self.examples: dict[str, dict[str, Any]] = {}
            self.sessions: dict[str, dict[str, Any]] = {}
            self.runs: dict[str, dict[str, Any]] = {}
            self.feedback: dict[str, dict[str, Any]] = {}
            self.repos: dict[str, dict[str, Any]] = {}
            self.requests: list[RecordedRequest] = []
            self.duplicate_run_posts: list[str] = []
            self._pending_patches: dict[str, list[dict[str, Any]]] = {}
            # Every LangSmith workspace has a "default" project; the SDK reads the tenant id from the
            # first project listed, and asks again for every object it builds while there is none.
            default = "00000000-0000-4000-8000-0000000000de"
            self.sessions[default] = {"id": default, "name": "default", "description": None,
                                      "start_time": "2026-01-01T00:00:00+00:00", "end_time": None, "extra": None,
                                      "tenant_id": FAKE_TENANT_ID, "reference_dataset_id": None}

    def fail(self, status: int | None = 503, *, path: str = "", method: str | None = None,
             times: int | None = None, retry_after: int | None = None, delay_s: float = 0.0) -> Fault:
        """Inject a failure (see `Fault`); returns it, so a test can read `.hits`."""
        fault = Fault(status=status, path=path, method=method, times=times, retry_after=retry_after,
                      delay_s=delay_s)
        with self._lock:
            self._faults.append(fault)
        return fault

    def slow(self, delay_s: float, *, path: str = "", method: str | None = None,
             times: int | None = None) -> Fault:
        """Answer normally, after `delay_s` seconds."""
        return self.fail(None, path=path, method=method, times=times, delay_s=delay_s)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # -- views for tests -------------------------------------------------------------------------------------

    def calls(self) -> list[str]:
        """'METHOD /path' of every request received, in order."""
        with self._lock:
            return [f"{r.method} {r.path}" for r in self.requests]

    def dataset_by_name(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return next((d for d in self.datasets.values() if d["name"] == name), None)

    def examples_of(self, dataset_name: str) -> list[dict[str, Any]]:
        """The dataset's examples, oldest first (empty when there is no such dataset)."""
        with self._lock:
            dataset = self.dataset_by_name(dataset_name)
            if dataset is None:
                return []
            return [e for e in self.examples.values() if e["dataset_id"] == dataset["id"]]

    def session_by_name(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return next((s for s in self.sessions.values() if s["name"] == name), None)

    def runs_in(self, project_name: str) -> list[dict[str, Any]]:
        """The project's (or experiment's) runs, in the order they arrived."""
        with self._lock:
            session = self.session_by_name(project_name)
            return [r for r in self.runs.values() if session and r["session_id"] == session["id"]]

    def feedback_for(self, run_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [f for f in self.feedback.values() if f.get("run_id") == str(run_id)]

    def state(self) -> dict[str, Any]:
        """Everything stored, as JSON-able data (what /_fake/state answers)."""
        with self._lock:
            return json.loads(json.dumps({
                "datasets": list(self.datasets.values()), "examples": list(self.examples.values()),
                "sessions": list(self.sessions.values()), "runs": list(self.runs.values()),
                "feedback": list(self.feedback.values()), "repos": list(self.repos.values()),
                "duplicate_run_posts": self.duplicate_run_posts,
                "faults": [asdict(f) for f in self._faults]}, default=str))

    # -- the ASGI app ----------------------------------------------------------------------------------------

    def _build_app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.routing import Route

        from promptcycle.langsmith.fakeroutes import Handlers

        h = Handlers(self)
        routes = [
            Route("/info", h.info, methods=["GET"]),
            Route("/settings", h.settings, methods=["GET"]),
            Route("/_fake/faults", h.control_faults, methods=["POST", "DELETE"]),
            Route("/_fake/state", h.control_state, methods=["GET"]),
            Route("/_fake/reset", h.control_reset, methods=["POST"]),
            Route("/datasets", h.datasets, methods=["GET", "POST"]),
            Route("/datasets/{id}", h.dataset, methods=["GET", "PATCH", "DELETE"]),
            Route("/datasets/{id}/splits", h.splits, methods=["GET", "PUT"]),
            Route("/examples", h.examples_root, methods=["GET", "POST", "DELETE"]),
            Route("/examples/bulk", h.examples_bulk, methods=["POST", "PATCH"]),
            Route("/examples/{id}", h.example, methods=["GET", "PATCH", "DELETE"]),
            Route("/sessions", h.sessions_root, methods=["GET", "POST"]),
            Route("/sessions/{id}", h.session, methods=["GET", "PATCH", "DELETE"]),
            Route("/runs", h.runs_create, methods=["POST"]),
            Route("/runs/batch", h.runs_batch, methods=["POST"]),
            Route("/runs/multipart", h.runs_multipart, methods=["POST"]),
            Route("/runs/query", h.runs_query, methods=["POST"]),
            Route("/runs/{id}", h.run, methods=["GET", "PATCH"]),
            Route("/feedback", h.feedback_root, methods=["GET", "POST"]),
            Route("/feedback/{id}", h.feedback_one, methods=["GET", "PATCH", "DELETE"]),
            Route("/repos", h.repos_root, methods=["GET", "POST"]),
            Route("/repos/", h.repos_root, methods=["GET", "POST"]),
            Route("/repos/{owner}/{name}", h.repo, methods=["GET", "PATCH", "DELETE"]),
            Route("/repos/{owner}/{name}/tags", h.repo_tags, methods=["GET", "POST"]),
            Route("/commits/{owner}/{name}", h.commits, methods=["GET", "POST"]),
            Route("/commits/{owner}/{name}/", h.commits, methods=["GET", "POST"]),
            Route("/commits/{owner}/{name}/{ref}", h.commit, methods=["GET"]),
        ]
        inner = Starlette(routes=routes)
        inner.router.redirect_slashes = False
        return _Front(self, inner)

    # -- used by the front door ------------------------------------------------------------------------------

    def _fault_for(self, method: str, path: str) -> Fault | None:
        if path.startswith("/_fake/"):
            return None
        with self._lock:
            for fault in self._faults:
                if fault.applies(method, path):
                    fault.hits += 1
                    return fault
        return None


class _Front:
    """The front door: records each request, injects faults, checks the key, then routes."""

    def __init__(self, fake: FakeLangSmith, inner: Any):
        self.fake, self.inner = fake, inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        from starlette.requests import Request
        from starlette.responses import JSONResponse

        request = Request(scope, receive)
        body = await request.body()
        record = RecordedRequest(method=request.method, path=request.url.path, query=request.url.query,
                                 headers={k.lower(): v for k, v in request.headers.items()}, body=body)
        with self.fake._lock:
            self.fake.requests.append(record)

        async def send_recording(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
            await send(message)

        fault = self.fake._fault_for(request.method, request.url.path)
        if fault is not None:
            if fault.delay_s:
                # In short naps, so a server shutting down answers at once instead of being cancelled mid-sleep.
                loop = asyncio.get_running_loop()
                end = loop.time() + fault.delay_s
                while not self.fake._closing.is_set() and loop.time() < end:
                    await asyncio.sleep(min(0.05, end - loop.time()))
            if fault.status is not None:
                headers = {"retry-after": str(int(fault.retry_after))} if fault.retry_after is not None else {}
                response = JSONResponse({"detail": f"injected by the fake LangSmith (HTTP {fault.status})"},
                                        status_code=fault.status, headers=headers)
                return await response(scope, receive, send_recording)
        key = self.fake.api_key
        if key and not request.url.path.startswith(_UNGUARDED) and request.headers.get("x-api-key") != key:
            response = JSONResponse({"detail": "Invalid token"}, status_code=401)
            return await response(scope, receive, send_recording)

        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.inner(scope, replay, send_recording)


class FakeLangSmithServer(LoopbackServer):
    """Serve a `FakeLangSmith` with uvicorn on a free 127.0.0.1 port in a daemon thread.

        with FakeLangSmithServer(fake) as server:
            server.url     # "http://127.0.0.1:PORT" — the API URL to give the SDK or LANGSMITH_ENDPOINT
    """

    def __init__(self, fake: FakeLangSmith, *, port: int = 0):
        super().__init__(fake.app, name="the fake LangSmith", thread_name="fake-langsmith", port=port,
                         lifespan="off")
        self.fake = fake
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> FakeLangSmithServer:
        self.fake._closing.clear()
        super().start(timeout)
        self.fake.url = self.url
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.fake._closing.set()
        super().stop(timeout)
        self.fake.url = None
