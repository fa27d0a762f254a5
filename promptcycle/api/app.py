"""The ASGI application: `create_app(ApiSettings(...))`, served by `promptcycle api` (uvicorn).

    GET  /v1/pipelines/{name}/prompt?key=…[&model=…]   the sticky resolve_prompt: version and text
    POST /v1/pipelines/{name}/outcomes                  a batch of outcomes, idempotent by request_id
    GET  /v1/status                                     labels, canaries, open alerts and incidents, last runs
    POST /v1/pipelines/{name}/trigger/{phase}           a flow run of the phase's Prefect deployment
    GET  /v1/health                                     liveness (no token needed)
    GET  /openapi.json, /docs                           the OpenAPI document and its offline page

Every error is `{"error": <code>, "message": <text>}` (a 422 adds `fields`, each naming the field
as `query.key` or `body.outcomes.3.score`). The token check and the two hot routes run in the
`FastPath` middleware (fastpath.py) over the same functions as these routes (core.py); FastAPI
answers everything else, every validation error included. The domain stays free of Prefect: starting
a flow run is the `trigger` callable the command line hands in (cli/commands/api.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path as PathParam, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from promptcycle.api.auth import BearerToken
from promptcycle.api.core import ApiCore, ApiProblem, dumps
from promptcycle.api.docs import render_docs
from promptcycle.api.fastpath import FastPath
from promptcycle.api.outcomes import OutcomeBatch, OutcomesRecorded, OutcomeWriter
from promptcycle.api.prompts import PromptCache
from promptcycle.api.status import api_status
from promptcycle.errors import StoreError, TriggerError
from promptcycle.phases import PHASES, deployment_name

__all__ = ["ApiSettings", "Trigger", "create_app"]

Trigger = Callable[[str, dict[str, Any], str | None], Awaitable[dict[str, Any]]]
"""`await trigger(deployment_name, parameters, idempotency_key)` starts a flow run of the deployment and
returns {"flow_run_id", "flow_run_name", "state", "url"}; it raises `TriggerError` (with its HTTP status)."""

Phase = Literal[tuple(PHASES)]  # type: ignore[valid-type]
Name = Annotated[str, PathParam(description="A pipeline of pipelines.yaml.")]


@dataclass
class ApiSettings:
    """What the API serves: the store, the pipelines (name -> its models), the token, how to start runs."""

    store: Path
    pipelines: dict[str, list[str]]
    token: SecretStr | None = None
    trigger: Trigger | None = None
    refresh_s: float = 1.0  # how often the served prompts are re-read from the store
    write_hold_s: float = 0.5  # longest burst of outcome writes on one opening of the store file
    write_gap_s: float = 0.1  # then the file is left free at least this long, for other processes
    max_pending: int = 200_000  # outcomes waiting for a write before requests get 503
    lock_timeout_s: float = 15.0  # how long a write waits for the file before answering 503
    prefect_api_url: str | None = field(default=None)  # shown in /v1/status


# -- schemas ------------------------------------------------------------------------------------------------------

class Problem(BaseModel):
    error: str = Field(description="A short code: unauthorized, invalid_request, unknown_pipeline, …")
    message: str = Field(description="What went wrong, naming the field or the name.")


class ShadowPrompt(BaseModel):
    version: str
    system: str
    template: str


class ServedPrompt(BaseModel):
    """The prompt version that answers one request (`promptcycle.deploy.serving.ResolvedPrompt`)."""

    pipeline: str
    version: str = Field(description="The prompt version; report it with the outcome.")
    system: str = Field(description="The system message ({{variables}} unrendered).")
    template: str = Field(description="The user message template with {{variable}} placeholders.")
    arm: Literal["production", "control", "treatment"] = Field(
        description="'production' when no canary runs, else the canary arm this key falls in.")
    bucket: int = Field(description="The key's bucket, sha256(key) mod 10,000.")
    scope: str = Field(description="'' for the pipeline's label, or the model whose own label served.")
    canary_id: str | None = None
    split_pct: float = Field(description="The running canary's share of traffic, percent (0 without one).")
    shadow: ShadowPrompt | None = Field(default=None, description="Shadow mode: the new version, to answer "
                                        "without serving and report with arm 'shadow'.")


class TriggerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = Field(default_factory=dict, description="Flow parameters, merged over the "
                                       "deployment's defaults (which name the pipeline).")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256, description="Repeating a "
                                        "trigger with the same key starts no second run.")


class TriggeredRun(BaseModel):
    deployment: str
    flow_run_id: str
    flow_run_name: str | None = None
    state: str | None = None
    url: str | None = None


# -- helpers ------------------------------------------------------------------------------------------------------

def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(payload), status_code=status, media_type="application/json", headers=headers)


def _found(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _validation_problem(exc: RequestValidationError) -> Response:
    fields = []
    for err in exc.errors():
        name = ".".join(str(part) for part in err.get("loc", ()))
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") not in ("missing", "json_invalid", "model_attributes_type") and "input" in err:
            message += f" (found {_found(err['input'])})"
        fields.append({"field": name, "message": message})
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
    if len(fields) > 5:
        summary += f" (and {len(fields) - 5} more)"
    return _json({"error": "invalid_request", "message": summary, "fields": fields}, 422)


_ERRORS = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 422: "invalid_request",
           503: "unavailable"}

_RESPONSES: dict[int | str, dict[str, Any]] = {401: {"model": Problem, "description": "No token, or a wrong one."},
                                               404: {"model": Problem, "description": "Unknown pipeline."},
                                               422: {"model": Problem, "description": "A field is invalid."}}
_SECURED = {"security": [{"bearer": []}]}


def _with_security(app: FastAPI, secured: bool) -> None:
    """Declare the bearer scheme in the OpenAPI document (the FastPath middleware enforces it)."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain()
            if secured:
                schema.setdefault("components", {})["securitySchemes"] = {"bearer": {
                    "type": "http", "scheme": "bearer", "description": "The API token (PROMPTCYCLE_API_TOKEN, or "
                    "the Secret block named by `api.token_block` in pipelines.yaml)."}}
            else:
                for methods in schema.get("paths", {}).values():
                    for op in methods.values():
                        op.pop("security", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# -- the application ----------------------------------------------------------------------------------------------

def create_app(settings: ApiSettings) -> FastAPI:
    """The API over `settings` (see the module docstring). Its lifespan starts the prompt refresher and the
    outcome writer, and on shutdown writes what is pending."""
    from promptcycle.store.metrics import MetricsStore

    store = MetricsStore(settings.store, lock_timeout_s=settings.lock_timeout_s)  # created and migrated now
    scopes = [(name, scope) for name, models in settings.pipelines.items() for scope in ("", *models)]
    prompts = PromptCache(store.path, scopes, refresh_s=settings.refresh_s)
    writer = OutcomeWriter(store, gap_s=settings.write_gap_s, hold_s=settings.write_hold_s,
                           max_pending=settings.max_pending)
    core = ApiCore(settings.pipelines, prompts, writer)
    token = BearerToken(settings.token) if settings.token is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(prompts.start)
        writer.start()
        try:
            yield
        finally:
            prompts.close()
            await run_in_threadpool(writer.close)

    app = FastAPI(
        title="promptcycle API",
        version="1",
        description="Which prompt version to serve, outcomes of production requests, the state of the loop, and "
                    "flow runs of each phase's Prefect deployment.\n\n"
                    "Every /v1 endpoint but /v1/health needs 'Authorization: Bearer <token>' when the API was "
                    "started with a token. Errors are JSON: {\"error\": code, \"message\": text}.",
        docs_url=None, redoc_url=None, openapi_url="/openapi.json", lifespan=lifespan)
    app.state.settings, app.state.writer, app.state.prompts, app.state.store = settings, writer, prompts, store
    app.add_middleware(FastPath, core=core, token=token)
    _with_security(app, token is not None)

    @app.exception_handler(ApiProblem)
    async def _problem(request: Request, exc: ApiProblem) -> Response:
        return _json({"error": exc.error, "message": exc.message}, exc.status, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return _validation_problem(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return _json({"error": _ERRORS.get(exc.status_code, "error"), "message": str(exc.detail)}, exc.status_code,
                     getattr(exc, "headers", None))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(render_docs(app.openapi()))

    @app.get("/v1/health", summary="Liveness", tags=["service"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/pipelines/{name}/prompt", response_model=ServedPrompt, tags=["serving"], openapi_extra=_SECURED,
             summary="The prompt version that answers a request",
             description="Sticky per key: the key's bucket (sha256 mod 10,000) picks the canary arm while a canary "
                         "runs, exactly as promptcycle.deploy.serving.resolve_prompt. Labels and splits moved by "
                         "the flows are seen within about a second.",
             responses={**_RESPONSES, 404: {"model": Problem,
                                            "description": "Unknown pipeline, or nothing in production."}})
    async def prompt(name: Name,
                     key: Annotated[str, Query(min_length=1, max_length=512, description="What makes the "
                                               "assignment sticky: a user, account or session id.")],
                     model: Annotated[str | None, Query(min_length=1, max_length=256, description="The model "
                                                        "that will answer: its own label wins when it has one.")]
                     = None) -> Response:
        return _json(core.prompt(name, key, model))

    @app.post("/v1/pipelines/{name}/outcomes", response_model=OutcomesRecorded, tags=["serving"],
              openapi_extra=_SECURED, summary="Record outcomes of production requests",
              description="One transaction per batch (and often several batches per transaction). Answered once "
                          "the outcomes are in the store. Idempotent by request_id: resending a batch (a retry) "
                          "records nothing twice and answers with its outcomes counted as duplicates. 503 means "
                          "nothing of this request was recorded: retry it.",
              responses={**_RESPONSES, 503: {"model": Problem, "description": "The store stayed busy: retry."}})
    async def outcomes(name: Name, batch: OutcomeBatch) -> Response:
        return _json(await core.outcomes(name, batch))

    @app.get("/v1/status", tags=["state"], openapi_extra=_SECURED, summary="Where every pipeline stands",
             description="Per pipeline: labels per scope, the running canary, last decisions and deployments, open "
                         "alerts and incidents, and the latest run of each kind.",
             responses={401: _RESPONSES[401]})
    async def status() -> Response:
        try:
            payload = await run_in_threadpool(api_status, store, sorted(settings.pipelines))
        except StoreError as exc:
            raise ApiProblem(503, "store_unavailable", str(exc), {"Retry-After": "1"}) from None
        payload["prefect_api_url"] = settings.prefect_api_url
        payload["outcomes_written"] = writer.written
        return _json(payload)

    @app.post("/v1/pipelines/{name}/trigger/{phase}", response_model=TriggeredRun, status_code=202, tags=[
              "orchestration"], openapi_extra=_SECURED, summary="Start a flow run of a phase's deployment",
              description="Creates a flow run of the Prefect deployment '<flow>/<pipeline>' (`promptcycle serve` "
                          "registers them) and returns at once; follow it in the Prefect UI.",
              responses={**_RESPONSES, 404: {"model": Problem, "description": "Unknown pipeline, or no such "
                                             "deployment on the Prefect server."},
                         503: {"model": Problem, "description": "No Prefect server to ask."}})
    async def trigger(name: Name, phase: Annotated[Phase, PathParam(description="The phase to run.")],
                      body: TriggerRequest | None = None) -> Response:
        core.models_of(name)
        body = body or TriggerRequest()
        if body.parameters.get("pipeline", name) != name:
            raise ApiProblem(422, "invalid_request", f"body.parameters.pipeline: the path names pipeline {name!r} "
                             f"(found {_found(body.parameters['pipeline'])})")
        deployment = deployment_name(phase, name)
        if settings.trigger is None:
            raise ApiProblem(503, "no_prefect", "this API was started without a Prefect server to start runs on")
        try:
            run = await settings.trigger(deployment, dict(body.parameters), body.idempotency_key)
        except TriggerError as exc:
            error = {404: "unknown_deployment", 422: "invalid_parameters"}.get(exc.status, "prefect_unavailable")
            raise ApiProblem(exc.status, error, str(exc)) from None
        return _json({"deployment": deployment, **run}, 202)

    return app
