"""What every cell-evaluating task shares: provider and judge wiring, shared limits, the final attempt."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from promptcycle.evaluation.cells import CellOutcome, CellSpec, evaluate_cell
from promptcycle.evaluation.context import PipelineContext, PipelineRef
from promptcycle.evaluation.pool import check_models, close_providers, get_provider
from promptcycle.scoring import build_scorers
from promptcycle.store.remote import open_store
from promptcycle_tasks.limits import provider_slot
from promptcycle_tasks.retry import final_attempt
from promptcycle_tasks.secrets import aresolve_api_keys

__all__ = ["run_cell", "check_providers"]


@task(name="check-providers", cache_policy=NO_CACHE)
async def check_providers(ref: PipelineRef) -> None:
    """Before any paid matrix: every model of the pipeline (and its judges) answers with this key.

    A wrong key, an unknown model id or an unreachable endpoint stops here with a `ProviderCheckError`
    naming provider, model, HTTP status and the provider's message.
    """
    ctx = ref.load()
    judges = [(opts or {}).get("model") for opts in ctx.pipeline.scorers.values()]
    models = [*ctx.pipeline.models, *(j for j in judges if j)]
    # Keys load the async way here: a credentials block's sync loader returns a coroutine in async code.
    keys = await aresolve_api_keys(ctx.config, sorted({ctx.config.models[m].provider for m in models}))
    try:
        await check_models(ctx.config, models, lambda name: keys[name])
    finally:
        await close_providers()  # the cells build their own clients


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
