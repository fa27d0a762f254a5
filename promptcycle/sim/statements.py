"""Reading the facts an answer states, in the shared answer conventions.

JSON answers: an object (bare, fenced or embedded; nested objects are flattened to their leaf keys).
Prose answers: "Label: value" lines or "The label is value." sentences. Keys are normalised
(lowercase, runs of non-alphanumerics -> "_"). The simulated judge and the calibration measure use
this; the product's scorers have their own implementation of the same conventions.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from promptcycle.sim.jsonscan import iter_json_objects

__all__ = ["normalize_key", "read_statements", "parse_value", "values_match"]

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_LABEL_LINE = re.compile(
    r"^\s*(?:[-*•]\s*|\d+[.)]\s*)?(?:\*\*)?([A-Za-z][A-Za-z0-9 _/()-]{0,60}?)(?:\*\*)?\s*:\s*(.+?)\s*$")
_SENTENCE = re.compile(r"\b[Tt]he ([a-z][a-z0-9 _]{1,60}?) (?:is|was|are|were) (.+?)(?:\.(?=\s|$)|;|\n|$)")
_NUMBER = re.compile(r"^[-+]?\$?[-+]?[\d,]*\.?\d+(?:e[-+]?\d+)?\s*%?$", re.IGNORECASE)
_TRUE = {"yes", "true", "y"}
_FALSE = {"no", "false", "n"}


def normalize_key(key: str) -> str:
    return _NON_ALNUM.sub("_", key.lower()).strip("_")


def _flatten(obj: Any, out: dict[str, Any]) -> None:
    for key, value in obj.items():
        if isinstance(value, dict):
            _flatten(value, out)
        else:
            out.setdefault(normalize_key(str(key)), value)


def _json_statements(text: str) -> dict[str, Any] | None:
    candidates = [text.strip()] + [m.group(1).strip() for m in _FENCE.finditer(text)]
    for candidate in candidates:
        try:
            obj = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out: dict[str, Any] = {}
            _flatten(obj, out)
            return out
    for _, _, obj in iter_json_objects(text):  # the first object embedded in prose
        out = {}
        _flatten(obj, out)
        return out
    return None


def read_statements(text: str) -> dict[str, Any]:
    """Normalised field name -> the stated value (a JSON value, or the raw prose text)."""
    found = _json_statements(text)
    if found is not None:
        return found
    out: dict[str, Any] = {}
    for line in text.splitlines():
        m = _LABEL_LINE.match(line)
        if m:
            value = m.group(2)
            out.setdefault(normalize_key(m.group(1)), value[:-1] if value.endswith(".") else value)
    for m in _SENTENCE.finditer(text):
        out.setdefault(normalize_key(m.group(1)), m.group(2).strip())
    return out


def parse_value(value: Any) -> Any:
    """A stated value as bool, float or a normalised string."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().rstrip(".").strip()
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    if _NUMBER.match(text):
        try:
            return float(text.replace("$", "").replace(",", "").replace("%", "").strip())
        except ValueError:
            pass
    return low


def values_match(expected: Any, stated: Any, rel_tol: float = 0.01) -> bool:
    """True when the stated value equals the expected one (numbers within `rel_tol`)."""
    a, b = parse_value(expected), parse_value(stated)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)
    return a == b
