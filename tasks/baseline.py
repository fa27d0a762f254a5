"""Prefect tasks of the baseline phase: thin wrappers over promptcycle's domain, one unit of durable work each."""

from __future__ import annotations

import functools
import hashlib
import json
from datetime import datetime, timezone

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from promptcycle.errors import ConfigError, DataQualityError
from promptcycle.evaluation.cells import CellSpec
from promptcycle.evaluation.context import PipelineRef, fingerprint
from promptcycle.evaluation.lease import hold_pipeline, release_pipeline
from promptcycle.evaluation.runio import mark_new_run
from promptcycle.evaluation.runs import gate_dataset, new_run_id
from promptcycle.evaluation.summary import RunSummary, summarize_stored_run
from promptcycle.prompts import PromptTemplate
from promptcycle.quality.suites import results_expectations
from promptcycle.quality.worker import validate_run_results, warm_up
from promptcycle.store.remote import open_store
from promptcycle.store.records import PromptVersionRecord, RunRecord
from promptcycle_tasks.retry import BACKOFF, retry_if_transient
from promptcycle_tasks.cells import run_cell
from promptcycle_tasks.limits import check_provider_limits
from promptcycle_tasks.secrets import resolve_api_key

__all__ = ["BaselinePlan", "prepare_baseline", "evaluate_cell_task", "check_results", "summarize_run", "fail_run"]

CELL_RETRIES = 3


class BaselinePlan(BaseModel):
    run_id: str
    pipeline: str
    resumed: bool
    prompt_hash: str
    repeats: int
    limit: int | None
    cells: list[tuple[str, str]]  # (model, spectrum)
    total_calls: int
    recorded: int = 0  # scored rows a resumed run already has
    retried: int = 0  # rows of a resumed run that ended in a terminal error: called again
    paid_before: int = 0  # requests the run had sent before this process took it up
    models: list[str] = []  # the models evaluated (the pipeline's, or the ones asked for)
    version: str | None = None  # the prompt version evaluated, when not the configured prompt
    epoch: str = ""  # the ledger epoch of its calls (promptcycle.evaluation.ledger.call_keys)

    def announcement(self) -> str:
        """What this process does, in one line: started, or resumed (and what is retried)."""
        if not self.resumed:
            return f"starting run {self.run_id}: {len(self.cells)} cells, {self.total_calls:,} calls"
        retried = {0: "none ended in error", 1: "1 ended in error and is retried"}.get(
            self.retried, f"{self.retried:,} ended in error and are retried")
        return f"resuming run {self.run_id}: {self.recorded:,} of {self.total_calls:,} recorded, {retried}"


@task(name="prepare-baseline", cache_policy=NO_CACHE)
def prepare_baseline(ref: PipelineRef, repeats: int | None, flow_run_id: str | None = None,
                     version: str | None = None, models: list[str] | None = None, epoch: str = "") -> BaselinePlan:
    """Load and check everything before any model call: config, keys, dataset suite, run record.

    `version` evaluates that prompt version of the registry instead of the configured prompt, `models`
    only those of the pipeline's models, `epoch` keys the calls in a ledger epoch of their own.
    Takes the pipeline's lease first (promptcycle/evaluation/lease.py): a second process running the
    pipeline meanwhile is refused here; the flow releases the lease when it ends."""
    warm_up(gx=False)
    ctx = ref.load()
    for provider in ctx.providers_used():
        resolve_api_key(ctx.config, provider)  # a missing key fails here, before spending
    check_provider_limits(ctx.config, ctx.providers_used())  # and a missing concurrency limit
    store = open_store(ctx.store_path)
    with store.held_open():  # about ten store calls in a burst: one open of the file, not one each
        hold_pipeline(store, ref.pipeline, "baseline")
        try:
            return _prepare_baseline(ctx, store, ref.pipeline, repeats, ref.limit, flow_run_id, version, models,
                                     epoch)
        except BaseException:
            release_pipeline(ref.pipeline)
            raise


def baseline_prompt(ctx, store, version: str | None) -> PromptTemplate:
    """The prompt a baseline evaluates: `version` from the prompt registry, else the configured prompt."""
    if version is None:
        return ctx.prompt
    record = store.get_prompt_version(version)
    if record is None or record.pipeline != ctx.name:
        raise ConfigError(f"no prompt version {version!r} of pipeline {ctx.name!r} in {ctx.store_path}",
                          path="--version", found=version, expected="a prompt hash of the pipeline's registry")
    return PromptTemplate(template=record.template, system=record.system)


def _prepare_baseline(ctx, store, pipeline: str, repeats: int | None, limit: int | None,
                      flow_run_id: str | None, version: str | None = None, models: list[str] | None = None,
                      epoch: str = "") -> BaselinePlan:
    repeats = repeats or ctx.pipeline.repeats
    prompt = baseline_prompt(ctx, store, version)
    unknown = [m for m in models or [] if m not in ctx.pipeline.models]
    if unknown:
        raise ConfigError(f"model {unknown[0]!r} is not one of pipeline {pipeline!r}'s models", path="--models",
                          found=unknown[0], expected=f"one of {', '.join(ctx.pipeline.models)}")
    models = list(models or ctx.pipeline.models)
    fp = fingerprint(ctx, kind="baseline", repeats=repeats, limit=limit, prompt_hash=prompt.hash)
    if models != list(ctx.pipeline.models) or epoch:  # other work than the full baseline: another fingerprint
        fp = hashlib.sha256(json.dumps([fp, models, epoch]).encode()).hexdigest()[:16]
    previous = store.find_resumable_run(pipeline, "baseline", fp)
    run_id = previous.run_id if previous else new_run_id("baseline", pipeline)
    if previous is not None:
        store.resume_run(run_id, flow_run_id)
    else:
        store.create_run(RunRecord(
            run_id=run_id, pipeline=pipeline, kind="baseline", fingerprint=fp, status="running",
            prompt_hash=prompt.hash, dataset_hash=ctx.dataset_hash, models=models,
            repeats=repeats, case_limit=limit,
            simulated=ctx.simulated,
            config_json=ctx.pipeline.model_dump_json(), flow_run_id=flow_run_id,
            started_at=datetime.now(timezone.utc)))
        mark_new_run(store, run_id)  # its cells need not ask the store what it recorded: nothing yet
    recorded_splits = gate_dataset(ctx, store, run_id)  # Great Expectations imports later (flows/baseline.py)
    if not ctx.splits.keys() <= recorded_splits.keys():  # a recorded case keeps its split: write only new ones
        store.write_splits(ctx.dataset_key, ctx.splits)
    if version is None:
        store.write_prompt_version(PromptVersionRecord(
            prompt_hash=prompt.hash, pipeline=pipeline, system=prompt.system, template=prompt.template,
            variables=prompt.variables, parent_hash=None, strategy="baseline",
            rationale="The pipeline's configured prompt.", scope=None, created_at=datetime.now(timezone.utc)))
    # The slowest models' cells first (by latency target): their long calls take the provider's slots first, so
    # the run does not end waiting on a slow model's last calls after the fast ones are done (longest first).
    slowest_first = sorted(models, key=lambda m: -ctx.config.models[m].latency_target_ms)
    cells = [(m, s) for m in slowest_first for s in ctx.pipeline.dataset.spectrums]
    recorded = store.run_progress(run_id) if previous is not None else {"scored": 0, "failed": 0}
    return BaselinePlan(run_id=run_id, pipeline=pipeline, resumed=previous is not None, prompt_hash=prompt.hash,
                        repeats=repeats, limit=limit, cells=cells, models=models, version=version, epoch=epoch,
                        total_calls=len(ctx.cases) * len(models) * repeats,
                        recorded=recorded["scored"], retried=recorded["failed"],
                        paid_before=store.spend([run_id])["calls"] if previous is not None else 0)


@task(name="evaluate-cell", task_run_name="{model} × {spectrum}", cache_policy=NO_CACHE,
      retries=CELL_RETRIES, retry_delay_seconds=BACKOFF, retry_jitter_factor=0.5,
      retry_condition_fn=retry_if_transient)
async def evaluate_cell_task(ref: PipelineRef, run_id: str, model: str, spectrum: str, repeats: int,
                             version: str | None = None, epoch: str = "") -> dict:
    """Evaluate one model on one spectrum: every case and repeat not yet recorded for the run — of the
    prompt `version` (default: the configured prompt), its calls keyed in the ledger `epoch`."""
    ctx = ref.load()
    prompt = baseline_prompt(ctx, open_store(ctx.store_path), version)
    spec = CellSpec(run_id=run_id, pipeline=ref.pipeline, model_name=model, model=ctx.config.models[model],
                    spectrum=spectrum, prompt=prompt, cases=ctx.cases_of(spectrum), splits=ctx.splits,
                    repeats=repeats, weights=ctx.weights, render_case=functools.partial(ctx.messages, prompt),
                    epoch=epoch)
    outcome = await run_cell(ctx, spec, retries=CELL_RETRIES)
    return outcome.__dict__ | {"error_messages": outcome.error_messages[:3]}


@task(name="check-results", cache_policy=NO_CACHE)
def check_results(ref: PipelineRef, run_id: str, repeats: int, models: list[str] | None = None) -> dict:
    """The results suite: every model x case x repeat present, scores in range, errors under the ceiling,
    answers in the expected format (JSON pipelines) and the pipeline's own `quality.results_expectations`."""
    ctx = ref.load()
    store = open_store(ctx.store_path)
    report = validate_run_results(ctx.store_path, run_id, scorer_names=list(ctx.pipeline.scorers),
                                  expected_models=list(models or ctx.pipeline.models),
                                  expected_case_ids=[c.id for c in ctx.cases], repeats=repeats,
                                  max_error_rate=ctx.pipeline.max_error_rate,
                                  expectations=results_expectations(ctx.pipeline))
    store.write_dq_result(run_id, "results", report.success, report.to_dict())
    if not report.success:
        store.finish_run(run_id, "failed", {"reason": report.summary()})
        raise DataQualityError(report.summary(), report=report)
    return report.to_dict()


@task(name="summarize-run", cache_policy=NO_CACHE)
def summarize_run(ref: PipelineRef, plan: BaselinePlan, outcomes: list[dict]) -> RunSummary:
    """Rank models and spectrums against the thresholds, and close the run."""
    ctx = ref.load()
    store = open_store(ctx.store_path)
    with store.held_open():  # five store calls in a row: one open of the file
        run = store.get_run(plan.run_id)
        summary = summarize_stored_run(
            ctx.store_path, plan.run_id, thresholds=ctx.pipeline.thresholds,
            pipeline=ref.pipeline,
            prompt_hash=plan.prompt_hash, status="completed", models=list(plan.models or ctx.pipeline.models),
            spectrums=list(ctx.pipeline.dataset.spectrums), resumed=plan.resumed,
            # Every request this process sent (retries included), from the store: a cell's outcome counts
            # only its last task attempt.
            calls_paid=store.spend([plan.run_id])["calls"] - plan.paid_before,
            calls_reused=sum(o["reused"] for o in outcomes),
            data_quality={d["suite"]: bool(d["success"]) for d in store.dq_results(plan.run_id)},
            started_at=run.started_at if run else None, finished_at=datetime.now(timezone.utc))
        store.finish_run(plan.run_id, "completed", json.loads(summary.model_dump_json()))
    return summary


@task(name="fail-run", cache_policy=NO_CACHE)
def fail_run(ref: PipelineRef, run_id: str, reason: str) -> None:
    """Mark a run failed (it stays resumable: re-running the same command continues it)."""
    open_store(ref.load().store_path).finish_run(run_id, "failed", {"reason": reason[:2000]})
