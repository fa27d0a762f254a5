"""Running one validation stage of a planned deployment, and storing its report.

    report = await run_stage(ctx, store, plan, "syntax", key_of=lookup_api_key)

The four stages run in order (`STAGES`); a stage not in the plan (an initial deployment runs only
syntax and content) or after a failing one is recorded as skipped with its reason, so every
deployment has four readable reports.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import SecretStr

from promptcycle.deploy.gate import check_quality
from promptcycle.deploy.release import ReleasePlan
from promptcycle.deploy.validation import StageReport, validate_content, validate_syntax
from promptcycle.evaluation.context import PipelineContext
from promptcycle.prompts import PromptTemplate
from promptcycle.store import MetricsStore
from promptcycle.store.records import STAGES

__all__ = ["STAGES", "run_stage"]


def _prompt(store: MetricsStore, version: str | None) -> PromptTemplate | None:
    record = store.get_prompt_version(version) if version else None
    return PromptTemplate(template=record.template, system=record.system) if record else None


async def run_stage(ctx: PipelineContext, store: MetricsStore, plan: ReleasePlan, stage: str, *,
                    key_of: Callable[[str], SecretStr | None], skip_reason: str | None = None) -> StageReport:
    """Run `stage` on the plan's version (or record why it is skipped) and store the report."""
    pipe = ctx.pipeline
    prompt = _prompt(store, plan.version)
    if stage not in STAGES:
        raise ValueError(f"unknown validation stage {stage!r}; the stages are {', '.join(STAGES)}")
    if skip_reason is not None:
        report = StageReport.skipped(stage, skip_reason)
    elif stage not in plan.stages:
        report = StageReport.skipped(stage, f"{plan.kind} deployment: nothing in production yet to compare with")
    elif stage == "syntax":
        variables = pipe.deployment.variables or pipe.prompt.to_template().variables
        cases = ctx.configured_cases
        report = validate_syntax(prompt, variables, reference=_prompt(store, plan.production),
                                 sample_inputs=cases[0].inputs if cases else None)
    elif stage == "content":
        report = validate_content(prompt, pipe.deployment.content)
    elif stage == "integration":
        from promptcycle.deploy.smoke import run_smoke

        report = await run_smoke(ctx, prompt, run_id=f"smoke-{plan.deployment_id}", store=store, key_of=key_of,
                                 cases_per_spectrum=pipe.deployment.integration.cases_per_spectrum,
                                 max_format_error_rate=pipe.deployment.integration.max_format_error_rate)
    else:
        report = check_quality(store, plan.pipeline, pipe, plan.version, plan.production)
    store.write_stage_report(plan.deployment_id, stage, report.status, report.reason, report.to_dict())
    return report
