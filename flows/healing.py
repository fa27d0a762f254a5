"""The healing phase: repair a degraded prompt through the same evidence gate and canary a person would use.

    slot of promptcycle-healing → plan (the degraded model, the prompt serving it now, a ledger epoch of its own)
    → baseline of that prompt on that model → optimization of a prompt for that model alone (strategies: the
    learned posteriors) → nothing significant: escalate, deploy nothing │ a candidate: deployment through all four
    stages, ALWAYS as a canary → canary looks (simulated traffic when the serving models are simulated) → record on
    the incident → resolved | escalated (learning hears the canary's measured effect)

The monitor starts this flow for an eligible healing decision (promptcycle/monitor/healing.py decides; this flow
runs). Started by the monitor in the same process it runs as a subflow — the embedded default; with `promptcycle
serve` it goes through `run_deployment` so it runs on a worker. Never a direct deployment: a prompt found by a
search in the middle of the night goes to a share of traffic first, and only the canary's test promotes it.
"""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow, get_run_logger

from promptcycle.evaluation.context import PipelineRef, load_pipeline
from promptcycle.monitor.report import HealingResult
from promptcycle_tasks.healing import (
    end_healing,
    healing_slot,
    note_canary,
    note_deployment,
    note_optimization,
    prepare_healing,
)
from promptcycle_tasks.runs import is_simulated, run_name, tag_flow_run

__all__ = ["healing"]


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(timezone.utc)


@flow(name="healing", flow_run_name=run_name("healing"))
async def healing(pipeline: str, decision_id: str, incident_id: str, model: str, spectrum: str,
                  config_path: str = "pipelines.yaml", store_path: str | None = None, alert_id: int | None = None,
                  now: datetime | None = None) -> HealingResult:
    """Run one eligible healing decision to its end.

    Args:
        pipeline: the pipeline's name in pipelines.yaml.
        decision_id: the healing decision (from the monitor) this run carries out.
        incident_id: the incident every step is recorded on.
        model: the serving model whose series degraded (where the diagnosis points).
        spectrum: the spectrum that degraded.
        config_path: path to pipelines.yaml.
        store_path: the DuckDB file (default: the config's `store`).
        alert_id: the paging alert (escalated when nothing repairs the drift).
        now: the clock of the records (default: now); the drill passes its simulated time.
    """
    from promptcycle_flows.baseline import baseline
    from promptcycle_flows.deployment import deployment
    from promptcycle_flows.optimization import optimization

    logger = get_run_logger()
    simulated = is_simulated(config_path, pipeline)
    await tag_flow_run(pipeline, "healing", simulated)
    ref = PipelineRef(config_path=config_path, pipeline=pipeline, store_path=store_path)
    ctx = load_pipeline(config_path, pipeline, store=store_path)
    settings = ctx.pipeline.healing
    result = HealingResult(decision_id=decision_id, incident_id=incident_id, pipeline=pipeline, model=model,
                           spectrum=spectrum, outcome="failed", reason="", simulated=simulated)
    try:
        async with healing_slot(settings.max_concurrent):
            plan = prepare_healing(ref, model, decision_id)
            base = await baseline(pipeline=pipeline, config_path=config_path, store_path=store_path,
                                  version=plan.version, models=[plan.model], epoch=plan.epoch)
            summary = await optimization(pipeline=pipeline, config_path=config_path, store_path=store_path,
                                         baseline_run_id=base.run_id, strategies=plan.strategies,
                                         max_calls=plan.max_calls, model=plan.model, epoch=plan.epoch)
            note_optimization(ref, incident_id, summary, _now(now))
            spend = summary.spend or {}
            result.optimization_run_id, result.optimization_outcome = summary.run_id, summary.outcome
            result.calls = int(spend.get("calls", 0)) + base.calls_paid
            result.cost_usd = float(spend.get("cost_usd", 0.0)) + base.cost_usd
            if summary.outcome != "candidate_found" or not summary.candidate_hash:
                result.outcome = "escalated"
                result.reason = (f"optimization found nothing significant ({summary.outcome.replace('_', ' ')}): "
                                 f"nothing deployed; a person is needed")
            else:
                result.candidate, result.candidate_scope = summary.candidate_hash, summary.candidate_scope
                try:
                    outcome = await deployment(pipeline=pipeline, config_path=config_path, store_path=store_path,
                                               version=summary.candidate_hash, canary=True,
                                               simulate_traffic=settings.canary_requests if simulated else None,
                                               actor=f"healing {decision_id}")
                except Exception as exc:  # the gate or a stage refused it: nothing deployed
                    note_deployment(ref, incident_id, None,
                                    f"{type(exc).__name__}: {exc}", _now(now))
                    result.outcome = "escalated"
                    result.reason = f"the candidate did not pass deployment: {exc}"
                else:
                    note_deployment(ref, incident_id, outcome, None, _now(now))
                    result.deployment_id = outcome["deployment_id"]
                    canary = outcome.get("canary")
                    if canary is not None and hasattr(canary, "result"):
                        canary = canary.result()
                    note_canary(ref, incident_id, canary, _now(now), outcome.canary_id)
                    status = canary["status"] if canary else "running"
                    result.canary_id = canary["canary_id"] if canary else outcome.get("canary_id")
                    result.canary_status = status
                    if status == "promoted":
                        result.outcome = "healed"
                        result.reason = f"the canary promoted {summary.candidate_hash}: {canary.get('reason')}"
                    elif status == "rolled_back":
                        result.outcome = "escalated"
                        result.reason = f"the canary rolled {summary.candidate_hash} back: {canary.get('reason')}"
                    else:
                        result.outcome = "canary_running"
                        result.reason = "the canary is running on production traffic; `promptcycle canary` concludes it"
    except TimeoutError:
        result.outcome = "deferred"
        result.reason = (f"no slot of the global concurrency limit promptcycle-healing came free "
                         f"(healing.max_concurrent: {settings.max_concurrent}); the next monitor run decides again")
    except Exception as exc:
        result.reason = f"the healing failed: {type(exc).__name__}: {exc}"
        end_healing(ref, decision_id, incident_id, "failed", result.reason,
                    result.calls, result.cost_usd, _now(now), alert_id)
        raise
    logger.info("healing %s: %s — %s", decision_id, result.outcome, result.reason)
    end_healing(ref, decision_id, incident_id, result.outcome, result.reason,
                result.calls, result.cost_usd, _now(now), alert_id)
    return result
