"""The `promptcycle` command line.

Every command takes --config (pipelines.yaml), --store (the DuckDB file), --json (one JSON object on
stdout for scripts and CI, always with `success`, `flow_run_id` and `flow_run_url`) and --debug
(tracebacks on the terminal). Exit status: 0 success, 1 the work failed (a data-quality suite, a run),
2 bad input (configuration, dataset, store path, arguments), 3 Prefect's API unreachable, 130 interrupted.

Prefect is imported only by the commands that run flows, after the offline defaults below are set.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from promptcycle.errors import ConfigError, DatasetError, PromptcycleError, StorePathError

__all__ = ["main"]

# Offline-friendly Prefect defaults; anything the user set explicitly wins.
OFFLINE_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # Flow and task run logs reach the Prefect API (the UI's Logs tab) at INFO; only the console is quiet.
    "PREFECT_LOGGING_LEVEL": "INFO",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    # Prefect's temporary server is a child process writing to the user's terminal; Ctrl-C reaches it too,
    # and its shutdown errors would bury the one-line message.
    "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
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
    p.add_argument("--debug", action="store_true", help="show tracebacks and Prefect's errors on the terminal "
                   "(by default they go to a log file, named when something fails)")


def add_mirror_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mirror-langsmith", action=argparse.BooleanOptionalAction, default=None,
                   help="mirror the results to LangSmith as experiments, in the background (default: the config's "
                        "langsmith.mirror_runs; needs LANGSMITH_API_KEY or a credentials block)")


def print_mirror_report(console, report: dict | None) -> None:
    """One line on the LangSmith mirror, when it was on: everything mirrored, or how much was not and how to
    finish."""
    if not report:
        return
    from rich.markup import escape

    from promptcycle.langsmith.mirror import MirrorReport

    text = escape(MirrorReport(**report).summary())  # an error text may hold [brackets]
    style = "green" if report["pending"] == 0 and report["status_known"] else "dark_orange"
    console.print(f"[{style}]{text}[/]", highlight=False)


def _emit(args: argparse.Namespace, payload: dict[str, Any], human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(payload, default=str))
    else:
        human()


def existing_store(config, store: str | None, command: str) -> Path:
    """The store a read-only command reads: it must exist (a mistyped --store must not create an empty one)."""
    from promptcycle.evaluation.context import resolve_store_path

    path = resolve_store_path(config, store)
    if not path.exists():
        where = "--store" if store else f"`store` in {config.source_path or 'pipelines.yaml'}"
        raise StorePathError(f"no metrics store at {path} (from {where}); `{command}` reads an existing store: "
                             "check the path, or create the store by running `promptcycle baseline`")
    return path


# -- validate ---------------------------------------------------------------------------------------------------

def cmd_validate(args: argparse.Namespace) -> int:
    """Check pipelines.yaml and run the dataset suite of each pipeline — no model calls."""
    from promptcycle.catalog import load_config
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
                                  recorded_splits=open_store(ctx.store_path).get_splits(ctx.dataset_key),
                                  reuse_verdict=False)  # an explicit check always runs the suite
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

    _emit(args, {"success": ok, **flow_run_fields(), "config": str(args.config), "pipelines": results}, human)
    return 0 if ok else 1


# -- baseline ---------------------------------------------------------------------------------------------------

PROGRESS_LINE_SECONDS = 5.0


def _progress_bar(enabled: bool, plain: bool = False, interval: float = PROGRESS_LINE_SECONDS):
    """Progress fed by promptcycle.evaluation.progress, on stderr: a rich bar naming the phase on a terminal
    (`enabled`); off one (`plain`), a plain line when a phase starts, every `interval` seconds and when it
    ends, e.g. "screening on dev: 1,234/5,000 calls, 3 errors"."""
    from contextlib import contextmanager

    from promptcycle.evaluation import progress

    @contextmanager
    def bar():
        if enabled:
            with _rich_bar(progress):
                yield
        elif plain:
            with _plain_lines(progress, interval):
                yield
        else:
            yield

    return bar()


def _rich_bar(progress):
    from contextlib import contextmanager

    @contextmanager
    def bar():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[errors]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                      transient=False) as prog:
            task_id = prog.add_task("calls", total=None, errors="")

            def listener(done: int, total: int | None) -> None:
                now = progress.snapshot()
                prog.update(task_id, completed=done, total=total, description=now.phase,
                            errors=f"{now.errors:,} errors" if now.errors else "")

            progress.add_listener(listener)
            try:
                yield
            finally:
                progress.remove_listener(listener)

    return bar()


def _plain_lines(progress, interval: float):
    import threading
    import time
    from contextlib import contextmanager

    @contextmanager
    def lines():
        lock = threading.Lock()
        last = {"line": None, "at": 0.0, "phase": None}

        def emit(line: str) -> None:
            print(line, file=sys.stderr, flush=True)
            last["line"], last["at"] = line, time.monotonic()

        def listener(done: int, total: int | None) -> None:
            now = progress.snapshot()
            with lock:
                if now.phase != last["phase"] or (total is not None and done >= total):
                    last["phase"] = now.phase
                    if now.line() != last["line"]:
                        emit(now.line())

        stop = threading.Event()

        def ticker() -> None:
            while not stop.wait(min(interval, 1.0)):
                with lock:
                    line = progress.snapshot().line()
                    if last["phase"] is not None and time.monotonic() - last["at"] >= interval \
                            and line != last["line"]:
                        emit(line)

        thread = threading.Thread(target=ticker, name="promptcycle-progress", daemon=True)
        progress.add_listener(listener)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            progress.remove_listener(listener)
            thread.join(timeout=2)

    return lines()


def _print_summary(summary, thresholds=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from promptcycle.config import Thresholds

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
                  f"{summary.calls_paid} call{'' if summary.calls_paid == 1 else 's'} paid, {summary.calls_reused} reused "
                  f"from earlier runs, overall "
                  f"[bold]{summary.quality:.1f}[/] ({summary.level})" + (" — resumed" if summary.resumed else ""))
    t = thresholds or Thresholds()
    console.print(f"Levels (pipelines.yaml thresholds): [red]critical[/] < {t.critical:g} ≤ [dark_orange]warning[/] < "
                  f"{t.warning:g} ≤ [yellow]ok[/] < {t.target:g} ≤ [green]target[/] < {t.excellent:g} ≤ "
                  "[magenta]excellent[/]. The same tables are artifacts of the flow run in the Prefect UI.")
    if summary.truncated:
        console.print(f"[dark_orange]{summary.truncated} answers were cut at max_tokens[/] (finish_reason "
                      "\"length\"; scored as they came, flagged in results.finish_reason).", markup=True)
    if summary.tokens_estimated:
        console.print(f"{summary.tokens_estimated} answers' token counts were estimated locally (the provider's "
                      "were missing or implausible); their cost uses the estimate (results.tokens_source).")
    if summary.provider_errors:
        console.print("[red]provider errors[/] (the provider's status and message):")
        for line in summary.provider_errors:
            console.print(f"  {line}", markup=False, highlight=False)
    print_mirror_report(console, summary.langsmith)
    if summary.simulated:
        console.print("[dim]All answers came from the simulator (SIMULATED): the figures describe the simulated "
                      "world, not real models.[/]")


def _preload_pipeline(config: Path | str, pipeline: str, *, limit: int | None, store: str | None) -> None:
    """Load the pipeline (dataset, splits — opening, or creating, the store in the data worker) in a thread
    while Prefect is imported; the flow's first step finds it loaded (`load_pipeline` keeps it). A failure
    is left for the flow, which meets the same one and reports it."""
    from promptcycle.evaluation.context import load_pipeline

    def load() -> None:
        try:
            load_pipeline(config, pipeline, limit=limit, store=store)
        except Exception:  # noqa: BLE001 - reported by the flow's own load
            pass

    threading.Thread(target=load, name="promptcycle-preload", daemon=True).start()


def cmd_baseline(args: argparse.Namespace) -> int:
    """Run the baseline flow for one pipeline."""
    from promptcycle.evaluation.heap import startup_without_collections

    startup_without_collections()  # until the cells start (promptcycle/evaluation/heap.py)
    from promptcycle.catalog import load_config

    load_config(args.config).pipeline(args.pipeline)  # fail fast on config errors, before Prefect starts
    from promptcycle.quality.worker import warm_up

    warm_up(gx=False)  # the data worker starts while Prefect is imported; Great Expectations after the dataset gate
    _preload_pipeline(args.config, args.pipeline, limit=args.limit, store=args.store)
    from promptcycle_flows.baseline import baseline
    from promptcycle_cli import local_server

    if not args.json:
        print(f"Running the baseline of {args.pipeline!r} (Prefect's local server is reused, or started when "
              f"none is running and PREFECT_API_URL is not set; the first start takes ~20 s) …", file=sys.stderr)
    local_server.ready()  # started in the background since the command was parsed
    with _progress_bar(not args.json and sys.stderr.isatty(), plain=not args.json and not sys.stderr.isatty()):
        summary = run_flow(baseline, pipeline=args.pipeline, config_path=str(args.config),
                           store_path=args.store, repeats=args.repeats, limit=args.limit,
                           mirror_langsmith=args.mirror_langsmith)
    _emit(args, {"success": True, **flow_run_fields(), **json.loads(summary.model_dump_json())},
          lambda: _print_summary(summary, _thresholds_of(args)))
    return 0


def _thresholds_of(args: argparse.Namespace):
    """The pipeline's thresholds, for the summary's legend (the levels were computed with them)."""
    from promptcycle.catalog import load_config

    return load_config(args.config).pipelines[args.pipeline].thresholds


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


def require_free_port(host: str, port: int) -> None:
    """ConfigError on --port when `host`:`port` cannot be bound: a taken port is bad input (exit 2), said before
    the server starts."""
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"{host}:{port} is already in use or cannot be bound ({exc.strerror})",
                              path="--port", expected="a free port (or stop what listens there)") from None


def cmd_sim_server(args: argparse.Namespace) -> int:
    """Serve the simulated models over the OpenAI protocol on loopback."""
    from promptcycle.sim.drift import DriftSchedule, parse_drift
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
    drifts = []
    for text in args.drift or []:
        try:
            drifts.append(parse_drift(text))
        except ValueError as exc:
            raise ConfigError(str(exc), path="--drift", found=text,
                              expected="kind:model:spectrum:size[@calls|@ISO-time]") from None
    api_key = None
    if args.api_key_env:  # read from the environment, never from argv (which `ps` shows)
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ConfigError(f"environment variable {args.api_key_env} is not set", path="--api-key-env",
                              found=args.api_key_env, expected="a set environment variable holding the key")
    require_free_port(args.host, args.port)
    if not args.json:
        print(f"promptcycle simulator (simulated models, not real ones) on http://{args.host}:{args.port}/v1"
              + (" (requires an API key)" if api_key else ""), file=sys.stderr)
        for d in drifts:
            print(f"  drift: {d.label()}", file=sys.stderr)
    run_server(host=args.host, port=args.port, faults=faults, latency=latency, require_api_key=api_key,
               drift=DriftSchedule(drifts))
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
    add_mirror_flag(p)
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
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="answer 401 unless requests carry the key held in this environment variable")
    p.add_argument("--drift", action="append", metavar="KIND:MODEL:SPECTRUM:SIZE[@CALLS|@TIME]",
                   help="a simulated drift, e.g. skill_loss:sim-small:credit_analysis:5@1000 (repeatable; "
                        "kinds: skill_loss, field_omission, question_mix, latency, error_rate)")
    p.set_defaults(func=cmd_sim_server)

    import importlib

    from promptcycle_cli.commands import PHASE_MODULES

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
    """Run `promptcycle ARGV` (None: this process's own arguments; a flow command then runs in a fork of the
    command host when one serves, cli/host.py)."""
    _apply_offline_defaults()
    if argv is None:
        from promptcycle_cli import host, local_server

        hosted = host.run_hosted(sys.argv[1:], local_server.FLOW_COMMANDS)
        if hosted is not None:
            return hosted
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("repeats", "limit"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    from promptcycle.evaluation import progress

    _start_session(args)
    _use_worker_host(args.command)
    # Whether this process started a run, resumed one, or was refused: said on stderr, whatever --json.
    note = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    progress.add_note_listener(note)
    terminated = None
    try:
        with _prefect_server(args.command, runs_flow=not getattr(args, "no_artifacts", False)):
            return args.func(args)
    except (Exception, KeyboardInterrupt) as exc:  # every failure becomes one clear message and an exit status
        return _present_error(args, exc)
    except BaseException as exc:
        terminated = _termination_signal(exc)
        if terminated is None:
            raise
        _announce_termination(args, exc, terminated)
        raise
    finally:
        from promptcycle import dataworker

        dataworker.shutdown()
        dataworker.start_missing_host()  # for the next command, if this one found none
        dataworker.use_host(None)
        _end_session()
        if terminated is not None:  # end by the signal, as a process without Prefect's handler would
            import signal

            sys.stderr.flush()
            signal.signal(terminated, signal.SIG_DFL)
            os.kill(os.getpid(), terminated)


def _use_worker_host(command: str) -> None:
    """Commands that run flows take their data worker from the command host beside Prefect's local server (in
    the Prefect home), which has DuckDB, pandas and Great Expectations imported already (cli/host.py,
    promptcycle/workerhost.py); a command that finds none starts it as it ends."""
    from promptcycle_cli import host, local_server

    if command in local_server.FLOW_COMMANDS:
        from promptcycle import dataworker

        dataworker.use_host(host.prefect_home_directory(), module=host.MODULE)


def _prefect_server(command: str, runs_flow: bool = True):
    """Prefect's local server for commands that run flows, started in the background (cli/local_server.py)."""
    from promptcycle_cli import local_server

    return local_server.serving(command, runs_flow)


# -- running a flow, and what a user sees when something fails -------------------------------------------------
#
# Exit status: 0 success; 1 the work failed (a data-quality suite, a run; re-running resumes); 2 bad input
# (configuration, dataset, prompt, store path, arguments, a missing key or concurrency limit); 3 Prefect's API
# could not be reached (PREFECT_API_URL); 130 interrupted (Ctrl-C; re-running resumes).
# The first screen is the message. Tracebacks and Prefect's error records go to a log file under
# $PROMPTCYCLE_LOG_DIR (default: $PREFECT_HOME/promptcycle-logs), named when a command fails; --debug
# shows them on the terminal instead.

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_PREFECT_UNREACHABLE, EXIT_INTERRUPTED = 1, 2, 3, 130
_KEEP_LOGS = 50


class _Session:
    """What the error presentation needs to know about the command being run (reset by each `main`)."""

    debug = False
    log_path: Path | None = None
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    final_state: str | None = None
    json = False
    ran_flow = False
    interrupt_announced = False
    restore: list[Callable[[], None]] = []  # undo what the session changed in the process (tests call main)


def _log_dir() -> Path:
    if os.environ.get("PROMPTCYCLE_LOG_DIR"):
        return Path(os.environ["PROMPTCYCLE_LOG_DIR"]).expanduser()
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser() / "promptcycle-logs"


def _start_session(args: argparse.Namespace) -> None:
    import threading
    from datetime import datetime

    _Session.debug = bool(getattr(args, "debug", False))
    _Session.log_path = _log_dir() / f"{args.command}-{datetime.now():%Y%m%dT%H%M%S}-{os.getpid()}.log"
    _Session.flow_run_id = _Session.flow_run_url = _Session.final_state = None
    _Session.json = bool(getattr(args, "json", False))
    _Session.ran_flow = _Session.interrupt_announced = False
    _Session.restore = []
    if not _Session.debug:
        previous = threading.excepthook
        # A traceback from a helper thread belongs in the log, not on the user's screen.
        threading.excepthook = lambda hook_args: _write_log(
            f"exception in thread {getattr(hook_args.thread, 'name', '?')}", hook_args.exc_value)
        _Session.restore.append(lambda: setattr(threading, "excepthook", previous))


def _end_session() -> None:
    for undo in reversed(_Session.restore):
        undo()
    _Session.restore = []


def _write_log(title: str, exc: BaseException | None = None) -> Path | None:
    """Append `title` and the traceback of `exc` to this command's log file; its path, or None if unwritable."""
    import traceback

    path = _Session.log_path
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as log:
            log.write(title + "\n")
            if exc is not None:
                log.write("".join(traceback.format_exception(exc)))
        for old in sorted(path.parent.glob("*.log"), key=lambda p: p.stat().st_mtime)[:-_KEEP_LOGS]:
            old.unlink(missing_ok=True)
    except OSError:
        return None
    return path


class _ConsoleFilter(logging.Filter):
    """Keeps error records and tracebacks of the engine off the terminal (they go to the log file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR and not record.exc_info


def _route_engine_logs() -> None:
    """Once Prefect is imported (it configures logging then): errors and tracebacks to the log file, and
    off the terminal unless --debug."""
    root = logging.getLogger()
    if _Session.log_path is not None and not any(getattr(h, "_promptcycle", False) for h in root.handlers):
        try:
            _Session.log_path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(_Session.log_path, delay=True, encoding="utf-8")
        except OSError:
            handler = None
        if handler is not None:
            handler._promptcycle = True  # type: ignore[attr-defined]
            handler.setLevel(logging.WARNING)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s - %(message)s"))
            root.addHandler(handler)
            _Session.restore.append(lambda: (root.removeHandler(handler), handler.close()))
    if _Session.debug:
        return
    # Prefect's client reports a failed log upload on stderr unless logging.raiseExceptions is off.
    raise_exceptions, logging.raiseExceptions = logging.raiseExceptions, False
    _Session.restore.append(lambda: setattr(logging, "raiseExceptions", raise_exceptions))
    loggers = [root] + [logger for logger in logging.root.manager.loggerDict.values()
                        if isinstance(logger, logging.Logger)]  # prefect._internal has a console of its own
    for console in {id(h): h for logger in loggers for h in logger.handlers}.values():
        if (isinstance(console, logging.StreamHandler) and not isinstance(console, logging.FileHandler)
                and not any(isinstance(f, _ConsoleFilter) for f in console.filters)):
            quiet = _ConsoleFilter()
            console.addFilter(quiet)
            _Session.restore.append(lambda console=console, quiet=quiet: console.removeFilter(quiet))


def _announce_interrupt() -> None:
    """The one line Ctrl-C prints; after it, the engine's complaints about the stopped server stay quiet."""
    if _Session.interrupt_announced:
        return
    _Session.interrupt_announced = True
    print("interrupted — re-run the same command to resume", file=sys.stderr, flush=True)
    if not _Session.debug:
        logging.disable(logging.CRITICAL)
        _Session.restore.append(lambda: logging.disable(logging.NOTSET))


INTERRUPT_GRACE_S = 5.0


def _exit_interrupted() -> None:
    """Exit at once after Ctrl-C during a flow. A normal exit would wait on Prefect's exit handlers, which
    keep sending the run's events to a temporary server that the same Ctrl-C has stopped (minutes)."""
    _announce_interrupt()
    server = sys.modules.get("prefect.server.api.server")
    for instance in list(getattr(getattr(server, "SubprocessASGIServer", None), "_instances", {}).values()):
        try:
            instance.stop()  # Prefect's temporary server, if the Ctrl-C did not reach it
        except Exception:  # noqa: BLE001
            pass
    from promptcycle import dataworker

    dataworker.shutdown()  # it finishes the call in hand (it ignores Ctrl-C) and exits
    sys.stdout.flush()
    os._exit(EXIT_INTERRUPTED)


def run_flow(flow: Any, **parameters: Any) -> Any:
    """Run `flow(**parameters)` to its result and remember its flow run (id and UI URL) for the command's
    output; the flow's own exception is raised as it was.

    Ctrl-C cancels the flow (Prefect records it as crashed) and raises KeyboardInterrupt. Ctrl-C in a
    terminal also stops Prefect's temporary server, and the cancellation can then wait forever on it: after
    INTERRUPT_GRACE_S, or at a second Ctrl-C, the command exits at once (a re-run resumes either way)."""
    import asyncio
    import signal
    import threading

    _route_engine_logs()
    _Session.ran_flow = True
    interrupted: list[threading.Timer] = []

    async def run() -> Any:
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()

        def on_interrupt() -> None:
            if interrupted:
                _exit_interrupted()
            _announce_interrupt()
            timer = threading.Timer(INTERRUPT_GRACE_S, _exit_interrupted)
            timer.daemon = True
            interrupted.append(timer)
            timer.start()
            main.cancel()

        try:
            loop.add_signal_handler(signal.SIGINT, on_interrupt)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no signals here
            pass
        try:
            return await run_to_result()
        finally:
            try:
                loop.remove_signal_handler(signal.SIGINT)
            except (ValueError, RuntimeError, NotImplementedError):
                pass

    async def run_to_result() -> Any:
        state = await flow(**parameters, return_state=True)
        flow_run_id = state.state_details.flow_run_id
        _Session.final_state = state.name
        if flow_run_id is not None:
            from promptcycle_tasks.runs import flow_run_url

            _Session.flow_run_id = str(flow_run_id)
            try:
                _Session.flow_run_url = flow_run_url(flow_run_id)
            except Exception:  # noqa: BLE001 - a URL is a convenience; no UI (temporary server) gives None
                _Session.flow_run_url = None
            if not _Session.json:
                print(_flow_run_line(), file=sys.stderr)
        return await state.aresult()

    try:
        return asyncio.run(run())
    except BaseException:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        for timer in interrupted:
            timer.cancel()


def _flow_run_line() -> str:
    if _Session.flow_run_url:
        return f"flow run: {_Session.flow_run_url}"
    return (f"flow run {_Session.flow_run_id} (no Prefect UI serves this run: set PREFECT_API_URL to a Prefect "
            "server to keep runs, logs and artifacts in its UI)")


def final_state_name() -> str | None:
    """The name of the last flow run's final state (e.g. `Promoted`, `RolledBack`, `Completed`)."""
    return _Session.final_state


def flow_run_fields() -> dict[str, str | None]:
    """`flow_run_id` and `flow_run_url` for every command's JSON (null when it ran no flow, or there is no UI:
    Prefect's temporary server ends with the command)."""
    return {"flow_run_id": _Session.flow_run_id, "flow_run_url": _Session.flow_run_url}


def _termination_signal(exc: BaseException) -> int | None:
    """The signal number when `exc` is Prefect's TerminationSignal (its flow engine turns SIGTERM during a flow
    run into that exception), else None."""
    exceptions = sys.modules.get("prefect.exceptions")
    if exceptions is not None and isinstance(exc, exceptions.TerminationSignal):
        return int(getattr(exc, "signal", 15))
    return None


def _announce_termination(args: argparse.Namespace, exc: BaseException, signum: int) -> None:
    log = _write_log(f"promptcycle {args.command} terminated by signal {signum}", exc)
    print(f"terminated (signal {signum}) — re-run the same command to resume"
          + (f"; details: {log}" if log is not None and _Session.ran_flow else ""), file=sys.stderr, flush=True)


def _prefect_api_failure(exc: BaseException) -> str | None:
    """The message when `exc` is Prefect's client failing to reach (or be answered by) its API, else None."""
    httpx = sys.modules.get("httpx")
    if httpx is None or isinstance(exc, PromptcycleError):
        return None
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (httpx.TransportError, httpx.HTTPStatusError)):
            break
        cause = cause.__cause__ or cause.__context__
    else:
        return None
    configured = os.environ.get("PREFECT_API_URL")
    if "prefect" in sys.modules:
        try:
            from prefect.settings import PREFECT_API_URL

            configured = PREFECT_API_URL.value() or configured
        except Exception:  # noqa: BLE001
            pass
    detail = str(cause) or type(cause).__name__
    if isinstance(cause, httpx.HTTPStatusError):
        what = f"the Prefect API at {configured or cause.request.url} answered {cause.response.status_code}"
    else:
        what = f"cannot reach the Prefect API at {configured}" if configured else \
            "lost the connection to Prefect's temporary server"
    if configured:
        todo = ("start that server (`prefect server start`), point PREFECT_API_URL at a running one, or unset "
                "PREFECT_API_URL to let promptcycle reuse (or start) its local server")
    else:
        todo = "re-run the same command to resume"
    return f"{what} ({detail}): {todo}"


def _present_error(args: argparse.Namespace, exc: BaseException) -> int:
    """Print one clear message for `exc` (the traceback goes to the log file, or the terminal with --debug)
    and return the exit status."""
    import signal
    import traceback

    if isinstance(exc, KeyboardInterrupt):
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up
        _Session.restore.append(lambda: signal.signal(signal.SIGINT, previous))
        if _Session.debug:
            traceback.print_exception(exc, file=sys.stderr)
        _announce_interrupt()
        if _Session.ran_flow:
            _exit_interrupted()
        return EXIT_INTERRUPTED
    kind = type(exc).__name__
    message = str(exc) or kind
    api_failure = _prefect_api_failure(exc)
    if api_failure is not None:
        code, kind, message = EXIT_PREFECT_UNREACHABLE, "PrefectAPIUnreachable", api_failure
    elif isinstance(exc, (ConfigError, DatasetError, StorePathError)):
        code = EXIT_BAD_INPUT
    elif isinstance(exc, PromptcycleError):
        code = EXIT_FAILED
    else:
        code, message = EXIT_FAILED, f"{message} (unexpected: please report it with the log below)"
    log = None
    if code != EXIT_BAD_INPUT:
        log = _write_log(f"promptcycle {args.command} failed: {kind}: {message}", exc)
    if getattr(args, "json", False):
        print(json.dumps({"success": False, "error": kind, "message": message, "exit_code": code,
                          **flow_run_fields(), "log": str(log) if log else None}))
        return code
    if _Session.debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"error ({kind}): {message}", file=sys.stderr)
    if _Session.flow_run_url or _Session.flow_run_id:
        print(f"  flow run: {_Session.flow_run_url or _Session.flow_run_id}", file=sys.stderr)
    if log is not None and not _Session.debug:
        print(f"  details and traceback: {log} (or re-run with --debug)", file=sys.stderr)
    return code


if __name__ == "__main__":
    # `python -m promptcycle_cli.main` runs this file as __main__: run the importable module instead, so that the
    # phase commands (which import promptcycle_cli.main) share its state — the flow run, the log file.
    from promptcycle_cli.main import main as _main

    sys.exit(_main())
