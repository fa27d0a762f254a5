"""The subset of LangSmith's run filter language that the fake server understands (a test double).

    matches('and(has(tags, "prompt:abc"), gt(start_time, "2026-12-01T00:00:00Z"))', run, feedback)

Grammar: a call `fn(arg, ...)`; an argument is a call, a field name, a "string" or 'string', a
number, or a `[list]`. Functions: and, or, not, eq, neq, gt, gte, lt, lte, has, in, exists.
Fields: id, name, run_type, status, error, start_time, end_time, latency (seconds), trace_id,
parent_run_id, reference_example_id, session_id, total_tokens, prompt_tokens, completion_tokens,
total_cost, is_root, tags (with `has`), metadata (`has(metadata, '{"k": "v"}')`), and the pairs
metadata_key / metadata_value and feedback_key / feedback_score, which — as in LangSmith — pair up
inside one `and(...)`: `and(eq(feedback_key, "accuracy"), lt(feedback_score, 0.5))` is true when one
feedback entry satisfies both. Anything else is a `FilterError` naming what is unsupported, so a
test never silently matches everything.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

__all__ = ["FilterError", "parse_filter", "matches"]

_TOKEN = re.compile(r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<num>-?\d+(?:\.\d+)?)|"""
                    r"""(?P<name>[A-Za-z_][A-Za-z0-9_.]*)|(?P<punct>[(),\[\]]))""")
_FUNCTIONS = {"and", "or", "not", "eq", "neq", "gt", "gte", "lt", "lte", "has", "in", "exists"}
_PAIRED = {"metadata_key": "metadata", "metadata_value": "metadata", "feedback_key": "feedback",
           "feedback_score": "feedback"}
_RUN_FIELDS = {"id", "name", "run_type", "status", "error", "start_time", "end_time", "latency", "trace_id",
               "parent_run_id", "reference_example_id", "session_id", "total_tokens", "prompt_tokens",
               "completion_tokens", "total_cost", "is_root", "tags", "metadata"}


class FilterError(ValueError):
    """The filter is malformed or uses something the fake does not implement."""


class _Field(str):
    """A bare name in the filter (as opposed to a quoted string)."""


def _tokens(text: str) -> list[tuple[str, Any]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FilterError(f"cannot read the filter at {text[pos:pos + 20]!r}")
        pos = m.end()
        if m.group("str") is not None:
            raw = m.group("str")
            out.append(("value", json.loads(raw) if raw[0] == '"' else
                        re.sub(r"\\(.)", lambda e: e.group(1), raw[1:-1])))
        elif m.group("num") is not None:
            out.append(("value", float(m.group("num"))))
        elif m.group("name") is not None:
            out.append(("name", m.group("name")))
        else:
            out.append(("punct", m.group("punct")))
    return out


def parse_filter(text: str) -> Any:
    """The filter as nested tuples `(fn, args)`; raises `FilterError`."""
    tokens = _tokens(text)
    pos = 0

    def items_until(close: str) -> list[Any]:
        """The comma-separated arguments up to the `close` bracket (consumed), a list's or a call's."""
        nonlocal pos
        found = []
        while tokens[pos] != ("punct", close):
            found.append(arg())
            if tokens[pos] == ("punct", ","):
                pos += 1
        pos += 1
        return found

    def arg() -> Any:
        nonlocal pos
        if pos >= len(tokens):
            raise FilterError("the filter ends too early")
        kind, value = tokens[pos]
        pos += 1
        if kind == "value":
            return value
        if kind == "punct" and value == "[":
            return items_until("]")
        if kind == "name" and pos < len(tokens) and tokens[pos] == ("punct", "("):
            if value not in _FUNCTIONS:
                raise FilterError(f"the fake LangSmith does not implement the filter function {value!r} "
                                  f"(it knows {', '.join(sorted(_FUNCTIONS))})")
            pos += 1
            return (value, items_until(")"))
        if kind == "name":
            if value not in _RUN_FIELDS and value not in _PAIRED:
                raise FilterError(f"the fake LangSmith does not implement the filter field {value!r}")
            return _Field(value)
        raise FilterError(f"unexpected {value!r} in the filter")

    tree = arg()
    if pos != len(tokens):
        raise FilterError("unexpected text after the filter")
    if not isinstance(tree, tuple):
        raise FilterError("a filter is a function call, e.g. eq(name, \"x\")")
    return tree


def _time(value: Any) -> Any:
    if isinstance(value, str) and re.match(r"\d{4}-\d\d-\d\d", value):
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return value


def _compare(op: str, left: Any, right: Any) -> bool:
    left, right = _time(left), _time(right)
    if op == "eq":
        return left == right or (left is not None and str(left) == str(right))
    if op == "neq":
        return not _compare("eq", left, right)
    if left is None or right is None:
        return False
    try:
        return {"gt": left > right, "gte": left >= right, "lt": left < right, "lte": left <= right}[op]
    except TypeError:
        return False


def _uses(node: Any, group: str) -> bool:
    """Does this node (not looking into nested and/or/not) compare a field of `group`?"""
    return isinstance(node, tuple) and node[0] not in ("and", "or", "not") and any(
        isinstance(a, _Field) and _PAIRED.get(a) == group for a in node[1])


def matches(tree: Any, run: dict[str, Any], feedback: list[dict[str, Any]]) -> bool:
    """Does `run` (a fake's run record, with its `feedback`) satisfy the parsed filter?"""
    metadata = ((run.get("extra") or {}).get("metadata") or {})

    def field(name: str, binding: dict[str, Any]) -> Any:
        if name == "metadata_key":
            return binding["metadata"][0]
        if name == "metadata_value":
            return binding["metadata"][1]
        if name == "feedback_key":
            return binding["feedback"].get("key")
        if name == "feedback_score":
            return binding["feedback"].get("score")
        if name == "latency":
            start, end = _time(run.get("start_time")), _time(run.get("end_time"))
            return (end - start).total_seconds() if start and end else None
        if name == "is_root":
            return run.get("parent_run_id") is None
        if name == "metadata":
            return metadata
        return run.get(name)

    def items(group: str) -> list[Any]:
        return list(metadata.items()) if group == "metadata" else list(feedback)

    def ev(node: Any, binding: dict[str, Any]) -> bool:
        fn, args = node
        for group in ("metadata", "feedback"):
            if group not in binding and (_uses(node, group) or (fn == "and" and any(_uses(a, group)
                                                                                   for a in args))):
                return any(ev(node, {**binding, group: item}) for item in items(group))
        if fn == "and":
            return all(ev(a, binding) for a in args)
        if fn == "or":
            return any(ev(a, binding) for a in args)
        if fn == "not":
            return not ev(args[0], binding)
        values = [field(a, binding) if isinstance(a, _Field) else a for a in args]
        if fn == "exists":
            return values[0] is not None if len(values) == 1 else isinstance(values[0], dict) and values[1] in values[0]
        if fn == "has":
            container, wanted = values
            if isinstance(container, dict):
                wanted = json.loads(wanted) if isinstance(wanted, str) else wanted
                return all(container.get(k) == v for k, v in wanted.items())
            return wanted in (container or [])
        if fn == "in":
            return values[0] in values[1] or str(values[0]) in [str(v) for v in values[1]]
        if len(values) != 2:
            raise FilterError(f"{fn} takes two arguments")
        return _compare(fn, values[0], values[1])

    return ev(tree, {})
