"""`promptcycle optimize`: the optimization flow from the command line.

    promptcycle optimize --pipeline customer-insights [--baseline RUN_ID] [--strategies checklist combined]
                         [--max-calls N] [--max-cost USD] [--limit N] [--config …] [--store …] [--json]

Prints the budget estimate before the search spends, then a readable report (or, with --json, one
JSON object: the outcome, the candidate version if any, effect, CI, p-value, N, spend and the whole
candidates table). Exit status 0 for every honest outcome — a candidate found, no significant
improvement, underpowered, budget exhausted —, 1 when the work failed, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

__all__ = ["add_commands", "cmd_optimize"]

OUTCOME_STYLE = {"candidate_found": "bold green", "no_significant_improvement": "yellow",
                 "underpowered": "yellow", "budget_exhausted": "dark_orange"}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, found {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an amount in USD, found {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, found {text}")
    return value


class _StrategiesHelp(str):
    """The --strategies help, naming the registered strategies only when help is shown: the registry
    imports the optimizer, which no other command should wait for at start-up."""

    def __mod__(self, params: object) -> str:
        from promptcycle.optimize.strategies import strategies

        return f"{self}; known: {', '.join(strategies.names())}"


def add_commands(subparsers, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser("optimize", help="search for a better prompt and confirm it on held-out cases",
                              description="Diagnose the baseline, generate candidate prompts, screen them on the "
                              "dev split and confirm the best on the test split with a paired test; the winner "
                              "gets the `candidate` label.")
    common(p)
    p.add_argument("--pipeline", default="customer-insights", help="pipeline name (default: customer-insights)")
    p.add_argument("--baseline", default=None, metavar="RUN_ID",
                   help="baseline run to start from (default: the latest of the configured prompt, run if none)")
    p.add_argument("--strategies", nargs="+", default=None, metavar="NAME",
                   help=_StrategiesHelp("strategies to run (default: the pipeline's)"))
    p.add_argument("--max-calls", type=_positive_int, default=None, metavar="N",
                   help="hard cap on paid calls (default: optimization.max_calls)")
    p.add_argument("--max-cost", type=_positive_float, default=None, metavar="USD",
                   help="hard cap on cost in USD (default: optimization.max_cost_usd)")
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                   help="use only the first N cases of each spectrum (a quick, smaller search)")
    from promptcycle_cli.main import add_mirror_flag

    add_mirror_flag(p)
    p.set_defaults(func=cmd_optimize)


def _strategy_names(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def _check_input(args: argparse.Namespace, names: list[str] | None) -> None:
    """Fail on bad input before Prefect starts: pipeline, strategies, baseline run."""
    from promptcycle.catalog import load_config
    from promptcycle.errors import ConfigError
    from promptcycle.evaluation.context import resolve_store_path
    from promptcycle.optimize.strategies import strategies

    config = load_config(args.config)
    config.pipeline(args.pipeline)
    for name in names or []:
        if name not in strategies:
            raise ConfigError(f"unknown strategy {name!r}; known: {', '.join(strategies.names())}",
                              path="--strategies", found=name, expected="a registered strategy")
    if args.baseline:
        # Through the data worker, which owns the store: DuckDB loaded in this process (which then
        # runs Prefect) ends every command with ~45 lines of nanobind "leaked" warnings at exit.
        from promptcycle.store.remote import open_store

        store_path = resolve_store_path(config, args.store)
        run = open_store(store_path).get_run(args.baseline) if store_path.exists() else None
        if run is None or run.kind != "baseline" or run.pipeline != args.pipeline:
            raise ConfigError(f"no baseline run {args.baseline!r} of pipeline {args.pipeline!r} in {store_path}",
                              path="--baseline", found=args.baseline,
                              expected="the run id of a completed baseline (printed by `promptcycle baseline`)")


def cmd_optimize(args: argparse.Namespace) -> int:
    """Run the optimization flow for one pipeline and report what it found."""
    from promptcycle.evaluation.heap import startup_without_collections

    startup_without_collections()  # until the evaluation starts (promptcycle/evaluation/heap.py)
    from promptcycle_cli.main import _emit, _progress_bar, flow_run_fields, run_flow
    from promptcycle.optimize import budget

    names = _strategy_names(args.strategies)
    _check_input(args, names)
    from promptcycle.quality.worker import warm_up

    warm_up()  # Great Expectations imports in its worker while Prefect starts
    from promptcycle_flows.optimization import optimization
    from promptcycle_cli import local_server

    def print_estimate(estimate) -> None:
        print("\n".join(estimate.lines()), file=sys.stderr)

    if not args.json:
        print(f"Optimizing the prompt of {args.pipeline!r} (Prefect's local server is reused, or started when "
              f"none is running and PREFECT_API_URL is not set; the first start takes ~20 s) …", file=sys.stderr)
        budget.add_estimate_listener(print_estimate)
    try:
        local_server.ready()  # started in the background since the command was parsed
        with _progress_bar(not args.json and sys.stderr.isatty(), plain=not args.json and not sys.stderr.isatty()):
            summary = run_flow(
                optimization, pipeline=args.pipeline, config_path=str(args.config), store_path=args.store,
                baseline_run_id=args.baseline, strategies=names, max_calls=args.max_calls,
                max_cost_usd=args.max_cost, limit=args.limit, mirror_langsmith=args.mirror_langsmith)
    finally:
        budget.remove_estimate_listener(print_estimate)
    _emit(args, {"success": True, **flow_run_fields(), **json.loads(summary.model_dump_json())},
          lambda: print_report(summary))
    return 0


def _pts(x: float | None, signed: bool = True) -> str:
    if x is None:
        return "–"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def print_report(s) -> None:
    """The readable report of an `OptimizationSummary`."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    title = f"{s.pipeline} — optimization{'  [SIMULATED]' if s.simulated else ''}"
    console.print(f"[bold]{title}[/]")
    console.print(f"outcome: [{OUTCOME_STYLE.get(s.outcome, 'bold')}]{s.outcome.replace('_', ' ')}[/]")
    console.print(s.reason)
    if s.effect is not None:
        ev = Table(title="evidence (test split, paired by model × case × repeat, clustered by "
                         f"{s.cluster_unit or 'case'})")
        ev.add_column("")
        ev.add_column("value", justify="right")
        ev.add_row("decision", s.decision)
        ev.add_row("effect (points)", _pts(s.effect))
        ev.add_row(f"{100 * (s.ci_level or 0.9):.0f}% CI (points)", f"{_pts(s.ci_low)} to {_pts(s.ci_high)}")
        ev.add_row("p (one-sided; Holm)", f"{s.p_value:.3g}; {s.adjusted_p_value:.3g}")
        ev.add_row("N cases · observations", f"{s.n_cases} · {s.n_observations} ({s.repeats:g} per case)")
        note = ""
        if s.underpowered:
            note = (f" (above twice the {_pts(s.min_effect, signed=False)}-point minimum effect: the estimate may "
                    "be optimistic)" if s.decision == "promote"
                    else " (underpowered: cannot detect twice the minimum effect)")
        ev.add_row("MDE of the rule at this N (points)", _pts(s.mde, signed=False) + note)
        if s.cluster_unit:
            ev.add_row("clustered by", f"{s.cluster_unit} ({s.n_clusters} clusters)")
        budget = s.error_budget
        if budget.get("scheme") == "spending":
            ev.add_row("error budget", f"confirmation #{budget['index']} against the current prompt: level "
                                       f"{budget['level_per_scope']:.4g} of alpha {budget['alpha']:g} "
                                       f"({budget['remaining_after']:.4g} left)")
        ev.add_row("test quality current → candidate", f"{s.current_test_quality} → {s.candidate_test_quality}")
        ev.add_row("test", s.test or "")
        console.print(ev)
    if s.per_spectrum:
        sp = Table(title="per spectrum (Δ and the harm test's upper bound, points)")
        for col in ("spectrum", "Δ points", "upper bound", "cases", "harmed"):
            sp.add_column(col, justify="left" if col == "spectrum" else "right")
        for row in s.per_spectrum:
            sp.add_row(row["spectrum"], _pts(row["delta"]), _pts(row.get("upper_bound")), str(row["n_cases"]),
                       "[red]yes[/]" if row.get("harmed") else "no")
        console.print(sp)
    if s.candidates:
        ct = Table(title="candidates (dev split)")
        for col in ("candidate", "status", "dev", "Δ dev", "decision", "why not"):
            ct.add_column(col, justify="right" if col in ("dev", "Δ dev") else "left", overflow="fold")
        for row in s.candidates:
            name = f"{row.strategy} {row.hash[:8]}" + (f" ({row.scope})" if row.scope else "")
            ct.add_row(name, row.status, f"{row.dev_quality:.2f}" if row.dev_quality is not None else "–",
                       f"{row.dev_delta:+.2f}" if row.dev_delta is not None else "–", row.decision or "",
                       "; ".join(row.reasons)[:160])
        console.print(ct)
    if s.candidate_hash and s.labelled:
        text = (f"system: {s.candidate_system}\n\n" if s.candidate_system else "") + s.candidate_template
        console.print(Panel(text, title=f"candidate {s.candidate_hash} ({s.candidate_strategy})", expand=False))
        moved = ", ".join(f"{m['hash']}" + (f" for {m['scope']}" if m["scope"] else "") for m in s.labelled)
        console.print(f"label [bold]candidate[/] → {moved}")
    spend = s.spend
    caps = " and ".join(c for c in (f"{s.max_calls:,} calls" if s.max_calls is not None else "",
                                    f"${s.max_cost_usd:g}" if s.max_cost_usd is not None else "") if c) or "no cap"
    console.print(f"spend: {int(spend.get('calls', 0)):,} paid calls, ${spend.get('cost_usd', 0.0):.4f}, "
                  f"{int(spend.get('input_tokens', 0)):,} + {int(spend.get('output_tokens', 0)):,} tokens "
                  f"(budget: {caps})")
    console.print(f"run [bold]{s.run_id}[/] from baseline {s.baseline_run_id}" + (" — resumed" if s.resumed else ""))
    from promptcycle_cli.main import print_mirror_report

    print_mirror_report(console, s.langsmith)
    if s.simulated:
        console.print("[dim]All answers came from the built-in simulator: the gain is within the simulated world, "
                      "not a measurement of real models.[/]")
