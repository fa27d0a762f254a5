"""The strategy contract and its registry.

A strategy looks at the current prompt, the diagnosis and the train cases and proposes candidate
prompts:

    strategy = create_strategy("checklist")
    candidates = await strategy.propose(current, diagnosis, train_cases, context=context)

Every strategy keeps the current prompt's `{{variables}}` (all of them, no new ones) — except
that `meta` returns what the optimizer model wrote, so its candidates go through
`promptcycle.optimize.leakage` like all others — and gives the same output for the same inputs.
Anything a strategy writes into a prompt comes from train cases and train-split statistics only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from promptcycle.datasets.cases import Case
from promptcycle.optimize.candidates import CandidatePrompt
from promptcycle.optimize.diagnosis import Diagnosis
from promptcycle.prompts import PromptTemplate
from promptcycle.registry import Registry

if TYPE_CHECKING:  # the providers package pulls in the HTTP client
    from promptcycle.providers.base import Completion

__all__ = ["CompleteFn", "Strategy", "StrategyContext", "strategies", "create_strategy"]

CompleteFn = Callable[[str, list[dict[str, str]]], Awaitable["Completion"]]


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy may use besides the prompt, the diagnosis and the train cases.

    `complete(model_name, messages)` calls a pipeline model (used by `meta`, with
    `optimizer_model`); `spectrums` are the pipeline's spectrums, in order; `seed` makes choices
    such as which train case becomes an example reproducible; `model`, when set, asks for a prompt
    for that model alone (the candidates' `scope`) and narrows the diagnosis to it.
    """

    spectrums: Sequence[str]
    seed: int = 0
    complete: CompleteFn | None = None
    optimizer_model: str | None = None
    model: str | None = None


class Strategy:
    """Base class: subclasses set `name` and `summary` and implement `propose`."""

    name: ClassVar[str]
    summary: ClassVar[str]

    async def propose(self, current: PromptTemplate, diagnosis: Diagnosis, train_cases: list[Case], *,
                      context: StrategyContext) -> list[CandidatePrompt]:
        """Candidate prompts derived from `current` (possibly none, when the lever is already there)."""
        raise NotImplementedError

    def candidate(self, prompt: PromptTemplate, current: PromptTemplate, rationale: str,
                  context: StrategyContext) -> CandidatePrompt:
        return CandidatePrompt(prompt=prompt, strategy=self.name, rationale=rationale,
                               parent_hash=current.hash, scope=context.model)


strategies: Registry[type[Strategy]] = Registry("strategy")


def create_strategy(name: str) -> Strategy:
    """An instance of the strategy registered as `name` (UnknownNameError lists the known ones)."""
    return strategies.get(name)()
