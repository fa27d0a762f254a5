"""`promptcycle api`: the HTTP API for applications, served by uvicorn (docs/api.md).

    promptcycle api [--host 127.0.0.1] [--port 8700] [--config …] [--store …] [--access-log]

The token applications must send comes from the Prefect Secret block named by `api.token_block` in
pipelines.yaml, else from the PROMPTCYCLE_API_TOKEN environment variable. Without one the API serves
only on a loopback address. The trigger endpoint starts flow runs on the Prefect API configured for
this process (PREFECT_API_URL or the active profile), else on promptcycle's local server when one is
running; the app itself (promptcycle/api/) never imports Prefect: this module hands it `prefect_trigger`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from pydantic import SecretStr

__all__ = ["add_commands", "cmd_api", "resolve_token", "prefect_trigger", "TOKEN_ENV"]

TOKEN_ENV = "PROMPTCYCLE_API_TOKEN"


def add_commands(subparsers, common: Callable[[argparse.ArgumentParser], None]) -> None:
    from promptcycle_cli.main import _port

    p = subparsers.add_parser("api", help="serve the HTTP API applications call (prompt, outcomes, status, "
                              "trigger)", description=__doc__.split("\n")[0])
    common(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs a token)")
    p.add_argument("--port", type=_port, default=8700, help="port to listen on (default 8700)")
    p.add_argument("--access-log", action="store_true", help="log every request (method, path, status)")
    p.set_defaults(func=cmd_api)


def resolve_token(config) -> tuple[SecretStr | None, str]:
    """The API token and where it came from: the Secret block named by `api.token_block` (it wins), else
    the PROMPTCYCLE_API_TOKEN environment variable; (None, "none") when neither is configured."""
    from promptcycle.errors import ConfigError

    file = str(config.source_path) if config.source_path else None
    block = config.api.token_block
    if block:
        from prefect.blocks.system import Secret

        try:
            value = Secret.load(block, _sync=True).get()
        except ValueError:
            raise ConfigError(f"no Secret block named {block!r} on the Prefect API (create it in the Prefect UI, "
                              "Blocks → Secret, or with prefect.blocks.system.Secret(value=...).save(name))",
                              file=file, path="api.token_block", found=block,
                              expected="an existing Secret block") from None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"the Secret block {block!r} does not hold a non-empty string", file=file,
                              path="api.token_block", found=block, expected="a Secret block holding the token")
        return SecretStr(value), f"the Secret block {block!r}"
    value = os.environ.get(TOKEN_ENV)
    if value is None:
        return None, "none"
    if not value.strip():
        raise ConfigError(f"{TOKEN_ENV} is set but empty", path=TOKEN_ENV, expected="the token, or unset")
    return SecretStr(value), TOKEN_ENV


def prefect_api_url() -> tuple[str | None, bool]:
    """(URL, configured): the Prefect API of this process's settings, else the local server's if one runs."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        return str(url), True
    from promptcycle_cli import local_server

    return local_server.running_url(), False


def _ui_url(api_url: str, flow_run_id: str) -> str | None:
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url
    if not ui and api_url.rstrip("/").endswith("/api"):
        ui = api_url.rstrip("/")[:-4]
    return f"{str(ui).rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else None


async def prefect_trigger(deployment: str, parameters: dict[str, Any], idempotency_key: str | None) -> dict:
    """Start a flow run of `deployment` ("<flow>/<pipeline>") and return at once (`run_deployment(timeout=0)`).
    Raises `TriggerError`: 503 without a reachable Prefect server, 404 without the deployment, 422 when the
    server refuses the parameters."""
    import httpx
    from prefect.client.orchestration import PrefectClient, get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    from promptcycle.errors import TriggerError

    url, configured = prefect_api_url()
    if url is None:
        raise TriggerError("no Prefect server to start the run on: start one (`prefect server start`), set "
                           "PREFECT_API_URL for this API, and serve the deployments there (`promptcycle serve`)",
                           status=503)
    try:
        async with (get_client() if configured else PrefectClient(url)) as client:
            run = await run_deployment(deployment, client=client, parameters=parameters, timeout=0,
                                       idempotency_key=idempotency_key, as_subflow=False)
    except ObjectNotFound:
        raise TriggerError(f"no deployment {deployment!r} on the Prefect server at {url}: serve the deployments "
                           "there first (`promptcycle serve`)", status=404) from None
    except httpx.HTTPStatusError as exc:
        detail = _detail(exc.response)
        if exc.response.status_code in (409, 422):
            raise TriggerError(f"the Prefect server refused the parameters of {deployment!r}: {detail}",
                               status=422) from None
        raise TriggerError(f"the Prefect API at {url} answered {exc.response.status_code}: {detail}",
                           status=503) from None
    except (httpx.TransportError, OSError) as exc:
        raise TriggerError(f"cannot reach the Prefect API at {url} ({type(exc).__name__}: {exc}); is the server "
                           "running?", status=503) from None
    state = run.state.type.value if run.state is not None else None
    return {"flow_run_id": str(run.id), "flow_run_name": run.name, "state": state, "url": _ui_url(url, str(run.id))}


def _detail(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("detail", body) if isinstance(body, dict) else body)[:300]


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the API until interrupted."""
    import gc

    import uvicorn

    from promptcycle.api import ApiSettings, create_app, is_loopback
    from promptcycle.catalog import load_config
    from promptcycle.errors import ConfigError
    from promptcycle.evaluation.context import resolve_store_path
    from promptcycle_cli.main import require_free_port

    config = load_config(args.config)
    token, source = resolve_token(config)
    if token is None and not is_loopback(args.host):
        raise ConfigError(f"refusing to serve on {args.host} without a token: anyone who can reach it could read "
                          f"prompts, write outcomes and start runs. Set {TOKEN_ENV}, or name a Secret block in "
                          "`api.token_block` of pipelines.yaml, or listen on 127.0.0.1",
                          path="--host", found=args.host, expected="a loopback address, or a configured token")
    require_free_port(args.host, args.port)  # before anything starts
    url, _ = prefect_api_url()
    store = resolve_store_path(config, args.store)
    fresh = not store.exists()
    settings = ApiSettings(store=store, pipelines={name: list(p.models) for name, p in config.pipelines.items()},
                           token=token, trigger=prefect_trigger, prefect_api_url=url)
    app = create_app(settings)
    base = f"http://{args.host}:{args.port}"
    print(f"promptcycle API on {base}/v1 — reference: {base}/docs, OpenAPI: {base}/openapi.json", file=sys.stderr)
    print(f"  store: {store}{' (new and empty: nothing is deployed yet)' if fresh else ''}; pipelines: "
          f"{', '.join(sorted(settings.pipelines))}", file=sys.stderr)
    print(f"  token: from {source}" if token is not None else
          "  token: none — only this machine can reach it, and every request is accepted", file=sys.stderr)
    print(f"  trigger: flow runs on the Prefect API at {url}" if url else
          "  trigger: no Prefect server configured (set PREFECT_API_URL); the trigger endpoint answers 503",
          file=sys.stderr)
    sys.stderr.flush()
    # The cyclic garbage collector, at its defaults, walks the start-up objects (FastAPI, pydantic, DuckDB: a few
    # hundred thousand) again and again while a batch of outcomes allocates: it doubled the CPU per outcome.
    # Frozen, they are skipped; collections come less often.
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=args.access_log,
                    loop=_best("uvloop", "auto"), http=_best("httptools", "auto"), timeout_keep_alive=30)
    finally:
        gc.unfreeze()  # let the interpreter's shutdown release them
    return 0


def _best(module: str, fallback: str) -> str:
    import importlib.util

    return module if importlib.util.find_spec(module) is not None else fallback
