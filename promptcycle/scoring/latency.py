"""Latency: full marks at or under the model's latency target, falling linearly to 0."""

from __future__ import annotations

from pydantic import Field

from promptcycle.scoring.base import Sample, Score, Scorer, ScorerOptions, scorers

__all__ = ["LatencyScorer", "LatencyOptions"]


class LatencyOptions(ScorerOptions):
    zero_at_multiple: float = Field(default=2.0, gt=1, description="The score reaches 0 at this multiple of "
                                    "the model's latency target.")
    default_target_ms: float = Field(default=2000.0, gt=0, description="The target for samples whose model "
                                     "has none (models in pipelines.yaml always have one).")


@scorers.register("latency")
class LatencyScorer(Scorer):
    """1.0 at or under the target; linear down to 0 at `zero_at_multiple` x target."""

    name = "latency"
    Options = LatencyOptions
    options: LatencyOptions

    def score(self, sample: Sample) -> Score:
        target = sample.latency_target_ms or self.options.default_target_ms
        zero_at = target * self.options.zero_at_multiple
        latency = max(0.0, sample.latency_ms)
        if latency <= target:
            value = 1.0
        elif latency >= zero_at:
            value = 0.0
        else:
            value = (zero_at - latency) / (zero_at - target)
        return Score(value, {"latency_ms": round(latency, 1), "target_ms": target, "zero_at_ms": zero_at})
