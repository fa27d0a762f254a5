"""Prefect tasks of the optimization phase: thin wrappers over promptcycle.optimize, one unit of durable work each.

Tasks receive names, ids and small plans, never live clients; they load the pipeline, call the domain
(plan, generation, arms, confirm, outcome), and publish what it found as artifacts. The prompt of an
evaluation is read from the prompt registry by its hash.
"""

from __future__ import annotations

import functools

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from promptcycle import dataworker
from promptcycle.errors import BudgetExceededError, ConfigError
from promptcycle.evaluation.context import PipelineContext, PipelineRef
from promptcycle.evaluation.ledger import ledgered_complete
from promptcycle.evaluation.lease import hold_pipeline, release_pipeline
from promptcycle.optimize import generation, learning, outcome, strategies
from promptcycle.optimize.arms import arm_cell, open_arms
from promptcycle.optimize.budget import BudgetEstimate, budget_for, report_estimate
from promptcycle.optimize.confirm import Confirmation, Screening, confirm_selected, rank_screened
from promptcycle.optimize.plan import (
    OptimizationPlan,
    check_strategies,
    estimate_search,
    find_baseline_run,
    open_optimization,
)
from promptcycle.optimize.search import (
    Arm,
    CandidateRow,
    OptimizationSummary,
    candidates_table,
    confirmation_markdown,
    diagnose_stored_run,
)
from promptcycle.quality.worker import warm_up
from promptcycle.store.remote import open_store
from promptcycle_tasks.cells import run_cell
from promptcycle_tasks.limits import check_provider_limits
from promptcycle_tasks.reports import artifact_key
from promptcycle_tasks.retry import BACKOFF, retry_if_transient
from promptcycle_tasks.runs import flow_run_url
from promptcycle_tasks.secrets import aresolve_api_key, resolve_api_key

__all__ = ["find_baseline", "prepare_optimization", "diagnose_baseline", "generate_candidates", "estimate_budget",
           "open_evaluations", "evaluate_prompt", "rank_on_dev", "confirm_on_test", "label_candidate",
           "fail_optimization", "publish_diagnosis", "publish_estimate", "publish_optimization_report"]

CELL_RETRIES = 3


def _context(plan: OptimizationPlan) -> PipelineContext:
    return plan.ref.load()


# -- before any call ------------------------------------------------------------------------------

@task(name="find-baseline", cache_policy=NO_CACHE)
def find_baseline(ref: PipelineRef, baseline_run_id: str | None) -> str | None:
    """The baseline run to optimize from: `baseline_run_id` (checked), else the latest completed baseline
    of the configured prompt that covers the models and cases; None when a baseline must be run first."""
    ctx = ref.load()
    return find_baseline_run(ctx, open_store(ctx.store_path), baseline_run_id=baseline_run_id, limit=ref.limit)


@task(name="prepare-optimization", cache_policy=NO_CACHE)
def prepare_optimization(ref: PipelineRef, baseline_run_id: str, strategy_names: list[str] | None,
                         max_calls: int | None, max_cost_usd: float | None, flow_run_id: str | None = None,
                         model: str | None = None, epoch: str = "") -> OptimizationPlan:
    """Check everything before any call (config, strategies, keys, dataset suite) and create or resume
    the optimization run. With `model`, the search is for a prompt of that model alone (evaluated on it
    only); with `epoch`, its calls are keyed in that ledger epoch.

    Takes the pipeline's lease first (promptcycle/evaluation/lease.py); the flow releases it when it ends."""
    warm_up()
    ctx = ref.load()
    names, auto = learning.resolve_strategies(strategy_names or ctx.pipeline.optimization.strategies,
                                              strategies.names())
    check_strategies(names)
    if model is not None and model not in ctx.pipeline.models:
        raise ConfigError(f"model {model!r} is not one of pipeline {ref.pipeline!r}'s models", path="--model",
                          found=model, expected=f"one of {', '.join(ctx.pipeline.models)}")
    for provider in ctx.providers_used():
        resolve_api_key(ctx.config, provider)
    check_provider_limits(ctx.config, ctx.providers_used())
    store = open_store(ctx.store_path)
    hold_pipeline(store, ref.pipeline, "optimization")
    try:
        return open_optimization(ref, store, baseline_run_id=baseline_run_id, strategy_names=names,
                                 auto_strategies=auto, max_calls=max_calls, max_cost_usd=max_cost_usd,
                                 flow_run_id=flow_run_id, model=model, epoch=epoch)
    except BaseException:
        release_pipeline(ref.pipeline)
        raise


# -- diagnose, generate, estimate -----------------------------------------------------------------

@task(name="diagnose-baseline", cache_policy=NO_CACHE)
def diagnose_baseline(plan: OptimizationPlan) -> str:
    """Where the current prompt fails, from the baseline's results; stored with the run. Returns the report."""
    ctx = _context(plan)
    return dataworker.call(diagnose_stored_run, str(ctx.store_path), plan.run_id, plan.baseline_run_id,
                           thresholds=ctx.pipeline.thresholds, cases=ctx.all_cases, models=list(plan.models),
                           scorers=list(ctx.pipeline.scorers))


@task(name="generate-candidates", cache_policy=NO_CACHE)
async def generate_candidates(plan: OptimizationPlan) -> list[CandidateRow]:
    """Run the strategies, validate every candidate (renders; nothing of dev/test leaked), record the
    kept ones (at most `max_candidates` per scope) in the prompt registry, and list all of them."""
    ctx = _context(plan)
    store = open_store(ctx.store_path)
    # A strategy's own calls (meta) go through the paid-call ledger within the optimization's budget; keys
    # load the async way (a credentials block's sync loader returns a coroutine in async code).
    budget = budget_for(store, plan.run_id, max_calls=plan.max_calls, max_cost_usd=plan.max_cost_usd)
    complete = ledgered_complete(ctx.config, store, plan.run_id, budget=budget,
                                 key_of=functools.partial(aresolve_api_key, ctx.config))
    return await generation.generate_candidates(ctx, store, plan, complete=complete)


@task(name="estimate-budget", cache_policy=NO_CACHE)
def estimate_budget(plan: OptimizationPlan, rows: list[CandidateRow]) -> BudgetEstimate:
    """Calls, tokens and cost the search will pay from here on (ledger hits are free), against the caps."""
    ctx = _context(plan)
    estimate = estimate_search(ctx, open_store(ctx.store_path), plan, rows)
    report_estimate(estimate)
    return estimate


# -- evaluations ----------------------------------------------------------------------------------

@task(name="open-evaluations", cache_policy=NO_CACHE)
def open_evaluations(plan: OptimizationPlan, kind: str, rows: list[CandidateRow]) -> list[Arm]:
    """The arms of one stage — the current prompt first, then each candidate — each recorded as a run
    (or resumed: its id is derived from the optimization's, the stage and the prompt)."""
    ctx = _context(plan)
    return open_arms(ctx, open_store(ctx.store_path), plan, kind, rows)


@task(name="evaluate-prompt", task_run_name="{kind} {prompt_hash} × {model}", cache_policy=NO_CACHE,
      retries=CELL_RETRIES, retry_delay_seconds=BACKOFF, retry_jitter_factor=0.5,
      retry_condition_fn=retry_if_transient)
async def evaluate_prompt(ref: PipelineRef, optimization_run_id: str, run_id: str, kind: str, prompt_hash: str,
                          model: str, split: str, repeats: int, max_calls: int | None, max_cost_usd: float | None,
                          cost_per_call: dict[str, float] | None = None, epoch: str = "") -> dict:
    """One prompt through one model on every case of a split: what the run has not recorded yet, paid
    calls within the optimization's budget. Reaching the cap is an outcome (`budget_exhausted`), not a
    failure. `epoch`: the ledger epoch of its calls (the optimization's)."""
    ctx = ref.load()
    store = open_store(ctx.store_path)
    spec = arm_cell(ctx, store, run_id, prompt_hash, model, split, repeats, epoch)
    budget = budget_for(store, optimization_run_id, max_calls=max_calls, max_cost_usd=max_cost_usd,
                        cost_per_call=cost_per_call)
    try:
        done = await run_cell(ctx, spec, retries=CELL_RETRIES, budget=budget)
    except BudgetExceededError as exc:
        stopped = exc.outcome
        return stopped.__dict__ | {"error_messages": stopped.error_messages[:3], "budget_exhausted": True}
    return done.__dict__ | {"error_messages": done.error_messages[:3], "budget_exhausted": False}


@task(name="rank-on-dev", cache_policy=NO_CACHE)
def rank_on_dev(plan: OptimizationPlan, rows: list[CandidateRow], arms: list[Arm]) -> Screening:
    """Check each screened arm's results (the results suite), score it on dev, and select the best few
    of each scope that beat the current prompt on the same models."""
    return rank_screened(_context(plan), plan, rows, arms)


@task(name="confirm-on-test", cache_policy=NO_CACHE)
def confirm_on_test(plan: OptimizationPlan, rows: list[CandidateRow], arms: list[Arm],
                    budget_exhausted: bool) -> Confirmation:
    """The paired test of each selected candidate against the current prompt on the test split; every
    result is stored as a decision with its evidence."""
    ctx = _context(plan)
    return confirm_selected(ctx, open_store(ctx.store_path), plan, rows, arms, budget_exhausted=budget_exhausted)


# -- decide and label -----------------------------------------------------------------------------

@task(name="label-candidate", cache_policy=NO_CACHE)
def label_candidate(plan: OptimizationPlan, confirmation: Confirmation, estimate: BudgetEstimate | None,
                    stopped_in: str | None, current_dev: float | None = None) -> OptimizationSummary:
    """Decide the outcome, move the `candidate` label to the winner (per scope), record what each
    strategy did, and close the run."""
    ctx = _context(plan)
    store = open_store(ctx.store_path)
    summary = outcome.conclude_search(ctx, store, plan, confirmation, estimate, stopped_in=stopped_in,
                                      current_dev=current_dev)
    learned = outcome.record_learning(ctx, store, plan, summary)
    if learned is not None:
        create_markdown_artifact(key=artifact_key("strategy-learning", plan.pipeline), markdown=learned,
                                 description=f"What optimizations of {plan.pipeline} learned about each strategy, "
                                             "per context")
    outcome.finish_optimization(store, plan, summary)
    return summary


@task(name="fail-optimization", cache_policy=NO_CACHE)
def fail_optimization(plan: OptimizationPlan, reason: str) -> None:
    """Mark the optimization failed (it stays resumable: re-running the same command continues it)."""
    outcome.fail_optimization(open_store(_context(plan).store_path), plan, reason)


# -- artifacts ------------------------------------------------------------------------------------

@task(name="publish-diagnosis", cache_policy=NO_CACHE)
def publish_diagnosis(plan: OptimizationPlan, markdown: str) -> None:
    create_markdown_artifact(key=artifact_key("optimization-diagnosis", plan.pipeline), markdown=markdown,
                             description=f"Where the prompt of baseline run {plan.baseline_run_id} fails")


@task(name="publish-estimate", cache_policy=NO_CACHE)
def publish_estimate(plan: OptimizationPlan, estimate: BudgetEstimate) -> None:
    create_markdown_artifact(key=artifact_key("optimization-budget", plan.pipeline), markdown=estimate.markdown(),
                             description=f"Calls, tokens and cost planned by run {plan.run_id}")


@task(name="publish-optimization-report", cache_policy=NO_CACHE)
def publish_optimization_report(summary: OptimizationSummary) -> None:
    simulated = " (simulated)" if summary.simulated else ""
    rows = candidates_table(summary.candidates)
    if rows:
        create_table_artifact(key=artifact_key("optimization-candidates", summary.pipeline), table=rows,
                              description=f"Candidates of run {summary.run_id}: dev scores, rationale{simulated}")
    create_markdown_artifact(key=artifact_key("optimization-confirmation", summary.pipeline),
                             markdown=confirmation_markdown(summary, url_of=flow_run_url),
                             description=f"Outcome of run {summary.run_id}: {summary.outcome}{simulated}")
