"""The scorer contract: a Sample in, a Score (value in [0, 1] plus its explanation) out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from promptcycle.datasets.cases import Case
from promptcycle.registry import Registry

__all__ = ["Sample", "Score", "Scorer", "ScorerOptions", "scorers"]


@dataclass(frozen=True)
class Sample:
    """What a scorer sees: the case, the model's output and how long it took."""

    case: Case
    output: str
    model: str
    latency_ms: float
    latency_target_ms: float | None = None


@dataclass(frozen=True)
class Score:
    value: float  # in [0, 1]
    explanation: dict[str, Any] = field(default_factory=dict)  # e.g. {"missed": [...], "wrong": {...}}


class ScorerOptions(BaseModel):
    """Options every scorer accepts in pipelines.yaml; scorers subclass this for their own."""

    model_config = ConfigDict(extra="forbid")
    weight: float = Field(default=1.0, ge=0, description="Weight in the overall score.")


class Scorer:
    """Base class. Subclasses set `name`, `Options`, and implement `score` (or `ascore` if async)."""

    name: ClassVar[str]
    Options: ClassVar[type[ScorerOptions]] = ScorerOptions

    def __init__(self, options: ScorerOptions | None = None, **context: Any):
        self.options = options or self.Options()
        self.context = context  # e.g. judge scorers receive a provider factory here

    def score(self, sample: Sample) -> Score:
        raise NotImplementedError

    async def ascore(self, sample: Sample) -> Score:
        return self.score(sample)


scorers: Registry[type[Scorer]] = Registry("scorer")
