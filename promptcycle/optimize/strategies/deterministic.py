"""The deterministic strategies: each applies one lever (or, `combined`, three) to the current prompt.

Their evidence is the train split only: the fields come from train cases' facts and the
diagnosis's train-split misses, the examples are train cases, and the rationales quote
train-split rates.
"""

from __future__ import annotations

import hashlib
from collections import Counter

from promptcycle.datasets.cases import Case
from promptcycle.optimize.candidates import CandidatePrompt
from promptcycle.optimize.diagnosis import TRAIN, Diagnosis
from promptcycle.optimize.strategies.base import Strategy, StrategyContext, strategies
from promptcycle.optimize.strategies.levers import (
    FORMAT_SPEC,
    GROUNDING,
    STEPS,
    add_instructions,
    apply_format_spec,
    checklist_block,
    format_example,
    names_field,
    shorten_prompt,
    word_count,
)
from promptcycle.prompts import PromptTemplate

__all__ = [
    "ChecklistStrategy",
    "FormatSpecStrategy",
    "FewShotStrategy",
    "GroundingStrategy",
    "StepStructureStrategy",
    "ShortenStrategy",
    "CombinedStrategy",
    "checklist_fields",
    "MIN_SHORTENING",
]

MIN_SHORTENING = 0.05  # a rewrite must drop at least this share of the words to count as shorter
EXAMPLES = 2


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.0f}%"


def _train_only(cases: list[Case], diagnosis: Diagnosis) -> list[Case]:
    """The cases the results do not place outside train (a guard against a caller's mix-up)."""
    return [c for c in cases if diagnosis.split_of(c.id) in (None, TRAIN)]


def checklist_fields(current: PromptTemplate, diagnosis: Diagnosis, train_cases: list[Case],
                     context: StrategyContext) -> dict[str, list[str]]:
    """Spectrum -> fields its answers need and the prompt does not name yet.

    From the train cases' facts (most often required first) plus the diagnosis's train-split
    misses; fields the current prompt already names are left out.
    """
    out: dict[str, list[str]] = {}
    for spectrum in context.spectrums:
        counts = Counter(name for c in train_cases if c.spectrum == spectrum for name in c.facts)
        missed = diagnosis.missed_fields(spectrum, split=TRAIN, model=context.model)
        for name in missed:
            counts.setdefault(name, 0)
        ordered = sorted(counts, key=lambda f: (-counts[f], -missed.get(f, 0.0), f))
        fields = [f for f in ordered if not names_field(current, f)]
        if fields:
            out[spectrum] = fields
    return out


def _checklist(current: PromptTemplate, diagnosis: Diagnosis, train_cases: list[Case],
               context: StrategyContext) -> tuple[PromptTemplate, str] | None:
    """The prompt with a per-topic checklist, and a phrase naming its fields and the train misses."""
    fields = checklist_fields(current, diagnosis, _train_only(train_cases, diagnosis), context)
    if not fields:
        return None
    misses = []
    for spectrum, names in fields.items():
        rates = diagnosis.missed_fields(spectrum, split=TRAIN, model=context.model)
        misses += [(rates[f], f) for f in names if f in rates]
    top = ", ".join(f"{f} {_pct(r)}" for r, f in sorted(misses, key=lambda x: (-x[0], x[1]))[:4])
    listed = "; ".join(f"{s}: {', '.join(names)}" for s, names in fields.items())
    phrase = f"a per-topic checklist ({listed})"
    if top:
        phrase += f", most missed on train: {top}"
    return add_instructions(current, checklist_block(fields)), phrase


@strategies.register("checklist")
class ChecklistStrategy(Strategy):
    name = "checklist"
    summary = "A per-topic checklist of the fields a correct answer needs."

    async def propose(self, current, diagnosis, train_cases, *, context) -> list[CandidatePrompt]:
        made = _checklist(current, diagnosis, train_cases, context)
        if made is None:
            return []
        prompt, phrase = made
        return [self.candidate(prompt, current, f"Names the fields each topic needs: {phrase}.", context)]


@strategies.register("format_spec")
class FormatSpecStrategy(Strategy):
    name = "format_spec"
    summary = "An explicit output format: only a JSON object keyed by the field names."

    async def propose(self, current, diagnosis, train_cases, *, context) -> list[CandidatePrompt]:
        prompt = apply_format_spec(current)
        if prompt == current:
            return []
        rate = diagnosis.format_failure_rate(split=TRAIN, model=context.model)
        problem = next(iter(diagnosis.format_problems(split=TRAIN, model=context.model)), None)
        rationale = f"Explicit format specification; {_pct(rate)} of train answers failed the format check"
        rationale += f" (most often: {problem})." if problem else "."
        return [self.candidate(prompt, current, rationale, context)]


def _pick(cases: list[Case], seed: int, spectrum: str) -> Case:
    """One case, chosen reproducibly by seed."""
    return min(cases, key=lambda c: hashlib.sha256(f"{seed}\x00{spectrum}\x00{c.id}".encode()).hexdigest())


@strategies.register("few_shot")
class FewShotStrategy(Strategy):
    name = "few_shot"
    summary = "Two short worked examples drawn from train cases of the weakest spectrums."

    async def propose(self, current, diagnosis, train_cases, *, context) -> list[CandidatePrompt]:
        cases = [c for c in _train_only(train_cases, diagnosis) if c.facts]
        by_spectrum: dict[str, list[Case]] = {}
        for c in cases:
            by_spectrum.setdefault(c.spectrum, []).append(c)
        order = [s for s in context.spectrums if s in by_spectrum]
        # weakest on train first; spectrums without train results keep their configured order
        weakest = sorted(order, key=lambda s: (diagnosis.quality(s, split=TRAIN, model=context.model) or 101.0,
                                               order.index(s)))
        picked = [_pick(by_spectrum[s], context.seed, s) for s in weakest[:EXAMPLES]]
        if not picked:
            return []
        blocks = [format_example(c, i + 1 if len(picked) > 1 else None) for i, c in enumerate(picked)]
        prompt = add_instructions(current, "\n\n".join(blocks))
        if prompt == current:
            return []
        shown = ", ".join(f"{c.id} ({c.spectrum}, train quality "
                          f"{diagnosis.quality(c.spectrum, split=TRAIN, model=context.model) or 0:.1f})"
                          for c in picked)
        return [self.candidate(prompt, current, f"Worked examples from train cases of the weakest spectrums: "
                               f"{shown}.", context)]


@strategies.register("grounding")
class GroundingStrategy(Strategy):
    name = "grounding"
    summary = "Use only the provided data; say when a value is unknown."

    async def propose(self, current, diagnosis, train_cases, *, context) -> list[CandidatePrompt]:
        prompt = add_instructions(current, GROUNDING)
        if prompt == current:
            return []
        wrong = diagnosis.wrong_fields(split=TRAIN, model=context.model)
        top = ", ".join(f"{w.field} {_pct(w.rate)}" for w in list(wrong.values())[:3])
        rationale = "Grounds answers in the provided data and asks for \"unknown\" instead of guesses"
        rationale += f"; most wrong on train: {top}." if top else "."
        return [self.candidate(prompt, current, rationale, context)]


@strategies.register("step_structure")
class StepStructureStrategy(Strategy):
    name = "step_structure"
    summary = "Numbered steps: find the topic, find the facts, copy the values, format the answer."

    async def propose(self, current, diagnosis, train_cases, *, context) -> list[CandidatePrompt]:
        prompt = add_instructions(current, STEPS)
        if prompt == current:
            return []
        return [self.candidate(prompt, current, "Numbered steps from reading the question to formatting the "
                               "answer, to cut careless value errors.", context)]


@strategies.register("shorten")
class ShortenStrategy(Strategy):
    name = "shorten"
    summary = "A shorter rewrite keeping the variables and every constraint."

    async def propose(self, current, diagnosis, train_cases, *, context) -> list[CandidatePrompt]:
        prompt, dropped = shorten_prompt(current)
        before, after = word_count(current), word_count(prompt)
        if prompt == current or after > before * (1 - MIN_SHORTENING):
            return []
        quoted = "; ".join(repr(s if len(s) <= 60 else s[:57] + "...") for s in dropped[:3])
        return [self.candidate(prompt, current, f"Shorter: {after} words instead of {before}; dropped "
                               f"{len(dropped)} sentence(s) that set no constraint ({quoted}).", context)]


@strategies.register("combined")
class CombinedStrategy(Strategy):
    name = "combined"
    summary = "Checklist + format specification + grounding in one prompt."

    async def propose(self, current, diagnosis, train_cases, *, context) -> list[CandidatePrompt]:
        prompt, parts = add_instructions(current, GROUNDING), []
        if prompt != current:
            parts.append("grounding")
        made = _checklist(prompt, diagnosis, train_cases, context)
        if made:
            prompt, phrase = made
            parts.append(phrase)
        specified = apply_format_spec(prompt, FORMAT_SPEC)
        if specified != prompt:
            prompt = specified
            parts.append(f"an explicit JSON format (train format failures "
                         f"{_pct(diagnosis.format_failure_rate(split=TRAIN, model=context.model))})")
        if not parts:
            return []
        quality = diagnosis.quality(split=TRAIN, model=context.model)
        rationale = "Combines " + "; ".join(parts)
        rationale += f" (current prompt's train quality {quality:.1f})." if quality is not None else "."
        return [self.candidate(prompt, current, rationale, context)]
