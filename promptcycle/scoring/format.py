"""Format: does the answer have the shape asked for — a JSON object, a regex match, or a JSON Schema?"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from promptcycle.scoring.base import Sample, Score, Scorer, ScorerOptions, scorers
from promptcycle.scoring.facts import ParsedAnswer, normalise_key, parse_answer

__all__ = ["FormatScorer", "FormatOptions"]


class FormatOptions(ScorerOptions):
    kind: Literal["json", "regex", "json_schema"] = Field(
        default="json", description="'json': the answer is a JSON object (alone, or alone in a ```json fence); "
        "'regex': `pattern` matches somewhere in the answer (anchor it with ^…$ to match the whole); "
        "'json_schema': the answer is JSON that validates against `schema`.")
    pattern: str | None = Field(default=None, description="The regular expression, for kind 'regex'.")
    schema_: dict[str, Any] | None = Field(default=None, alias="schema",
                                           description="A JSON Schema, for kind 'json_schema'.")
    require_keys: list[str] = Field(default_factory=list, description="Keys the JSON must hold (anywhere in it, "
                                    "compared like fact fields); the score is the share present.")

    model_config = {"populate_by_name": True}

    @model_validator(mode="after")
    def _fits_kind(self) -> "FormatOptions":
        if self.kind == "regex":
            if not self.pattern:
                raise ValueError("kind 'regex' needs a pattern")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
            if self.require_keys:
                raise ValueError("require_keys applies to kinds 'json' and 'json_schema', not 'regex'")
        elif self.pattern is not None:
            raise ValueError(f"pattern applies to kind 'regex', not {self.kind!r}")
        if self.kind == "json_schema":
            if self.schema_ is None:
                raise ValueError("kind 'json_schema' needs a schema")
            _validator_for(self.schema_)  # a broken schema fails here, at configuration time
        elif self.schema_ is not None:
            raise ValueError(f"schema applies to kind 'json_schema', not {self.kind!r}")
        return self


def _validator_for(schema: dict[str, Any]) -> Any:
    import jsonschema  # imported on use: ~70 ms, and only json_schema needs it

    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"schema is not a valid JSON Schema: {exc.message}") from None
    return cls(schema)


def _keys(value: Any, into: set[str]) -> set[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            into.add(normalise_key(str(k)))
            _keys(v, into)
    elif isinstance(value, list):
        for item in value:
            _keys(item, into)
    return into


@scorers.register("format")
class FormatScorer(Scorer):
    """1.0 when the answer has the configured shape, 0 when it does not (the explanation says why).

    With `require_keys`, a well-formed JSON answer scores the share of those keys it holds.
    """

    name = "format"
    Options = FormatOptions
    options: FormatOptions

    def __init__(self, options: FormatOptions | None = None, **context: Any):
        super().__init__(options, **context)
        self._pattern = re.compile(self.options.pattern) if self.options.pattern else None
        self._validator = _validator_for(self.options.schema_) if self.options.schema_ is not None else None
        self._required = [(k, normalise_key(k)) for k in self.options.require_keys]

    def score(self, sample: Sample) -> Score:
        if self._pattern is not None:
            if self._pattern.search(sample.output):
                return Score(1.0, {"kind": "regex"})
            return Score(0.0, {"kind": "regex", "reason": f"the answer does not match {self._pattern.pattern!r}"})
        answer = parse_answer(sample.output)
        problem = _json_problem(answer, need_object=self._validator is None)
        if problem:
            return Score(0.0, {"kind": self.options.kind, "reason": problem})
        explanation: dict[str, Any] = {"kind": self.options.kind, "form": answer.json_form}
        if self._validator is not None:
            errors = sorted(self._validator.iter_errors(answer.json_value), key=lambda e: list(e.path))
            if errors:
                explanation["errors"] = [f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}"
                                         for e in errors[:5]]
                return Score(0.0, explanation)
        if not self._required:
            return Score(1.0, explanation)
        present = _keys(answer.json_value, set())
        missing = [k for k, norm in self._required if norm not in present]
        if missing:
            explanation["missing_keys"] = missing
        return Score((len(self._required) - len(missing)) / len(self._required), explanation)


def _json_problem(answer: ParsedAnswer, *, need_object: bool) -> str | None:
    """Why the answer is not acceptable JSON, or None."""
    if answer.json_form == "embedded":
        around = " ".join(answer.outside_text.split())
        around = around if len(around) <= 60 else around[:57] + "..."
        return f"the JSON has other text around it: {around!r}"
    if answer.json_form is None:
        return answer.json_error or "the answer is not JSON"
    if need_object and not isinstance(answer.json_value, dict):
        return f"the answer is a JSON {type(answer.json_value).__name__.replace('list', 'array')}, not an object"
    return None
