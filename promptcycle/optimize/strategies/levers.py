"""Prompt edits, one per lever: each takes a prompt and returns a new one with its `{{variables}}` intact.

The wording is plain instruction text that any chat model follows; the simulated models respond to
the same phrases in documented ways (docs/simulator.md, "The prompt levers"). Edits add to the
system message, except the format specification, which replaces the template's own format line
when it has one. An edit whose text is already in the prompt changes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from promptcycle.datasets.cases import Case
from promptcycle.prompts import PLACEHOLDER, PromptTemplate

__all__ = [
    "FORMAT_SPEC",
    "GROUNDING",
    "STEPS",
    "CHECKLIST_INTRO",
    "EXAMPLE_LEAVES",
    "add_instructions",
    "apply_format_spec",
    "checklist_block",
    "format_example",
    "names_field",
    "topic_label",
    "shorten_prompt",
    "word_count",
]

FORMAT_SPEC = ("Respond with only a JSON object, with no other text: its keys are the field names exactly as in "
               "the record and its values are copied from the record (numbers as plain numbers, dates as "
               "YYYY-MM-DD).")
GROUNDING = ("Use only the provided data; do not guess or invent values. If a value is not in the provided data, "
             "say \"unknown\".")
STEPS = ("Work through these steps:\n"
         "1. Read the question and decide which topic it is about.\n"
         "2. Find every fact in the record that a complete answer on that topic needs.\n"
         "3. Copy each value exactly as the record gives it.\n"
         "4. Write the answer in the requested format.")
CHECKLIST_INTRO = "For each topic, report these fields when the question is about it:"
EXAMPLE_LEAVES = 7  # record excerpt cap: a compact example, well short of a whole record

_FORMAT_LINE = re.compile(r"\bjson\b", re.IGNORECASE)
_WORDS = re.compile(r"[a-z0-9]+")


def word_count(prompt: PromptTemplate) -> int:
    return len(prompt.system.split()) + len(prompt.template.split())


def add_instructions(prompt: PromptTemplate, block: str) -> PromptTemplate:
    """The prompt with `block` appended to its system message (unchanged if the block is already there)."""
    if block in prompt.system or block in prompt.template:
        return prompt
    system = prompt.system.rstrip()
    return PromptTemplate(template=prompt.template, system=f"{system}\n\n{block}" if system else block)


def apply_format_spec(prompt: PromptTemplate, spec: str = FORMAT_SPEC) -> PromptTemplate:
    """Replace the template's last line that asks for JSON (and holds no variable) with `spec`;
    without such a line, add `spec` to the system message."""
    if spec in prompt.template or spec in prompt.system:
        return prompt
    lines = prompt.template.split("\n")
    for i in range(len(lines) - 1, -1, -1):
        if _FORMAT_LINE.search(lines[i]) and not PLACEHOLDER.search(lines[i]):
            lines[i] = spec
            return PromptTemplate(template="\n".join(lines), system=prompt.system)
    return add_instructions(prompt, spec)


def topic_label(spectrum: str) -> str:
    """"credit_analysis" -> "Credit analysis"."""
    return spectrum.replace("_", " ").strip().capitalize()


def _normalized(text: str) -> str:
    return " " + " ".join(_WORDS.findall(text.lower().replace("_", " "))) + " "


def names_field(prompt: PromptTemplate, name: str) -> bool:
    """Whether the prompt already names a field (its snake_case name or its label)."""
    label = " " + " ".join(_WORDS.findall(name.lower().replace("_", " "))) + " "
    return label in _normalized(prompt.system + "\n" + prompt.template)


def checklist_block(fields_by_spectrum: Mapping[str, Sequence[str]]) -> str:
    """A per-topic checklist: one line per spectrum naming the fields its answers need."""
    lines = [CHECKLIST_INTRO]
    lines += [f"- {topic_label(s)}: {', '.join(fields)}." for s, fields in fields_by_spectrum.items() if fields]
    return "\n".join(lines)


def _record_and_question(case: Case) -> tuple[dict[str, Any] | None, str]:
    record = next((v for v in case.inputs.values() if isinstance(v, dict)), None)
    question = case.inputs.get("question")
    if not isinstance(question, str):
        question = next((v for v in case.inputs.values() if isinstance(v, str)), "")
    return record, question


def _excerpt(record: dict[str, Any], facts: Mapping[str, Any]) -> dict[str, Any]:
    """The record's sections that hold a required fact (nested records), or the facts' own leaves."""
    excerpt: dict[str, Any] = {}
    budget = EXAMPLE_LEAVES
    for key, value in record.items():
        if isinstance(value, dict) and any(k in facts for k in value):
            leaves = {k: v for k, v in value.items() if not isinstance(v, (dict, list))}
            taken = dict(list(leaves.items())[:budget])
            if taken:
                excerpt[key] = taken
                budget -= len(taken)
        elif key in facts and budget > 0 and not isinstance(value, (dict, list)):
            excerpt[key] = value
            budget -= 1
        if budget <= 0:
            break
    return excerpt


def format_example(case: Case, number: int | None = None) -> str:
    """A worked example from one case: a compact record excerpt, the question, the ideal JSON answer."""
    record, question = _record_and_question(case)
    lines = [f"Example {number}:" if number else "Example:"]
    excerpt = _excerpt(record, case.facts) if record else {}
    if excerpt:
        lines.append(f"Record excerpt: {json.dumps(excerpt, ensure_ascii=False)}")
    lines.append(f"Question: {question}")
    lines.append(f"Answer: {json.dumps(case.facts, ensure_ascii=False)}")
    return "\n".join(lines)


# --- shortening ---------------------------------------------------------------------------------

# A sentence that carries one of these sets a constraint (format, scope, content, grounding, steps).
_CONSTRAINT = re.compile(
    r"\b(?:json|only|must|never|not|no|always|each|every|report|include|field|fields|key|keys|format|unknown|"
    r"steps?|example|use|return|respond|reply|list|if|exactly|copy|cover|state|without|avoid|limit|cite)\b|"
    r"\{\{|\d|:\s*$", re.IGNORECASE)
# A line that is structure, not prose: bullets, numbered steps, labels, headings, JSON.
_STRUCTURED = re.compile(r"^\s*(?:[-*•#]|\d+[.)]|[A-Za-z][A-Za-z ]{0,30}:|[{\[])")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORDY = ((re.compile(r"\bplease\s+", re.I), ""), (re.compile(r"\bkindly\s+", re.I), ""),
          (re.compile(r"\bin order to\b", re.I), "to"), (re.compile(r"\bmake sure (?:that )?", re.I), "ensure "),
          (re.compile(r"\bit is (?:very )?important (?:that you |to )", re.I), ""),
          (re.compile(r"\bat all times\b\s*", re.I), ""))


def _tighten(text: str, keep_first: bool) -> tuple[str, list[str]]:
    """Drop repeated sentences and prose sentences that set no constraint; trim wordy phrases."""
    seen: set[str] = set()
    dropped: list[str] = []
    out_lines = []
    first = keep_first
    for line in text.split("\n"):
        if not line.strip() or PLACEHOLDER.search(line) or _STRUCTURED.match(line):
            out_lines.append(line)
            first = False if line.strip() else first
            continue
        kept = []
        for sentence in _SENTENCE.split(line.strip()):
            key = " ".join(_WORDS.findall(sentence.lower()))
            if key in seen:
                dropped.append(sentence)
                continue
            seen.add(key)
            if first or _CONSTRAINT.search(sentence):
                for pattern, repl in _WORDY:
                    sentence = pattern.sub(repl, sentence)
                kept.append(sentence[:1].upper() + sentence[1:])
            else:
                dropped.append(sentence)
            first = False
        if kept:
            out_lines.append(" ".join(kept))
    joined = "\n".join(out_lines)
    return re.sub(r"\n{3,}", "\n\n", joined).strip("\n"), dropped


def shorten_prompt(prompt: PromptTemplate) -> tuple[PromptTemplate, list[str]]:
    """A shorter prompt with the same variables and constraints, and the sentences it dropped.

    Kept: the first (role) sentence of the system message, every line holding a variable, every
    structured line (bullets, numbered steps, "Label:" lines, JSON) and every sentence that sets
    a constraint. Dropped: repeated sentences and prose that sets none. Wordy phrases are trimmed.
    """
    system, dropped_system = _tighten(prompt.system, keep_first=True)
    template, dropped_template = _tighten(prompt.template, keep_first=False)
    return PromptTemplate(template=template, system=system), dropped_system + dropped_template
