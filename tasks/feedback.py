"""Production feedback from LangSmith for the monitor: read before the monitor plans its period."""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from promptcycle.evaluation.context import load_pipeline
from promptcycle.langsmith.connection import connection
from promptcycle.langsmith.feedback import read_production_feedback
from promptcycle.monitor.watch import production_prompt
from promptcycle.store.remote import open_store
from promptcycle_tasks.secrets import resolve_langsmith_key

__all__ = ["read_langsmith_feedback"]


@task(name="read-langsmith-feedback", cache_policy=NO_CACHE)
def read_langsmith_feedback(config_path: str, pipeline: str, store_path: str | None, now: datetime) -> dict | None:
    """Record the production runs and feedback LangSmith received since the last pass (`observe.langsmith`).

    None when the pipeline reads no LangSmith project. LangSmith slow, down or refusing is logged and the monitor
    goes on: the series it leaves thin are probed, and the next pass reads the window this one could not."""
    ctx = load_pipeline(config_path, pipeline, store=store_path)
    settings = ctx.pipeline.observe.langsmith
    if settings is None:
        return None
    logger = get_run_logger()
    conn = connection(ctx.config, pipeline, resolve_langsmith_key(ctx.config, pipeline))
    if conn is None:
        logger.warning("observe.langsmith is set but there is no LangSmith API key: production feedback not read")
        return {"error": "no LangSmith API key"}
    store = open_store(ctx.store_path)
    serving = {m: production_prompt(ctx, store, m)[0]
               for m in (ctx.pipeline.deployment.serving_models or ctx.pipeline.models)}
    try:
        read = read_production_feedback(conn, store, pipeline, settings, serving, now,
                                        timedelta(minutes=ctx.pipeline.monitor.interval_minutes))
    except Exception as exc:  # noqa: BLE001 - the monitor never fails because LangSmith does
        message = conn.scrub(str(exc))
        logger.warning("production feedback from LangSmith not read this period: %s", message)
        return {"error": message}
    logger.info(read.note())
    return read.to_dict()
