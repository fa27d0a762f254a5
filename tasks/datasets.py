"""Datasets that live outside the repository: the local copy of a `langsmith:` dataset, refreshed before a run."""

from __future__ import annotations

import logging

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from promptcycle.catalog import load_config
from promptcycle.langsmith.datasets import refresh_local_copy
from promptcycle_tasks.secrets import aresolve_langsmith_key

__all__ = ["reads_langsmith", "pull_langsmith_dataset"]


def reads_langsmith(config_path: str, pipeline: str) -> bool:
    """Is the pipeline's dataset a `langsmith:` source (so a run refreshes its local copy first)?"""
    return load_config(config_path).pipeline(pipeline).dataset.langsmith_dataset is not None


@task(name="pull-langsmith-dataset", cache_policy=NO_CACHE)
async def pull_langsmith_dataset(config_path: str, pipeline: str) -> dict | None:
    """Refresh the local copy of the pipeline's LangSmith dataset; LangSmith slow or down keeps the last copy."""
    config = load_config(config_path)
    refresh = refresh_local_copy(config, pipeline, await aresolve_langsmith_key(config, pipeline))
    if refresh is None:
        return None
    try:
        logger = get_run_logger()  # the flow run's log, in the UI
    except MissingContextError:  # called as .fn(), outside a run
        logger = logging.getLogger("promptcycle.langsmith")
    (logger.info if refresh.status == "pulled" else logger.warning)(refresh.note)
    return refresh.to_dict()
