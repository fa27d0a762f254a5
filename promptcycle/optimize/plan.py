"""Planning an optimization: the baseline it starts from, what makes two optimizations the same work, the run
it records (or resumes), and what the search will pay from there.

    baseline_run_id = find_baseline_run(ctx, store, baseline_run_id=None, limit=limit)   # None: run one first
    plan = open_optimization(ref, store, baseline_run_id=…, strategy_names=names, …)   # created or resumed
    estimate = estimate_search(ctx, store, plan, rows)                                   # ledger hits are free

A re-run of the same command finds the same fingerprint and resumes the run; the caps are not part of the
fingerprint, so a re-run with a higher cap continues where the cap stopped it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timezone

from pydantic import BaseModel

from promptcycle import dataworker
from promptcycle.errors import ConfigError, RunFailedError
from promptcycle.evaluation.context import PipelineContext, PipelineRef, fingerprint
from promptcycle.evaluation.ledger import call_keys
from promptcycle.evaluation.runs import gate_dataset, new_run_id
from promptcycle.optimize import strategies
from promptcycle.optimize.budget import (
    BudgetEstimate,
    PlannedEvaluation,
    TokenProfile,
    estimate_spend,
    worst_confirmation,
)
from promptcycle.optimize.search import CONFIRM, SCREEN, CandidateRow
from promptcycle.prompts import PromptTemplate
from promptcycle.store.records import RunRecord

__all__ = ["OptimizationPlan", "find_baseline_run", "check_strategies", "optimization_fingerprint",
           "open_optimization", "arm_models", "stored_prompt", "estimate_search"]


class OptimizationPlan(BaseModel):
    """One optimization, as its tasks receive it: names, ids and caps (never a live client)."""

    run_id: str
    ref: PipelineRef  # the pipeline, its store and the case limit
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

    @property
    def pipeline(self) -> str:
        return self.ref.pipeline

    @property
    def limit(self) -> int | None:
        return self.ref.limit


def find_baseline_run(ctx: PipelineContext, store, *, baseline_run_id: str | None, limit: int | None) -> str | None:
    """The baseline run to optimize from: `baseline_run_id` (checked: `ConfigError` naming `--baseline`),
    else the latest completed baseline of the configured prompt that covers the models and cases; None when
    a baseline must be run first."""
    pipeline = ctx.name
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


def check_strategies(names: Sequence[str]) -> None:
    """Every name is a registered strategy, and there is at least one (`ConfigError` naming `--strategies`)."""
    for name in names:
        if name not in strategies:
            raise ConfigError(f"unknown strategy {name!r}; known: {', '.join(strategies.names())}",
                              path="--strategies", found=name, expected="a registered strategy")
    if not names:
        raise ConfigError("no strategy to run", path="--strategies", expected="at least one strategy name")


def optimization_fingerprint(ctx: PipelineContext, baseline_run_id: str, current_hash: str, names: list[str],
                             limit: int | None, model: str | None = None, epoch: str = "") -> str:
    """What makes two optimizations the same work. The caps are left out on purpose: re-running with
    a higher cap continues the same optimization, and its spend so far counts against the new cap. A
    model-scoped or epoch-keyed search (a healing's) is other work than the pipeline's own."""
    opt = ctx.pipeline.optimization.model_dump(exclude={"max_calls", "max_cost_usd", "strategies"})
    base = fingerprint(ctx, kind="optimization", repeats=opt["confirm_repeats"], limit=limit, prompt_hash=current_hash)
    focus = {"model": model, "epoch": epoch} if model or epoch else {}
    payload = json.dumps({"base": base, "baseline_run": baseline_run_id, "strategies": names, "optimization": opt,
                          **focus}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def open_optimization(ref: PipelineRef, store, *, baseline_run_id: str, strategy_names: list[str],
                      auto_strategies: bool = False, max_calls: int | None, max_cost_usd: float | None,
                      flow_run_id: str | None = None, model: str | None = None,
                      epoch: str = "") -> OptimizationPlan:
    """Create the optimization run, or resume the unfinished one with the same fingerprint; then the dataset
    suite (which closes the run and raises on failure). Caps default to the pipeline's `optimization`.

    With `model` (one of the pipeline's: the caller checks), the search is for a prompt of that model alone,
    evaluated on it only; with `epoch`, its evaluations are keyed in that ledger epoch."""
    ctx, pipeline, limit = ref.load(), ref.pipeline, ref.limit
    opt = ctx.pipeline.optimization
    baseline = store.get_run(baseline_run_id)
    current_hash = baseline.prompt_hash or ctx.prompt.hash
    if store.get_prompt_version(current_hash) is None:
        raise RunFailedError(f"the prompt of baseline run {baseline_run_id} ({current_hash}) is not in the prompt "
                             "registry; run `promptcycle baseline` again to record it")
    max_calls = max_calls if max_calls is not None else opt.max_calls
    max_cost_usd = max_cost_usd if max_cost_usd is not None else opt.max_cost_usd
    fp = optimization_fingerprint(ctx, baseline_run_id, current_hash, strategy_names, limit, model, epoch)
    models = [model] if model else list(ctx.pipeline.models)
    previous = store.find_resumable_run(pipeline, "optimization", fp)
    run_id = previous.run_id if previous else new_run_id("optimization", pipeline)
    simulated = ctx.simulated
    if previous is not None:
        store.resume_run(run_id, flow_run_id)
        started_at = previous.started_at
    else:
        started_at = datetime.now(timezone.utc)
        store.create_run(RunRecord(
            run_id=run_id, pipeline=pipeline, kind="optimization", fingerprint=fp, status="running",
            prompt_hash=current_hash, dataset_hash=ctx.dataset_hash, models=models,
            repeats=opt.confirm_repeats, case_limit=limit, simulated=simulated,
            config_json=json.dumps({"pipeline": json.loads(ctx.pipeline.model_dump_json()),
                                    "strategies": strategy_names, "baseline_run_id": baseline_run_id}),
            flow_run_id=flow_run_id, started_at=started_at))
    gate_dataset(ctx, store, run_id)
    scopes: list[str | None] = [model] if model else models if opt.per_model_prompts else [None]
    return OptimizationPlan(run_id=run_id, ref=ref, resumed=previous is not None, baseline_run_id=baseline_run_id,
                            current_hash=current_hash, strategies=strategy_names,
                            per_model_prompts=opt.per_model_prompts, models=models, scopes=scopes,
                            max_calls=max_calls, max_cost_usd=max_cost_usd, simulated=simulated,
                            started_at=started_at, auto_strategies=auto_strategies, epoch=epoch)


def arm_models(plan: OptimizationPlan, scope: str | None) -> list[str]:
    """The models a candidate of `scope` is evaluated with: its own model, or every model (shared prompt)."""
    return [scope] if scope else list(plan.models)


def stored_prompt(store, prompt_hash: str) -> PromptTemplate:
    """A prompt version from the store's prompt registry (`RunFailedError` when it is not there)."""
    version = store.get_prompt_version(prompt_hash)
    if version is None:
        raise RunFailedError(f"prompt version {prompt_hash} is not in the prompt registry of {store.path}")
    return PromptTemplate(template=version.template, system=version.system)


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


def estimate_search(ctx: PipelineContext, store, plan: OptimizationPlan,
                    rows: Sequence[CandidateRow]) -> BudgetEstimate:
    """Calls, tokens and cost the search will pay from here on (ledger hits are free), against the caps.

    Confirmation is counted for the `confirm_top` candidates of each scope that would cost the most,
    since which ones reach it is known only after screening. Tokens per call are the baseline run's."""
    opt = ctx.pipeline.optimization
    current = stored_prompt(store, plan.current_hash)
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
            prompt = stored_prompt(store, row.hash)
            models = arm_models(plan, scope)
            planned += _planned(ctx, store, SCREEN, prompt, models, "dev", opt.screen_repeats, current,
                                plan.epoch)
            per_candidate[row.hash] = _planned(ctx, store, CONFIRM, prompt, models, "test", opt.confirm_repeats,
                                               current, plan.epoch)
        planned += worst_confirmation(per_candidate, opt.confirm_top)
    profile = dataworker.call(TokenProfile.from_stored_run, str(ctx.store_path), plan.baseline_run_id)
    return estimate_spend(planned, profile=profile, pricing=ctx.config.models, spent=store.spend(plan.run_id),
                          max_calls=plan.max_calls, max_cost_usd=plan.max_cost_usd)
