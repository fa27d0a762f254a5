"""What every cell-evaluating task shares: provider and judge wiring, shared limits, the final attempt."""

from __future__ import annotations

from promptcycle.evaluation.cells import CellOutcome, CellSpec, evaluate_cell
from promptcycle.evaluation.context import PipelineContext
from promptcycle.evaluation.pool import get_provider
from promptcycle.scoring import build_scorers
from promptcycle.store.remote import open_store
from tasks.limits import provider_slot
from tasks.retry import final_attempt
from tasks.secrets import aresolve_api_keys

__all__ = ["run_cell"]


async def run_cell(ctx: PipelineContext, spec: CellSpec, *, retries: int, budget=None) -> CellOutcome:
    """Evaluate a cell with the process's shared provider client, inside the provider's global slot."""
    provider_name = spec.model.provider
    keys = await aresolve_api_keys(ctx.config, [provider_name, *ctx.providers_used()])  # model and LLM judges

    def provider_of(model_name: str):
        name = ctx.config.models[model_name].provider
        return get_provider(ctx.config, name, keys[name])

    async def complete(model_name: str, messages: list[dict[str, str]]):
        return await provider_of(model_name).complete(model_name, messages)  # the LLM judge's calls

    async with provider_slot(ctx.config, provider_name):
        return await evaluate_cell(spec, provider=provider_of(spec.model_name), provider_name=provider_name,
                                   scorers=build_scorers(ctx.pipeline.scorers, complete=complete),
                                   store=open_store(ctx.store_path), final_attempt=final_attempt(retries),
                                   budget=budget, concurrency=ctx.config.providers[provider_name].max_concurrency)
