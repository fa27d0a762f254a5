"""The optimization phase: find a better prompt, with statistical evidence that it is better.

    diagnose the baseline → generate candidates (validated: they render, nothing of dev/test leaked)
    → estimate the spend → screen on dev → confirm the best few on test against the current prompt
    → label the winner `candidate` (or say honestly that none is better, or that the design cannot tell)

Every evaluation is a run in the store, so re-running the same command after a kill resumes it; a
call paid once (same model, prompt, case, repeat) is never paid again, in any run or phase. Hard caps
on calls and cost (pipelines.yaml `optimization.max_calls` / `max_cost_usd`, or the flow's
parameters) stop the search cleanly with the valid part of the result.
"""

from __future__ import annotations

import asyncio

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run

from promptcycle_flows.baseline import baseline
from promptcycle.errors import ConfigError, RunFailedError
from promptcycle.evaluation import progress
from promptcycle.evaluation.context import PipelineRef
from promptcycle.evaluation.heap import freeze_startup_objects
from promptcycle.evaluation.lease import release_pipeline
from promptcycle.evaluation.pool import close_providers
from promptcycle.optimize.budget import BudgetEstimate
from promptcycle.optimize.confirm import Confirmation, Screening
from promptcycle.optimize.plan import OptimizationPlan
from promptcycle.optimize.search import CONFIRM, SCREEN, Arm, OptimizationSummary
from promptcycle_tasks.optimization import (
    confirm_on_test,
    diagnose_baseline,
    estimate_budget,
    evaluate_prompt,
    fail_optimization,
    find_baseline,
    generate_candidates,
    label_candidate,
    open_evaluations,
    prepare_optimization,
    publish_diagnosis,
    publish_estimate,
    publish_optimization_report,
    rank_on_dev,
)
from promptcycle_tasks.cells import check_providers
from promptcycle_tasks.datasets import pull_langsmith_dataset, reads_langsmith
from promptcycle_tasks.mirror import mirror_connection, start_mirror, stop_mirror
from promptcycle_tasks.reports import artifact_key
from promptcycle_tasks.runs import is_simulated, run_name, tag_flow_run

__all__ = ["optimization"]


@flow(name="optimization", flow_run_name=run_name("optimization"))
async def optimization(pipeline: str = "customer-insights", config_path: str = "pipelines.yaml",
                       store_path: str | None = None, baseline_run_id: str | None = None,
                       strategies: list[str] | None = None, max_calls: int | None = None,
                       max_cost_usd: float | None = None, limit: int | None = None,
                       mirror_langsmith: bool | None = None, model: str | None = None,
                       epoch: str = "") -> OptimizationSummary:
    """Search for a prompt that beats the pipeline's current one, and label it `candidate` if one does.

    Args:
        pipeline: the pipeline's name in pipelines.yaml.
        config_path: path to pipelines.yaml.
        store_path: the DuckDB file (default: the config's `store`).
        baseline_run_id: the baseline run to start from (default: the latest of the configured prompt;
            one is run first when there is none).
        strategies: strategy names (default: the pipeline's `optimization.strategies`).
        max_calls: hard cap on paid calls (default: `optimization.max_calls`).
        max_cost_usd: hard cap on cost in USD (default: `optimization.max_cost_usd`).
        limit: use only the first N cases of each spectrum (a quick, smaller search).
        mirror_langsmith: mirror every arm (the current prompt and each candidate) to LangSmith as experiments,
            side by side over the same examples (default: `langsmith.mirror_runs`).
        model: search for a prompt of this model alone (a model-scoped candidate, evaluated on it only).
        epoch: a ledger epoch of its own: no answer paid outside it is reused (a healing after a drift).
    """
    logger = get_run_logger()
    await tag_flow_run(pipeline, "optimization", is_simulated(config_path, pipeline))
    ref = PipelineRef(config_path=config_path, pipeline=pipeline, store_path=store_path, limit=limit)
    if reads_langsmith(config_path, pipeline):  # before the dataset is loaded by anything below
        await pull_langsmith_dataset(config_path, pipeline)
    langsmith = await mirror_connection(config_path, pipeline, mirror_langsmith)  # None: not mirroring
    await check_providers(ref)  # before anything is recorded or paid
    baseline_run_id = find_baseline(ref, baseline_run_id)
    if baseline_run_id is None:
        logger.info("no baseline run of the configured prompt yet: running one first")
        baseline_run_id = (await baseline(pipeline=pipeline, config_path=config_path, store_path=store_path,
                                          limit=limit, mirror_langsmith=mirror_langsmith)).run_id
    plan = prepare_optimization(ref, baseline_run_id, strategies, max_calls, max_cost_usd, flow_run.get_id(),
                                model=model, epoch=epoch)
    logger.info("%s optimization %s from baseline %s", "resuming" if plan.resumed else "starting", plan.run_id,
                baseline_run_id)
    progress.report_note(f"{'resuming' if plan.resumed else 'starting'} optimization {plan.run_id} from baseline "
                         f"{baseline_run_id}" + (" (calls that ended in error are retried)" if plan.resumed else ""))
    freeze_startup_objects()
    mirror = start_mirror(langsmith, config_path, pipeline, store_path, plan.run_id, limit)  # every arm's results
    try:
        publish_diagnosis(plan, diagnose_baseline(plan))
        candidates = await generate_candidates(plan)
        estimate = estimate_budget(plan, candidates)
        for line in estimate.lines():
            logger.info(line)
        publish_estimate(plan, estimate)

        # a strategy's own call (meta) can already meet the cap
        stopped_in = "generation" if any(row.status == "stopped" for row in candidates) else None
        screening = Screening(rows=candidates)
        if stopped_in is None and any(row.status == "unscreened" for row in candidates):
            arms = open_evaluations(plan, SCREEN, [r for r in candidates if r.status == "unscreened"])
            if await _evaluate(plan, arms, estimate, "screening on dev"):
                stopped_in = "screening"
            screening = rank_on_dev(plan, candidates, arms)

        confirmation = Confirmation(rows=screening.rows)
        selected = [row for row in screening.rows if row.status == "selected"]
        if selected and stopped_in is None:
            arms = open_evaluations(plan, CONFIRM, selected)
            if await _evaluate(plan, arms, estimate, "confirming on test"):
                stopped_in = "confirmation"
            confirmation = confirm_on_test(plan, screening.rows, arms, stopped_in is not None)

        summary = label_candidate(plan, confirmation, estimate, stopped_in, screening.current_dev)
    except Exception as exc:
        fail_optimization(plan, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        await close_providers()
        release_pipeline(pipeline)
        mirrored = stop_mirror(mirror)  # what LangSmith did not get is counted, never lost: DuckDB has it
    summary.langsmith = mirrored
    logger.info("%s: %s", summary.outcome, summary.reason)
    publish_optimization_report(summary)
    return summary


async def _evaluate(plan: OptimizationPlan, arms: list[Arm], estimate: BudgetEstimate, stage: str) -> bool:
    """Evaluate the arms one after another (each arm's models at once), so that when the budget runs out
    the arms already finished are whole. Returns True when the budget stopped it."""
    logger = get_run_logger()
    progress.report_total(sum(len(a.models) * a.repeats * _cases(plan, a.split) for a in arms), phase=stage)
    progress_id = await create_progress_artifact(progress=0.0, key=artifact_key("optimization-progress", plan.pipeline),
                                                 description=f"{stage.capitalize()} in run {plan.run_id}")
    for done, arm in enumerate(arms):
        outcomes = await asyncio.gather(*(
            evaluate_prompt(plan.ref, plan.run_id, arm.run_id, arm.kind, arm.prompt_hash, model, arm.split,
                            arm.repeats, plan.max_calls, plan.max_cost_usd, estimate.cost_per_call, plan.epoch)
            for model in arm.models), return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        bad_input = next((f for f in failures if isinstance(f, ConfigError)), None)
        if bad_input is not None:
            raise bad_input  # fix the configuration first: re-running as it is would fail again
        if failures:
            raise RunFailedError(f"{len(failures)} of {len(arm.models)} evaluations of {arm.prompt_hash} failed "
                                 f"while {stage}; first: {type(failures[0]).__name__}: {failures[0]} — re-run the "
                                 "same command to resume")
        await update_progress_artifact(progress_id, 100.0 * (done + 1) / len(arms))
        if any(o["budget_exhausted"] for o in outcomes):
            logger.info("the budget cap was reached while %s (%s)", stage, arm.prompt_hash)
            return True
    return False


def _cases(plan: OptimizationPlan, split: str) -> int:
    ctx = plan.ref.load()
    return sum(1 for c in ctx.cases if ctx.splits.get(c.id) == split)
