"""Mirroring a run to LangSmith beside the evaluation: started after the run is recorded, stopped at its end.

    conn = await mirror_connection(config_path, pipeline, requested)   # None: off; before anything is paid
    mirror = start_mirror(conn, config_path, pipeline, store_path, run_id, limit)
    ... the run's cells, as always ...
    report = stop_mirror(mirror)      # a last bounded pass; what is left is counted and logged, never raised

The mirror is a thread of the flow's process (promptcycle/langsmith/mirror.py): it reads what the run has stored
and sends it in batches, so no model call waits on LangSmith. `sync_run` is what `promptcycle langsmith sync`
runs later for what was left.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

from promptcycle.catalog import load_config
from promptcycle.config import effective_langsmith
from promptcycle.errors import ConfigError
from promptcycle.evaluation.context import load_pipeline
from promptcycle.langsmith.connection import LangSmithConnection, connection
from promptcycle.langsmith.mirror import BackgroundMirror, MirrorReport, RunMirror, mirror_source
from promptcycle.store.remote import open_store
from promptcycle_tasks.secrets import aresolve_langsmith_key, resolve_langsmith_key

__all__ = ["mirror_requested", "mirror_connection", "start_mirror", "stop_mirror", "sync_run"]


def mirror_requested(config_path: str, pipeline: str, requested: bool | None) -> bool:
    """`--mirror-langsmith` (True / False) when given, else the pipeline's `langsmith.mirror_runs`."""
    if requested is not None:
        return requested
    return effective_langsmith(load_config(config_path), pipeline).mirror_runs


def _no_key(config_path: str) -> ConfigError:
    return ConfigError("mirroring runs to LangSmith is on, but there is no LangSmith API key: set "
                       "LANGSMITH_API_KEY (or the variable named by langsmith.api_key_env) or name a credentials "
                       "block in langsmith.api_key_block — or turn mirroring off",
                       file=config_path, path="langsmith.mirror_runs", found="true",
                       expected="an API key, or mirror_runs: false")


async def mirror_connection(config_path: str, pipeline: str, requested: bool | None) -> LangSmithConnection | None:
    """The LangSmith connection to mirror the pipeline's runs with; None when mirroring is off. Called before
    anything is recorded or paid: a missing key is a configuration error. Makes no request; starts importing the
    SDK in the background (`LangSmithConnection.preload`)."""
    if not mirror_requested(config_path, pipeline, requested):
        return None
    config = load_config(config_path)
    conn = connection(config, pipeline, await aresolve_langsmith_key(config, pipeline))
    if conn is None:
        raise _no_key(config_path)
    conn.preload()
    return conn


def start_mirror(conn: LangSmithConnection | None, config_path: str, pipeline: str, store_path: str | None,
                 run_id: str, limit: int | None = None) -> BackgroundMirror | None:
    """Start mirroring the run `run_id` (and its arms) in a background thread; None when `conn` is None.

    LangSmith being slow or down never fails or slows the run: the mirror probes it, retries with back-off,
    and what it could not send stays "not mirrored" in the store."""
    if conn is None:
        return None
    logger = get_run_logger()
    try:
        ctx = load_pipeline(config_path, pipeline, limit=limit, store=store_path)
        settings = effective_langsmith(ctx.config, pipeline)
        mirror = RunMirror(conn, open_store(ctx.store_path), mirror_source(ctx, run_id, conn),
                           batch_size=settings.mirror_batch_size)
        background = BackgroundMirror(mirror, interval_s=settings.mirror_interval_seconds,
                                      drain_seconds=settings.mirror_drain_seconds).start()
    except Exception as exc:  # noqa: BLE001 - the run goes on; `langsmith sync` can mirror it later
        logger.warning("not mirroring run %s to LangSmith (%s); `promptcycle langsmith sync %s` can do it later",
                       run_id, conn.scrub(f"{type(exc).__name__}: {exc}"), run_id)
        return None
    logger.info("mirroring run %s to LangSmith at %s in the background", run_id, conn.api_url)
    return background


def stop_mirror(mirror: BackgroundMirror | None, drain_seconds: float | None = None) -> dict[str, Any] | None:
    """Stop a mirror started by `start_mirror`, after a last pass of at most `drain_seconds` (default: the
    pipeline's `langsmith.mirror_drain_seconds`); log and return its report. Never raises."""
    if mirror is None:
        return None
    report: MirrorReport = mirror.stop(drain_seconds if drain_seconds is not None else mirror.drain_seconds)
    logger = get_run_logger()
    (logger.info if report.pending == 0 and report.status_known else logger.warning)(report.summary())
    return report.to_dict()


def sync_run(config_path: str, run_id: str, store_path: str | None = None) -> MirrorReport:
    """Send what the run `run_id` (and its arms) has not mirrored yet; raises `LangSmithUnavailableError` /
    `LangSmithError` when LangSmith refuses or is down (what was sent before that stays recorded)."""
    from promptcycle.evaluation.context import resolve_store_path

    config = load_config(config_path)
    store = open_store(resolve_store_path(config, store_path))
    run = store.get_run(run_id)
    if run is None:
        raise ConfigError(f"no run {run_id!r} in {store.path}", path="RUN_ID", found=run_id,
                          expected="the id of a baseline or optimization run, as `promptcycle baseline` or "
                                   "`optimize` printed it")
    conn = connection(config, run.pipeline, resolve_langsmith_key(config, run.pipeline))
    if conn is None:
        raise _no_key(config_path)
    ctx = load_pipeline(config_path, run.pipeline, store=store_path)
    settings = effective_langsmith(config, run.pipeline)
    return RunMirror(conn, store, mirror_source(ctx, run_id, conn), batch_size=settings.mirror_batch_size).sync()
