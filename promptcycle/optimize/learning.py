"""Learning which optimization strategies work where: outcomes, posteriors, and the `auto` allocation.

Every optimization records one `StrategyOutcome` per candidate: its strategy, its *context* (pipeline,
model scope, the spectrum the diagnosis points at and that spectrum's dominant failure kind), its effect
on dev and on test (points over the current prompt) and what it cost. From the outcomes of the last
`memory` optimizations (cycles), each strategy x context gets

- a **success posterior** Beta(1 + s, 1 + n - s), a success being "beat the current prompt by at least the
  minimum effect" (on test when the candidate was confirmed, else on dev);
- an **effect posterior** Normal with known noise: prior N(0, PRIOR_SD²) on the mean effect, each
  observed effect (test, else dev) a draw with sd NOISE_SD, so the posterior mean is
  sum(effects) / (n + NOISE_SD² / PRIOR_SD²) and its sd NOISE_SD / sqrt(n + NOISE_SD² / PRIOR_SD²).

`allocate` spends a candidate budget: the first slot to the best guess (the highest posterior mean of
success rate x effect), the others by Thompson sampling, each given to the strategy whose draw of
(success rate x effect) from its posteriors is highest — except with probability `exploration` (the floor)
it goes to a strategy drawn uniformly, so no strategy is starved. Deciding in a context pools evidence
from similar contexts with smaller weights (`posterior_for`).

    outcomes = store.strategy_outcomes(pipeline)                      # stored rows, newest last
    table = posteriors(outcomes, memory=100)                          # list[StrategyPosterior]
    slots = allocate(names, table, context, budget=12, exploration=0.1, rng=random.Random(seed))
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from scipy.stats import beta as beta_dist

__all__ = ["FAILURE_KINDS", "PRIOR_SD", "NOISE_SD", "LearningContext", "StrategyOutcome", "StrategyPosterior",
           "failure_kind", "context_of", "outcomes_from_rows", "posteriors", "posterior_for", "allocate",
           "select_candidates", "POOLING", "DIAGNOSIS_HINTS", "HINT_EFFECT", "learning_table", "AUTO",
           "resolve_strategies", "choose_auto",
           "optimization_outcomes", "learning_markdown"]

FAILURE_KINDS = ("missed_fields", "wrong_values", "format", "latency", "none")
PRIOR_SD = 5.0  # points: how large strategy effects are a priori
NOISE_SD = 3.0  # points: how much one candidate's effect varies around its strategy's mean in a context


@dataclass(frozen=True)
class LearningContext:
    """Where a strategy is tried. Empty strings mean "any"."""

    pipeline: str = ""
    scope: str = ""  # the model of a per-model prompt; "" for a shared prompt
    spectrum: str = ""  # the spectrum the diagnosis points at (the weakest)
    failure_kind: str = ""  # its dominant failure (FAILURE_KINDS)

    def key(self) -> tuple[str, str, str, str]:
        return (self.pipeline, self.scope, self.spectrum, self.failure_kind)


@dataclass(frozen=True)
class StrategyOutcome:
    """One candidate's result in one optimization (a row of `strategy_outcomes`)."""

    run_id: str
    candidate: str  # the candidate's hash
    strategy: str
    context: LearningContext
    dev_effect: float | None = None  # points over the current prompt on dev
    test_effect: float | None = None  # points over the current prompt on test (confirmed candidates)
    min_effect: float = 1.0  # points
    calls: int = 0
    cost_usd: float = 0.0
    recorded_at: datetime | None = None
    simulated: bool = False

    @property
    def effect(self) -> float | None:
        return self.test_effect if self.test_effect is not None else self.dev_effect

    @property
    def success(self) -> bool | None:
        return None if self.effect is None else self.effect >= self.min_effect

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(row.pop("context"))
        row["success"] = self.success
        return row


def outcomes_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[StrategyOutcome]:
    """Stored rows (dicts, as `MetricsStore.strategy_outcomes` returns them) back to outcomes."""
    out = []
    for r in rows:
        ctx = LearningContext(r.get("pipeline") or "", r.get("scope") or "", r.get("spectrum") or "",
                              r.get("failure_kind") or "")
        out.append(StrategyOutcome(run_id=r["run_id"], candidate=r["candidate"], strategy=r["strategy"], context=ctx,
                                   dev_effect=r.get("dev_effect"), test_effect=r.get("test_effect"),
                                   min_effect=r.get("min_effect") or 0.0, calls=r.get("calls") or 0,
                                   cost_usd=r.get("cost_usd") or 0.0, recorded_at=r.get("recorded_at"),
                                   simulated=bool(r.get("simulated"))))
    return out


def failure_kind(diagnosis: Any, spectrum: str | None = None, model: str | None = None) -> str:
    """The dominant failure of the diagnosed rows (a `Diagnosis`): the largest of the missed-field rate
    (1 - coverage), wrong-value rate, format failure rate and latency breach rate; 'none' when all are
    under 5%."""
    t = diagnosis._merged(spectrum, split=None, model=model)
    missed = (t.missed.total() / t.required.total()) if t.required.total() else 0.0
    wrong = (t.wrong.total() / t.stated.total()) if t.stated.total() else 0.0
    rates = {"missed_fields": missed, "wrong_values": wrong,
             "format": diagnosis.format_failure_rate(spectrum, split=None, model=model) or 0.0,
             "latency": diagnosis.latency_breach_rate(spectrum, split=None, model=model) or 0.0}
    kind, rate = max(rates.items(), key=lambda kv: kv[1])
    return kind if rate >= 0.05 else "none"


def context_of(diagnosis: Any, pipeline: str, scope: str | None) -> LearningContext:
    """The context of an optimization: its weakest spectrum (for the scope's model, or all models) and
    that spectrum's dominant failure kind."""
    spectrums = [s for s in diagnosis.spectrums if diagnosis.quality(s, split=None, model=scope) is not None]
    if not spectrums:
        return LearningContext(pipeline, scope or "", "", "none")
    weakest = min(spectrums, key=lambda s: (diagnosis.quality(s, split=None, model=scope), s))
    return LearningContext(pipeline, scope or "", weakest, failure_kind(diagnosis, weakest, scope))


@dataclass
class StrategyPosterior:
    """What the accumulator believes about one strategy in one context (counts may be weighted, see
    `posterior_for`)."""

    strategy: str
    context: LearningContext
    n: float = 0.0
    successes: float = 0.0
    effect_sum: float = 0.0
    calls: int = 0
    cost_usd: float = 0.0

    def add(self, o: StrategyOutcome, weight: float = 1.0) -> None:
        self.n += weight
        self.successes += weight * bool(o.success)
        self.effect_sum += weight * float(o.effect)
        self.calls += o.calls
        self.cost_usd += o.cost_usd

    @property
    def alpha(self) -> float:
        return 1.0 + self.successes

    @property
    def beta(self) -> float:
        return 1.0 + self.n - self.successes

    @property
    def success_mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def success_interval(self, level: float = 0.9) -> tuple[float, float]:
        lo = (1 - level) / 2
        return (float(beta_dist.ppf(lo, self.alpha, self.beta)), float(beta_dist.ppf(1 - lo, self.alpha, self.beta)))

    @property
    def effect_mean(self) -> float:
        return self.effect_sum / (self.n + (NOISE_SD / PRIOR_SD) ** 2)

    @property
    def effect_sd(self) -> float:
        return NOISE_SD / math.sqrt(self.n + (NOISE_SD / PRIOR_SD) ** 2)

    @property
    def expected_value(self) -> float:
        """What a candidate of this strategy is worth on average: success rate x effect (posterior means)."""
        return self.success_mean * self.effect_mean

    def sample_value(self, rng: random.Random) -> float:
        """One Thompson draw of what a candidate of this strategy is worth: a success probability from
        the Beta posterior times an effect from the Normal posterior (points)."""
        return rng.betavariate(self.alpha, self.beta) * rng.gauss(self.effect_mean, self.effect_sd)

    def row(self) -> dict[str, Any]:
        lo, hi = self.success_interval()
        c = self.context
        n = round(self.n)
        return {"strategy": self.strategy, "pipeline": c.pipeline, "scope": c.scope, "spectrum": c.spectrum,
                "failure_kind": c.failure_kind, "n": n, "successes": round(self.successes),
                "p_success": round(self.success_mean, 3), "p_success_90": [round(lo, 3), round(hi, 3)],
                "effect_points": round(self.effect_mean, 2), "effect_sd": round(self.effect_sd, 2),
                "calls": self.calls, "calls_per_candidate": round(self.calls / n, 1) if n else None}


def _in_memory(outcomes: Sequence[StrategyOutcome], memory: int) -> list[StrategyOutcome]:
    """The outcomes of the last `memory` optimizations (run ids in order of first appearance)."""
    runs = list(dict.fromkeys(o.run_id for o in outcomes))
    keep = set(runs[-memory:]) if memory > 0 else set()
    return [o for o in outcomes if o.run_id in keep]


def posteriors(outcomes: Sequence[StrategyOutcome], *, memory: int = 100,
               by: Sequence[str] = ("pipeline", "scope", "spectrum", "failure_kind")) -> list[StrategyPosterior]:
    """One posterior per strategy x context over the last `memory` cycles; `by` picks the context fields
    kept (the others pooled), e.g. ("failure_kind",) to learn across pipelines and spectrums."""
    table: dict[tuple, StrategyPosterior] = {}
    for o in _in_memory(outcomes, memory):
        if o.success is None:
            continue
        ctx = LearningContext(**{k: getattr(o.context, k) if k in by else "" for k in
                                 ("pipeline", "scope", "spectrum", "failure_kind")})
        table.setdefault((o.strategy, ctx.key()), StrategyPosterior(o.strategy, ctx)).add(o)
    return sorted(table.values(), key=lambda p: (p.context.key(), -p.success_mean, p.strategy))


POOLING = ((("pipeline", "scope", "spectrum", "failure_kind"), 1.0), (("spectrum", "failure_kind"), 0.5),
           (("failure_kind",), 0.25), ((), 0.1))


# What the diagnosis points at, before any evidence: the levers the optimizer protocol applies for each
# failure kind (docs/optimization.md). Such a strategy starts with one pseudo-success of HINT_EFFECT points.
DIAGNOSIS_HINTS: dict[str, tuple[str, ...]] = {
    "missed_fields": ("checklist",), "wrong_values": ("grounding",), "format": ("format_spec", "few_shot"),
    "latency": ("shorten",)}
HINT_EFFECT = 3.0


def posterior_for(strategy: str, context: LearningContext, outcomes: Sequence[StrategyOutcome], *,
                  memory: int = 100) -> StrategyPosterior:
    """The posterior used to decide in `context`, partially pooled: an outcome in exactly this context
    counts fully, one with the same spectrum and failure kind (another pipeline or model) counts 0.5, the
    same failure kind 0.25, any other 0.1 (`POOLING`). A new context thus starts from what worked for
    the same kind of failure, and its own evidence soon dominates. A strategy the context's failure kind
    points at (`DIAGNOSIS_HINTS`) starts with one pseudo-success of HINT_EFFECT points."""
    p = StrategyPosterior(strategy, context)
    if strategy in DIAGNOSIS_HINTS.get(context.failure_kind, ()):
        p.n, p.successes, p.effect_sum = 1.0, 1.0, HINT_EFFECT
    for o in _in_memory(outcomes, memory):
        if o.strategy != strategy or o.success is None:
            continue
        for fields, weight in POOLING:
            if all(getattr(o.context, k) == getattr(context, k) for k in fields):
                p.add(o, weight)
                break
    return p


def allocate(strategies: Sequence[str], context: LearningContext, outcomes: Sequence[StrategyOutcome], *,
             budget: int, exploration: float = 0.1, memory: int = 100, rng: random.Random,
             capacity: Mapping[str, int] | None = None) -> list[str]:
    """`budget` candidate slots, in order, each a strategy name. With two or more slots the first goes to
    the best guess (the highest `expected_value`: at first the strategy the diagnosis points at, later
    what has worked here), so exploring never costs the cycle its likeliest win. Every other slot is
    Thompson sampling over the posteriors (to the strategy with the highest `sample_value`), except that
    with probability `exploration` it goes to a strategy drawn uniformly (the floor).
    `capacity` (strategy -> how many candidates it can offer) caps each strategy's slots."""
    if not 0 <= exploration <= 1:
        raise ValueError("exploration must be in [0, 1]")
    post = {s: posterior_for(s, context, outcomes, memory=memory) for s in strategies}
    left = dict(capacity) if capacity is not None else {s: budget for s in strategies}
    slots: list[str] = []
    while len(slots) < budget:
        open_ = [s for s in strategies if left.get(s, 0) > 0]
        if not open_:
            break
        if budget > 1 and not slots:
            pick = max(open_, key=lambda s: (post[s].expected_value, s))
        elif rng.random() < exploration:
            pick = rng.choice(open_)
        else:
            pick = max(open_, key=lambda s: (post[s].sample_value(rng), s))
        slots.append(pick)
        left[pick] -= 1
    return slots


def select_candidates(candidates: Sequence[Any], context: LearningContext, outcomes: Sequence[StrategyOutcome], *,
                      budget: int, exploration: float = 0.1, memory: int = 100, seed: int = 0) -> list[Any]:
    """The `auto` choice among proposed candidates (objects with a `.strategy`): the first candidates of
    each strategy, as many as `allocate` gives it. Deterministic for a seed."""
    by_strategy: dict[str, list[Any]] = {}
    for c in candidates:
        by_strategy.setdefault(c.strategy, []).append(c)
    names = list(by_strategy)
    slots = allocate(names, context, outcomes, budget=budget, exploration=exploration, memory=memory,
                     rng=random.Random(seed), capacity={s: len(cs) for s, cs in by_strategy.items()})
    taken = Counter(slots)
    return [c for s in names for c in by_strategy[s][:taken[s]]]


def learning_table(outcomes: Sequence[StrategyOutcome], *, memory: int = 100) -> list[dict[str, Any]]:
    """The rows `promptcycle learning` and the artifact show: one per strategy x context."""
    return [p.row() for p in posteriors(outcomes, memory=memory)]


# -- what the optimization flow calls -------------------------------------------------------------

AUTO = "auto"


def resolve_strategies(configured: Sequence[str] | str, registered: Sequence[str]) -> tuple[list[str], bool]:
    """The strategies an optimization runs and whether `auto` allocation applies: `auto` runs every
    registered strategy; a list runs those names."""
    if configured == AUTO or list(configured) == [AUTO]:
        return list(registered), True
    return list(dict.fromkeys(configured)), False


def choose_auto(kept: Sequence[Any], diagnosis: Any, outcome_rows: Iterable[Mapping[str, Any]], *, pipeline: str,
                budget: int, exploration: float, memory: int, seed: int) -> tuple[list[Any], list[Any]]:
    """Of the valid candidates (`.strategy`, `.scope`), the ones `auto` screens: per scope, `budget` slots
    allocated by the posteriors in that scope's context; returns (chosen, passed over)."""
    outcomes = outcomes_from_rows(outcome_rows)
    chosen: list[Any] = []
    for scope in dict.fromkeys(c.scope for c in kept):
        group = [c for c in kept if c.scope == scope]
        context = context_of(diagnosis, pipeline, scope)
        chosen += select_candidates(group, context, outcomes, budget=budget, exploration=exploration,
                                    memory=memory, seed=seed)
    ids = {id(c) for c in chosen}
    return chosen, [c for c in kept if id(c) not in ids]


def optimization_outcomes(run_id: str, pipeline: str, rows: Sequence[Any], diagnosis: Any, *,
                          min_effect_points: float, spend_of: Any, simulated: bool) -> list[dict[str, Any]]:
    """The `strategy_outcomes` rows of one finished optimization: one per screened candidate (rows with
    a dev delta), its test effect when it was confirmed, and what its arms paid (`spend_of(hash, scope)`
    -> {"calls", "cost_usd"})."""
    out = []
    for r in rows:
        if r.dev_delta is None or not r.hash:
            continue
        spent = spend_of(r.hash, r.scope)
        outcome = StrategyOutcome(
            run_id=run_id, candidate=r.hash, strategy=r.strategy, context=context_of(diagnosis, pipeline, r.scope),
            dev_effect=float(r.dev_delta), test_effect=None if r.effect is None else 100.0 * float(r.effect),
            min_effect=min_effect_points, calls=int(spent.get("calls", 0)), cost_usd=float(spent.get("cost_usd", 0.0)),
            simulated=simulated)
        out.append(outcome.to_row())
    return out


def learning_markdown(rows: list[dict], *, memory: int, simulated: bool) -> str:
    """The learning table as Markdown (the Prefect artifact and the CLI print the same table)."""
    head = (f"# Strategy learning (last {memory} optimizations)" + (" — simulated" if simulated else "") + "\n\n")
    if not rows:
        return head + "No optimization has recorded strategy outcomes yet.\n"
    lines = ["| strategy | pipeline | scope | spectrum | failure | n | wins | P(success) [90%] | effect (pts) | "
             "calls/cand. |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["p_success_90"]
        lines.append(f"| {r['strategy']} | {r['pipeline']} | {r['scope'] or 'all models'} | {r['spectrum'] or '—'} | "
                     f"{r['failure_kind'] or '—'} | {r['n']} | {r['successes']} | {r['p_success']:.2f} "
                     f"[{lo:.2f}, {hi:.2f}] | {r['effect_points']:+.2f} ± {r['effect_sd']:.2f} | "
                     f"{r['calls_per_candidate'] if r['calls_per_candidate'] is not None else '—'} |")
    return head + "\n".join(lines) + "\n"
