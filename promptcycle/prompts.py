"""Prompt templates: a system message and a user template with `{{variable}}` placeholders.

Mustache-style placeholders keep literal JSON braces in prompts (format specs, examples) safe.
Dict and list values render as indented JSON, everything else with `str()`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["PromptTemplate", "Placeholder", "render_value", "PLACEHOLDER", "malformed_placeholders",
           "single_brace_names", "line_of"]

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# `{name}}`: one brace opens what two close — a placeholder missing a brace.
_HALF_OPEN = re.compile(r"(?<!\{)\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\}")
# `{name}` alone: single braces around a bare name (literal text, but often a placeholder written f-string style).
_SINGLE = re.compile(r"(?<!\{)\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}(?!\})")
_UNCLOSED = re.compile(r"(?<!\{)\{\s*([A-Za-z_][A-Za-z0-9_]*)(?![A-Za-z0-9_]|\s*\})")


def line_of(text: str, offset: int) -> int:
    """The 1-based line of `offset` in `text`."""
    return text.count("\n", 0, offset) + 1


def malformed_placeholders(text: str) -> list[tuple[int, str]]:
    """(offset, snippet) of every `{{` that does not open a well-formed `{{name}}`, and of every `{name}}`.

    Single braces stay literal (JSON examples are safe); `}}` alone is literal too (nested JSON ends so).
    """
    found = []
    for m in re.finditer(r"\{\{+", text):
        # In a run like "{{{name}}}" the placeholder starts at the run's last two braces.
        if not PLACEHOLDER.match(text, m.end() - 2):
            found.append((m.start(), text[m.start():m.start() + 30].split("\n")[0]))
    found += [(m.start(), m.group(0)) for m in _HALF_OPEN.finditer(text)]
    return sorted(found)


def single_brace_names(text: str) -> list[tuple[int, str]]:
    """(offset, name) of every `{name}` written with single braces."""
    return [(m.start(), m.group(1)) for m in _SINGLE.finditer(text)]


def unclosed_brace_names(text: str) -> list[tuple[int, str]]:
    """(offset, name) of every `{name` that no brace closes (e.g. `{question` for `{{question}}`)."""
    return [(m.start(), m.group(1)) for m in _UNCLOSED.finditer(text)]


@dataclass(frozen=True)
class Placeholder:
    name: str
    part: str  # "system" or "template"
    position: int  # character offset in that part


def render_value(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
    return str(value)


@dataclass(frozen=True)
class PromptTemplate:
    """An immutable prompt: `system` (may be empty) and the user-message `template`."""

    template: str
    system: str = ""

    @property
    def hash(self) -> str:
        """Content hash identifying this prompt version (first 16 hex chars of sha256)."""
        payload = json.dumps({"system": self.system, "template": self.template}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def placeholders(self) -> list[Placeholder]:
        found = []
        for part, text in (("system", self.system), ("template", self.template)):
            found += [Placeholder(m.group(1), part, m.start()) for m in PLACEHOLDER.finditer(text)]
        return found

    @property
    def variables(self) -> list[str]:
        """The distinct variable names, in order of first appearance."""
        return list(dict.fromkeys(p.name for p in self.placeholders()))

    def render(self, inputs: dict[str, Any]) -> list[dict[str, str]]:
        """The chat messages for one case. A missing variable raises KeyError naming it."""

        def substitute(text: str) -> str:
            def one(m: re.Match[str]) -> str:
                name = m.group(1)
                if name not in inputs:
                    raise KeyError(f"prompt variable {name!r} has no value; the case provides: "
                                   f"{', '.join(sorted(inputs)) or '(nothing)'}")
                return render_value(inputs[name])

            return PLACEHOLDER.sub(one, text)

        messages = []
        if self.system:
            messages.append({"role": "system", "content": substitute(self.system)})
        messages.append({"role": "user", "content": substitute(self.template)})
        return messages
