"""Finding the JSON objects embedded in free text (prompts and answers), for the simulated models."""

from __future__ import annotations

import json
from collections.abc import Iterator

__all__ = ["iter_json_objects"]

_DECODER = json.JSONDecoder()


def iter_json_objects(text: str) -> Iterator[tuple[int, int, dict]]:
    """(start, end, object) of each top-level JSON object in `text`, in order; nested objects are
    part of their parent, and a `{` that starts no valid object is skipped."""
    i = text.find("{")
    while i != -1:
        try:
            obj, end = _DECODER.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        yield i, end, obj
        i = text.find("{", end)
