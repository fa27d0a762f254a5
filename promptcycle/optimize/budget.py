"""What an optimization will spend, and the hard caps that stop it.

    profile = TokenProfile.from_results(baseline_frame)
    estimate = estimate_spend(planned, profile=profile, pricing=config.models, spent=store.spend(run_id),
                              max_calls=500, max_cost_usd=2.0)
    print("\\n".join(estimate.lines()))
    budget = budget_for(store, run_id, max_calls=500, max_cost_usd=2.0, cost_per_call=estimate.cost_per_call)
    await evaluate_cell(spec, ..., budget=budget)       # asks the budget before every paid call

**The estimate.** A planned evaluation is (stage, model, calls, calls already in the ledger). Only
calls missing from the paid-call ledger cost anything: an identical call (same model, messages,
sampling and repeat) is reused, never paid twice. Tokens per call come from the baseline's mean
input and output tokens of each model; the input side is adjusted by the prompt's length relative
to the baseline's prompt (4 characters a token). Cost is tokens times each model's pricing.

**The caps.** `Budget` holds a cap on paid calls and one on cost, and what this optimization has
already paid (`MetricsStore.spend(run_id)`: the ledger rows of the run and of its evaluations,
whose run ids start with the optimization's — so a resumed run counts what it paid before the
kill). Every paid call asks `try_acquire(model)` first; a call is granted while the calls paid and
in flight stay within `max_calls` and their cost — paid calls at their actual cost, calls in flight
at the model's mean cost per call so far (the estimate before the first one) — stays within
`max_cost_usd`. The first refusal exhausts the budget: nothing is granted after it, so the run
stops cleanly at the cap. The call cap is exact; the cost cap can be passed only by the difference
between the actual and the estimated cost of the calls that were in flight when it was reached.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from promptcycle.config import ModelConfig

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CHARS_PER_TOKEN", "TokenProfile", "PlannedEvaluation", "StageEstimate", "BudgetEstimate",
           "estimate_spend", "worst_confirmation", "Budget", "budget_for", "add_estimate_listener",
           "remove_estimate_listener", "report_estimate"]

CHARS_PER_TOKEN = 4  # the usual rough rate; the simulator counts tokens the same way
DEFAULT_OUTPUT_TOKENS = 200.0  # for a model the baseline has no answer of


@dataclass(frozen=True)
class TokenProfile:
    """Mean input and output tokens per call of each model, measured on a baseline run."""

    input_tokens: dict[str, float]
    output_tokens: dict[str, float]

    @classmethod
    def from_results(cls, frame: pd.DataFrame) -> "TokenProfile":
        """From a results frame (columns model, input_tokens, output_tokens, error); errors are skipped."""
        ok = frame[frame["error"].isna()] if "error" in frame.columns else frame
        means = ok.groupby("model")[["input_tokens", "output_tokens"]].mean()
        return cls(input_tokens={str(m): float(v) for m, v in means["input_tokens"].dropna().items()},
                   output_tokens={str(m): float(v) for m, v in means["output_tokens"].dropna().items()})

    @classmethod
    def from_stored_run(cls, store_path: str, run_id: str) -> "TokenProfile":
        """From a stored run's results (where the store lives: call it in the data worker)."""
        from promptcycle.store.metrics import MetricsStore

        return cls.from_results(MetricsStore(store_path).results_frame(run_id))

    def per_call(self, model: str, extra_input_chars: float = 0.0) -> tuple[float, float]:
        """(input, output) tokens of one call of `model`, its prompt `extra_input_chars` longer than
        the baseline's (negative: shorter)."""
        known_in = list(self.input_tokens.values())
        known_out = list(self.output_tokens.values())
        tokens_in = self.input_tokens.get(model, sum(known_in) / len(known_in) if known_in else 0.0)
        tokens_out = self.output_tokens.get(model, sum(known_out) / len(known_out) if known_out
                                            else DEFAULT_OUTPUT_TOKENS)
        return max(1.0, tokens_in + extra_input_chars / CHARS_PER_TOKEN), tokens_out


@dataclass(frozen=True)
class PlannedEvaluation:
    """Calls one stage plans for one model with one prompt: `calls` in all, `reused` of them already
    in the ledger (free). `extra_input_chars`: the prompt's length minus the baseline prompt's."""

    stage: str
    model: str
    calls: int
    reused: int = 0
    extra_input_chars: float = 0.0

    @property
    def paid(self) -> int:
        return max(0, self.calls - self.reused)


class StageEstimate(BaseModel):
    """New spend of one stage (calls found in the ledger are `reused` and cost nothing)."""

    calls: int = 0
    reused: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class BudgetEstimate(BaseModel):
    """What an optimization expects to pay from here on, next to what it has paid and its caps."""

    stages: dict[str, StageEstimate]
    calls: int
    reused: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    spent_calls: int = 0
    spent_cost_usd: float = 0.0
    max_calls: int | None = None
    max_cost_usd: float | None = None
    cost_per_call: dict[str, float] = {}  # model -> expected USD per paid call

    @property
    def total_calls(self) -> int:
        return self.spent_calls + self.calls

    @property
    def total_cost_usd(self) -> float:
        return self.spent_cost_usd + self.cost_usd

    @property
    def exceeds_cap(self) -> bool:
        """Whether the planned work would pass a cap (the run then stops at the cap)."""
        return ((self.max_calls is not None and self.total_calls > self.max_calls)
                or (self.max_cost_usd is not None and self.total_cost_usd > self.max_cost_usd))

    def lines(self) -> list[str]:
        """The estimate in a few readable lines (the CLI prints them, the flow logs them)."""
        caps = ", ".join(c for c in (f"{self.max_calls} calls" if self.max_calls is not None else "",
                                     f"${self.max_cost_usd:g}" if self.max_cost_usd is not None else "") if c)
        out = [f"Estimate: {self.calls:,} new calls (+{self.reused:,} reused from the ledger, free), "
               f"~{self.input_tokens:,} input + {self.output_tokens:,} output tokens, ~${self.cost_usd:.4f}"]
        for name, stage in self.stages.items():
            out.append(f"  {name}: {stage.calls:,} calls (+{stage.reused:,} reused), ~${stage.cost_usd:.4f}")
        if self.spent_calls:
            out.append(f"Already paid by this optimization: {self.spent_calls:,} calls, ${self.spent_cost_usd:.4f}")
        if caps:
            verdict = ("the planned work exceeds the cap: the run will stop cleanly at it" if self.exceeds_cap
                       else "within the cap")
            out.append(f"Cap: {caps} — {verdict}")
        else:
            out.append("Cap: none (set optimization.max_calls / max_cost_usd, or --max-calls / --max-cost)")
        return out

    def markdown(self) -> str:
        """The estimate as the Markdown of its Prefect artifact."""
        return "# Budget estimate\n\n" + "\n".join(f"- {line.strip()}" for line in self.lines())


def estimate_spend(planned: Iterable[PlannedEvaluation], *, profile: TokenProfile,
                   pricing: Mapping[str, ModelConfig], spent: Mapping[str, Any] | None = None,
                   max_calls: int | None = None, max_cost_usd: float | None = None) -> BudgetEstimate:
    """Sum the planned evaluations into calls, tokens and cost (see the module docstring)."""
    stages: dict[str, StageEstimate] = {}
    model_calls: dict[str, int] = {}
    model_cost: dict[str, float] = {}
    for p in planned:
        stage = stages.setdefault(p.stage, StageEstimate())
        tokens_in, tokens_out = profile.per_call(p.model, p.extra_input_chars)
        price = pricing[p.model]
        per_call = (tokens_in * price.input_cost_per_mtok + tokens_out * price.output_cost_per_mtok) / 1e6
        stage.calls += p.paid
        stage.reused += p.calls - p.paid
        stage.input_tokens += round(tokens_in * p.paid)
        stage.output_tokens += round(tokens_out * p.paid)
        stage.cost_usd += per_call * p.paid
        model_calls[p.model] = model_calls.get(p.model, 0) + max(1, p.paid)
        model_cost[p.model] = model_cost.get(p.model, 0.0) + per_call * max(1, p.paid)
    for stage in stages.values():
        stage.cost_usd = round(stage.cost_usd, 6)
    spent = spent or {}
    return BudgetEstimate(
        stages=stages, calls=sum(s.calls for s in stages.values()), reused=sum(s.reused for s in stages.values()),
        input_tokens=sum(s.input_tokens for s in stages.values()),
        output_tokens=sum(s.output_tokens for s in stages.values()),
        cost_usd=round(sum(s.cost_usd for s in stages.values()), 6),
        spent_calls=int(spent.get("calls", 0)), spent_cost_usd=round(float(spent.get("cost_usd", 0.0)), 6),
        max_calls=max_calls, max_cost_usd=max_cost_usd,
        cost_per_call={m: model_cost[m] / model_calls[m] for m in model_calls})


@dataclass
class Budget:
    """Hard caps on the paid calls and the cost of one optimization (see the module docstring).

    Not thread-safe: it is used by the coroutines of one event loop.
    """

    max_calls: int | None = None
    max_cost_usd: float | None = None
    spent_calls: int = 0
    spent_cost_usd: float = 0.0
    cost_per_call: dict[str, float] = field(default_factory=dict)  # expected, before any is observed
    refused: int = 0  # calls not made because the budget was exhausted
    exhausted: bool = False
    _in_flight: dict[str, int] = field(default_factory=dict)
    _observed: dict[str, tuple[int, float]] = field(default_factory=dict)  # model -> (calls, cost)

    def expected_cost(self, model: str) -> float:
        """The mean cost of a paid call of `model` so far, or its estimate before the first one."""
        calls, cost = self._observed.get(model, (0, 0.0))
        if calls:
            return cost / calls
        if model in self.cost_per_call:
            return self.cost_per_call[model]
        seen = [c / n for n, c in self._observed.values() if n]
        return max(seen) if seen else max(self.cost_per_call.values(), default=0.0)

    @property
    def in_flight(self) -> int:
        return sum(self._in_flight.values())

    def try_acquire(self, model: str) -> bool:
        """Grant one paid call of `model`, or refuse — and exhaust the budget — if it would pass a cap."""
        if self.exhausted:
            self.refused += 1
            return False
        over_calls = self.max_calls is not None and self.spent_calls + self.in_flight + 1 > self.max_calls
        committed = self.spent_cost_usd + sum(n * self.expected_cost(m) for m, n in self._in_flight.items())
        over_cost = (self.max_cost_usd is not None
                     and committed + self.expected_cost(model) > self.max_cost_usd + 1e-12)
        if over_calls or over_cost:
            self.exhausted = True
            self.refused += 1
            return False
        self._in_flight[model] = self._in_flight.get(model, 0) + 1
        return True

    def settle(self, model: str, cost_usd: float | None) -> None:
        """A granted call was paid for, at `cost_usd`."""
        self._in_flight[model] = max(0, self._in_flight.get(model, 0) - 1)
        cost = float(cost_usd or 0.0)
        self.spent_calls += 1
        self.spent_cost_usd += cost
        calls, total = self._observed.get(model, (0, 0.0))
        self._observed[model] = (calls + 1, total + cost)

    def release(self, model: str) -> None:
        """A granted call failed (nothing was paid, nothing enters the ledger)."""
        self._in_flight[model] = max(0, self._in_flight.get(model, 0) - 1)

    def spend(self) -> dict[str, Any]:
        return {"calls": self.spent_calls, "cost_usd": round(self.spent_cost_usd, 6)}


# One Budget per (event loop, store, run, caps): the concurrent cells of an optimization share it.
_budgets: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, Budget]]" = weakref.WeakKeyDictionary()


def budget_for(store: Any, run_id: str, *, max_calls: int | None, max_cost_usd: float | None,
               cost_per_call: Mapping[str, float] | None = None) -> Budget:
    """The budget of optimization `run_id` on the running event loop, created on first use from what
    the run (and its evaluations) already paid according to the ledger. `store` is a MetricsStore or
    its data-worker proxy."""
    loop = asyncio.get_running_loop()
    per_loop = _budgets.setdefault(loop, {})
    key = (str(Path(store.path)), run_id, max_calls, max_cost_usd)
    budget = per_loop.get(key)
    if budget is None:
        spent = store.spend(run_id)
        budget = per_loop[key] = Budget(max_calls=max_calls, max_cost_usd=max_cost_usd,
                                        spent_calls=int(spent["calls"]), spent_cost_usd=float(spent["cost_usd"]),
                                        cost_per_call=dict(cost_per_call or {}))
    elif cost_per_call:
        for model, cost in cost_per_call.items():
            budget.cost_per_call.setdefault(model, cost)
    return budget


# -- the estimate, as an event the CLI can print ---------------------------------------------------

EstimateListener = Callable[[BudgetEstimate], None]
_listeners: list[EstimateListener] = []


def add_estimate_listener(listener: EstimateListener) -> None:
    """Call `listener(estimate)` whenever an optimization in this process has made its estimate."""
    _listeners.append(listener)


def remove_estimate_listener(listener: EstimateListener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def report_estimate(estimate: BudgetEstimate) -> None:
    for listener in list(_listeners):
        listener(estimate)


def worst_confirmation(per_candidate: Mapping[str, Sequence[PlannedEvaluation]], top: int) -> list[PlannedEvaluation]:
    """The confirmation plans of the `top` candidates that would pay the most — an upper bound, since
    which candidates reach confirmation is known only after screening."""
    ranked = sorted(per_candidate, key=lambda k: -sum(p.paid for p in per_candidate[k]))
    return [p for k in ranked[:top] for p in per_candidate[k]]
