"""`promptcycle langsmith sync`: finish mirroring a run to LangSmith.

    promptcycle langsmith sync RUN_ID [--config …] [--store …] [--json]

Sends the stored results of a baseline or optimization run (all its arms) that LangSmith has not received yet —
after an outage, or for a run made with mirroring off. Re-running it sends nothing twice. Exit status 0 when
everything is mirrored, 1 when LangSmith refused or was down (what was sent stays recorded; run it again).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["add_commands", "cmd_langsmith_sync"]


def add_commands(subparsers, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser("langsmith", help="LangSmith: mirror runs as experiments")
    commands = p.add_subparsers(dest="langsmith_command", required=True, metavar="COMMAND")
    s = commands.add_parser("sync", help="send a run's results LangSmith has not received yet (idempotent)",
                            description="Mirror the stored results of a baseline or optimization run to LangSmith "
                            "as experiments; results already mirrored are not sent again.")
    common(s)
    s.add_argument("run_id", metavar="RUN_ID", help="a baseline or optimization run id (as the command printed it)")
    s.set_defaults(func=cmd_langsmith_sync)


def cmd_langsmith_sync(args: argparse.Namespace) -> int:
    from promptcycle.catalog import load_config
    from promptcycle_cli.main import _emit, existing_store
    from promptcycle_tasks.mirror import sync_run

    store = existing_store(load_config(args.config), args.store, "langsmith sync")  # never creates a store
    report = sync_run(str(args.config), args.run_id, str(store))

    def human() -> None:
        print(report.summary())

    _emit(args, {"success": report.pending == 0, **report.to_dict()}, human)
    return 0 if report.pending == 0 else 1
