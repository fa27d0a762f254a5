"""Reading the facts an answer states, from JSON or prose, and comparing them with expected values.

An answer states a fact either as a JSON key (in an object that may be nested, fenced or embedded
in text) or as a prose label followed by its value: "Credit score: 712", "- **Credit score**: 712",
"The credit score is 712.", "a credit score of 712". Keys and labels are matched to a fact's field
name after normalising ("Credit Score", "creditScore" and "credit_score" are one field;
"percent"/"%" stand for "pct", "average" for "avg", a trailing unit such as "_pct" or "_days" may
be left out).

`parse_answer(text)` does the work once per output text (it is cached) and its result is shared by
the completeness, accuracy and format scorers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

__all__ = [
    "Statement",
    "ParsedAnswer",
    "parse_answer",
    "normalise_key",
    "value_kind",
    "read_value",
    "value_matches",
]

ValueKind = Literal["bool", "number", "date", "text"]

# Tokens that mean the same in a key or a label, mapped to one spelling …
_SYNONYMS = {"percent": "pct", "percentage": "pct", "average": "avg", "amount": "amt", "number": "num",
             "quantity": "qty", "minutes": "min", "mins": "min", "seconds": "sec", "secs": "sec", "yrs": "years",
             "hrs": "hours", "kilometers": "km", "kilometres": "km"}
# … and the ways prose may write that spelling.
_SPELLINGS = {"pct": r"(?:pct|percent(?:age)?|%)", "avg": r"(?:avg|average)", "amt": r"(?:amt|amount)",
              "num": r"(?:num|number)", "qty": r"(?:qty|quantity)", "min": r"(?:min(?:ute)?s?)",
              "sec": r"(?:sec(?:ond)?s?)", "years": r"(?:years?|yrs?)", "hours": r"(?:hours?|hrs?)",
              "days": r"(?:days?)", "months": r"(?:months?)", "km": r"(?:km|kilomet(?:er|re)s)"}
# A trailing unit token a key or label may leave out ("credit_utilization" for credit_utilization_pct).
_UNITS = frozenset({"pct", "usd", "eur", "gbp", "days", "months", "years", "hours", "min", "sec", "ms", "km", "mi"})
_ANY_UNIT = "(?:" + "|".join(_SPELLINGS.get(u, u) for u in sorted(_UNITS)) + ")"

_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")  # creditScore; but "Transactions 30D" stays 30d
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_NUMBER = re.compile(r"(?P<sign>[-−])?\s?[$€£¥]?\s?(?P<sign2>[-−])?"
                     r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?!\d)")
_ISO_DATE = re.compile(r"(?<!\d)(\d{4}-\d{2}-\d{2})(?![\d-])")
_ISO_DATE_FULL = re.compile(r"\d{4}-\d{2}-\d{2}")
_BOOL_WORD = re.compile(r"(?<![a-z])(yes|no|true|false)(?![a-z])", re.I)
_BOOLS = {"yes": True, "true": True, "no": False, "false": False}
# Where a prose value stops: a sentence end (not a decimal point), ";", a table bar.
_VALUE_END = re.compile(r"\.(?=\s|$)|;|\|")
_MARKUP = " \t\"'`*_"
_TRAILING = _MARKUP + ",.:;!"
# Values that say there is no value. ("none" is not one: it is a real value of fields such as guarantor_of.)
_PLACEHOLDERS = frozenset({"", "-", "—", "?", "n/a", "na", "null", "unknown", "not available", "not provided",
                           "not specified", "not applicable", "not stated"})
# Words that may come right before a label without making it part of a longer label:
# "the credit score", "her balance", "customer's balance" — but not "average balance".
_LEAD_WORDS = frozenset({"the", "a", "an", "and", "or", "but", "also", "with", "while", "whose", "this", "that",
                         "their", "his", "her", "its", "our", "your", "my", "of", "for", "in", "on", "at", "by",
                         "to", "as", "is", "was", "has", "have", "had", "where", "customer", "client",
                         "account", "record", "reported", "recorded", "listed", "stated", "then"})
_TEXT_BOUNDARY = re.compile(r"\s*(?:[,;(\[]|[-–—]\s|\s+(?:and|with|which|who|as)\b)")

_FENCE_WHOLE = re.compile(r"```[ \t]*(?:json)?[ \t]*\r?\n(?P<body>.*?)\s*```", re.S | re.I)
_FENCE_ANY = re.compile(r"```[ \t]*(?:json)?[ \t]*\r?\n(?P<body>.*?)```", re.S | re.I)
_DECODER = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class Statement:
    """One place where the answer states a field: the value read from it (typed; None when the
    text there cannot be read as the expected kind of value), the text as written, and where."""

    value: Any
    text: str
    source: Literal["json", "prose"]


def normalise_key(key: str) -> str:
    """'Credit Score', 'creditScore', 'credit-score' -> 'credit_score'; synonyms to one spelling."""
    key = _CAMEL.sub("_", key).replace("%", " pct ").lower()
    tokens = [_SYNONYMS.get(t, t) for t in _NON_ALNUM.split(key) if t]
    return "_".join(tokens)


def _stem(key: str) -> tuple[str, bool]:
    """The key without a trailing unit token, and whether it had one."""
    head, _, last = key.rpartition("_")
    if head and last in _UNITS:
        return head, True
    return key, False


def value_kind(expected: Any) -> ValueKind:
    """How a fact's expected value is compared: as a bool, a number, an ISO date or text."""
    if isinstance(expected, bool):
        return "bool"
    if isinstance(expected, (int, float)):
        return "number"
    if isinstance(expected, str) and _ISO_DATE_FULL.fullmatch(expected):
        return "date"
    return "text"


def _clean_text(text: str) -> str:
    return " ".join(text.strip(_TRAILING).split())


def _read_number(text: str) -> float | None:
    m = _NUMBER.search(text)
    if m is None:
        return None
    value = float(m.group("num").replace(",", ""))
    return -value if (m.group("sign") or m.group("sign2")) else value


def read_value(raw: Any, kind: ValueKind) -> Any:
    """The value of `kind` that `raw` (a JSON value or a piece of prose) states, or None.

    Numbers drop thousands separators, currency symbols and "%"; booleans accept yes/no/true/false
    (and 1/0 in JSON); dates are ISO "YYYY-MM-DD" (a time part after "T" is ignored); text is
    stripped of markup and trailing punctuation, with whitespace collapsed.
    """
    if isinstance(raw, list):
        if len(raw) == 1:
            return read_value(raw[0], kind)
        raw = ", ".join(str(v) for v in raw)
    if kind == "number":
        if isinstance(raw, bool):
            return None
        if isinstance(raw, (int, float)):
            return float(raw)
        return _read_number(str(raw))
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, (int, float)):
            return bool(raw) if raw in (0, 1) else None
        m = _BOOL_WORD.search(str(raw))
        return _BOOLS[m.group(1).lower()] if m else None
    if kind == "date":
        m = _ISO_DATE.search(str(raw))
        return m.group(1) if m else None
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return _clean_text(str(raw))


def value_matches(stated: Any, expected: Any, *, numeric_tolerance: float = 0.01,
                  case_sensitive: bool = False) -> bool:
    """True when a value read by `read_value` agrees with the expected one.

    Numbers agree within a relative tolerance of the expected value (|stated - expected| <=
    tolerance * |expected|); text agrees when equal after collapsing whitespace (and case, unless
    `case_sensitive`), or when the stated text starts with the expected one followed by a clause
    break ("Premium, since 2019").
    """
    if stated is None:
        return False
    kind = value_kind(expected)
    if kind == "number":
        slack = numeric_tolerance * abs(expected) + 1e-12 * max(1.0, abs(expected))
        return abs(stated - expected) <= slack
    if kind == "bool" or kind == "date":
        return stated == expected
    # Enumerations are often written with spaces where the record has underscores.
    want = " ".join(str(expected).replace("_", " ").split())
    have = " ".join(stated.replace("_", " ").split())
    if not case_sensitive:
        want, have = want.casefold(), have.casefold()
    if have == want:
        return True
    return have.startswith(want) and _TEXT_BOUNDARY.match(have, len(want)) is not None


@lru_cache(maxsize=4096)
def _label_pattern(field_name: str) -> re.Pattern[str]:
    """The prose pattern for one field: its label, a separator, then the value up to the line end."""
    tokens = normalise_key(field_name).split("_")
    unit = None
    if len(tokens) > 1 and tokens[-1] in _UNITS:
        unit = tokens.pop()
    label = r"[ \t_-]+".join(_SPELLINGS.get(t, re.escape(t)) for t in tokens)
    suffix = _SPELLINGS.get(unit, re.escape(unit)) if unit else _ANY_UNIT
    return re.compile(
        rf"(?<![\w%])(?P<label>{label}(?:[ \t_-]+{suffix})?)(?![\w%])"
        r"[\"'`*_]*(?:[ \t]*\([^()\n]{1,24}\))?[\"'`*_]*"
        r"(?P<sep>[ \t]*[:=|][ \t]*|[ \t]+[-–—][ \t]+|[ \t]+(?:is|was|are|were|of|equals|totals|totalled|"
        r"totaled|stands[ \t]+at|amounts[ \t]+to)[ \t]+(?:currently[ \t]+|now[ \t]+)?)"
        # The value is read in a lookahead so that the next label on the same line is still found.
        r"(?=[ \t\"'`*_]*(?P<value>[^\n]*))",
        re.I)


def _starts_clause(text: str, start: int) -> bool:
    """True when a label found at `start` is not the tail of a longer label ("average balance")."""
    i = start
    while i > 0 and text[i - 1] in " \t\"'`*_":
        i -= 1
    if i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "'’"):
        return True  # line start, bullet, number, punctuation
    j = i
    while j > 0 and (text[j - 1].isalnum() or text[j - 1] in "'’"):
        j -= 1
    word = text[j:i].lower().replace("’", "'")
    return word in _LEAD_WORDS or word.endswith("'s") or word.endswith("s'")


@dataclass(eq=False)
class ParsedAnswer:
    """An answer read once: the JSON it holds (if any) and the prose to search for labels.

    `json_form` is "bare" (the whole answer is JSON), "fenced" (one ```json fence and nothing else),
    "embedded" (JSON with other text around it) or None; `json_error` says why the whole answer is
    not JSON when it is not.
    """

    text: str
    json_value: Any = None
    json_form: Literal["bare", "fenced", "embedded"] | None = None
    json_error: str | None = None
    outside_text: str = ""  # text around embedded JSON
    _keyed: dict[str, list[Any]] = field(default_factory=dict, repr=False)
    _prose: str = field(default="", repr=False)
    _memo: dict[tuple, dict[str, tuple[Statement, ...]]] = field(default_factory=dict, repr=False)

    def statements(self, facts: Mapping[str, Any]) -> dict[str, tuple[Statement, ...]]:
        """Where the answer states each fact's field; an empty tuple means not stated.

        JSON keys always count as statements. A prose label counts when a value follows it;
        for numbers, dates and booleans a sentence ("the balance is ...") counts only when a value of
        that kind can be read from it, while a "Label: value" line always counts, readable or not.
        Placeholders such as "N/A" or "unknown" are not statements.
        """
        try:
            key = tuple((name, value_kind(v), v) for name, v in facts.items())
            memo = self._memo.get(key)
        except TypeError:  # an unhashable expected value: skip the memo
            key, memo = None, None
        if memo is not None:
            return memo
        hits = {name: self._prose_hits(name) for name in facts}
        spans = [(s, e, name) for name, found in hits.items() for s, e, *_ in found]
        result = {}
        for name, expected in facts.items():
            kind = value_kind(expected)
            found: list[Statement] = []
            for raw in self._json_values(name):
                if raw is None or raw == [] or (isinstance(raw, str) and _is_placeholder(raw, kind, expected)):
                    continue
                found.append(Statement(read_value(raw, kind), _show(raw), "json"))
            for start, end, sep, raw in hits[name]:
                # "Account balance: 5" is a statement of account_balance, not of balance, when both are facts.
                if any(o != name and s <= start and end <= e and (s, e) != (start, end) for s, e, o in spans):
                    continue
                if _is_placeholder(raw, kind, expected):
                    continue
                value = read_value(raw, kind)
                if value is None and kind != "text" and not sep.strip():
                    continue  # "the balance is growing" states no balance
                found.append(Statement(value, _show(_clean_text(raw)), "prose"))
            result[name] = tuple(found)
        if key is not None:
            self._memo[key] = result
        return result

    def _json_values(self, name: str) -> list[Any]:
        if not self._keyed:
            return []
        key = normalise_key(name)
        if key in self._keyed:
            return self._keyed[key]
        stem, has_unit = _stem(key)
        # credit_utilization_pct may be written credit_utilization, and balance as balance_usd.
        return self._keyed.get(("~" if has_unit else "+") + stem, [])

    def _prose_hits(self, name: str) -> list[tuple[int, int, str, str]]:
        if not self._prose:
            return []
        text = self._prose
        hits = []
        for m in _label_pattern(name).finditer(text):
            if not _starts_clause(text, m.start()):
                continue
            value = m.group("value")
            end = _VALUE_END.search(value)
            value = value[:end.start()] if end else value
            if value.strip(_TRAILING):
                sep = m.group("sep").strip()
                hits.append((m.start("label"), m.end("label"), sep if sep in (":", "=", "|", "-", "–", "—")
                             else "", value))
        return hits


def _is_placeholder(raw: str, kind: ValueKind, expected: Any) -> bool:
    """'N/A', 'unknown' … say the value is not given (unless that is the expected text)."""
    cleaned = _clean_text(raw).casefold()
    return cleaned in _PLACEHOLDERS and not (kind == "text" and cleaned == str(expected).casefold())


def _show(raw: Any) -> str:
    text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def _index_json(value: Any, keyed: dict[str, list[Any]], strings: list[str], parent: str = "") -> None:
    """Record every key's value under its normalised leaf key (and parent_leaf), collecting strings."""
    if isinstance(value, dict):
        for k, v in value.items():
            key = normalise_key(str(k))
            if isinstance(v, dict) and "value" in v and not isinstance(v["value"], (dict, list)):
                _record(keyed, key, v["value"])  # {"credit_score": {"value": 712, "band": "good"}}
            if isinstance(v, (dict, list)) and not _scalar_list(v):
                _index_json(v, keyed, strings, key)
                continue
            _record(keyed, key, v)
            if parent:
                _record(keyed, f"{parent}_{key}", v)
            if isinstance(v, str):
                strings.append(v)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                strings.append(item)
            else:
                _index_json(item, keyed, strings, parent)


def _scalar_list(v: Any) -> bool:
    return isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v)


def _record(keyed: dict[str, list[Any]], key: str, value: Any) -> None:
    keyed.setdefault(key, []).append(value)
    stem, has_unit = _stem(key)
    # "+stem": keys that carry a unit, found from a field without one; "~stem": the reverse.
    keyed.setdefault(("+" if has_unit else "~") + stem, []).append(value)


def _find_json(text: str) -> tuple[Any, str | None, str | None, tuple[int, int] | None]:
    """(value, form, error, span of the JSON in text when embedded)."""
    stripped = text.strip()
    error = "the answer is not JSON"
    if stripped[:1] in ("{", "["):  # a bare number or string is prose, not a JSON answer
        try:
            return json.loads(stripped), "bare", None, None
        except ValueError as exc:
            error = f"not valid JSON: {exc}"
    m = _FENCE_WHOLE.fullmatch(stripped)
    if m:
        try:
            return json.loads(m.group("body")), "fenced", None, None
        except ValueError as exc:
            return None, None, f"the ```json fence does not hold valid JSON: {exc}", None
    m = _FENCE_ANY.search(text)
    if m:
        try:
            return json.loads(m.group("body")), "embedded", error, m.span()
        except ValueError:
            pass
    start = text.find("{")
    for _ in range(5):
        if start < 0:
            break
        try:
            value, end = _DECODER.raw_decode(text, start)
            return value, "embedded", error, (start, end)
        except ValueError:
            start = text.find("{", start + 1)
    return None, None, error, None


@lru_cache(maxsize=1024)
def parse_answer(text: str) -> ParsedAnswer:
    """Read an answer once (cached on the text): find its JSON, index its keys, keep its prose."""
    value, form, error, span = _find_json(text)
    keyed: dict[str, list[Any]] = {}
    strings: list[str] = []
    outside = ""
    if form is not None:
        _index_json(value, keyed, strings)
        if span is not None:
            outside = (text[:span[0]] + "\n" + text[span[1]:]).strip()
        prose = "\n".join([outside, *strings]) if strings or outside else ""
    else:
        prose = text
    return ParsedAnswer(text, value, form, error, outside, keyed, prose)
