"""`promptcycle report`: the state of a pipeline's loop as figures, in one self-contained HTML file.

    promptcycle report [--pipeline NAME] [--out FILE.html] [--no-artifacts] [--no-images]

By default it runs the `report` flow, so the same figures land as artifacts of its flow run in the Prefect UI.
`--no-artifacts` writes the HTML file only, without Prefect (it only reads the store: quick, and fine while other
flows run). It never creates a store: a mistyped --store is an error, not an empty report.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_commands"]


def add_commands(subparsers, common) -> None:
    p = subparsers.add_parser("report", help="the loop's state as figures: one self-contained HTML file, and the "
                                             "same figures as Prefect artifacts")
    common(p)
    p.add_argument("--pipeline", default="customer-insights", help="pipeline name (default: customer-insights)")
    p.add_argument("--out", default=None, metavar="FILE.html",
                   help="where to write the report (default: reports/<pipeline>.html beside the store)")
    p.add_argument("--no-artifacts", action="store_true",
                   help="write the HTML file only; do not run the flow or publish Prefect artifacts")
    p.add_argument("--no-images", action="store_true",
                   help="leave the static PNGs out of the markdown artifacts (their tables stay)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report (and, unless --no-artifacts, publish it as artifacts through the report flow)."""
    from promptcycle.catalog import load_config
    from promptcycle_cli.main import _emit, existing_store, flow_run_fields

    config = load_config(args.config)
    config.pipeline(args.pipeline)  # an unknown pipeline is bad input, said before anything starts
    store_path = existing_store(config, args.store, "report")
    if args.no_artifacts:
        from promptcycle.report import build_report, default_report_path, write_report
        from promptcycle.store.remote import open_store

        report = build_report(open_store(store_path), config, args.pipeline)
        summary = write_report(report, args.out or default_report_path(store_path, args.pipeline)).summary()
    else:
        from promptcycle_cli import local_server
        from promptcycle_cli.main import run_flow
        from promptcycle_flows.report import report as flow

        if not args.json:
            print(f"Writing the report of {args.pipeline!r} (Prefect's local server is reused, or started when none "
                  "is running) …", file=sys.stderr)
        local_server.ready()
        summary = run_flow(flow, pipeline=args.pipeline, config_path=str(args.config), store_path=str(store_path),
                           out=args.out, images=not args.no_images)
    _emit(args, {"success": True, **(flow_run_fields() if not args.no_artifacts else
                                     {"flow_run_id": None, "flow_run_url": None}),
                 **json.loads(summary.model_dump_json())}, lambda: print_report(summary))
    return 0


def print_report(s) -> None:
    label = " [SIMULATED]" if s.simulated else ""
    print(f"{s.pipeline} — report written to {s.path} ({s.bytes / 1e6:.1f} MB, opens offline){label}")
    for f in s.figures:
        state = "drawn" if f.shown else f"nothing yet — {f.missing}"
        print(f"  {f.title}: {state}")
    if s.artifacts:
        print(f"{len(s.artifacts)} artifacts published (Prefect UI → Artifacts, keys report-…-{s.pipeline})")
    if s.empty:
        print(f"The store holds nothing for {s.pipeline!r} yet: start with `promptcycle baseline --pipeline "
              f"{s.pipeline}`.")
