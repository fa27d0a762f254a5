"""`promptcycle learning`: what past optimizations learned about the strategies, per context.

    promptcycle learning [--pipeline NAME] [--memory N] [--json]

One row per strategy x context (pipeline, model scope, spectrum, failure kind): candidates tried, how
many beat the current prompt by the minimum effect, the success posterior (mean and 90% interval),
the effect posterior (points) and the calls spent. Reads the store only: no Prefect, no model calls.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from promptcycle.cli import existing_store

__all__ = ["add_commands"]


def cmd_learning(args: argparse.Namespace) -> int:
    from promptcycle.config import load_config
    from promptcycle.optimize.learning import learning_markdown, learning_table, outcomes_from_rows
    from promptcycle.store import MetricsStore

    config = load_config(args.config)
    if args.pipeline:
        config.pipeline(args.pipeline)  # an unknown name is bad input, listing the known ones
    memory = args.memory
    if memory is None:
        pipes = [config.pipelines[args.pipeline]] if args.pipeline else list(config.pipelines.values())
        memory = max(p.optimization.learning_memory for p in pipes)
    store = MetricsStore(existing_store(config, args.store, "learning"))
    stored = store.strategy_outcomes(args.pipeline)
    rows = learning_table(outcomes_from_rows(stored), memory=memory)
    simulated = any(r["simulated"] for r in stored)
    if args.json:
        print(json.dumps({"success": True, "pipeline": args.pipeline, "memory": memory, "simulated": simulated,
                          "strategies": rows}, default=str))
    else:
        sys.stdout.write(learning_markdown(rows, memory=memory, simulated=simulated))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, found {text}")
    return value


def add_commands(subparsers, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser("learning", help="what past optimizations learned about each strategy, per context",
                              description="The strategy posteriors that `strategies: auto` spends the candidate "
                              "budget by: success (beat the current prompt by the minimum effect) and effect size, "
                              "per strategy x context, over the last N optimizations.")
    common(p)
    p.add_argument("--pipeline", default=None, help="only this pipeline (default: all)")
    p.add_argument("--memory", type=_positive_int, default=None, metavar="N",
                   help="optimizations to remember (default: optimization.learning_memory)")
    p.set_defaults(func=cmd_learning)
