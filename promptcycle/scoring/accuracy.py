"""Accuracy: of the required facts the answer states, the share it states correctly."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from promptcycle.scoring.base import Sample, Score, Scorer, ScorerOptions, scorers
from promptcycle.scoring.facts import parse_answer, value_matches

__all__ = ["AccuracyScorer", "AccuracyOptions"]


class AccuracyOptions(ScorerOptions):
    numeric_tolerance: float = Field(default=0.01, ge=0, description="Relative tolerance for numbers: "
                                     "|stated - expected| <= tolerance x |expected| counts as correct.")
    case_sensitive: bool = Field(default=False, description="Compare text values with case.")


@scorers.register("accuracy")
class AccuracyScorer(Scorer):
    """Correct facts / stated facts.

    A fact stated more than once must be correct every time: a wrong value, or two different values
    for the same field (a contradiction), makes it wrong. An answer that states none of the facts
    scores 0; a case without required facts scores 1.0.
    """

    name = "accuracy"
    Options = AccuracyOptions
    options: AccuracyOptions

    def score(self, sample: Sample) -> Score:
        facts = sample.case.facts
        if not facts:
            return Score(1.0, {"reason": "the case has no required facts"})
        tolerance, case_sensitive = self.options.numeric_tolerance, self.options.case_sensitive
        wrong: dict[str, dict[str, Any]] = {}
        stated_count = 0
        for name, found in parse_answer(sample.output).statements(facts).items():
            if not found:
                continue
            stated_count += 1
            expected = facts[name]
            if all(value_matches(s.value, expected, numeric_tolerance=tolerance, case_sensitive=case_sensitive)
                   for s in found):
                continue
            texts = list(dict.fromkeys(s.text for s in found))
            entry: dict[str, Any] = {"stated": texts[0] if len(texts) == 1 else texts, "expected": expected}
            # Judged on the values read, so "$15,000" and "15000" are one value written twice.
            if len({v.casefold() if isinstance(v, str) else v for v in (s.value for s in found)}) > 1:
                entry["contradicted"] = True
            wrong[name] = entry
        if stated_count == 0:
            return Score(0.0, {"reason": f"the answer states none of the {len(facts)} required facts",
                               "missed": list(facts)})
        correct = stated_count - len(wrong)
        return Score(correct / stated_count, {"correct": correct, "stated": stated_count, "wrong": wrong})
