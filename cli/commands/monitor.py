"""`promptcycle monitor`, `promptcycle cycle` and `promptcycle incidents`: the continuous-improvement loop.

    promptcycle monitor [--pipeline NAME] [--no-heal] [--at ISO-TIME] [--config …] [--store …] [--json]
    promptcycle cycle   [--pipeline NAME] [--at ISO-TIME] [--config …] [--store …] [--json]
    promptcycle incidents [--pipeline NAME] [--status open|healing|resolved|escalated] [--limit N] [--json]

`monitor` and `cycle` run their flow (Prefect's local server is reused or started); `incidents` reads the store
directly. Exit status 0 for every honest outcome (pages, escalations included), 1 when the work failed, 2 for bad
input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime, timezone

__all__ = ["add_commands", "cmd_monitor", "cmd_incidents"]


def _time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO-8601 time such as 2026-12-02T14:30:00Z, found {text!r}"
                                         ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def add_commands(subparsers, common: Callable[[argparse.ArgumentParser], None]) -> None:
    for name, help_text in (("monitor", "one monitor pass: observe, assess, alert, and heal what degraded"),
                            ("cycle", "one pass of the continuous-improvement loop (what a schedule runs)")):
        p = subparsers.add_parser(name, help=help_text, description=help_text)
        common(p)
        p.add_argument("--pipeline", default="customer-insights", help="pipeline name (default: customer-insights)")
        p.add_argument("--at", type=_time, default=None, metavar="TIME",
                       help="the pass's clock, ISO-8601 UTC (default: now); for replays and drills")
        if name == "monitor":
            p.add_argument("--no-heal", action="store_true",
                           help="make and record healing decisions, run none")
        p.set_defaults(func=cmd_monitor, flow_name=name)
    p = subparsers.add_parser("incidents", help="incidents and their timelines: alert → healing → deployment → "
                              "canary → resolved / escalated")
    common(p)
    p.add_argument("--pipeline", default=None, help="only this pipeline's incidents")
    p.add_argument("--status", choices=["open", "healing", "resolved", "escalated"], default=None)
    p.add_argument("--limit", type=int, default=20, help="incidents listed, newest first (default 20)")
    p.set_defaults(func=cmd_incidents)


def cmd_monitor(args: argparse.Namespace) -> int:
    """Run the monitor (or cycle) flow for one pipeline and report what it saw and did."""
    from promptcycle_cli import local_server
    from promptcycle_cli.main import _emit, flow_run_fields, run_flow
    from promptcycle.catalog import load_config

    load_config(args.config).pipeline(args.pipeline)  # bad input fails before Prefect starts
    if args.flow_name == "cycle":
        from promptcycle_flows.cycle import cycle as flow
    else:
        from promptcycle_flows.monitor import monitor as flow
    if not args.json:
        print(f"Monitoring {args.pipeline!r} (Prefect's local server is reused, or started when none is running) …",
              file=sys.stderr)
    local_server.ready()
    params = {"pipeline": args.pipeline, "config_path": str(args.config), "store_path": args.store, "now": args.at}
    if args.flow_name == "monitor":
        params["heal"] = not args.no_heal
    summary = run_flow(flow, **params)
    _emit(args, {"success": True, **flow_run_fields(), "pages": summary.pages,
                 **json.loads(summary.model_dump_json())}, lambda: print_monitor(summary))
    return 0


def print_monitor(s) -> None:
    label = " [SIMULATED]" if s.simulated else ""
    print(f"{s.pipeline} — monitor run {s.monitor_run_id} (period {s.period}, {s.now:%Y-%m-%d %H:%M} UTC){label}"
          + (" — resumed" if s.resumed else ""))
    by_source: dict[str, int] = {}
    for o in s.observations:
        by_source[o["source"]] = by_source.get(o["source"], 0) + 1
    print(f"observations: {by_source.get('production', 0)} series from production, {by_source.get('probe', 0)} "
          f"from the probe ({s.probe_calls} paid probe calls)")
    print(f"{'model':<10} {'spectrum':<24} {'latest':>7} {'n':>5}  {'baseline':>9}  state")
    for x in s.series:
        out = [f"{f['detector']}={f['severity']}" for f in x.findings if not f["in_control"]]
        print(f"{x.model:<10} {x.spectrum:<24} {'–' if x.value is None else f'{x.value:.1f}':>7} {x.n:>5}  "
              f"{'collect.' if not x.baseline_ready else f'{x.baseline_mean:.1f}':>9}  "
              f"{', '.join(out) or 'in control'}")
    paged = [e for e in s.alert_events if e.get("notify")]
    print(f"alerts: {len(s.alert_events)} event(s), {len(paged)} paged")
    for e in paged:
        print(f"  alert {e['alert_id']} {e['kind']} {e['severity']}: {e['message'][:120]}")
    for h in s.healings:
        print(f"healing {h.decision_id}: {h.outcome} — {h.reason} ({h.calls} calls, ${h.cost_usd:.4f})")
    for h in s.started_healings:
        print(f"healing {h['parameters'].get('decision_id')}: started as flow run {h['flow_run_name']} of "
              f"{h['deployment']} (served; it records its outcome on the incident) {h['flow_run_url'] or ''}".rstrip())
    for h in s.refused_healings:
        print(f"healing decided, not run: {h['decision_id']} ({h['model']} × {h['spectrum']})")


def cmd_incidents(args: argparse.Namespace) -> int:
    """List incidents with their timelines (reads the store; no Prefect)."""
    from promptcycle_cli.main import _emit, existing_store
    from promptcycle.catalog import load_config
    from promptcycle.errors import ConfigError
    from promptcycle.monitor.report import incident_lines
    from promptcycle.store.remote import open_store

    if args.limit < 1:
        raise ConfigError("--limit must be at least 1", path="--limit", found=args.limit, expected="a positive number")
    config = load_config(args.config)
    if args.pipeline:
        config.pipeline(args.pipeline)
    store = open_store(existing_store(config, args.store, "incidents"))
    found = store.incidents(args.pipeline, status=args.status, limit=args.limit)

    def human() -> None:
        if not found:
            print("no incidents")
        for inc in found:
            print("\n".join(incident_lines(inc)))

    _emit(args, {"success": True, "incidents": found}, human)
    return 0
