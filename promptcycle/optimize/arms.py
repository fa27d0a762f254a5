"""The arms of a search stage: the current prompt first, then each candidate, each one run in the store.

    arms = open_arms(ctx, store, plan, SCREEN, rows)         # recorded, or resumed (ids are derived)
    spec = arm_cell(ctx, store, arm.run_id, arm.prompt_hash, model, arm.split, arm.repeats)   # one model
    checks = check_arms(ctx, arms)                           # complete? results suite? quality?
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timezone

from promptcycle import dataworker
from promptcycle.evaluation.cells import CellSpec
from promptcycle.evaluation.context import PipelineContext
from promptcycle.optimize.plan import OptimizationPlan, arm_models, stored_prompt
from promptcycle.optimize.search import (
    CONFIRM,
    SCREEN,
    Arm,
    ArmCheck,
    CandidateRow,
    check_stored_arms,
    evaluation_run_id,
)
from promptcycle.quality.suites import results_expectations
from promptcycle.store.records import RunRecord

__all__ = ["SPLIT_OF", "open_arms", "arm_cell", "check_arms"]

SPLIT_OF = {SCREEN: "dev", CONFIRM: "test"}


def open_arms(ctx: PipelineContext, store, plan: OptimizationPlan, kind: str,
              rows: Sequence[CandidateRow]) -> list[Arm]:
    """The arms of one stage — the current prompt first, then each candidate — each recorded as a run
    (or resumed: its id is derived from the optimization's, the stage and the prompt)."""
    opt = ctx.pipeline.optimization
    split = SPLIT_OF[kind]
    repeats = opt.screen_repeats if kind == SCREEN else opt.confirm_repeats
    scopes = list(dict.fromkeys(r.scope for r in rows))
    current_models = list(plan.models) if kind == SCREEN or None in scopes else \
        [m for m in plan.models if m in scopes]
    arms = [Arm(run_id=evaluation_run_id(plan.run_id, kind, plan.current_hash), kind=kind,
                prompt_hash=plan.current_hash, scope=None, models=current_models, split=split, repeats=repeats,
                current=True)]
    arms += [Arm(run_id=evaluation_run_id(plan.run_id, kind, r.hash, r.scope), kind=kind, prompt_hash=r.hash,
                 scope=r.scope, models=arm_models(plan, r.scope), split=split, repeats=repeats) for r in rows]
    for arm in arms:
        identity = json.dumps([plan.run_id, arm.kind, arm.prompt_hash, arm.scope, arm.split, arm.repeats])
        store.create_run(RunRecord(
            run_id=arm.run_id, pipeline=plan.pipeline, kind=arm.kind,
            fingerprint=hashlib.sha256(identity.encode()).hexdigest()[:16], status="running",
            prompt_hash=arm.prompt_hash, dataset_hash=ctx.dataset_hash, models=arm.models, repeats=arm.repeats,
            case_limit=plan.limit, simulated=plan.simulated, started_at=datetime.now(timezone.utc)))
    return arms


def arm_cell(ctx: PipelineContext, store, run_id: str, prompt_hash: str, model: str, split: str,
             repeats: int, epoch: str = "") -> CellSpec:
    """One prompt through one model on every case of a split: the cell an arm's model evaluates, its calls
    keyed in the ledger `epoch` (the optimization's; "" shares the ledger with every run)."""
    prompt = stored_prompt(store, prompt_hash)
    return CellSpec(run_id=run_id, pipeline=ctx.name, model_name=model, model=ctx.config.models[model],
                    spectrum=split, prompt=prompt, splits=ctx.splits, repeats=repeats, weights=ctx.weights,
                    cases=[c for c in ctx.cases if ctx.splits.get(c.id) == split],
                    render_case=functools.partial(ctx.messages, prompt), epoch=epoch)


def check_arms(ctx: PipelineContext, arms: Sequence[Arm],
               model_groups: Sequence[Sequence[str]] | None = None) -> dict[str, ArmCheck]:
    """`check_stored_arms` with the pipeline's splits, scorers, error ceiling and results expectations (in
    the data worker)."""
    case_ids = {split: [c.id for c in ctx.cases if ctx.splits.get(c.id) == split] for split in ("dev", "test")}
    return dataworker.call(check_stored_arms, str(ctx.store_path), list(arms), case_ids=case_ids,
                           scorers=list(ctx.pipeline.scorers), max_error_rate=ctx.pipeline.max_error_rate,
                           model_groups=list(model_groups or []), expectations=results_expectations(ctx.pipeline))
