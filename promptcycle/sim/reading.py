"""How a simulated model reads its messages: the record, the question and the prompt's levers.

The model sees only the chat messages. The record is the largest JSON object in the last user
message; the question is the last question-like line of that message outside the record; every
other text (system message, earlier turns, the rest of the user message) is "instructions", where
the prompt levers are detected. Readings are cached: the same messages sent to seven models are
read once.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from promptcycle.sim.jsonscan import iter_json_objects
from promptcycle.sim.lexicon import FIELD_DOMAINS, link_question

__all__ = ["JUDGE_OPENING", "RecordField", "PromptReading", "read_messages", "humanize"]

JUDGE_OPENING = "You are an impartial evaluation judge."
_RECORD_MIN_LEAVES = 8  # JSON objects this big are records (never checklists or example answers)

_JSON_WORD = re.compile(r"\bjson\b")
_EXPLICIT_FORMAT = re.compile("|".join([
    r"\bonly (?:a |the |one |valid |raw |a single )?json\b",
    r"\bjson only\b",
    r"\bkeys? (?:are|is|must be|should be|=) (?:exactly )?(?:the )?(?:snake_case |record )?field names?",
    r"\b(?:no|without)(?: any)? (?:other|additional|extra|surrounding) text",
    r"\bno (?:markdown|code fences?|prose|commentary|explanations?)\b",
    r"\bnothing (?:else|but the json|other than)",
    r"\bvalid json\b",
    r"\bmust parse\b",
    r"\bdo not wrap\b",
]))
_EXAMPLE_HEADER = re.compile(r"(?im)^\s*(?:#+\s*)?(?:\*\*)?examples?\b[^\n:]{0,20}:")
_ANSWER_MARKER = re.compile(r"(?im)^\s*(?:\*\*)?(?:answer|a|output|response|assistant)(?:\*\*)?\s*:")
_USE_ONLY = re.compile("|".join([
    r"\b(?:use|using|rely on|based on|base your answer on) only\b",
    r"\bonly (?:use|rely on|the (?:provided|given)|on the (?:provided|given)|what is in)\b",
    r"\b(?:do not|don't|never) (?:guess|invent|make up|fabricate|speculate|add fields)",
]))
_SAY_UNKNOWN = re.compile("|".join([
    r"\b(?:say|state|write|answer|use|return|report|mark)\b[^.\n]{0,40}\b(?:unknown|not available|n/a|null)\b",
    r"\bif (?:a |the |any )?(?:value|field|fact)s? (?:is|are) (?:missing|unknown|not (?:in|available|present))",
]))
_STEP_PHRASE = re.compile(r"step[- ]by[- ]step|\bstep \d\b|\bsteps:")
_NUMBERED_LINE = re.compile(r"(?m)^\s*\d+[.)]\s+\S.*$")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_SENTENCE_BREAK = re.compile(r"(?<=[.;!?])\s+")
_INSTRUCTION_LINE = re.compile(
    r"\b(?:json|reply|respond|format|record|field|fields|keys?|examples?|output)\b|^\s*(?:answer|a)\s*:",
    re.IGNORECASE)
_QUESTION_LABEL = re.compile(r"^\s*(?:\*\*)?(?:question|q)(?:\*\*)?\s*:\s*", re.IGNORECASE)
_WORDS = re.compile(r"[a-z0-9]+")


class RecordField(NamedTuple):
    name: str
    domain: str | None  # the record section it sits in (or the lexicon's guess for flat records)
    value: Any


@dataclass(frozen=True)
class PromptReading:
    """Everything a simulated model takes from one list of messages."""

    judge: bool
    user_text: str  # the last user message (the judge reads its sections)
    fields: tuple[RecordField, ...]  # the record's leaf fields, in record order
    question: str
    linked: frozenset[str]  # fields the question points at (lexicon or the field's own label)
    topic: str | None  # the domain the question is about, if the model can tell
    named: dict[str, str]  # field named in the instructions -> "on" | "listed" | "off" (see answer.py)
    json_requested: bool
    json_explicit: bool
    examples: int
    use_only: bool
    say_unknown: bool
    steps: bool
    instruction_words: int
    input_chars: int
    case_key: bytes = b""  # digest of the record and question: what stays fixed when only the prompt changes


def humanize(name: str) -> str:
    """The label of a field: snake_case with "_" -> " "."""
    return name.replace("_", " ")


def _leaves(obj: dict, section: str | None, out: list[RecordField], seen: set[str]) -> None:
    for key, value in obj.items():
        if isinstance(value, dict):
            _leaves(value, key if section is None else section, out, seen)
        elif not isinstance(value, list) and key not in seen:
            seen.add(key)
            out.append(RecordField(key, section or FIELD_DOMAINS.get(key), value))


def _count_leaves(obj: dict) -> int:
    count, stack = 0, [obj]
    while stack:
        for value in stack.pop().values():
            if isinstance(value, dict):
                stack.append(value)
            else:
                count += 1
    return count


def _find_question(lines: list[str]) -> str:
    """The last line with a "?", else the last line that does not read like an instruction."""
    candidates = [_QUESTION_LABEL.sub("", ln).strip() for ln in lines
                  if ln.strip() and not _INSTRUCTION_LINE.search(ln)]
    asked = [ln for ln in candidates if "?" in ln]
    if asked:
        return asked[-1]
    return candidates[-1] if candidates else ""


def _blocks(text: str, labels: list[str]) -> list[str]:
    """Instruction text cut into checklist-sized units: sentences, except that a run of bullet lines
    naming one field each is one unit (a list under one heading)."""
    units: list[str] = []
    in_run = False
    for line in text.splitlines():
        if _BULLET.match(line):
            norm = _normalized(line)
            if sum(label in norm for label in labels) <= 1:
                if in_run:
                    units[-1] += "\n" + line
                else:
                    units.append(line)
                    in_run = True
                continue
        in_run = False
        units.extend(_SENTENCE_BREAK.split(line))
    return units


def _normalized(text: str) -> str:
    return " " + " ".join(_WORDS.findall(text.lower().replace("_", " "))) + " "


@lru_cache(maxsize=1024)
def _padded_label(name: str) -> str:
    return f" {humanize(name).lower()} "


@dataclass(frozen=True)
class _Levers:
    """What the instructions say, independent of the case (cached per prompt)."""

    groups: dict[str, str | None]  # named field -> topic of the checklist unit naming it (None: mixed)
    json_requested: bool
    json_explicit: bool
    examples: int
    use_only: bool
    say_unknown: bool
    steps: bool
    words: int


def _named_groups(instructions: str, fields: tuple[tuple[str, str | None], ...]) -> dict[str, str | None]:
    whole = _normalized(instructions)
    domain_of = dict(fields)
    named = [name for name, _ in fields if _padded_label(name) in whole]
    if not named:
        return {}
    groups: dict[str, str | None] = {}
    for unit in _blocks(instructions, [_padded_label(n) for n in named]):
        norm = _normalized(unit)
        inside = [n for n in named if _padded_label(n) in norm]
        if not inside:
            continue
        top, top_n = Counter(domain_of[n] for n in inside).most_common(1)[0]
        for n in inside:
            groups.setdefault(n, top if top_n >= 0.6 * len(inside) else None)
    return groups


@lru_cache(maxsize=1024)
def _read_levers(instructions: str, fields: tuple[tuple[str, str | None], ...]) -> _Levers:
    lower = instructions.lower()
    groups = _named_groups(instructions, fields)
    examples = min(len(_EXAMPLE_HEADER.findall(instructions)), len(_ANSWER_MARKER.findall(instructions)))
    example_json = examples > 0 and any(_count_leaves(obj) < _RECORD_MIN_LEAVES
                                        for _, _, obj in iter_json_objects(instructions))
    # numbered lines are steps unless they are a numbered checklist of fields
    labels = [_padded_label(n) for n in groups]
    numbered = [ln for ln in _NUMBERED_LINE.findall(instructions)
                if not any(label in _normalized(ln) for label in labels)]
    json_requested = bool(_JSON_WORD.search(lower)) or example_json
    return _Levers(
        groups=groups,
        json_requested=json_requested,
        json_explicit=json_requested and bool(_EXPLICIT_FORMAT.search(lower)),
        examples=examples,
        use_only=bool(_USE_ONLY.search(lower)),
        say_unknown=bool(_SAY_UNKNOWN.search(lower)),
        steps=bool(_STEP_PHRASE.search(lower)) or len(numbered) >= 2,
        words=len(instructions.split()),
    )


def _classify_named(groups: dict[str, str | None], domain_of: dict[str, str | None],
                    topic: str | None) -> dict[str, str]:
    classes = {}
    for name, group in groups.items():
        if topic is None or domain_of[name] == topic:
            classes[name] = "on"
        elif group is not None:
            classes[name] = "off"  # it sits in a checklist for another topic
        else:
            classes[name] = "listed"  # a flat list mixing topics: the model includes it dutifully
    return classes


@lru_cache(maxsize=8192)
def _read(messages: tuple[tuple[str, str], ...]) -> PromptReading:
    system = "\n".join(c for r, c in messages if r in ("system", "developer"))
    last_user = max((i for i, (r, _) in enumerate(messages) if r == "user"), default=-1)
    user_text = messages[last_user][1] if last_user >= 0 else ""
    input_chars = sum(len(c) for _, c in messages)
    if system.lstrip().startswith(JUDGE_OPENING):
        return PromptReading(True, user_text, (), "", frozenset(), None, {}, True, True, 0, True, False,
                             False, 0, input_chars)

    # the record: the biggest JSON object of the user message; other record-sized objects are cut too
    objects = [(s, e, obj, _count_leaves(obj)) for s, e, obj in iter_json_objects(user_text)]
    record, record_text, outside = None, "", user_text
    if objects:
        start, end, record, size = max(objects, key=lambda o: (o[3], o[0]))
        record_text = user_text[start:end]
        if size < 2:
            record, record_text = None, ""
        parts, cut_from = [], 0
        for s, e, obj, n in objects:
            if obj is record or n >= _RECORD_MIN_LEAVES:
                parts.append(user_text[cut_from:s])
                cut_from = e
        outside = "\n".join(parts + [user_text[cut_from:]])
    fields: list[RecordField] = []
    if record is not None:
        _leaves(record, None, fields, set())
    field_tuple = tuple(fields)
    signature = tuple((f.name, f.domain) for f in field_tuple)
    domain_of = dict(signature)

    question = _find_question(outside.splitlines())
    earlier = [c for i, (r, c) in enumerate(messages) if r in ("user", "assistant") and i != last_user]
    # the levers are read without the question, so one prompt is analysed once for all its cases
    instructions = "\n".join([system, *earlier, outside.replace(question, "") if question else outside])
    levers = _read_levers(instructions, signature)

    # what the question points at: lexicon cues, plus any field whose label the question spells out
    norm_question = _normalized(question)
    linked = set(link_question(question))
    linked.update(name for name, _ in signature if _padded_label(name) in norm_question)
    domains = Counter(domain_of.get(n) or FIELD_DOMAINS.get(n) for n in linked)
    domains.pop(None, None)
    topic = domains.most_common(1)[0][0] if domains else None

    return PromptReading(
        judge=False,
        user_text=user_text,
        fields=field_tuple,
        question=question,
        linked=frozenset(linked),
        topic=topic,
        named=_classify_named(levers.groups, domain_of, topic),
        json_requested=levers.json_requested,
        json_explicit=levers.json_explicit,
        examples=levers.examples + sum(1 for r, _ in messages[:max(last_user, 0)] if r == "assistant"),
        use_only=levers.use_only,
        say_unknown=levers.say_unknown,
        steps=levers.steps,
        instruction_words=levers.words + len(question.split()),
        input_chars=input_chars,
        # whitespace-free record text + question: stable however the record is indented
        case_key=hashlib.sha256(("".join(record_text.split()) + "\x1f" + question).encode()).digest(),
    )


def _content_text(content: Any) -> str:
    # chat content may also be a list of parts ({"type": "text", "text": ...})
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def read_messages(messages: list[dict[str, Any]]) -> PromptReading:
    """Read chat messages (`role`, `content`) the way every simulated model does."""
    return _read(tuple((str(m.get("role", "user")), _content_text(m.get("content"))) for m in messages))
