"""The baseline phase: evaluate a pipeline's prompt on every model x spectrum cell.

    validate (config, keys, dataset suite) → evaluate every cell concurrently → results suite
    → rank against the thresholds → artifacts
    (with LangSmith mirroring on: the stored results go to LangSmith in the background meanwhile)

Re-running the same command after a crash resumes the unfinished run: recorded observations are not
called again, and the final table equals an uninterrupted run's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run

from promptcycle.errors import ConfigError, RunFailedError
from promptcycle.evaluation import progress
from promptcycle.evaluation.context import PipelineRef
from promptcycle.evaluation.heap import freeze_startup_objects
from promptcycle.evaluation.lease import release_pipeline
from promptcycle.evaluation.pool import close_providers
from promptcycle.evaluation.runio import under_way
from promptcycle.evaluation.summary import RunSummary
from promptcycle.quality.worker import warm_up
from promptcycle.store.remote import open_store
from promptcycle_tasks.baseline import check_results, evaluate_cell_task, fail_run, prepare_baseline, summarize_run
from promptcycle_tasks.cells import check_providers
from promptcycle_tasks.datasets import pull_langsmith_dataset, reads_langsmith
from promptcycle_tasks.mirror import mirror_connection, start_mirror, stop_mirror
from promptcycle_tasks.reports import artifact_key, publish_baseline_report
from promptcycle_tasks.runs import is_simulated, run_name, tag_flow_run

__all__ = ["baseline"]

PROGRESS_EVERY_S = 1.0  # the flow run's progress artifact is updated at most this often while cells end


@flow(name="baseline", flow_run_name=run_name("baseline"))
async def baseline(pipeline: str = "customer-insights", config_path: str = "pipelines.yaml",
                   store_path: str | None = None, repeats: int | None = None,
                   limit: int | None = None, mirror_langsmith: bool | None = None, version: str | None = None,
                   models: list[str] | None = None, epoch: str = "") -> RunSummary:
    """Evaluate the pipeline's prompt across its models x spectrums and store every result.

    Args:
        pipeline: the pipeline's name in pipelines.yaml.
        config_path: path to pipelines.yaml.
        store_path: the DuckDB file (default: the config's `store`).
        repeats: calls per model x case (default: the pipeline's `repeats`).
        limit: evaluate only the first N cases of each spectrum.
        mirror_langsmith: mirror the results to LangSmith as experiments (default: `langsmith.mirror_runs`).
        version: evaluate this prompt version of the registry instead of the configured prompt (e.g. the one
            in production).
        models: evaluate only these of the pipeline's models.
        epoch: a ledger epoch of its own: no answer paid outside it is reused (a healing after a drift).
    """
    logger = get_run_logger()
    await tag_flow_run(pipeline, "baseline", is_simulated(config_path, pipeline))
    ref = PipelineRef(config_path=config_path, pipeline=pipeline, store_path=store_path, limit=limit)
    if reads_langsmith(config_path, pipeline):  # before the dataset is loaded by anything below
        await pull_langsmith_dataset(config_path, pipeline)
    langsmith = await mirror_connection(config_path, pipeline, mirror_langsmith)  # None: not mirroring
    await check_providers(ref)  # before anything is recorded or paid
    plan = prepare_baseline(ref, repeats, flow_run.get_id(), version=version, models=models, epoch=epoch)
    logger.info(plan.announcement())
    progress.report_note(plan.announcement())
    mirror = start_mirror(langsmith, config_path, pipeline, store_path, plan.run_id, limit)
    try:
        summary = await _evaluate(ref, plan, version, epoch, cells_done=mirror.nudge if mirror else None)
    finally:
        mirrored = stop_mirror(mirror)  # what LangSmith did not get is counted, never lost: DuckDB has it
    summary.langsmith = mirrored
    return summary


async def _evaluate(ref: PipelineRef, plan, version: str | None, epoch: str,
                    cells_done: Callable[[], None] | None = None) -> RunSummary:
    pipeline = ref.pipeline
    freeze_startup_objects()
    progress.report_total(plan.total_calls, phase="baseline")
    progress_id = await create_progress_artifact(progress=0.0, key=artifact_key("baseline-progress", pipeline),
                                                 description=f"Cells finished in run {plan.run_id}")

    async def cell(model: str, spectrum: str) -> dict:
        return await evaluate_cell_task(ref, plan.run_id, model, spectrum, plan.repeats, version, epoch)

    outcomes: list[dict] = []
    failures: list[Exception] = []
    try:
        started = []
        store = open_store(ref.load().store_path)
        for m, s in plan.cells:  # one at a time: what the cells started so far (their calls) runs in between
            started.append(asyncio.ensure_future(cell(m, s)))
            if len(started) == 1:
                # The first cell's calls go out before the other cells start: their start-up would otherwise
                # run between its ledger lookup and its first request.
                await under_way(store, plan.run_id, started, timeout=1.0)
            await asyncio.sleep(0)
        # Great Expectations (for the results suite) imports in the data worker once every cell's calls are
        # going out: earlier, its import (seconds of CPU) slows the cells' ledger lookups and the first answers.
        await under_way(store, plan.run_id, started, timeout=2.0)
        warm_up()
        shown = asyncio.get_running_loop().time()
        for finished in asyncio.as_completed(started):
            try:
                outcomes.append(await finished)
            except Exception as exc:  # one failed cell must not hide the others' results
                failures.append(exc)
            # At most one update a second (cells end close together, each update is a request to Prefect's API
            # while calls are under way), and the last.
            ended, now = len(outcomes) + len(failures), asyncio.get_running_loop().time()
            if ended == len(plan.cells) or now - shown >= PROGRESS_EVERY_S:
                shown = now
                await update_progress_artifact(progress_id, 100.0 * ended / len(plan.cells))
    finally:
        await close_providers()
        release_pipeline(pipeline)  # what this process pays for ends here
        if cells_done is not None:
            cells_done()
    if failures:
        first = failures[0]
        reason = f"{len(failures)} of {len(plan.cells)} cells failed; first: {type(first).__name__}: {first}"
        fail_run(ref, plan.run_id, reason)
        bad_input = next((f for f in failures if isinstance(f, ConfigError)), None)
        if bad_input is not None:
            raise bad_input  # fix the configuration first: re-running as it is would fail again
        raise RunFailedError(reason + " — re-run the same command to resume")
    check_results(ref, plan.run_id, plan.repeats, plan.models)
    summary = summarize_run(ref, plan, outcomes)
    await publish_baseline_report(summary, ref.load().pipeline.thresholds)
    return summary
