"""Simulated production traffic: run a canary end to end offline (everything here is simulated).

Each simulated request plays the serving application's part: a simulated user (the request key)
asks a question about a customer drawn from the pipeline's dataset; `resolve_prompt` picks the
prompt version — sticky by user, following the canary's split — the user's serving model (one of
`deployment.serving_models`, fixed per user) answers through the simulated LLM world, the
pipeline's scorers grade the answer, and the outcome is reported with `log_production_results`,
exactly as an application would. The simulated service time is the reported latency.

When the canary runs in shadow mode, a request `resolve_prompt` marks for shadowing is also answered
by the new version (`served.shadow`), scored by the same scorers and reported with `arm="shadow"`
and the served request's id, as an application would with `log_shadow_result`.

`error_rates` injects failures per arm ({"treatment": 0.2} fails a fifth of the new version's
requests) to exercise the guardrails; the failures are simulated and marked so in each outcome's
metadata.

The simulated world is the one the pipeline's other calls see: the drifts of `simulation:` in
pipelines.yaml (promptcycle/sim/drift.py) apply to the traffic too, on the real clock — a canary
started during a drift compares the two prompts in the drifted world. A drift's `error_rate` fails a
request when every attempt the provider's client would make (`1 + max_retries`) fails.
"""

from __future__ import annotations

import random
import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from promptcycle.deploy.serving import (
    bucket_of,
    clear_cache,
    log_production_results,
    resolve_prompt,
    shadow_outcome,
)
from promptcycle.errors import ConfigError
from promptcycle.evaluation.context import PipelineContext
from promptcycle.providers.base import Completion
from promptcycle.scoring import build_scorers, overall
from promptcycle.scoring.base import Sample
from promptcycle.sim.drift import error_rate as drift_error_rate
from promptcycle.sim.drift import schedule_from
from promptcycle.sim.world import respond

__all__ = ["TrafficSummary", "simulate_traffic"]


@dataclass
class TrafficSummary:
    """What a burst of simulated traffic did, per arm."""

    requests: int
    by_arm: dict[str, int] = field(default_factory=dict)
    by_version: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    mean_score: dict[str, float] = field(default_factory=dict)
    recorded: int = 0
    simulated: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _DriftError(Exception):
    """A simulated request that a drift's error rate failed on every attempt."""


def _simulated_models(ctx: PipelineContext) -> list[str]:
    models = list(ctx.pipeline.deployment.serving_models or ctx.pipeline.models)
    for name in models:
        provider = ctx.config.models[name].provider
        if ctx.config.providers[provider].kind != "simulator":
            raise ConfigError(f"simulated traffic answers with the simulated models, but serving model {name!r} is "
                              f"served by provider {provider!r} of kind {ctx.config.providers[provider].kind!r}",
                              path=f"pipelines.{ctx.name}.deployment.serving_models", found=name,
                              expected="models of a 'simulator' provider")
    return models


async def simulate_traffic(ctx: PipelineContext, *, requests: int, seed: int = 0, users: int = 5000,
                           error_rates: Mapping[str, float] | None = None, batch_size: int = 500) -> TrafficSummary:
    """Send `requests` simulated production requests through `resolve_prompt` and report their outcomes.

    Users are drawn from `users` simulated ones (so keys repeat, and stickiness shows); `seed` makes
    the draw reproducible. The serving state is re-read at the start of each batch of `batch_size`.
    """
    if requests < 0:
        raise ValueError(f"requests must be >= 0, not {requests}")
    models = _simulated_models(ctx)
    cases = ctx.configured_cases
    store = ctx.store_path
    rng = random.Random(seed)
    error_rates = dict(error_rates or {})
    drift = schedule_from(ctx.config.simulation) if ctx.config.simulation.drifts else None
    drift_rng = random.Random(seed + 1)  # apart from the traffic's draws, which stay the same with or without drift

    async def complete(model_name: str, messages: list[dict[str, str]]) -> Completion:
        mconf = ctx.config.models[model_name]
        active = drift.on_call(mconf.model) if drift is not None else ()
        rate = drift_error_rate(active) if active else 0.0
        attempts = 1 + ctx.config.providers[mconf.provider].max_retries
        if rate and all(drift_rng.random() < rate for _ in range(attempts)):
            raise _DriftError(f"simulated 5xx on every attempt ({rate:.0%} error rate drift)")
        reply = respond(mconf.model, messages, temperature=mconf.temperature, max_tokens=mconf.max_tokens,
                        drifts=active)
        return Completion(text=reply.text, model=model_name, input_tokens=reply.input_tokens,
                          output_tokens=reply.output_tokens, latency_ms=reply.latency_s * 1000.0, cost_usd=0.0,
                          simulated=True)

    scorers = build_scorers(ctx.pipeline.scorers, complete=complete)

    async def answer(served: Any, case: Any, model: str) -> tuple[float, float]:
        completion = await complete(model, served.render(case.inputs))
        sample = Sample(case=case, output=completion.text, model=model, latency_ms=completion.latency_ms,
                        latency_target_ms=ctx.config.models[model].latency_target_ms)
        values = {name: (await scorer.ascore(sample)).value for name, scorer in scorers.items()}
        return min(1.0, max(0.0, overall(values, ctx.weights))), completion.latency_ms

    summary = TrafficSummary(requests=requests)
    totals: Counter = Counter()
    prefix = f"sim-{ctx.name}-{secrets.token_hex(4)}"
    outcomes: list[dict[str, Any]] = []
    for i in range(requests):
        if i % batch_size == 0:
            if outcomes:
                summary.recorded += log_production_results(outcomes, store=store)
                outcomes = []
            clear_cache()  # a real application would see a new split within its cache time
        user = f"sim-user-{rng.randrange(users)}"
        model = models[bucket_of("model:" + user) % len(models)]
        served = resolve_prompt(ctx.name, user, model=model, store=store)
        case = cases[rng.randrange(len(cases))]
        outcome: dict[str, Any] = {"pipeline": ctx.name, "request_id": f"{prefix}-{i:07d}", "version": served.version,
                                   "scope": served.scope, "canary_id": served.canary_id, "arm": served.arm,
                                   "model": model, "at": datetime.now(timezone.utc),
                                   "metadata": {"simulated": True, "case_id": case.id, "user": user}}
        failed = rng.random() < error_rates.get(served.arm, 0.0)
        if failed:
            outcome["metadata"]["injected_error"] = True
        else:
            try:
                score, latency = await answer(served, case, model)
            except _DriftError:
                failed = True
                outcome["metadata"]["drift_error"] = True
        if failed:
            outcome.update(error=True, score=None, latency_ms=None)
        else:
            outcome.update(error=False, score=score, latency_ms=latency)
            totals[served.arm + ":sum"] += score
            totals[served.arm + ":n"] += 1
        if served.shadow is not None:
            try:
                score, latency = await answer(served.shadow, case, model)
            except _DriftError:
                score, latency = None, None
            outcomes.append(shadow_outcome(ctx.name, outcome["request_id"], served.shadow.version, score=score,
                                           error=score is None, latency_ms=latency, scope=served.scope,
                                           canary_id=served.canary_id, model=model, at=outcome["at"],
                                           metadata={"simulated": True, "case_id": case.id, "user": user}))
            if score is not None:
                totals["shadow:sum"] += score
                totals["shadow:n"] += 1
            summary.by_arm["shadow"] = summary.by_arm.get("shadow", 0) + 1
        summary.by_arm[served.arm] = summary.by_arm.get(served.arm, 0) + 1
        summary.by_version[served.version] = summary.by_version.get(served.version, 0) + 1
        if outcome["error"]:
            summary.errors[served.arm] = summary.errors.get(served.arm, 0) + 1
        outcomes.append(outcome)
    if outcomes:
        summary.recorded += log_production_results(outcomes, store=store)
    summary.mean_score = {arm: round(totals[arm + ":sum"] / totals[arm + ":n"], 4)
                          for arm in summary.by_arm if totals[arm + ":n"]}
    return summary
