"""The integration stage: a smoke evaluation of a prompt version on every configured model.

A few cases of each spectrum go through every model of the pipeline, through the same provider
clients, scorers and store as a baseline run (a run of kind "smoke"). The stage passes when every
call was answered — no provider error survived the client's retries — and no more than
`max_format_error_rate` of the answers miss the shape the `format` scorer asks for. An identical
call already paid for (same model, messages and repeat) is reused from the ledger, as everywhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from pydantic import SecretStr

from promptcycle.deploy.validation import Check, StageReport
from promptcycle.evaluation.cells import CellSpec, evaluate_cell
from promptcycle.evaluation.context import PipelineContext
from promptcycle.errors import ProviderCheckError
from promptcycle.evaluation.pool import check_models, get_provider
from promptcycle.prompts import PromptTemplate
from promptcycle.scoring import build_scorers
from promptcycle.store import MetricsStore
from promptcycle.store.records import RunRecord

__all__ = ["run_smoke"]

KeyLookup = Callable[[str], SecretStr | None]  # provider name -> its API key


async def run_smoke(ctx: PipelineContext, prompt: PromptTemplate, *, run_id: str, store: MetricsStore,
                    key_of: KeyLookup, cases_per_spectrum: int, max_format_error_rate: float,
                    models: Sequence[str] | None = None) -> StageReport:
    """Evaluate `prompt` on the first `cases_per_spectrum` cases of each spectrum with every model."""
    started = time.perf_counter()
    models = list(models or ctx.pipeline.models)
    spectrums = list(ctx.pipeline.dataset.spectrums)
    configured = ctx.configured_cases
    cases = {s: [c for c in configured if c.spectrum == s][:cases_per_spectrum] for s in spectrums}
    n_cases = sum(len(v) for v in cases.values())
    simulated = all(ctx.config.providers[ctx.config.models[m].provider].kind == "simulator" for m in models)
    judges = [(opts or {}).get("model") for opts in ctx.pipeline.scorers.values()]
    try:  # one cheap check per model before the smoke run pays for anything
        await check_models(ctx.config, [*models, *(j for j in judges if j)], key_of)
    except ProviderCheckError as exc:
        return StageReport.from_checks("integration", [Check("providers answer", False, str(exc))], started=started,
                                       details={"run_id": None, "simulated": simulated})
    fingerprint = hashlib.sha256(json.dumps([prompt.hash, models, cases_per_spectrum, ctx.dataset_hash])
                                 .encode()).hexdigest()[:16]
    store.create_run(RunRecord(run_id=run_id, pipeline=ctx.name, kind="smoke", fingerprint=fingerprint,
                               prompt_hash=prompt.hash, dataset_hash=ctx.dataset_hash, models=models, repeats=1,
                               case_limit=cases_per_spectrum, simulated=simulated,
                               started_at=datetime.now(timezone.utc)))

    async def complete(model_name: str, messages: list[dict[str, str]]):
        judge = ctx.config.models[model_name]
        return await get_provider(ctx.config, judge.provider, key_of(judge.provider)).complete(model_name, messages)

    scorers = build_scorers(ctx.pipeline.scorers, complete=complete)

    async def cell(model: str, spectrum: str):
        mconf = ctx.config.models[model]
        spec = CellSpec(run_id=run_id, pipeline=ctx.name, model_name=model, model=mconf, spectrum=spectrum,
                        prompt=prompt, cases=cases[spectrum], splits=ctx.splits, repeats=1, weights=ctx.weights)
        provider = get_provider(ctx.config, mconf.provider, key_of(mconf.provider))
        return await evaluate_cell(spec, provider=provider, provider_name=mconf.provider, scorers=scorers,
                                   store=store, final_attempt=True,
                                   concurrency=ctx.config.providers[mconf.provider].max_concurrency)

    pairs = [(m, s) for m in models for s in spectrums if cases[s]]
    results = await asyncio.gather(*(cell(m, s) for m, s in pairs), return_exceptions=True)
    crashed = [(pair, r) for pair, r in zip(pairs, results) if isinstance(r, BaseException)]
    outcomes = [r for r in results if not isinstance(r, BaseException)]

    frame = store.results_frame(run_id, scorers=list(ctx.pipeline.scorers))
    checks: list[Check] = []
    expected = n_cases * len(models)
    if crashed:
        (model, spectrum), exc = crashed[0]
        checks.append(Check("cells completed", False, f"{len(crashed)} of {len(pairs)} cells did not complete; first "
                            f"{model} x {spectrum}: {type(exc).__name__}: {exc}"))
    checks.append(Check("every call answered or recorded", len(frame) == expected,
                        f"{len(frame)} of {expected} smoke calls recorded"))
    per_model: dict[str, dict] = {}
    for model in models:
        rows = frame[frame["model"] == model]
        errors = rows[rows["error"].notna()]
        answered = rows[rows["error"].isna()]
        entry = {"calls": int(len(rows)), "provider_errors": int(len(errors)),
                 "quality": round(float(answered["overall"].mean() * 100.0), 1) if len(answered) else None}
        if len(errors):
            first = errors.iloc[0]
            checks.append(Check("no provider errors", False, f"{len(errors)} of {len(rows)} calls to {model} failed "
                                f"after retries ({first['error_kind']}: {str(first['error'])[:160]})", model))
        if "score_format" in frame.columns and len(answered):
            entry["format_errors"] = int((answered["score_format"] == 0).sum())
        per_model[model] = entry
    if not any(c.name == "no provider errors" for c in checks):
        checks.append(Check("no provider errors", True, f"all {len(frame)} calls answered"))
    if "format" in ctx.pipeline.scorers:
        answered = frame[frame["error"].isna()]
        bad = answered[answered["score_format"] == 0] if len(answered) else answered
        rate = len(bad) / len(answered) if len(answered) else 0.0
        detail = (f"{len(bad)} of {len(answered)} answers miss the configured format ({rate:.1%}; allowed "
                  f"{max_format_error_rate:.1%})")
        if len(bad):
            by_model = bad.groupby("model").size().sort_values(ascending=False)
            detail += "; by model: " + ", ".join(f"{m} {n}" for m, n in by_model.items())
            try:
                why = json.loads(bad.iloc[0]["explanation"] or "{}").get("format", {}).get("reason")
            except (TypeError, ValueError):
                why = None
            if why:
                detail += f"; e.g. {why}"
        checks.append(Check("format", rate <= max_format_error_rate, detail))
    details = {"run_id": run_id, "models": per_model, "cases_per_spectrum": cases_per_spectrum,
               "calls_paid": sum(o.called for o in outcomes), "calls_reused": sum(o.reused for o in outcomes),
               "simulated": simulated}
    report = StageReport.from_checks("integration", checks, started=started, details=details,
                                     ok=f"{len(frame)} smoke calls on {len(models)} model(s) x {len(spectrums)} "
                                        "spectrums completed without provider or format errors"
                                        + (" (simulated models)" if simulated else ""))
    store.finish_run(run_id, "completed" if report.passed else "failed",
                     {"stage": "integration", "status": report.status, "reason": report.reason, **details})
    return report
