"""The HTTP API applications call: which prompt to serve, how requests went, where the loop stands,
and flow runs on demand (`promptcycle api`; docs/api.md).

    app.py       create_app(ApiSettings(...)): the FastAPI application and its routes
    prompts.py   the sticky resolve_prompt, its cache kept warm off the request path
    outcomes.py  the outcomes body, and the group-commit writer (idempotent by request_id)
    status.py    the status payload
    auth.py      the bearer token (constant-time compare), what counts as loopback
    docs.py      the offline reference page rendered from the OpenAPI document
"""

from promptcycle.api.app import ApiSettings, Trigger, create_app
from promptcycle.api.auth import BearerToken, is_loopback

__all__ = ["ApiSettings", "Trigger", "create_app", "BearerToken", "is_loopback"]
