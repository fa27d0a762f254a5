"""What the stages showed: the screened arms ranked on dev, then the selected candidates confirmed on test.

    screening = rank_screened(ctx, plan, rows, arms)                        # who goes to confirmation
    confirmation = confirm_selected(ctx, store, plan, screening.rows, arms, budget_exhausted=False)

Each arm's results go through the results suite first; a candidate whose results fail it is `failed`
with the suite's reason, and the current prompt's failing is an error (nothing can be compared). Every
confirmation — or the budget running out before it — is stored as a decision with its evidence.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from promptcycle import dataworker
from promptcycle.errors import DataQualityError
from promptcycle.evaluation.context import PipelineContext
from promptcycle.optimize.arms import check_arms
from promptcycle.optimize.plan import OptimizationPlan, arm_models
from promptcycle.optimize.search import (
    Arm,
    CandidateRow,
    ErrorControl,
    candidate_key,
    case_clusters,
    confirm_stored_arms,
    rank_candidates,
)
from promptcycle.store.records import DecisionRecord

__all__ = ["Screening", "Confirmation", "rank_screened", "confirm_selected"]


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


def rank_screened(ctx: PipelineContext, plan: OptimizationPlan, rows: Sequence[CandidateRow],
                  arms: Sequence[Arm]) -> Screening:
    """Check each screened arm's results (the results suite), score it on dev, and select the best few
    of each scope that beat the current prompt on the same models."""
    groups = {scope: arm_models(plan, scope) for scope in plan.scopes}
    checks = check_arms(ctx, arms, list(groups.values()))
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


def confirm_selected(ctx: PipelineContext, store, plan: OptimizationPlan, rows: Sequence[CandidateRow],
                     arms: Sequence[Arm], *, budget_exhausted: bool) -> Confirmation:
    """The paired test of each selected candidate against the current prompt on the test split; every
    result is stored as a decision with its evidence (or `budget_exhausted` when the cap stopped it)."""
    opt = ctx.pipeline.optimization
    checks = check_arms(ctx, arms)
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
        [(scope, arm_models(plan, scope), runs) for scope, runs in groups.items()],
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
