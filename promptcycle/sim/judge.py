"""The judge persona: any simulated model can grade a candidate answer against a reference.

Triggered when the system message starts with "You are an impartial evaluation judge.". The user
message holds "Question:", "Reference answer:" and "Candidate answer:" sections. The judge compares
the values the candidate states with those the reference states and replies with
{"score": <0-10>, "reason": "<one sentence>"}; weaker judges are occasionally off by one point.
"""

from __future__ import annotations

import json
import random
import re

from promptcycle.sim.reading import humanize
from promptcycle.sim.statements import read_statements, values_match

__all__ = ["judge_answer", "split_sections"]

_SECTION = re.compile(r"^(Question|Reference answer|Candidate answer):[ \t]*", re.MULTILINE)
_TAIL = re.compile(r"\n\s*Reply with JSON:.*$", re.DOTALL)
_WORDS = re.compile(r"[a-z0-9]+")


def split_sections(user_text: str) -> dict[str, str]:
    """The three judge sections of the user message (missing ones are empty)."""
    sections = {"Question": "", "Reference answer": "", "Candidate answer": ""}
    marks = list(_SECTION.finditer(user_text))
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(user_text)
        body = user_text[m.end():end]
        if m.group(1) == "Candidate answer":
            body = _TAIL.sub("", body)
        sections[m.group(1)] = body.strip()
    return sections


def _listing(names: list[str]) -> str:
    return ", ".join(humanize(n) for n in names[:4]) + (" and more" if len(names) > 4 else "")


def judge_answer(user_text: str, judge_skill: float, rng: random.Random) -> str:
    """The judge's reply text (JSON) for one judge request."""
    parts = split_sections(user_text)
    reference, candidate = parts["Reference answer"], parts["Candidate answer"]
    expected = read_statements(reference)
    if not candidate.strip():
        score, reason = 0, "The candidate answer is empty."
    elif expected:
        stated = read_statements(candidate)
        missing = [k for k in expected if k not in stated]
        wrong = [k for k in expected if k in stated and not values_match(expected[k], stated[k])]
        correct = len(expected) - len(missing) - len(wrong)
        score = round(10 * correct / len(expected))
        reason = f"The candidate states {correct} of {len(expected)} reference values correctly"
        details = []
        if missing:
            details.append(f"missing {_listing(missing)}")
        if wrong:
            details.append(f"wrong {_listing(wrong)}")
        reason += f" ({'; '.join(details)})." if details else "."
    else:
        ref_words = set(_WORDS.findall(reference.lower()))
        cand_words = set(_WORDS.findall(candidate.lower()))
        overlap = len(ref_words & cand_words) / max(1, len(ref_words))
        score = round(10 * overlap)
        reason = f"The candidate covers about {round(100 * overlap)}% of the reference answer's content."
    if candidate.strip() and rng.random() < 0.25 * (1.0 - judge_skill):  # a weaker judge is sometimes off
        score += rng.choice((-1, 1))
    score = max(0, min(10, score))
    return json.dumps({"score": score, "reason": reason})
