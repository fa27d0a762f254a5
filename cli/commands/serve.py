"""`promptcycle serve` and `promptcycle deployments`: every phase of every pipeline as Prefect deployments.

    promptcycle serve [--pipeline NAME …] [--limit N] [--config …] [--store …] [--json]
    promptcycle deployments apply --work-pool NAME [--pipeline NAME …] [--config-path PATH] [--json]
    promptcycle deployments list [--pipeline NAME …] [--json]

`serve` registers the deployments with their schedules (pipelines.<name>.schedules) against the configured Prefect
API and runs their flow runs in this process's children until Ctrl-C. `deployments apply` registers the same
deployments on a work pool, for workers (process, Docker, Kubernetes) to run. `deployments list` prints what would
be registered, without a server. Both need a Prefect server that outlives them (PREFECT_API_URL, or a Prefect
profile): exit status 2 when none is configured, 3 when it does not answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_commands", "cmd_serve", "cmd_apply", "cmd_list"]


def add_commands(subparsers, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser("serve", help="serve every phase of every pipeline as Prefect deployments, with their "
                              "schedules, until Ctrl-C", description="Register every phase of every pipeline as a "
                              "Prefect deployment (with the schedules in pipelines.yaml) and run their flow runs "
                              "until Ctrl-C. Needs a Prefect server: `prefect server start`, then "
                              "PREFECT_API_URL=http://127.0.0.1:4200/api.")
    common(p)
    _pipelines(p)
    p.add_argument("--limit", type=_positive, default=None, metavar="N",
                   help="flow runs at once in this process (default: Prefect's PREFECT_RUNNER_PROCESS_LIMIT)")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("deployments", help="register the deployments on a work pool, or list them",
                              description="The Prefect deployments of pipelines.yaml: `apply` registers them on a "
                              "work pool for workers to run; `list` prints them.")
    sub = p.add_subparsers(dest="deployments_command", required=True, metavar="ACTION")
    a = sub.add_parser("apply", help="register every phase of every pipeline on a work pool")
    common(a)
    _pipelines(a)
    a.add_argument("--work-pool", required=True, metavar="NAME", help="the work pool whose workers run them "
                   "(create one with `prefect work-pool create NAME --type process`)")
    a.add_argument("--config-path", default=None, metavar="PATH",
                   help="pipelines.yaml as the workers see it (default: this file's absolute path, right for "
                        "process workers on this machine)")
    a.set_defaults(func=cmd_apply)
    ls = sub.add_parser("list", help="print the deployments and schedules pipelines.yaml defines (no server)")
    common(ls)
    _pipelines(ls)
    ls.set_defaults(func=cmd_list)


def _pipelines(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", action="append", default=None, metavar="NAME",
                   help="only this pipeline (repeatable; default: every pipeline in pipelines.yaml)")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, found {text!r}")
    return int(text)


def _plans(args: argparse.Namespace, config_path: str | None = None) -> list:
    """The deployment plans of pipelines.yaml (bad input fails here, before Prefect is touched)."""
    from promptcycle.catalog import load_config
    from promptcycle.schedules import plan_deployments

    config = load_config(args.config)
    for name in args.pipeline or []:
        config.pipeline(name)
    store = str(Path(args.store).resolve()) if args.store else None
    return plan_deployments(config, config_path or str(Path(args.config).resolve()), store, args.pipeline)


# -- the Prefect server these commands need ----------------------------------------------------------------------

def _require_server(args: argparse.Namespace) -> tuple[str, str | None] | int:
    """(API URL, UI URL) of the configured Prefect server, or the exit status after saying what is wrong."""
    import asyncio

    from prefect import get_client
    from prefect.settings import get_current_settings

    from promptcycle.errors import ConfigError
    from promptcycle_cli.main import EXIT_PREFECT_UNREACHABLE

    settings = get_current_settings()
    api = settings.api.url
    if not api:
        raise ConfigError(f"`promptcycle {args.command}` needs a Prefect server that outlives it, and none is "
                          "configured: start one (`prefect server start`) and set PREFECT_API_URL (e.g. "
                          "`export PREFECT_API_URL=http://127.0.0.1:4200/api`), or log in to Prefect Cloud "
                          "(`prefect cloud login`)", path="PREFECT_API_URL", expected="the API URL of a running "
                          "Prefect server")

    async def check() -> BaseException | None:
        async with get_client() as client:
            return await client.api_healthcheck()

    try:
        problem = asyncio.run(check())
    except Exception as exc:  # noqa: BLE001 - e.g. a malformed URL: said as the server being unreachable
        problem = exc
    if problem is not None:
        detail = str(problem) or type(problem).__name__
        message = (f"the Prefect API at {api} does not answer ({detail}): start that server (`prefect server "
                   "start`, then PREFECT_API_URL=http://127.0.0.1:4200/api) or point PREFECT_API_URL at a running "
                   "one")
        if args.json:
            print(json.dumps({"success": False, "error": "PrefectAPIUnreachable", "message": message,
                              "exit_code": EXIT_PREFECT_UNREACHABLE}))
        else:
            print(f"error (PrefectAPIUnreachable): {message}", file=sys.stderr)
        return EXIT_PREFECT_UNREACHABLE
    ui = settings.ui_url
    return api, (str(ui).rstrip("/") if ui else None)


def _deployment_url(ui: str | None, deployment_id: Any) -> str | None:
    return f"{ui}/deployments/deployment/{deployment_id}" if ui and deployment_id else None


def _rows(plans: list, ids: dict[str, Any], ui: str | None) -> list[dict[str, Any]]:
    return [{"deployment": p.full_name, "phase": p.phase, "pipeline": p.pipeline, "schedule": p.schedule_text(),
             "cron": p.cron, "interval_seconds": p.interval_seconds, "timezone": p.timezone if p.cron else None,
             "deployment_id": str(ids[p.full_name]) if p.full_name in ids else None,
             "url": _deployment_url(ui, ids.get(p.full_name))} for p in plans]


def _print_rows(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["deployment"]) for r in rows)
    for r in rows:
        print(f"  {r['deployment']:<{width}}  {r['schedule']}")


def _to_deployments(plans: list, module_entrypoint: bool) -> list:
    from promptcycle.errors import ConfigError
    from promptcycle_flows.served import to_deployment

    out = []
    for plan in plans:
        try:
            out.append(to_deployment(plan, module_entrypoint=module_entrypoint))
        except ValueError as exc:  # Prefect's own checks of a schedule (ours ran first; belt and braces)
            raise ConfigError(f"Prefect refused the schedule of {plan.full_name}: {exc}",
                              path=f"pipelines.{plan.pipeline}.schedules") from None
    return out


# -- serve ---------------------------------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    """Register the deployments with their schedules and run their flow runs until Ctrl-C."""
    import asyncio

    plans = _plans(args)
    server = _require_server(args)
    if isinstance(server, int):
        return server
    api, ui = server
    from prefect.runner import Runner

    from promptcycle_cli.main import _route_engine_logs, _Session

    _route_engine_logs()  # the runner's errors go to the command's log file, not over the terminal
    if not args.debug:
        # The runs' processes inherit this: their logs go to the API (each run's Logs tab in the UI), not over
        # this terminal — where, at Ctrl-C, the runs cancelled would print their crash reports.
        key = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"
        before = os.environ.get(key)
        os.environ[key] = "CRITICAL"
        _Session.restore.append(lambda: os.environ.pop(key) if before is None else os.environ.update({key: before}))
    deployments = _to_deployments(plans, module_entrypoint=False)
    # Schedules pause when this process stops (Ctrl-C, SIGTERM), so that no backlog of late runs piles up while
    # nothing serves them; the next `promptcycle serve` resumes them.
    runner = Runner(name="promptcycle-serve", pause_on_shutdown=True, limit=args.limit)
    ids = {plan.full_name: runner.add_deployment(d) for plan, d in zip(plans, deployments)}
    rows = _rows(plans, ids, ui)
    if args.json:
        print(json.dumps({"success": True, "serving": True, "api_url": api, "ui_url": ui, "deployments": rows}),
              flush=True)
    else:
        print(f"Serving {len(rows)} deployments of {len({p.pipeline for p in plans})} pipeline(s) against {api}")
        print(f"Prefect UI: {ui}/deployments" if ui else "Prefect UI: unknown (set PREFECT_UI_URL)")
        _print_rows(rows)
        example = next((r for r in rows if r["phase"] == "baseline"), rows[0])
        print(f"Start a run from the UI (Run ▸ Custom run shows the typed parameters), with "
              f"`prefect deployment run '{example['deployment']}'`, or through `promptcycle api`.")
        print("Each run's logs and artifacts are in the UI (--debug also prints the logs here). Ctrl-C stops "
              "serving: schedules pause until the next `promptcycle serve`; a run cut short resumes when it runs "
              "again.", flush=True)
    cancelled = asyncio.run(_serve_until_stopped(runner))
    # on stderr, whatever --json (stdout holds the one JSON object)
    print("stopped serving; the schedules are paused until the next `promptcycle serve`"
          + (f"; {cancelled} run(s) in progress were cancelled (each resumes when it runs again)" if cancelled
             else ""), file=sys.stderr)
    return 0


async def _serve_until_stopped(runner) -> int:
    """Run `runner` until Ctrl-C or SIGTERM; then cancel its runs in progress, pause the schedules (the runner's
    exit does) and return how many runs were cancelled.

    Prefect's own SIGTERM handler stops nothing in 3.8 (it calls an async `stop` without awaiting it, then exits
    with the schedules active), so both signals are handled here, once the runner has installed its own.

    Ctrl-C in a terminal reaches the whole process group, the runs' processes too; interrupted there, each would
    print its traceback and leave its run `Running`. So SIGINT is blocked in this thread before any run starts
    (the processes it starts inherit the mask and never see it) and taken here instead: by a thread waiting for
    it, or by the loop's handler when another thread receives it."""
    import asyncio
    import signal
    import threading

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def wait_for_interrupt() -> None:
        signal.sigwait({signal.SIGINT})
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_interrupt, name="promptcycle-serve-interrupt", daemon=True).start()
    serving = asyncio.create_task(runner.start())
    await asyncio.sleep(0)  # runner.start() sets its SIGTERM handler before its first await: replace it after
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    cancelled = 0
    if stop.is_set() and not serving.done():
        print("stopping: cancelling the runs in progress and pausing the schedules …", file=sys.stderr, flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up short
            loop.add_signal_handler(sig, lambda: None)
        cancelled = len(runner._process_manager.flow_run_ids()) if hasattr(runner, "_process_manager") else 0
        if runner.started:
            await runner.astop()
        await asyncio.gather(serving, return_exceptions=True)
    else:
        stopping.cancel()
        await serving  # the runner ended by itself: its error, if any, is the command's
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    return cancelled


# -- deployments apply / list --------------------------------------------------------------------------------------

def cmd_apply(args: argparse.Namespace) -> int:
    """Register every phase of every pipeline as a deployment on a work pool."""
    import asyncio

    from promptcycle.errors import ConfigError

    plans = _plans(args, args.config_path)
    server = _require_server(args)
    if isinstance(server, int):
        return server
    api, ui = server
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    async def pool_type() -> str | None:
        async with get_client() as client:
            try:
                return (await client.read_work_pool(args.work_pool)).type
            except ObjectNotFound:
                return None

    kind = asyncio.run(pool_type())
    if kind is None:
        raise ConfigError(f"the Prefect server at {api} has no work pool named {args.work_pool!r}: create it with "
                          f"`prefect work-pool create {args.work_pool} --type process` (or docker, kubernetes)",
                          path="--work-pool", found=args.work_pool, expected="an existing work pool")
    ids = {}
    for plan, deployment in zip(plans, _to_deployments(plans, module_entrypoint=True)):
        ids[plan.full_name] = deployment.apply(work_pool_name=args.work_pool)
    rows = _rows(plans, ids, ui)

    def human() -> None:
        print(f"Registered {len(rows)} deployments on work pool {args.work_pool!r} ({kind}) at {api}")
        if ui:
            print(f"Prefect UI: {ui}/deployments")
        _print_rows(rows)
        print(f"Workers run them: `prefect worker start --pool {args.work_pool}` where promptcycle is installed "
              f"and {plans[0].parameters['config_path']} is readable (--config-path names it as workers see it).")

    if args.json:
        print(json.dumps({"success": True, "api_url": api, "ui_url": ui, "work_pool": args.work_pool,
                          "work_pool_type": kind, "deployments": rows}))
    else:
        human()
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print the deployments and schedules pipelines.yaml defines (no server needed)."""
    rows = _rows(_plans(args), {}, None)
    if args.json:
        print(json.dumps({"success": True, "deployments": rows}))
    else:
        _print_rows(rows)
    return 0
