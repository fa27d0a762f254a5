"""`promptcycle deploy`, `canary`, `rollback` and `status`: the deployment phase on the command line.

    promptcycle deploy   --pipeline NAME [--version V] [--canary] [--force] [--simulate-traffic N]
    promptcycle canary   --pipeline NAME [--simulate-traffic N | --ingest FILE] [--watch]
    promptcycle rollback --pipeline NAME [--to VERSION] [--reason TEXT]
    promptcycle status   [--pipeline NAME] [--history N]

`deploy` and `canary` run Prefect flows; `rollback` and `status` work on the store directly (a
rollback must not wait for a server to start).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from promptcycle_cli.main import existing_store, final_state_name, flow_run_fields, run_flow
from promptcycle.errors import ConfigError

if TYPE_CHECKING:
    from promptcycle.deploy.results import CanaryResult, DeploymentResult

__all__ = ["add_commands"]


def _emit(args: argparse.Namespace, payload: dict[str, Any], human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(payload, default=str))
    else:
        human()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown user"


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 140, highlight=False)


def _starting(args: argparse.Namespace, what: str) -> None:
    if not args.json:
        print(f"{what} (Prefect's local server is reused, or started when none is running and PREFECT_API_URL is "
              "not set; the first start takes ~20 s) …", file=sys.stderr)


# -- deploy -----------------------------------------------------------------------------------------------------

def _print_canary(console, result: CanaryResult) -> None:
    if result.ingested:
        i = result.ingested
        console.print(f"ingested {i.path}: {i.lines} outcomes, {i.new} new, {i.duplicates} already recorded")
    console.print(f"canary [bold]{result.canary_id}[/]: {result.looks} look(s), "
                  f"{result.simulated_requests} simulated requests, split {result.split_pct:g}% — "
                  f"[bold]{result.status}[/]")
    if result.reason:
        console.print(f"  {result.reason}")
    if result.outcome:
        o = result.outcome
        console.print(f"  {o.kind} {o.deployment_id}: version {o.version} on every target ({o.status})")
    if result.simulated_requests:
        console.print("[dim]The traffic was simulated: the outcomes describe the simulated world, not real users.[/]")


def cmd_deploy(args: argparse.Namespace) -> int:
    """Run the deployment flow: four stages, the gate, then the targets and labels — or a canary."""
    from promptcycle.catalog import load_config

    if args.simulate_traffic is not None and not args.canary:
        raise ConfigError("--simulate-traffic drives a canary; add --canary", path="--simulate-traffic",
                          found=args.simulate_traffic, expected="--canary as well")
    if args.simulate_traffic is not None and args.simulate_traffic < 1:
        raise ConfigError("--simulate-traffic must be at least 1", path="--simulate-traffic",
                          found=args.simulate_traffic, expected="a positive number of requests")
    load_config(args.config).pipeline(args.pipeline)  # fail fast, before Prefect starts
    _starting(args, f"Deploying {args.pipeline!r}")
    from promptcycle_flows.deployment import deployment
    from promptcycle_cli import local_server

    local_server.ready()  # Prefect's local server, started in the background since the command was parsed
    result: DeploymentResult = run_flow(
        deployment, pipeline=args.pipeline, config_path=str(args.config), store_path=args.store,
        version=args.version, canary=args.canary, force=args.force, simulate_traffic=args.simulate_traffic,
        traffic_seed=args.seed, actor=f"{_user()} via promptcycle deploy")

    def human() -> None:
        console = _console()
        console.print(f"deployment [bold]{result.deployment_id}[/] ({result.kind}) of "
                      f"[bold]{args.pipeline}[/]: version {result.version}"
                      + (f" replacing {result.production_before}" if result.production_before else ""))
        for stage, r in result.stages.items():
            colour = {"passed": "green", "failed": "red", "skipped": "dim"}[r.status]
            console.print(f"  [{colour}]{r.status:>7}[/] {stage}: {r.reason}")
        console.print(f"  gate: [bold]{result.gate.decision}[/] — {result.gate.reason}")
        if result.started_canary:
            console.print(f"canary [bold]{result.canary_id}[/] started at {result.split_pct:g}% "
                          f"({result.control} → {result.treatment})")
            if result.reason:
                console.print(f"  plan: {result.reason}")
        else:
            for t in result.targets or []:
                console.print(f"  target {t['target']} ({t['kind']}): {t['status']} — {t['detail']}")
            console.print(f"[bold]{result.version}[/] is production"
                          + (f"; previous is {result.previous}" if result.previous else ""))
        if result.canary:
            _print_canary(console, result.canary)

    _emit(args, {"success": True, **flow_run_fields(), **result.model_dump()}, human)
    return 0


def cmd_canary(args: argparse.Namespace) -> int:
    """Run the canary flow: look (optionally on simulated traffic) until the test decides."""
    from promptcycle.catalog import load_config

    config = load_config(args.config)
    config.pipeline(args.pipeline)
    existing_store(config, args.store, "canary")  # a canary lives in the store of the deployment that started it
    for name in ("simulate_traffic", "max_looks"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1", path=f"--{name.replace('_', '-')}",
                              found=value, expected="a positive number")
    if not 0.0 <= args.treatment_error_rate <= 1.0:
        raise ConfigError("--treatment-error-rate must be in [0, 1]", path="--treatment-error-rate",
                          found=args.treatment_error_rate, expected="a rate in [0, 1]")
    error_rates = {"treatment": args.treatment_error_rate} if args.treatment_error_rate else None
    _starting(args, f"Looking at the canary of {args.pipeline!r}")
    from promptcycle_flows.canary import canary
    from promptcycle_cli import local_server

    local_server.ready()  # Prefect's local server, started in the background since the command was parsed
    result: CanaryResult = run_flow(
        canary, pipeline=args.pipeline, config_path=str(args.config), store_path=args.store,
        simulate_traffic=args.simulate_traffic, seed=args.seed, watch=args.watch, max_looks=args.max_looks,
        error_rates=error_rates, ingest_path=args.ingest, actor=f"{_user()} via promptcycle canary")
    _emit(args, {"success": True, **flow_run_fields(), **result.model_dump(), "final_state": final_state_name()},
          lambda: _print_canary(_console(), result))
    return 0


# -- rollback ---------------------------------------------------------------------------------------------------

def _block_secret(block_type: str, name: str):
    from promptcycle_tasks.deployment import block_secret  # Prefect only when a credentials block is configured

    return block_secret(block_type, name)


def cmd_rollback(args: argparse.Namespace) -> int:
    """Restore the previous (or --to) production version on every target and move the labels back."""
    from promptcycle.catalog import load_config
    from promptcycle.deploy.release import roll_back
    from promptcycle.store import MetricsStore

    config = load_config(args.config)
    config.pipeline(args.pipeline)
    store = MetricsStore(existing_store(config, args.store, "rollback"))
    record = roll_back(config, args.pipeline, store, to=args.to, scope=args.model or "",
                       actor=f"{_user()} via promptcycle rollback", reason=args.reason, block_secret=_block_secret)
    payload = {"success": True, **flow_run_fields(), "deployment_id": record.deployment_id, "pipeline": args.pipeline,
               "production": record.to_hash, "rolled_back": record.from_hash, "targets": record.targets,
               "ended_canary": record.evidence.get("ended_canary")}

    def human() -> None:
        console = _console()
        console.print(f"rolled back [bold]{args.pipeline}[/]: production is [bold]{record.to_hash}[/] again "
                      f"(was {record.from_hash}; deployment {record.deployment_id})")
        for t in record.targets:
            console.print(f"  target {t['target']} ({t['kind']}): {t['status']} — {t['detail']}")
        if payload["ended_canary"]:
            console.print(f"  the running canary {payload['ended_canary']} was ended")

    _emit(args, payload, human)
    return 0


# -- status -----------------------------------------------------------------------------------------------------

def _short(text: str | None, limit: int = 160) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value is not None else ""


def cmd_status(args: argparse.Namespace) -> int:
    """Production / candidate / previous per pipeline, running canaries, last decisions and deployments."""
    from promptcycle.catalog import load_config
    from promptcycle.deploy.status import pipeline_status
    from promptcycle.store import MetricsStore

    if args.history < 0:
        raise ConfigError("--history must be 0 or more", path="--history", found=args.history,
                          expected="a number of deployments")
    config = load_config(args.config)
    names = [args.pipeline] if args.pipeline else sorted(config.pipelines)
    for name in names:
        config.pipeline(name)
    store = MetricsStore(existing_store(config, args.store, "status"))
    status = pipeline_status(store, names, history=args.history)

    def human() -> None:
        from rich.table import Table

        console = _console()
        for name, s in status.items():
            console.print(f"[bold]{name}[/]")
            if not s["labels"]:
                console.print("  nothing deployed yet")
            for scope, labels in sorted(s["labels"].items()):
                where = f" (model {scope})" if scope else ""
                for label in ("production", "candidate", "previous"):
                    if label in labels:
                        entry = labels[label]
                        console.print(f"  {label:<10}{where} {entry['version']}  [dim]{_when(entry['updated_at'])} "
                                      f"by {entry['updated_by']}[/]")
            c = s["canary"]
            if c:
                console.print(f"  canary     {c['canary_id']}: {c['treatment']} at {c['split_pct']:g}% vs "
                              f"{c['control']}, {c['looks']} look(s) — {_short(c['last_reason'])}")
            for d in s["decisions"]:
                console.print(f"  decision   {d['kind']} {d['decision']} on {d['version']} "
                              f"[dim]{_when(d['created_at'])}[/]" + (f" — {_short(d['reason'])}" if d["reason"] else ""))
            if s["deployments"]:
                table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
                for col in ("when", "kind", "status", "from", "to", "forced", "actor"):
                    table.add_column(col)
                for d in s["deployments"]:
                    table.add_row(_when(d["created_at"]), d["kind"], d["status"], d["from"] or "—", d["to"],
                                  "FORCED" if d["forced"] else "", d["actor"])
                console.print(table)

    _emit(args, {"success": True, **flow_run_fields(), "store": str(store.path), "pipelines": status}, human)
    return 0


def add_commands(subparsers: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser("deploy", help="validate, gate and deploy a prompt version (or start a canary)")
    common(p)
    p.add_argument("--pipeline", default="customer-insights", help="pipeline name (default: customer-insights)")
    p.add_argument("--version", default=None, help="the prompt version to deploy (default: the candidate; on a "
                   "first deployment, the configured prompt)")
    p.add_argument("--canary", action="store_true", help="start a canary instead of switching all traffic")
    p.add_argument("--force", action="store_true", help="deploy even if a validation stage fails (recorded as forced)")
    p.add_argument("--simulate-traffic", type=int, default=None, metavar="N",
                   help="with --canary: run the canary on N simulated production requests")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated traffic")
    p.set_defaults(func=cmd_deploy)

    p = subparsers.add_parser("canary", help="look at a running canary; promote or roll back when it decides")
    common(p)
    p.add_argument("--pipeline", default="customer-insights", help="pipeline name (default: customer-insights)")
    p.add_argument("--simulate-traffic", type=int, default=None, metavar="N", help="send N simulated requests")
    p.add_argument("--watch", action="store_true", help="keep looking every look_interval_seconds until it ends")
    p.add_argument("--ingest", default=None, metavar="FILE", help="record the production outcomes of a JSONL file "
                   "(one object per request: request_id, version, score, error, latency_ms, …) before looking")
    p.add_argument("--max-looks", type=int, default=None, help="stop after this many looks")
    p.add_argument("--treatment-error-rate", type=float, default=0.0,
                   help="simulated failure rate of the new version's requests (exercises the guardrails)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated traffic")
    p.set_defaults(func=cmd_canary)

    p = subparsers.add_parser("rollback", help="restore the previous production prompt on every target")
    common(p)
    p.add_argument("--pipeline", default="customer-insights", help="pipeline name (default: customer-insights)")
    p.add_argument("--to", default=None, metavar="VERSION", help="an earlier production version (default: previous)")
    p.add_argument("--model", default=None, help="roll back the prompt deployed for this model only")
    p.add_argument("--reason", default=None, help="why (kept with the deployment event)")
    p.set_defaults(func=cmd_rollback)

    p = subparsers.add_parser("status", help="labels, running canaries, last decisions and deployments")
    common(p)
    p.add_argument("--pipeline", default=None, help="only this pipeline (default: all)")
    p.add_argument("--history", type=int, default=5, help="deployments listed per pipeline (default 5)")
    p.set_defaults(func=cmd_status)
