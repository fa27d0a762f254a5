"""What the API does, apart from HTTP: the functions behind its routes, shared by FastAPI and the fast path.

Each returns a JSON-ready dict or raises `ApiProblem` (an HTTP status, a short error code and a
message), so a request gets the same answer whichever of the two served it.
"""

from __future__ import annotations

from typing import Any

import duckdb
import orjson

from promptcycle.api.outcomes import OutcomeBatch, OutcomeWriter, WriterBusy
from promptcycle.api.prompts import PromptCache
from promptcycle.errors import ServingError, StoreError

__all__ = ["ApiProblem", "ApiCore", "dumps"]


class ApiProblem(Exception):
    """An error answer: `{"error": error, "message": message}` with HTTP `status` (and `headers`)."""

    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.error, self.message, self.headers = status, error, message, headers


def dumps(payload: Any) -> bytes:
    """JSON bytes; datetimes as ISO-8601, anything else unknown as its str()."""
    return orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS)


class ApiCore:
    """The routes' behaviour over the pipelines (name -> models), the prompt cache and the outcome writer."""

    def __init__(self, pipelines: dict[str, list[str]], prompts: PromptCache, writer: OutcomeWriter):
        self.pipelines = pipelines
        self.prompts = prompts
        self.writer = writer
        self._known = ", ".join(sorted(pipelines))

    def models_of(self, name: str) -> list[str]:
        """The pipeline's models; an unknown pipeline is a 404 listing the known ones."""
        try:
            return self.pipelines[name]
        except KeyError:
            raise ApiProblem(404, "unknown_pipeline", f"unknown pipeline {name!r}; known: {self._known}") from None

    def prompt(self, name: str, key: str, model: str | None) -> dict[str, Any]:
        """`resolve_prompt(name, key, model=model)` as the endpoint's JSON."""
        models = self.models_of(name)
        if model is not None and model not in models:
            raise ApiProblem(422, "invalid_request", f"query.model: {model!r} is not a model of pipeline {name!r} "
                             f"(expected one of {', '.join(models)})")
        try:
            served = self.prompts.resolve(name, key, model)
        except ServingError as exc:
            if isinstance(exc.__cause__, duckdb.Error):  # never read yet, and the file stays busy
                raise ApiProblem(503, "store_unavailable", f"{exc}; retry", {"Retry-After": "1"}) from None
            raise ApiProblem(404, "no_production_prompt", str(exc)) from None
        shadow = served.shadow
        return {"pipeline": served.pipeline, "version": served.version, "system": served.system,
                "template": served.template, "arm": served.arm, "bucket": served.bucket, "scope": served.scope,
                "canary_id": served.canary_id, "split_pct": served.split_pct,
                "shadow": None if shadow is None else {"version": shadow.version, "system": shadow.system,
                                                       "template": shadow.template}}

    async def outcomes(self, name: str, batch: OutcomeBatch) -> dict[str, int]:
        """Record the batch (once it is in the store) and count what was new."""
        self.models_of(name)
        try:
            recorded = await self.writer.record(batch.records(name))
        except WriterBusy as exc:
            raise ApiProblem(503, "busy", f"{exc}; retry in a second", {"Retry-After": "1"}) from None
        except StoreError as exc:
            raise ApiProblem(503, "store_unavailable", f"the outcomes were not recorded ({exc}); retry: outcomes "
                             "are idempotent by request_id", {"Retry-After": "1"}) from None
        return recorded
