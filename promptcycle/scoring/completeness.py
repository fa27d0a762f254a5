"""Completeness: the share of a case's required facts that the answer states, whatever the value."""

from __future__ import annotations

from promptcycle.scoring.base import Sample, Score, Scorer, scorers
from promptcycle.scoring.facts import parse_answer

__all__ = ["CompletenessScorer"]


@scorers.register("completeness")
class CompletenessScorer(Scorer):
    """Stated facts / required facts. A case without required facts scores 1.0."""

    name = "completeness"

    def score(self, sample: Sample) -> Score:
        facts = sample.case.facts
        if not facts:
            return Score(1.0, {"reason": "the case has no required facts"})
        stated = parse_answer(sample.output).statements(facts)
        missed = [name for name, found in stated.items() if not found]
        return Score((len(facts) - len(missed)) / len(facts),
                     {"stated": len(facts) - len(missed), "required": len(facts), "missed": missed})
