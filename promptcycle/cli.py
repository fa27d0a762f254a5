"""The `promptcycle` command line.

Every command takes --config (pipelines.yaml), --store (the DuckDB file) and --json (one JSON object on
stdout for scripts and CI). Exit status: 0 success, 1 the work failed (a data-quality suite, a run),
2 bad input (configuration, dataset, arguments, a store path that is not a metrics store).

Prefect is imported only by the commands that run flows, after the offline defaults below are set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from promptcycle.errors import ConfigError, DataQualityError, DatasetError, PromptcycleError, StorePathError

__all__ = ["main"]

# Offline-friendly Prefect defaults; anything the user set explicitly wins.
OFFLINE_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}


def _apply_offline_defaults() -> None:
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import logging

    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="pipelines.yaml", help="path to pipelines.yaml (default: ./pipelines.yaml)")
    p.add_argument("--store", default=None, help="the DuckDB metrics file (default: the config's `store`)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _emit(args: argparse.Namespace, payload: dict[str, Any], human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(payload, default=str))
    else:
        human()


# -- validate ---------------------------------------------------------------------------------------------------

def cmd_validate(args: argparse.Namespace) -> int:
    """Check pipelines.yaml and run the dataset suite of each pipeline — no model calls."""
    from promptcycle.config import load_config
    from promptcycle.evaluation.context import load_pipeline
    from promptcycle.quality.worker import validate_dataset
    from promptcycle.store.remote import open_store

    config = load_config(args.config)
    names = [args.pipeline] if args.pipeline else sorted(config.pipelines)
    results = {}
    for name in names:
        ctx = load_pipeline(args.config, name, store=args.store)
        report = validate_dataset(ctx.configured_cases, ctx.splits, spectrums=ctx.pipeline.dataset.spectrums,
                                  min_cases_per_spectrum=ctx.pipeline.dataset.min_cases_per_spectrum,
                                  recorded_splits=open_store(ctx.store_path).get_splits(ctx.dataset_key))
        results[name] = {"cases": len(ctx.all_cases), "models": list(ctx.pipeline.models),
                         "spectrums": list(ctx.pipeline.dataset.spectrums), "dataset_suite": report.to_dict(),
                         "summary": report.summary(), "success": report.success}
    ok = all(r["success"] for r in results.values())

    def human() -> None:
        print(f"{args.config}: configuration valid ({len(config.pipelines)} pipeline(s), "
              f"{len(config.models)} models, {len(config.providers)} provider(s))")
        for name, r in results.items():
            print(f"  {name}: {r['cases']} cases, {len(r['models'])} models x {len(r['spectrums'])} spectrums — "
                  f"{r['summary']}")

    _emit(args, {"success": ok, "config": str(args.config), "pipelines": results}, human)
    return 0 if ok else 1


# -- baseline ---------------------------------------------------------------------------------------------------

def _progress_bar(enabled: bool):
    """A rich progress bar fed by promptcycle.evaluation.progress (on stderr, only on a terminal)."""
    from contextlib import contextmanager

    from promptcycle.evaluation import progress

    @contextmanager
    def bar():
        if not enabled:
            yield
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        with Progress(TextColumn("[bold]calls"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), transient=False) as prog:
            task_id = prog.add_task("calls", total=None)

            def listener(done: int, total: int | None) -> None:
                prog.update(task_id, completed=done, total=total)

            progress.add_listener(listener)
            try:
                yield
            finally:
                progress.remove_listener(listener)

    return bar()


def _print_summary(summary) -> None:
    from rich.console import Console
    from rich.table import Table

    colours = {"critical": "red", "warning": "dark_orange", "ok": "yellow", "target": "green",
               "excellent": "magenta"}
    # Off a terminal (CI logs, pipes) rich assumes 80 columns; the matrix needs more.
    console = Console(width=None if sys.stdout.isatty() else 140)
    models = [m.name for m in summary.models]  # best first
    title = f"{summary.pipeline} — baseline quality, points{'  [SIMULATED]' if summary.simulated else ''}"
    table = Table(title=title)
    table.add_column("spectrum")
    for m in models:
        table.add_column(m, justify="right")
    table.add_column("all models", justify="right", style="bold")
    for s in summary.spectrums:
        cells = [summary.cell(m, s.name) for m in models]
        table.add_row(s.name, *[f"[{colours[c.level]}]{c.quality:.1f}[/]" for c in cells],
                      f"[{colours[s.level]}]{s.quality:.1f}[/]")
    table.add_row("[bold]all spectrums[/]", *[f"[bold {colours[m.level]}]{m.quality:.1f}[/]" for m in summary.models],
                  f"[bold {colours[summary.level]}]{summary.quality:.1f}[/]")
    console.print(table)
    lat = Table(title="latency and cost")
    for col in ("model", "mean ms", "p95 ms", "errors", "cost USD"):
        lat.add_column(col, justify="left" if col == "model" else "right")
    for m in summary.models:
        cells = [c for c in summary.cells if c.model == m.name]
        ok = [c for c in cells if c.mean_latency_ms is not None]
        n = sum(c.n - c.errors for c in ok)
        mean = sum(c.mean_latency_ms * (c.n - c.errors) for c in ok) / n if n else float("nan")
        p95 = max((c.p95_latency_ms for c in ok), default=float("nan"))
        lat.add_row(m.name, f"{mean:.0f}", f"{p95:.0f}", str(sum(c.errors for c in cells)),
                    f"{sum(c.cost_usd for c in cells):.4f}")
    console.print(lat)
    console.print(f"run [bold]{summary.run_id}[/] — {summary.rows} results, {summary.errors} errors, "
                  f"{summary.calls_paid} calls paid, {summary.calls_reused} reused from earlier runs, overall "
                  f"[bold]{summary.quality:.1f}[/] ({summary.level})" + (" — resumed" if summary.resumed else ""))
    console.print("Levels (pipelines.yaml thresholds): [red]critical[/] < 85 ≤ [dark_orange]warning[/] < 90 ≤ "
                  "[yellow]ok[/] < 95 ≤ [green]target[/] < 98 ≤ [magenta]excellent[/]. "
                  "The same tables are artifacts of the flow run in the Prefect UI.")
    if summary.simulated:
        console.print("[dim]All answers came from the built-in simulator: the figures describe the simulated "
                      "world, not real models.[/]")


def cmd_baseline(args: argparse.Namespace) -> int:
    """Run the baseline flow for one pipeline."""
    import asyncio

    from promptcycle.config import load_config

    load_config(args.config).pipeline(args.pipeline)  # fail fast on config errors, before Prefect starts
    from promptcycle.quality.worker import warm_up

    warm_up()  # Great Expectations imports in its worker while Prefect starts
    from flows.baseline import baseline

    show_bar = not args.json and sys.stderr.isatty()
    if not args.json:
        print(f"Running the baseline of {args.pipeline!r} (Prefect starts a temporary server unless "
              f"PREFECT_API_URL is set; the first start takes ~20 s) …", file=sys.stderr)
    with _progress_bar(show_bar):
        summary = asyncio.run(baseline(pipeline=args.pipeline, config_path=str(args.config),
                                       store_path=args.store, repeats=args.repeats, limit=args.limit))
    _emit(args, json.loads(summary.model_dump_json()), lambda: _print_summary(summary))
    return 0


# -- sim-server -------------------------------------------------------------------------------------------------

def _share(text: str) -> float:
    """argparse type of the fault rates: a probability."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1 (0.05 = 5% of requests), found {text!r}")
    return value


def _non_negative(text: str) -> float:
    """argparse type of durations: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, found {text!r}")
    return value


def _port(text: str) -> int:
    """argparse type of --port: a TCP port."""
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port (0-65535), found {text!r}")
    return int(text)


def cmd_sim_server(args: argparse.Namespace) -> int:
    """Serve the simulated models over the OpenAI protocol on loopback."""
    from promptcycle.sim.server import FaultConfig, LatencyOverride, run_server

    rates = {"--error-rate": args.error_rate, "--rate-limit-rate": args.rate_limit_rate,
             "--timeout-rate": args.timeout_rate, "--malformed-rate": args.malformed_rate}
    total = sum(rates.values())
    if total > 1.0 + 1e-9:
        raise ConfigError(f"the fault rates sum to {total:g}; they are shares of the same requests and must sum "
                          "to at most 1", path=" + ".join(rates), found=total, expected="a sum <= 1")
    if args.latency_dist == "lognormal" and args.latency_ms == 0:
        raise ConfigError("a lognormal latency needs a mean above 0", path="--latency-ms", found=0,
                          expected="a number > 0 (or --latency-dist fixed)")
    faults = FaultConfig(server_error_rate=args.error_rate, rate_limit_rate=args.rate_limit_rate,
                         retry_after_seconds=args.retry_after, timeout_rate=args.timeout_rate,
                         hang_seconds=args.hang_seconds, malformed_rate=args.malformed_rate, seed=args.seed)
    latency = None
    if args.latency_ms is not None:
        latency = (LatencyOverride(fixed_ms=args.latency_ms) if args.latency_dist == "fixed"
                   else LatencyOverride(mean_ms=args.latency_ms))
    if not args.json:
        print(f"promptcycle simulator (simulated models, not real ones) on http://{args.host}:{args.port}/v1",
              file=sys.stderr)
    run_server(host=args.host, port=args.port, faults=faults, latency=latency)
    return 0


# -- entry point ------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptcycle", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check pipelines.yaml and the datasets (no model calls)")
    _common(p)
    p.add_argument("--pipeline", help="only this pipeline (default: all)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("baseline", help="evaluate a pipeline's prompt across its models x spectrums")
    _common(p)
    p.add_argument("--pipeline", default="customer-insights", help="pipeline name (default: customer-insights)")
    p.add_argument("--repeats", type=int, default=None, help="calls per model x case (default: the pipeline's)")
    p.add_argument("--limit", type=int, default=None, help="only the first N cases of each spectrum")
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("sim-server", help="serve the simulated models over HTTP on 127.0.0.1")
    _common(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8787)
    p.add_argument("--latency-ms", type=_non_negative, default=None, help="override every model's latency (mean, ms)")
    p.add_argument("--latency-dist", choices=["fixed", "lognormal"], default="fixed")
    p.add_argument("--error-rate", type=_share, default=0.0, help="share of requests answered with a 5xx")
    p.add_argument("--rate-limit-rate", type=_share, default=0.0, help="share of requests answered 429")
    p.add_argument("--retry-after", type=_non_negative, default=1.0, help="Retry-After seconds on 429")
    p.add_argument("--timeout-rate", type=_share, default=0.0, help="share of requests that hang")
    p.add_argument("--hang-seconds", type=_non_negative, default=60.0, help="how long a hanging request hangs")
    p.add_argument("--malformed-rate", type=_share, default=0.0, help="share of requests with a malformed body")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault injection")
    p.set_defaults(func=cmd_sim_server)

    import importlib

    from promptcycle.commands import PHASE_MODULES

    for module_name in PHASE_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.add_commands(sub, _common)
    return parser


def main(argv: list[str] | None = None) -> int:
    _apply_offline_defaults()
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("repeats", "limit"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    try:
        return args.func(args)
    except (ConfigError, DatasetError, StorePathError) as exc:
        return _fail(args, exc, 2)
    except DataQualityError as exc:
        return _fail(args, exc, 1)
    except PromptcycleError as exc:
        return _fail(args, exc, 1)
    except KeyboardInterrupt:
        print("interrupted — re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        from promptcycle import dataworker

        dataworker.shutdown()


def _fail(args: argparse.Namespace, exc: Exception, code: int) -> int:
    kind = type(exc).__name__
    if getattr(args, "json", False):
        print(json.dumps({"success": False, "error": kind, "message": str(exc)}))
    else:
        print(f"error ({kind}): {exc}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
