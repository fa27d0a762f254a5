"""How a simulated model writes its answer from what it read (see reading.py).

Every probability below is a documented lever (docs/simulator.md). `s` is the model's skill in
[0, 1] for the spectrum a field belongs to; draws come from the caller's seeded RNGs (per request
and per case, see `compose_answer`), so the same messages always give the same answer.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from promptcycle.sim.lexicon import DOMAIN_SPECTRUMS, HALLUCINATION_POOL, PLAUSIBLE_VALUES
from promptcycle.sim.reading import PromptReading, RecordField, humanize

__all__ = ["Answer", "compose_answer", "format_value", "corrupt_value", "adjusted_skills"]

# --- relevance: probability that a field is stated -------------------------------------------
def p_linked(s: float) -> float:  # the question's words point at the field (lexicon)
    return 0.70 + 0.25 * s


def p_implicit(s: float) -> float:  # same topic as the question, but no cue links it
    return 0.85 * s


def p_named(s: float) -> float:  # named in the instructions (a checklist), on the question's topic
    return min(0.995, 0.66 + 0.36 * s)


P_LISTED = 0.85  # named in a flat list mixing topics: included dutifully (costs tokens)
P_OFF_TOPIC = 0.03  # named in a checklist group for another topic


# --- value errors -----------------------------------------------------------------------------
def p_wrong(s: float) -> float:  # before prompt modifiers
    return 0.03 + 0.45 * (1.0 - s) ** 1.5


USE_ONLY_ERROR = 0.65  # "use only the provided data"
SAY_UNKNOWN_ERROR = 0.85  # "say when a value is unknown"
EXAMPLE_ERROR = (1.0, 0.8, 0.7)  # by number of examples (0, 1, 2+)
TEMPERATURE_ERROR = 0.3  # error rate grows by this fraction per unit of temperature


def p_hallucinate(s: float) -> float:
    return 0.04 + 0.30 * (1.0 - s)


USE_ONLY_HALLUCINATION = 0.1
SAY_UNKNOWN_HALLUCINATION = 0.5

# --- format -----------------------------------------------------------------------------------
def p_clean_json_vague(s: float, examples: int) -> float:
    return min(0.98, 0.35 + 0.60 * s + 0.15 * min(examples, 2))


def p_clean_json_explicit(s: float) -> float:
    return 0.96 + 0.04 * s


WOBBLE = 0.15  # share of latent draws re-drawn per message, so rewording a prompt changes a little

LENGTH_WORDS = 400  # instructions longer than this lower small models' skill
LENGTH_PENALTY = 0.08  # at most this much skill, times (1 - capacity)
STEP_TOKENS = (25, 8)  # hidden reasoning tokens for step structure: base + per stated field

_MONEY = re.compile(r"spend|limit|amount|balance|income|worth|price|cost|largest_transaction|_value$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_INTROS = ("Here is what the customer record shows:", "Based on the record:", "Summary of the relevant data:")
_CLOSERS = ("Let me know if you need anything else.", "Hope this helps.",
            "All values are taken from the customer record.")


@dataclass(frozen=True)
class Answer:
    text: str
    reasoning_tokens: int  # hidden tokens (step structure, reasoning models): billed, not shown
    stated: tuple[str, ...]  # the fields it states (for tests and docs; never sent anywhere)


def adjusted_skills(skills: dict[str, float], capacity: float, instruction_words: int) -> dict[str, float]:
    """Skills after the length lever: long instructions cost small models a little skill."""
    if instruction_words <= LENGTH_WORDS:
        return skills
    excess = min(1.0, 0.5 + (instruction_words - LENGTH_WORDS) / 800)
    cut = LENGTH_PENALTY * (1.0 - capacity) * excess
    return {k: max(0.02, v - cut) for k, v in skills.items()}


def _decimals(value: float) -> int:
    text = repr(value)
    return len(text.split(".")[1]) if "." in text and "e" not in text else 0


def corrupt_value(field: RecordField, rng: random.Random, others: list[Any]) -> Any:
    """A plausible wrong value: numbers off by 5-30%, dates shifted, strings swapped, booleans flipped."""
    value = field.value
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        factor = 1 + rng.choice((-1, 1)) * rng.uniform(0.05, 0.30)
        if isinstance(value, int):
            wrong = int(round(value * factor))
            if wrong == value:
                wrong = value + rng.choice((1, 2)) if value < 2 else value + rng.choice((-1, 1, 2))
            return wrong
        if value == 0:
            return round(rng.uniform(0.5, 5.0), 1)
        wrong = round(value * factor, max(1, _decimals(value)))
        return wrong if wrong != value else round(value + 1, 1)
    if isinstance(value, str) and _DATE.match(value):
        try:
            day = date.fromisoformat(value)
        except ValueError:
            return value + "?"
        return (day + timedelta(days=rng.choice((-1, 1)) * rng.randint(3, 120))).isoformat()
    pool = PLAUSIBLE_VALUES.get(field.name)
    if pool is None and (field.name.endswith(("_name", "_holder", "_of")) or field.name == "name"):
        pool = PLAUSIBLE_VALUES["person"]
    if pool is None:
        pool = [o for o in others if isinstance(o, str) and not _DATE.match(o)]
    choices = [p for p in pool if str(p).lower() != str(value).lower()]
    return rng.choice(choices) if choices else f"{value} (approx.)"


def format_value(name: str, value: Any) -> str:
    """A value as prose writes it: $ for money, % for percentages, yes/no for booleans."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if _MONEY.search(name):
            return f"${value:,.2f}" if isinstance(value, float) else f"${value:,}"
        if name.endswith("_pct") or "_pct_" in name:
            return f"{value}%"
        return f"{value:,}" if isinstance(value, int) and abs(value) >= 10000 else str(value)
    return str(value)


def _invent(name: str, rng: random.Random) -> Any:
    """A made-up value for a field the record does not have."""
    if name.endswith("_pct") or "_pct_" in name:
        return round(rng.uniform(1, 60), 1)
    if _MONEY.search(name):
        return round(rng.uniform(100, 20000), 2)
    if any(w in name for w in ("opened", "login", "change", "date")):
        return (date(2026, 11, 1) - timedelta(days=rng.randint(5, 3000))).isoformat()
    if name in PLAUSIBLE_VALUES:
        return rng.choice(PLAUSIBLE_VALUES[name])
    return rng.randint(1, 12)


def _hallucinated_value(kind: str, rng: random.Random) -> Any:
    if kind == "money":
        return round(rng.uniform(500, 250000), 2)
    if kind == "int":
        return rng.randint(1, 5000)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "language":
        return rng.choice(("English", "Spanish", "French", "German"))
    return rng.choice(("low", "medium", "high"))


def _label(name: str, title: bool = False) -> str:
    text = humanize(name)
    return text.title() if title else text.capitalize()


def _json_value(name: str, value: Any, formatted: bool) -> Any:
    if formatted and isinstance(value, (int, float)) and not isinstance(value, bool):
        text = format_value(name, value)
        return text if text != str(value) else value
    return value


def _render_json(items: list[tuple[str, str | None, Any]], rng: random.Random, s: float, explicit: bool) -> str:
    """items: (field, domain, value). Weaker models without a spec use labels as keys or format values."""
    label_keys = not explicit and rng.random() < 0.3 * (1 - s)
    title = rng.random() < 0.5
    formatted = not explicit and rng.random() < 0.25 * (1 - s)
    nested = not explicit and rng.random() < 0.2 * s
    obj: dict[str, Any] = {}
    for name, domain, value in items:
        key = _label(name, title) if label_keys else name
        val = _json_value(name, value, formatted)
        if nested and domain:
            obj.setdefault(domain, {})[key] = val
        else:
            obj[key] = val
    return json.dumps(obj, indent=2, ensure_ascii=False)


NO_RECORD_TEXT = ("This is a simulated model: send a customer record (a JSON object) and a question about it, "
                  "and it answers from the record.")


def _render_prose(items: list[tuple[str, str | None, Any]], rng: random.Random, s: float) -> str:
    if not items:
        return "I could not find that information in the customer record."
    if rng.random() < 0.25 + 0.5 * s:
        lines = [f"- {_label(n)}: {format_value(n, v)}" for n, _, v in items]
        if rng.random() < 0.5:
            lines.insert(0, rng.choice(_INTROS))
        return "\n".join(lines)
    return " ".join(f"The {humanize(n)} is {format_value(n, v)}." for n, _, v in items)


def _wrap(body: str, rng: random.Random) -> str:
    style = rng.randrange(3)
    if style == 0:
        return f"{rng.choice(_INTROS)}\n```json\n{body}\n```\n{rng.choice(_CLOSERS)}"
    if style == 1:
        return f"Sure! {body}\n{rng.choice(_CLOSERS)}"
    return f"```json\n{body}\n```\n{rng.choice(_CLOSERS)}"


def _wobble(u: float, rng: random.Random) -> float:
    """A latent draw, re-drawn from the request's own RNG a WOBBLE share of the time."""
    w = rng.random()
    return w / WOBBLE if w < WOBBLE else u  # w / WOBBLE is uniform given w < WOBBLE


def compose_answer(reading: PromptReading, skills: dict[str, float], capacity: float, rng: random.Random,
                   temperature: float, latent: Sequence[float] | None = None,
                   omission: dict[str, float] | None = None) -> Answer:
    """The answer a model with these per-spectrum skills gives to what it read.

    `rng` is seeded from the whole request. `latent` holds 2 x len(fields) + 2 uniforms tied to the
    case (record + question) rather than to the prompt's wording: a model's slips on a case tend to
    persist when only the instructions change, as with real models, so a lever moves the outcome
    through its probabilities and paired comparisons of prompts get realistic power. A WOBBLE share
    of them is re-drawn per request. Without `latent`, every draw comes from `rng`.
    `omission` (spectrum -> probability, a simulated field_omission drift, see drift.py) leaves out a
    field of that spectrum the instructions do not name.
    """
    if not reading.fields:
        return Answer(NO_RECORD_TEXT, 0, ())
    skills = adjusted_skills(skills, capacity, reading.instruction_words)
    mean = sum(skills.values()) / len(skills)
    topic_skill = skills.get(DOMAIN_SPECTRUMS.get(reading.topic or ""), mean)

    domain_skill: dict[str | None, float] = {}

    def skill_of(domain: str | None) -> float:
        if domain not in domain_skill:
            domain_skill[domain] = skills.get(DOMAIN_SPECTRUMS.get(domain or ""), topic_skill)
        return domain_skill[domain]

    # 1. relevance: which fields to state
    chosen: list[RecordField] = []
    best: tuple[float, RecordField] | None = None
    # two latent draws per field (inclusion, error) plus two per answer, whatever the prompt
    n = len(reading.fields)
    draws = latent if latent is not None and len(latent) >= 2 * n + 2 else [rng.random() for _ in range(2 * n + 2)]
    u_extra, u_format = _wobble(draws[2 * n], rng), _wobble(draws[2 * n + 1], rng)
    index = {}
    for i, f in enumerate(reading.fields):
        index[f.name] = i
        s = skill_of(f.domain)
        p = 0.0
        if f.name in reading.linked:
            p = p_linked(s)
        elif reading.topic is not None and f.domain == reading.topic:
            p = p_implicit(s)
        named = reading.named.get(f.name)
        if named == "on":
            p = max(p, p_named(s))
        elif named == "listed":
            p = max(p, P_LISTED)
        elif named == "off":
            p = max(p, P_OFF_TOPIC)
        if p <= 0.0:
            continue
        if omission and named not in ("on", "listed"):
            q = omission.get(DOMAIN_SPECTRUMS.get(f.domain or "", ""), 0.0)
            if q > 0.0 and rng.random() < q:
                continue
        if best is None or p > best[0]:
            best = (p, f)
        if _wobble(draws[2 * i], rng) < p:
            chosen.append(f)
    if not chosen and best is not None:
        chosen.append(best[1])  # a model always says something about the record

    # 2. values, with errors
    error_scale = ((USE_ONLY_ERROR if reading.use_only else 1.0)
                   * (SAY_UNKNOWN_ERROR if reading.say_unknown else 1.0)
                   * EXAMPLE_ERROR[min(reading.examples, 2)]
                   * ((1.0 - 0.5 * capacity ** 2) if reading.steps else 1.0)
                   * (1.0 + TEMPERATURE_ERROR * temperature))
    others = [f.value for f in reading.fields]
    items: list[tuple[str, str | None, Any]] = []
    for f in chosen:
        value = f.value
        if _wobble(draws[2 * index[f.name] + 1], rng) < p_wrong(skill_of(f.domain)) * error_scale:
            value = corrupt_value(f, rng, others)
        items.append((f.name, f.domain, value))

    # 3. fields the question points at that the record lacks: "unknown" or an invented value
    present = {f.name for f in reading.fields}
    for name in sorted(reading.linked - present):
        if reading.say_unknown:
            items.append((name, None, "unknown"))
        elif not reading.use_only and rng.random() < 0.6 * (1 - topic_skill) + 0.1:
            items.append((name, None, _invent(name, rng)))

    # 4. hallucinated extra fields
    p_extra = (p_hallucinate(topic_skill) * (USE_ONLY_HALLUCINATION if reading.use_only else 1.0)
               * (SAY_UNKNOWN_HALLUCINATION if reading.say_unknown else 1.0))
    if reading.fields and u_extra < p_extra:
        pool = [h for h in HALLUCINATION_POOL if h[0] not in present]
        for name, kind in rng.sample(pool, k=min(len(pool), 2 if rng.random() < 0.3 else 1)):
            items.append((name, reading.topic, _hallucinated_value(kind, rng)))

    # 5. format
    if reading.json_requested:
        if reading.json_explicit:
            form = "json" if u_format < p_clean_json_explicit(topic_skill) else "wrapped"
        else:
            p_clean = p_clean_json_vague(topic_skill, reading.examples) - 0.05 * temperature
            r = u_format
            form = "json" if r < p_clean else ("wrapped" if r < p_clean + 0.6 * (1 - p_clean) else "prose")
    else:
        form = "prose"
    if form == "prose":
        text = _render_prose(items, rng, topic_skill)
    else:
        body = _render_json(items, rng, topic_skill, reading.json_explicit)
        text = body if form == "json" else _wrap(body, rng)

    reasoning = STEP_TOKENS[0] + STEP_TOKENS[1] * len(items) if reading.steps else 0
    return Answer(text, reasoning, tuple(name for name, _, _ in items))
