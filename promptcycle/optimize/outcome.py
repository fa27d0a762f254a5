"""The end of an optimization: decide its outcome, label the winner, say why, learn, and close the run.

    summary = conclude_search(ctx, store, plan, confirmation, estimate, stopped_in=None, current_dev=81.2)
    table = record_learning(ctx, store, plan, summary)     # Markdown of what each strategy did, or None
    finish_optimization(store, plan, summary)

The outcome is one of `promptcycle.optimize.search.OUTCOMES`; `outcome_reason` says it in one sentence
a user can act on. The `candidate` label moves (per scope) to the promoted candidate with the largest
effect, with the evidence of its confirmation; a run the cap stopped stays resumable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from promptcycle.evaluation.context import PipelineContext
from promptcycle.optimize import learning
from promptcycle.optimize.budget import BudgetEstimate
from promptcycle.optimize.confirm import Confirmation
from promptcycle.optimize.diagnosis import Diagnosis
from promptcycle.optimize.plan import OptimizationPlan, arm_models
from promptcycle.optimize.search import (
    CONFIRM,
    SCREEN,
    CandidateRow,
    OptimizationSummary,
    candidate_key,
    decide_outcome,
    evaluation_run_id,
)

__all__ = ["outcome_reason", "conclude_search", "record_learning", "finish_optimization", "fail_optimization"]


def outcome_reason(outcome: str, plan: OptimizationPlan, rows: Sequence[CandidateRow],
                   headline: Mapping[str, Any] | None, stopped_in: str | None, current_dev: float | None) -> str:
    """Why the optimization ended as it did, in one sentence (with what to do next when there is something)."""
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


def _label_winners(store, plan: OptimizationPlan, confirmation: Confirmation,
                   rows: Sequence[CandidateRow]) -> list[dict[str, str | None]]:
    """Move the `candidate` label of each scope to its promoted candidate with the largest effect."""
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
    return labelled


def conclude_search(ctx: PipelineContext, store, plan: OptimizationPlan, confirmation: Confirmation,
                    estimate: BudgetEstimate | None, *, stopped_in: str | None,
                    current_dev: float | None = None) -> OptimizationSummary:
    """Decide the outcome, move the `candidate` label to the winner (per scope), and sum the search up:
    the headline candidate's evidence and text, what it is compared with, the spend, the runs behind it.

    `stopped_in` names the stage the budget stopped ('generation', 'screening', 'confirmation'), or None."""
    opt = ctx.pipeline.optimization
    outcome, headline = decide_outcome(confirmation.results, budget_exhausted=stopped_in is not None)
    rows = [r.model_copy(deep=True) for r in confirmation.rows]
    if stopped_in == "screening":
        for row in rows:
            if row.status == "selected":
                row.reasons.append("would be confirmed next: the budget ran out first")
    labelled = _label_winners(store, plan, confirmation, rows)
    result = confirmation.results.get(headline) if headline else None
    summary = OptimizationSummary(
        run_id=plan.run_id, pipeline=plan.pipeline, outcome=outcome,
        reason=outcome_reason(outcome, plan, rows, result, stopped_in, current_dev), simulated=plan.simulated,
        resumed=plan.resumed, baseline_run_id=plan.baseline_run_id, current_hash=plan.current_hash,
        strategies=plan.strategies, per_model_prompts=plan.per_model_prompts, labelled=labelled,
        min_effect=opt.min_effect, alpha=opt.alpha, candidates=rows, estimate=estimate,
        current_dev_quality=current_dev, max_calls=plan.max_calls, max_cost_usd=plan.max_cost_usd,
        started_at=plan.started_at)
    if result is not None:
        row = next(r for r in rows if r.status == "confirmed" and candidate_key(r.hash, r.scope) == headline)
        version = store.get_prompt_version(row.hash)
        summary.evidence(result)
        summary.candidate_hash, summary.candidate_strategy = row.hash, row.strategy
        summary.candidate_scope, summary.candidate_rationale = row.scope, row.rationale
        summary.candidate_system, summary.candidate_template = version.system, version.template
        summary.n_models = len(arm_models(plan, row.scope))
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
    return summary


def record_learning(ctx: PipelineContext, store, plan: OptimizationPlan, summary: OptimizationSummary) -> str | None:
    """Record what each strategy did in this optimization (for `strategies: auto` and `promptcycle learning`)
    and return the pipeline's learning table as Markdown; None when there is nothing to learn from (the
    budget stopped the search, or no diagnosis is stored)."""
    opt = ctx.pipeline.optimization
    diagnosis = store.get_diagnosis(plan.run_id, plan.baseline_run_id)
    if summary.outcome == "budget_exhausted" or not diagnosis:
        return None
    store.record_strategy_outcomes(learning.optimization_outcomes(
        plan.run_id, plan.pipeline, summary.candidates, Diagnosis.from_dict(diagnosis),
        min_effect_points=100 * opt.min_effect, simulated=plan.simulated,
        spend_of=lambda h, scope: store.spend([evaluation_run_id(plan.run_id, kind, h, scope)
                                               for kind in (SCREEN, CONFIRM)])))
    memory = opt.learning_memory
    return learning.learning_markdown(
        learning.learning_table(learning.outcomes_from_rows(store.strategy_outcomes(plan.pipeline)), memory=memory),
        memory=memory, simulated=plan.simulated)


def finish_optimization(store, plan: OptimizationPlan, summary: OptimizationSummary) -> None:
    """Close the run with its summary. A run the cap stopped is closed as failed and stays resumable: the
    same command with a higher cap continues it."""
    store.finish_run(plan.run_id, "failed" if summary.outcome == "budget_exhausted" else "completed",
                     json.loads(summary.model_dump_json()))


def fail_optimization(store, plan: OptimizationPlan, reason: str) -> None:
    """Mark the optimization failed (it stays resumable: re-running the same command continues it)."""
    store.finish_run(plan.run_id, "failed", {"reason": reason[:2000]})
