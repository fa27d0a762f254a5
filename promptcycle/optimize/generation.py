"""Generating the candidates of an optimization: run the strategies, validate what they propose, keep a few.

    rows = await generate_candidates(ctx, store, plan, complete=ledgered_complete(…))

Every proposal is checked (it renders with the current prompt's variables; nothing of the dev or test
cases leaked into it — the candidates suite, in the data worker); at most `max_candidates` per scope are
kept (with `strategies: auto`, chosen by the learned strategy posteriors) and recorded in the prompt
registry. Every proposal, kept or not, is a row saying what became of it.
"""

from __future__ import annotations

from datetime import datetime, timezone

from promptcycle import dataworker
from promptcycle.errors import BudgetExceededError, ProviderError
from promptcycle.evaluation.context import PipelineContext
from promptcycle.optimize import learning
from promptcycle.optimize.candidates import CandidatePrompt
from promptcycle.optimize.diagnosis import Diagnosis
from promptcycle.optimize.leakage import screen_candidates
from promptcycle.optimize.plan import OptimizationPlan, stored_prompt
from promptcycle.optimize.search import CandidateRow
from promptcycle.optimize.strategies import CompleteFn, StrategyContext, create_strategy
from promptcycle.store.records import PromptVersionRecord

__all__ = ["generate_candidates"]


async def generate_candidates(ctx: PipelineContext, store, plan: OptimizationPlan, *,
                              complete: CompleteFn) -> list[CandidateRow]:
    """Run the plan's strategies for each scope, validate every candidate, record the kept ones (at most
    `max_candidates` per scope) in the prompt registry, and list all of them. `complete` makes a
    strategy's own model calls (meta); a strategy stopped by the budget or a provider error is a row."""
    opt = ctx.pipeline.optimization
    diagnosis = Diagnosis.from_dict(store.get_diagnosis(plan.run_id, plan.baseline_run_id))
    current = stored_prompt(store, plan.current_hash)
    train = [c for c in ctx.configured_cases if ctx.splits.get(c.id) == "train"]
    held_out = [c for c in ctx.all_cases if ctx.splits.get(c.id) in ("dev", "test")]
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
    # The candidates suite (Great Expectations) runs in the data worker, alongside the dataset suite.
    screening = dataworker.call(screen_candidates, proposed, variables=current.variables, held_out=held_out,
                                train=train)
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
