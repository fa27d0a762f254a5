"""Prefect tasks of the optimization phase: thin wrappers over promptcycle.optimize, one unit of durable work each.

Tasks receive names, ids and small plans, never live clients; the prompt of an evaluation is read
from the prompt registry by its hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
from datetime import datetime, timezone

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, SecretStr

from promptcycle import dataworker
from promptcycle.errors import (
    BudgetExceededError,
    ConfigError,
    DataQualityError,
    ProviderError,
    RunFailedError,
)
from promptcycle.evaluation.cells import CellSpec, call_key, call_keys
from promptcycle.evaluation.context import PipelineContext, fingerprint, load_pipeline
from promptcycle.evaluation.lease import hold_pipeline, release_pipeline
from promptcycle.evaluation.pool import get_provider
from promptcycle.optimize import CandidatePrompt, Diagnosis, StrategyContext, create_strategy, learning, strategies
from promptcycle.optimize.budget import (
    BudgetEstimate,
    PlannedEvaluation,
    TokenProfile,
    budget_for,
    estimate_spend,
    report_estimate,
    worst_confirmation,
)
from promptcycle.optimize.search import (
    CONFIRM,
    SCREEN,
    Arm,
    ArmCheck,
    CandidateRow,
    ErrorControl,
    OptimizationSummary,
    candidate_key,
    candidates_table,
    case_clusters,
    check_stored_arms,
    confirm_stored_arms,
    confirmation_markdown,
    decide_outcome,
    diagnose_stored_run,
    evaluation_run_id,
    rank_candidates,
)
from promptcycle.optimize.leakage import CandidateScreening, screen_candidates
from promptcycle.prompts import PromptTemplate
from promptcycle.providers.base import Completion
from promptcycle.quality.suites import results_expectations
from promptcycle.quality.worker import warm_up
from promptcycle.store.records import DecisionRecord, PromptVersionRecord, ResponseRecord, RunRecord
from promptcycle.store.remote import open_store
from promptcycle_tasks.baseline import gate_dataset, new_run_id
from promptcycle_tasks.reports import artifact_key
from promptcycle_tasks.runs import flow_run_url
from promptcycle_tasks.cells import run_cell
from promptcycle_tasks.retry import BACKOFF, retry_if_transient
from promptcycle_tasks.limits import check_provider_limits
from promptcycle_tasks.secrets import aresolve_api_key, resolve_api_key

__all__ = ["OptimizationPlan", "Screening", "Confirmation", "find_baseline", "prepare_optimization",
           "diagnose_baseline", "generate_candidates", "estimate_budget", "open_evaluations", "evaluate_prompt",
           "rank_on_dev", "confirm_on_test", "label_candidate", "fail_optimization", "publish_diagnosis",
           "publish_estimate", "publish_optimization_report"]

CELL_RETRIES = 3
SPLIT_OF = {SCREEN: "dev", CONFIRM: "test"}


class OptimizationPlan(BaseModel):
    run_id: str
    pipeline: str
    config_path: str
    store_path: str | None
    limit: int | None
    resumed: bool
    baseline_run_id: str
    current_hash: str
    strategies: list[str]
    per_model_prompts: bool
    models: list[str]
    scopes: list[str | None]  # [None] for one shared prompt, else one scope per model
    max_calls: int | None
    max_cost_usd: float | None
    simulated: bool
    started_at: datetime | None = None
    auto_strategies: bool = False  # `strategies: auto`: the candidate budget is spent by the learned posteriors
    epoch: str = ""  # the ledger epoch of its evaluations (a healing's own: nothing paid before it is reused)


class Screening(BaseModel):
    """What the dev split showed: the rows ranked (the best few 'selected') and the current prompt's score."""

    rows: list[CandidateRow]
    current_dev: float | None = None  # points, every model (None when its evaluation is incomplete)


class Confirmation(BaseModel):
    """What the test split showed: the rows updated, each confirmed candidate's result, test qualities."""

    rows: list[CandidateRow]
    results: dict[str, dict] = {}  # candidate_key -> ConfirmationResult.to_dict()
    test_quality: dict[str, tuple[float, float]] = {}  # candidate_key -> (current, candidate) points
    budget_exhausted: bool = False


def _context(plan: OptimizationPlan) -> PipelineContext:
    return load_pipeline(plan.config_path, plan.pipeline, limit=plan.limit, store=plan.store_path)


def _current_prompt(store, plan: OptimizationPlan) -> PromptTemplate:
    return _prompt(store, plan.current_hash)


def _prompt(store, prompt_hash: str) -> PromptTemplate:
    version = store.get_prompt_version(prompt_hash)
    if version is None:
        raise RunFailedError(f"prompt version {prompt_hash} is not in the prompt registry of {store.path}")
    return PromptTemplate(template=version.template, system=version.system)


def _simulated(ctx: PipelineContext) -> bool:
    return all(ctx.config.providers[p].kind == "simulator" for p in ctx.providers_used())


# -- before any call ------------------------------------------------------------------------------

@task(name="find-baseline", cache_policy=NO_CACHE)
def find_baseline(config_path: str, pipeline: str, store_path: str | None, baseline_run_id: str | None,
                  limit: int | None) -> str | None:
    """The baseline run to optimize from: `baseline_run_id` (checked), else the latest completed baseline
    of the configured prompt that covers the models and cases; None when a baseline must be run first."""
    ctx = load_pipeline(config_path, pipeline, limit=limit, store=store_path)
    store = open_store(ctx.store_path)
    if baseline_run_id:
        run = store.get_run(baseline_run_id)
        expected = "the run id of a completed baseline of this pipeline (printed by `promptcycle baseline`)"
        if run is None or run.kind != "baseline" or run.pipeline != pipeline:
            raise ConfigError(f"no baseline run {baseline_run_id!r} of pipeline {pipeline!r} in {ctx.store_path}",
                              path="--baseline", found=baseline_run_id, expected=expected)
        if run.status != "completed":
            raise ConfigError(f"baseline run {baseline_run_id!r} is {run.status}, not completed (re-run "
                              "`promptcycle baseline` to finish it)", path="--baseline", found=baseline_run_id,
                              expected=expected)
        return run.run_id
    run = store.latest_run(pipeline, "baseline")
    if run is None or run.prompt_hash != ctx.prompt.hash or run.dataset_hash != ctx.dataset_hash:
        return None
    if not set(ctx.pipeline.models) <= set(run.models):
        return None
    if run.case_limit is not None and (limit is None or run.case_limit < limit):
        return None
    return run.run_id


def _check_strategies(names: list[str]) -> None:
    for name in names:
        if name not in strategies:
            raise ConfigError(f"unknown strategy {name!r}; known: {', '.join(strategies.names())}",
                              path="--strategies", found=name, expected="a registered strategy")
    if not names:
        raise ConfigError("no strategy to run", path="--strategies", expected="at least one strategy name")


def _optimization_fingerprint(ctx: PipelineContext, baseline_run_id: str, current_hash: str, names: list[str],
                              limit: int | None, model: str | None = None, epoch: str = "") -> str:
    """What makes two optimizations the same work. The caps are left out on purpose: re-running with
    a higher cap continues the same optimization, and its spend so far counts against the new cap."""
    opt = ctx.pipeline.optimization.model_dump(exclude={"max_calls", "max_cost_usd", "strategies"})
    base = fingerprint(ctx, kind="optimization", repeats=opt["confirm_repeats"], limit=limit, prompt_hash=current_hash)
    focus = {"model": model, "epoch": epoch} if model or epoch else {}
    payload = json.dumps({"base": base, "baseline_run": baseline_run_id, "strategies": names, "optimization": opt,
                          **focus}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@task(name="prepare-optimization", cache_policy=NO_CACHE)
def prepare_optimization(config_path: str, pipeline: str, store_path: str | None, baseline_run_id: str,
                         strategy_names: list[str] | None, max_calls: int | None, max_cost_usd: float | None,
                         limit: int | None, flow_run_id: str | None = None, model: str | None = None,
                         epoch: str = "") -> OptimizationPlan:
    """Check everything before any call (config, strategies, keys, dataset suite) and create or resume
    the optimization run. With `model`, the search is for a prompt of that model alone (evaluated on it
    only); with `epoch`, its calls are keyed in that ledger epoch."""
    warm_up()
    ctx = load_pipeline(config_path, pipeline, limit=limit, store=store_path)
    opt = ctx.pipeline.optimization
    names, auto = learning.resolve_strategies(strategy_names or opt.strategies, strategies.names())
    _check_strategies(names)
    if model is not None and model not in ctx.pipeline.models:
        raise ConfigError(f"model {model!r} is not one of pipeline {pipeline!r}'s models", path="--model",
                          found=model, expected=f"one of {', '.join(ctx.pipeline.models)}")
    for provider in ctx.providers_used():
        resolve_api_key(ctx.config, provider)
    check_provider_limits(ctx.config, ctx.providers_used())
    store = open_store(ctx.store_path)
    hold_pipeline(store, pipeline, "optimization")  # released by the flow when it ends
    try:
        plan = _prepare_optimization(ctx, store, pipeline, config_path, store_path, baseline_run_id, names,
                                     max_calls, max_cost_usd, limit, flow_run_id, model, epoch)
        return plan.model_copy(update={"auto_strategies": auto, "epoch": epoch})
    except BaseException:
        release_pipeline(pipeline)
        raise


def _prepare_optimization(ctx, store, pipeline: str, config_path: str, store_path: str | None,
                          baseline_run_id: str, names: list[str], max_calls: int | None,
                          max_cost_usd: float | None, limit: int | None,
                          flow_run_id: str | None, model: str | None = None, epoch: str = "") -> OptimizationPlan:
    opt = ctx.pipeline.optimization
    baseline = store.get_run(baseline_run_id)
    current_hash = baseline.prompt_hash or ctx.prompt.hash
    if store.get_prompt_version(current_hash) is None:
        raise RunFailedError(f"the prompt of baseline run {baseline_run_id} ({current_hash}) is not in the prompt "
                             "registry; run `promptcycle baseline` again to record it")
    max_calls = max_calls if max_calls is not None else opt.max_calls
    max_cost_usd = max_cost_usd if max_cost_usd is not None else opt.max_cost_usd
    fp = _optimization_fingerprint(ctx, baseline_run_id, current_hash, names, limit, model, epoch)
    models = [model] if model else list(ctx.pipeline.models)
    previous = store.find_resumable_run(pipeline, "optimization", fp)
    run_id = previous.run_id if previous else new_run_id("optimization", pipeline)
    simulated = _simulated(ctx)
    if previous is not None:
        store.resume_run(run_id, flow_run_id)
        started_at = previous.started_at
    else:
        started_at = datetime.now(timezone.utc)
        store.create_run(RunRecord(
            run_id=run_id, pipeline=pipeline, kind="optimization", fingerprint=fp, status="running",
            prompt_hash=current_hash, dataset_hash=ctx.dataset_hash, models=models,
            repeats=opt.confirm_repeats, case_limit=limit, simulated=simulated,
            config_json=json.dumps({"pipeline": json.loads(ctx.pipeline.model_dump_json()), "strategies": names,
                                    "baseline_run_id": baseline_run_id}),
            flow_run_id=flow_run_id, started_at=started_at))
    gate_dataset(ctx, store, run_id)
    scopes: list[str | None] = [model] if model else list(models) if opt.per_model_prompts else [None]
    return OptimizationPlan(run_id=run_id, pipeline=pipeline, config_path=config_path, store_path=store_path,
                            limit=limit, resumed=previous is not None, baseline_run_id=baseline_run_id,
                            current_hash=current_hash, strategies=names, per_model_prompts=opt.per_model_prompts,
                            models=models, scopes=scopes, max_calls=max_calls,
                            max_cost_usd=max_cost_usd, simulated=simulated, started_at=started_at)


# -- diagnose, generate ---------------------------------------------------------------------------

@task(name="diagnose-baseline", cache_policy=NO_CACHE)
def diagnose_baseline(plan: OptimizationPlan) -> str:
    """Where the current prompt fails, from the baseline's results; stored with the run. Returns the report."""
    ctx = _context(plan)
    return dataworker.call(diagnose_stored_run, str(ctx.store_path), plan.run_id, plan.baseline_run_id,
                           thresholds=ctx.pipeline.thresholds, cases=ctx.all_cases, models=list(plan.models),
                           scorers=list(ctx.pipeline.scorers))


def _ledger_complete(ctx: PipelineContext, store, plan: OptimizationPlan):
    """`complete(model, messages)` for the strategies: answered from the paid-call ledger when the
    identical call was paid before, else paid for (within the budget) and recorded in the ledger."""
    budget = budget_for(store, plan.run_id, max_calls=plan.max_calls, max_cost_usd=plan.max_cost_usd)
    keys: dict[str, SecretStr | None] = {}  # provider -> key, each loaded once (async: Block.aload)

    async def complete(model_name: str, messages: list[dict[str, str]]) -> Completion:
        mconf = ctx.config.models[model_name]
        key = call_key(mconf.provider, mconf, messages, 0)
        paid = store.get_responses([key]).get(key)
        if paid is not None:
            return Completion(text=paid.output, model=model_name, input_tokens=paid.input_tokens or 0,
                              output_tokens=paid.output_tokens or 0, latency_ms=paid.latency_ms or 0.0,
                              cost_usd=paid.cost_usd or 0.0, attempts=paid.attempts or 1,
                              simulated=bool(paid.simulated))
        if mconf.provider not in keys:
            keys[mconf.provider] = await aresolve_api_key(ctx.config, mconf.provider)
        if not budget.try_acquire(model_name):
            raise BudgetExceededError(f"the budget ran out before the call to {model_name}")
        provider = get_provider(ctx.config, mconf.provider, keys[mconf.provider])
        try:
            completion = await provider.complete(model_name, messages, seed=0)
        except BaseException:
            budget.release(model_name)
            raise
        budget.settle(model_name, completion.cost_usd)
        store.write_batch([ResponseRecord(
            call_key=key, provider=mconf.provider, model=mconf.model, prompt_hash=None, case_id=None, repeat=0,
            output=completion.text, input_tokens=completion.input_tokens, output_tokens=completion.output_tokens,
            latency_ms=completion.latency_ms, cost_usd=completion.cost_usd, attempts=completion.attempts,
            simulated=completion.simulated, created_at=datetime.now(timezone.utc), run_id=plan.run_id,
            provider_model=completion.raw_model or None, finish_reason=completion.finish_reason,
            tokens_source=completion.tokens_source)], [])
        return completion

    return complete


def _screen(candidates: list[CandidatePrompt], **kwargs) -> CandidateScreening:
    """The candidates suite (Great Expectations) runs in the data worker, alongside the dataset suite."""
    return dataworker.call(screen_candidates, candidates, **kwargs)


@task(name="generate-candidates", cache_policy=NO_CACHE)
async def generate_candidates(plan: OptimizationPlan) -> list[CandidateRow]:
    """Run the strategies, validate every candidate (renders; nothing of dev/test leaked), record the
    kept ones (at most `max_candidates` per scope) in the prompt registry, and list all of them."""
    ctx = _context(plan)
    opt = ctx.pipeline.optimization
    store = open_store(ctx.store_path)
    diagnosis = Diagnosis.from_dict(store.get_diagnosis(plan.run_id, plan.baseline_run_id))
    current = _current_prompt(store, plan)
    train = [c for c in ctx.configured_cases if ctx.splits.get(c.id) == "train"]
    held_out = [c for c in ctx.all_cases if ctx.splits.get(c.id) in ("dev", "test")]
    complete = _ledger_complete(ctx, store, plan)
    optimizer = opt.optimizer_model or ctx.pipeline.models[-1]
    rows: list[CandidateRow] = []
    proposed: list[CandidatePrompt] = []
    for scope in plan.scopes:
        context = StrategyContext(spectrums=list(ctx.pipeline.dataset.spectrums), seed=ctx.pipeline.dataset.splits.seed,
                                  complete=complete, optimizer_model=optimizer, model=scope)
        for name in plan.strategies:
            try:
                found = await create_strategy(name).propose(current, diagnosis, train, context=context)
            except BudgetExceededError as exc:
                rows.append(CandidateRow(hash="", strategy=name, scope=scope, status="stopped", reasons=[str(exc)]))
                continue
            except ProviderError as exc:
                rows.append(CandidateRow(hash="", strategy=name, scope=scope, status="failed",
                                         reasons=[f"{type(exc).__name__}: {exc}"]))
                continue
            proposed += found
    if not proposed:
        return rows
    screening = _screen(proposed, variables=current.variables, held_out=held_out, train=train)
    store.write_dq_result(plan.run_id, "candidates", screening.report.success, screening.report.to_dict())
    for candidate, problems in screening.rejected:
        rows.append(CandidateRow(hash=candidate.hash, strategy=candidate.strategy, scope=candidate.scope,
                                 rationale=candidate.rationale, status="rejected", reasons=problems))
    kept = screening.kept
    if plan.auto_strategies:
        kept, passed_over = learning.choose_auto(
            kept, diagnosis, store.strategy_outcomes(plan.pipeline), pipeline=plan.pipeline,
            budget=opt.max_candidates, exploration=opt.exploration, memory=opt.learning_memory,
            seed=ctx.pipeline.dataset.splits.seed)
        rows += [CandidateRow(hash=c.hash, strategy=c.strategy, scope=c.scope, rationale=c.rationale, status="over_cap",
                              reasons=["not chosen by `strategies: auto` (learned strategy posteriors)"])
                 for c in passed_over]
    kept_per_scope: dict[str | None, int] = {}
    now = datetime.now(timezone.utc)
    for candidate in kept:
        n = kept_per_scope[candidate.scope] = kept_per_scope.get(candidate.scope, 0) + 1
        if n > opt.max_candidates:
            rows.append(CandidateRow(hash=candidate.hash, strategy=candidate.strategy, scope=candidate.scope,
                                     rationale=candidate.rationale, status="over_cap",
                                     reasons=[f"beyond max_candidates ({opt.max_candidates})"]))
            continue
        store.write_prompt_version(PromptVersionRecord(
            prompt_hash=candidate.hash, pipeline=plan.pipeline, system=candidate.prompt.system,
            template=candidate.prompt.template, variables=candidate.prompt.variables,
            parent_hash=candidate.parent_hash, strategy=candidate.strategy, rationale=candidate.rationale,
            scope=candidate.scope, created_at=now))
        rows.append(CandidateRow(hash=candidate.hash, strategy=candidate.strategy, scope=candidate.scope,
                                 rationale=candidate.rationale, status="unscreened"))
    return rows


# -- budget ---------------------------------------------------------------------------------------

def _arm_models(plan: OptimizationPlan, scope: str | None) -> list[str]:
    return [scope] if scope else list(plan.models)


def _planned(ctx: PipelineContext, store, stage: str, prompt: PromptTemplate, models: list[str],
             split: str, repeats: int, current: PromptTemplate, epoch: str = "") -> list[PlannedEvaluation]:
    cases = [c for c in ctx.cases if ctx.splits.get(c.id) == split]
    extra = len(prompt.system) + len(prompt.template) - len(current.system) - len(current.template)
    keys: dict[str, list[str]] = {}
    for model in models:
        mconf = ctx.config.models[model]
        keys[model] = [key for c in cases
                       for key in call_keys(mconf.provider, mconf, ctx.messages(prompt, c), range(repeats), epoch)]
    paid = store.get_responses([k for ks in keys.values() for k in ks])
    return [PlannedEvaluation(stage=stage, model=m, calls=len(ks), reused=sum(k in paid for k in ks),
                              extra_input_chars=extra) for m, ks in keys.items()]


@task(name="estimate-budget", cache_policy=NO_CACHE)
def estimate_budget(plan: OptimizationPlan, rows: list[CandidateRow]) -> BudgetEstimate:
    """Calls, tokens and cost the search will pay from here on (ledger hits are free), against the caps.

    Confirmation is counted for the `confirm_top` candidates of each scope that would cost the most,
    since which ones reach it is known only after screening."""
    ctx = _context(plan)
    opt = ctx.pipeline.optimization
    store = open_store(ctx.store_path)
    current = _current_prompt(store, plan)
    kept = [r for r in rows if r.status == "unscreened"]
    planned: list[PlannedEvaluation] = []
    if kept:
        planned += _planned(ctx, store, SCREEN, current, list(plan.models), "dev", opt.screen_repeats, current,
                            plan.epoch)
        scopes = list(dict.fromkeys(r.scope for r in kept))
        confirm_models = list(plan.models) if None in scopes else [m for m in plan.models if m in scopes]
        planned += _planned(ctx, store, CONFIRM, current, confirm_models, "test", opt.confirm_repeats, current,
                            plan.epoch)
    for scope in dict.fromkeys(r.scope for r in kept):
        per_candidate: dict[str, list[PlannedEvaluation]] = {}
        for row in (r for r in kept if r.scope == scope):
            prompt = _prompt(store, row.hash)
            models = _arm_models(plan, scope)
            planned += _planned(ctx, store, SCREEN, prompt, models, "dev", opt.screen_repeats, current,
                                plan.epoch)
            per_candidate[row.hash] = _planned(ctx, store, CONFIRM, prompt, models, "test", opt.confirm_repeats,
                                               current, plan.epoch)
        planned += worst_confirmation(per_candidate, opt.confirm_top)
    profile = dataworker.call(TokenProfile.from_stored_run, str(ctx.store_path), plan.baseline_run_id)
    estimate = estimate_spend(planned, profile=profile, pricing=ctx.config.models,
                              spent=store.spend(plan.run_id), max_calls=plan.max_calls,
                              max_cost_usd=plan.max_cost_usd)
    report_estimate(estimate)
    return estimate


# -- evaluations ----------------------------------------------------------------------------------

@task(name="open-evaluations", cache_policy=NO_CACHE)
def open_evaluations(plan: OptimizationPlan, kind: str, rows: list[CandidateRow]) -> list[Arm]:
    """The arms of one stage — the current prompt first, then each candidate — each recorded as a run
    (or resumed: its id is derived from the optimization's, the stage and the prompt)."""
    ctx = _context(plan)
    opt = ctx.pipeline.optimization
    store = open_store(ctx.store_path)
    split = SPLIT_OF[kind]
    repeats = opt.screen_repeats if kind == SCREEN else opt.confirm_repeats
    scopes = list(dict.fromkeys(r.scope for r in rows))
    current_models = list(plan.models) if kind == SCREEN or None in scopes else \
        [m for m in plan.models if m in scopes]
    arms = [Arm(run_id=evaluation_run_id(plan.run_id, kind, plan.current_hash), kind=kind,
                prompt_hash=plan.current_hash, scope=None, models=current_models, split=split, repeats=repeats,
                current=True)]
    arms += [Arm(run_id=evaluation_run_id(plan.run_id, kind, r.hash, r.scope), kind=kind, prompt_hash=r.hash,
                 scope=r.scope, models=_arm_models(plan, r.scope), split=split, repeats=repeats) for r in rows]
    for arm in arms:
        identity = json.dumps([plan.run_id, arm.kind, arm.prompt_hash, arm.scope, arm.split, arm.repeats])
        store.create_run(RunRecord(
            run_id=arm.run_id, pipeline=plan.pipeline, kind=arm.kind,
            fingerprint=hashlib.sha256(identity.encode()).hexdigest()[:16], status="running",
            prompt_hash=arm.prompt_hash, dataset_hash=ctx.dataset_hash, models=arm.models, repeats=arm.repeats,
            case_limit=plan.limit, simulated=plan.simulated, started_at=datetime.now(timezone.utc)))
    return arms


@task(name="evaluate-prompt", task_run_name="{kind} {prompt_hash} × {model}", cache_policy=NO_CACHE,
      retries=CELL_RETRIES, retry_delay_seconds=BACKOFF, retry_jitter_factor=0.5,
      retry_condition_fn=retry_if_transient)
async def evaluate_prompt(config_path: str, pipeline: str, store_path: str | None, limit: int | None,
                          optimization_run_id: str, run_id: str, kind: str, prompt_hash: str, model: str,
                          split: str, repeats: int, max_calls: int | None, max_cost_usd: float | None,
                          cost_per_call: dict[str, float] | None = None, epoch: str = "") -> dict:
    """One prompt through one model on every case of a split: what the run has not recorded yet, paid
    calls within the optimization's budget. Reaching the cap is an outcome (`budget_exhausted`), not a
    failure."""
    ctx = load_pipeline(config_path, pipeline, limit=limit, store=store_path)
    store = open_store(ctx.store_path)
    prompt = _prompt(store, prompt_hash)
    spec = CellSpec(run_id=run_id, pipeline=pipeline, model_name=model, model=ctx.config.models[model],
                    spectrum=split, prompt=prompt, splits=ctx.splits, repeats=repeats, weights=ctx.weights,
                    cases=[c for c in ctx.cases if ctx.splits.get(c.id) == split],
                    render_case=functools.partial(ctx.messages, prompt), epoch=epoch)
    budget = budget_for(store, optimization_run_id, max_calls=max_calls, max_cost_usd=max_cost_usd,
                        cost_per_call=cost_per_call)
    try:
        outcome = await run_cell(ctx, spec, retries=CELL_RETRIES, budget=budget)
    except BudgetExceededError as exc:
        stopped = exc.outcome
        return stopped.__dict__ | {"error_messages": stopped.error_messages[:3], "budget_exhausted": True}
    return outcome.__dict__ | {"error_messages": outcome.error_messages[:3], "budget_exhausted": False}


def _check_arms(ctx: PipelineContext, arms: list[Arm],
                model_groups: list[list[str]] | None = None) -> dict[str, ArmCheck]:
    case_ids = {split: [c.id for c in ctx.cases if ctx.splits.get(c.id) == split] for split in ("dev", "test")}
    return dataworker.call(check_stored_arms, str(ctx.store_path), arms, case_ids=case_ids,
                           scorers=list(ctx.pipeline.scorers), max_error_rate=ctx.pipeline.max_error_rate,
                           model_groups=model_groups or [], expectations=results_expectations(ctx.pipeline))


@task(name="rank-on-dev", cache_policy=NO_CACHE)
def rank_on_dev(plan: OptimizationPlan, rows: list[CandidateRow], arms: list[Arm]) -> Screening:
    """Check each screened arm's results (the results suite), score it on dev, and select the best few
    of each scope that beat the current prompt on the same models."""
    ctx = _context(plan)
    groups = {scope: _arm_models(plan, scope) for scope in plan.scopes}
    checks = _check_arms(ctx, arms, list(groups.values()))
    current = checks[arms[0].run_id]
    if current.problem:
        raise DataQualityError(f"the current prompt's dev results fail the results suite: {current.problem}")
    by_key = {(a.prompt_hash, a.scope): checks[a.run_id] for a in arms[1:]}
    out = []
    for row in rows:
        row = row.model_copy(deep=True)
        check = by_key.get((row.hash, row.scope))
        if check is not None and row.status == "unscreened":
            if not check.complete:
                row.reasons.append(f"not screened: {check.observations} of {check.expected} observations "
                                   "(the budget ran out)")
            elif check.problem:
                row.status, row.dev_quality = "failed", check.quality
                row.reasons.append(check.problem)
            else:
                row.status, row.dev_quality = "screened", check.quality
        out.append(row)
    if not current.complete:
        for row in out:
            if row.status == "screened":
                row.reasons.append("not compared: the current prompt's dev evaluation is incomplete")
        return Screening(rows=out)
    current_dev = {scope: current.quality_of[",".join(models)] for scope, models in groups.items()}
    return Screening(rows=rank_candidates(out, current_dev=current_dev, top=ctx.pipeline.optimization.confirm_top),
                     current_dev=current.quality)


@task(name="confirm-on-test", cache_policy=NO_CACHE)
def confirm_on_test(plan: OptimizationPlan, rows: list[CandidateRow], arms: list[Arm],
                    budget_exhausted: bool) -> Confirmation:
    """The paired test of each selected candidate against the current prompt on the test split; every
    result is stored as a decision with its evidence."""
    ctx = _context(plan)
    opt = ctx.pipeline.optimization
    store = open_store(ctx.store_path)
    checks = _check_arms(ctx, arms)
    current = arms[0]
    if checks[current.run_id].problem:
        raise DataQualityError(f"the current prompt's test results fail the results suite: "
                               f"{checks[current.run_id].problem}")
    rows = [r.model_copy(deep=True) for r in rows]
    selected = {(r.hash, r.scope): r for r in rows if r.status == "selected"}
    if budget_exhausted or not all(c.complete for c in checks.values()):
        for row in selected.values():
            row.decision = "budget_exhausted"
            row.reasons.append("not confirmed: the budget ran out during confirmation")
            store.write_decision(DecisionRecord(
                run_id=plan.run_id, pipeline=plan.pipeline, kind="confirmation", prompt_hash=row.hash,
                baseline_hash=plan.current_hash, decision="budget_exhausted",
                evidence={"reason": "the budget ran out before the confirmation finished", "scope": row.scope,
                          "spend": store.spend(plan.run_id), "max_calls": plan.max_calls,
                          "max_cost_usd": plan.max_cost_usd, "simulated": plan.simulated}))
        return Confirmation(rows=rows, budget_exhausted=True)

    groups: dict[str | None, dict[str, str]] = {}
    for arm in arms[1:]:
        row = selected[(arm.prompt_hash, arm.scope)]
        if checks[arm.run_id].problem:
            row.status = "failed"
            row.reasons.append(checks[arm.run_id].problem)
        else:
            groups.setdefault(arm.scope, {})[arm.prompt_hash] = arm.run_id
    confirmed = dataworker.call(
        confirm_stored_arms, str(ctx.store_path), current.run_id,
        [(scope, _arm_models(plan, scope), runs) for scope, runs in groups.items()],
        scorers=list(ctx.pipeline.scorers), min_effect=opt.min_effect, alpha=opt.alpha,
        spectrum_margin=opt.spectrum_margin, spectrum_alpha=opt.spectrum_alpha,
        clusters=case_clusters(ctx.cases, opt.cluster_field), cluster_unit=opt.cluster_field or "case",
        control=ErrorControl(pipeline=plan.pipeline, baseline_hash=plan.current_hash, run_id=plan.run_id,
                             scheme=opt.error_control, first_share=opt.first_share))
    results: dict[str, dict] = {}
    qualities: dict[str, tuple[float, float]] = {}
    # A per-model search can propose the same text for several models; decisions are keyed by the
    # prompt, so the promoted one is written last and is the one kept.
    ordered = sorted(((group, h, r) for group in confirmed for h, r in group.results.items()),
                     key=lambda item: item[2]["decision"] == "promote")
    for group, h, result in ordered:
        row = selected[(h, group.scope)]
        cand_q = group.candidate_quality[h]
        key = candidate_key(h, group.scope)
        results[key], qualities[key] = result, (group.current_quality, cand_q)
        row.status, row.decision, row.test_quality = "confirmed", result["decision"], cand_q
        row.effect, row.ci_low, row.ci_high = result["effect"], result["ci_low"], result["ci_high"]
        row.p_value, row.adjusted_p_value = result["p_value"], result["adjusted_p_value"]
        store.write_decision(DecisionRecord(
            run_id=plan.run_id, pipeline=plan.pipeline, kind="confirmation", prompt_hash=h,
            baseline_hash=plan.current_hash, decision=result["decision"],
            evidence=result | {
                "strategy": row.strategy, "scope": group.scope, "models": group.models,
                "n_models": len(group.models), "dropped_observations": group.dropped,
                "dev_quality": row.dev_quality, "dev_delta": row.dev_delta,
                "current_test_quality": group.current_quality, "candidate_test_quality": cand_q,
                "baseline_run_id": plan.baseline_run_id, "simulated": plan.simulated}))
    return Confirmation(rows=rows, results=results, test_quality=qualities)


# -- decide and label -----------------------------------------------------------------------------

def _reason(outcome: str, plan: OptimizationPlan, rows: list[CandidateRow], headline: dict | None,
            stopped_in: str | None, current_dev: float | None) -> str:
    if outcome == "budget_exhausted":
        caps = " and ".join(c for c in (f"{plan.max_calls:,} calls" if plan.max_calls is not None else "",
                                        f"${plan.max_cost_usd:g}" if plan.max_cost_usd is not None else "") if c)
        return (f"The budget cap ({caps}) was reached during {stopped_in or 'the search'}; what was measured is "
                "kept. Re-run the same command with a higher cap to continue (nothing paid is paid again).")
    if headline is not None:
        return headline["reason"]
    if not any(r.status in ("unscreened", "screened", "selected", "confirmed") or r.dev_quality is not None
               for r in rows):
        return "No candidate survived validation, so nothing was screened."
    screened = [r for r in rows if r.dev_quality is not None and r.status != "failed"]
    if screened and current_dev is not None:
        best = max(screened, key=lambda r: r.dev_quality)
        return (f"No candidate scored above the current prompt on dev (best: {best.strategy} {best.dev_quality:.2f} "
                f"vs current {current_dev:.2f} points), so none went to confirmation.")
    return "No candidate could be screened and confirmed (see the candidates table for why)."


@task(name="label-candidate", cache_policy=NO_CACHE)
def label_candidate(plan: OptimizationPlan, confirmation: Confirmation, estimate: BudgetEstimate | None,
                    stopped_in: str | None, current_dev: float | None = None) -> OptimizationSummary:
    """Decide the outcome, move the `candidate` label to the winner (per scope), and close the run."""
    ctx = _context(plan)
    opt = ctx.pipeline.optimization
    store = open_store(ctx.store_path)
    outcome, headline = decide_outcome(confirmation.results, budget_exhausted=stopped_in is not None)
    rows = [r.model_copy(deep=True) for r in confirmation.rows]
    if stopped_in == "screening":
        for row in rows:
            if row.status == "selected":
                row.reasons.append("would be confirmed next: the budget ran out first")
    labelled: list[dict[str, str | None]] = []
    confirmed = {candidate_key(r.hash, r.scope): r for r in rows if r.status == "confirmed"}
    for scope in dict.fromkeys(r.scope for r in confirmed.values()):
        promoted = [k for k, r in confirmation.results.items()
                    if r["decision"] == "promote" and confirmed[k].scope == scope]
        if not promoted:
            continue
        best = max(promoted, key=lambda k: confirmation.results[k]["effect"])
        result, row = confirmation.results[best], confirmed[best]
        store.move_label(plan.pipeline, "candidate", row.hash, scope=scope or "", actor=plan.run_id,
                         reason=f"Optimization {plan.run_id}: {row.strategy} candidate improves the mean "
                                f"case score by {100 * result['effect']:+.2f} points on the test split "
                                f"(p = {result['adjusted_p_value']:.3g}, {result['n_cases']} cases).",
                         evidence=result | {"baseline_hash": plan.current_hash, "scope": scope,
                                            "simulated": plan.simulated})
        labelled.append({"scope": scope, "hash": row.hash})
    result = confirmation.results.get(headline) if headline else None
    summary = OptimizationSummary(
        run_id=plan.run_id, pipeline=plan.pipeline, outcome=outcome,
        reason=_reason(outcome, plan, rows, result, stopped_in, current_dev), simulated=plan.simulated,
        resumed=plan.resumed, baseline_run_id=plan.baseline_run_id, current_hash=plan.current_hash,
        strategies=plan.strategies, per_model_prompts=plan.per_model_prompts, labelled=labelled,
        min_effect=opt.min_effect, alpha=opt.alpha, candidates=rows, estimate=estimate,
        current_dev_quality=current_dev, max_calls=plan.max_calls, max_cost_usd=plan.max_cost_usd,
        started_at=plan.started_at)
    if result is not None:
        row = confirmed[headline]
        version = store.get_prompt_version(row.hash)
        summary.evidence(result)
        summary.candidate_hash, summary.candidate_strategy = row.hash, row.strategy
        summary.candidate_scope, summary.candidate_rationale = row.scope, row.rationale
        summary.candidate_system, summary.candidate_template = version.system, version.template
        summary.n_models = len(_arm_models(plan, row.scope))
        summary.current_test_quality, summary.candidate_test_quality = confirmation.test_quality[headline]
        production = (store.get_label(plan.pipeline, "production", scope=row.scope or "")
                      or store.get_label(plan.pipeline, "production"))
        compared = store.get_prompt_version(production or plan.current_hash)
        if compared is not None:
            summary.compared_hash, summary.compared_label = compared.prompt_hash, (
                "production" if production else "current prompt")
            summary.compared_system, summary.compared_template = compared.system, compared.template
    own, baseline = store.get_run(plan.run_id), store.get_run(plan.baseline_run_id)
    summary.flow_run_id = own.flow_run_id if own else None
    summary.baseline_flow_run_id = baseline.flow_run_id if baseline else None
    summary.spend = store.spend(plan.run_id)
    summary.finished_at = datetime.now(timezone.utc)
    diagnosis = store.get_diagnosis(plan.run_id, plan.baseline_run_id)
    if outcome != "budget_exhausted" and diagnosis:  # what each strategy did, for `auto` and `promptcycle learning`
        store.record_strategy_outcomes(learning.optimization_outcomes(
            plan.run_id, plan.pipeline, rows, Diagnosis.from_dict(diagnosis),
            min_effect_points=100 * opt.min_effect, simulated=plan.simulated,
            spend_of=lambda h, scope: store.spend([evaluation_run_id(plan.run_id, kind, h, scope)
                                                   for kind in (SCREEN, CONFIRM)])))
        memory = opt.learning_memory
        create_markdown_artifact(key=artifact_key("strategy-learning", plan.pipeline), markdown=learning.learning_markdown(
            learning.learning_table(learning.outcomes_from_rows(store.strategy_outcomes(plan.pipeline)), memory=memory),
            memory=memory, simulated=plan.simulated), description=f"What optimizations of {plan.pipeline} learned "
                                 "about each strategy, per context")
    # A run the cap stopped stays resumable: the same command with a higher cap continues it.
    store.finish_run(plan.run_id, "failed" if outcome == "budget_exhausted" else "completed",
                     json.loads(summary.model_dump_json()))
    return summary


@task(name="fail-optimization", cache_policy=NO_CACHE)
def fail_optimization(plan: OptimizationPlan, reason: str) -> None:
    """Mark the optimization failed (it stays resumable: re-running the same command continues it)."""
    ctx = _context(plan)
    open_store(ctx.store_path).finish_run(plan.run_id, "failed", {"reason": reason[:2000]})


# -- artifacts ------------------------------------------------------------------------------------

@task(name="publish-diagnosis", cache_policy=NO_CACHE)
def publish_diagnosis(plan: OptimizationPlan, markdown: str) -> None:
    create_markdown_artifact(key=artifact_key("optimization-diagnosis", plan.pipeline), markdown=markdown,
                             description=f"Where the prompt of baseline run {plan.baseline_run_id} fails")


@task(name="publish-estimate", cache_policy=NO_CACHE)
def publish_estimate(plan: OptimizationPlan, estimate: BudgetEstimate) -> None:
    create_markdown_artifact(key=artifact_key("optimization-budget", plan.pipeline),
                             markdown="# Budget estimate\n\n" + "\n".join(f"- {line.strip()}"
                                                                          for line in estimate.lines()),
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
