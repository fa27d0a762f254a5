"""The optimizer persona: any simulated model can rewrite a prompt from evidence of where it fails.

Triggered when the system message starts with "You are a prompt optimizer.". The user message
follows the optimizer protocol of `promptcycle.optimize.strategies.meta`: the current prompt
("Current system message:" then `<system>…</system>`, "Current user message template:" then
`<prompt>…</prompt>`), a "Scores per spectrum …" section with lines
"- <spectrum>: <quality>; missed: <field> <rate>%, …; wrong: …; format failures: <rate>%" and a
"Failing training cases:" section of "Case <n> (spectrum: <spectrum>, …)" blocks with "Missed:",
"Wrong:" and "Format:" lines.

The persona applies the levers the evidence points at, deterministically and the same for every
model: missed fields -> a per-topic checklist of them (grouped by the spectrum they were missed
in; fields the prompt already names are left out); format failures -> an explicit JSON format
specification (replacing the template's own JSON line when it has one); wrong values -> grounding.
It keeps the template's `{{variables}}` as they are, and replies with one `<rewrite>` block, or
with a sentence saying it has nothing to change. Everything it writes is simulated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from promptcycle.sim.reading import humanize

__all__ = ["OPTIMIZER_OPENING", "is_optimizer_request", "rewrite_prompt", "NO_REWRITE_TEXT"]

OPTIMIZER_OPENING = "You are a prompt optimizer."
CHECKLIST_INTRO = "Make sure the answer covers these fields for its topic:"
FORMAT_SPEC = "Return only a JSON object whose keys are the field names from the record, with no other text."
GROUNDING = "Use only the data in the record; never guess a value. If a value is not in the record, write \"unknown\"."
NO_REWRITE_TEXT = ("Simulated optimizer: the failures point at nothing the prompt does not already ask for, so there "
                   "is no rewrite to suggest.")
NO_PROMPT_TEXT = ("Simulated optimizer: send the current prompt (\"Current system message:\" <system>…</system>, "
                  "\"Current user message template:\" <prompt>…</prompt>) and the evidence of its failures.")

_SYSTEM = re.compile(r"Current system message:\s*<system>\n?(.*?)\n?</system>", re.DOTALL)
_TEMPLATE = re.compile(r"Current user message template:\s*<prompt>\n?(.*?)\n?</prompt>", re.DOTALL)
_SCORES = re.compile(r"^Scores per spectrum[^\n]*\n((?:-[^\n]*(?:\n|$))*)", re.MULTILINE)
_SCORE_LINE = re.compile(r"^-\s*([^:\s]+):\s*[\d.]+(.*)$")
_CASES = re.compile(r"^Failing training cases:\s*\n(.*?)(?=\n\s*\nReply with|\Z)", re.MULTILINE | re.DOTALL)
_CASE_HEAD = re.compile(r"^Case \d+ \(spectrum: ([^,\s)]+)")
_RATED_FIELD = re.compile(r"([A-Za-z][A-Za-z0-9_]*) \d+(?:\.\d+)?%")
_PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\}")
_JSON_WORD = re.compile(r"\bjson\b", re.IGNORECASE)
_WORDS = re.compile(r"[a-z0-9]+")


def _content(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def is_optimizer_request(messages: list[dict[str, Any]]) -> bool:
    """True when the system message opens with the optimizer persona's trigger."""
    system = "\n".join(_content(m.get("content")) for m in messages if m.get("role") in ("system", "developer"))
    return system.lstrip().startswith(OPTIMIZER_OPENING)


def _evidence(text: str) -> tuple[dict[str, list[str]], int, int]:
    """(spectrum -> missed fields in order of mention, spectrums with wrong values, with format failures)."""
    missed: dict[str, list[str]] = {}
    wrong: set[str] = set()
    fmt: set[str] = set()

    def note(spectrum: str, fields: list[str]) -> None:
        bucket = missed.setdefault(spectrum, [])
        bucket += [f for f in fields if f not in bucket]

    scores = _SCORES.search(text)
    for line in (scores.group(1).splitlines() if scores else []):
        m = _SCORE_LINE.match(line.strip())
        if not m:
            continue
        spectrum = m.group(1)
        for part in m.group(2).split(";"):
            label, _, rest = part.strip().partition(":")
            label = label.strip().lower()
            if label == "missed":
                note(spectrum, _RATED_FIELD.findall(rest))
            elif label == "wrong" and _RATED_FIELD.search(rest):
                wrong.add(spectrum)
            elif label.startswith("format") and re.search(r"[1-9]", rest):
                fmt.add(spectrum)
    cases = _CASES.search(text)
    for block in re.split(r"\n\s*\n", cases.group(1)) if cases else []:
        lines = block.strip().splitlines()
        head = _CASE_HEAD.match(lines[0]) if lines else None
        if head is None:
            continue
        spectrum = head.group(1)
        for line in lines[1:]:
            label, _, rest = line.partition(":")
            if label == "Missed":
                note(spectrum, [f.strip() for f in rest.split(",") if f.strip()])
            elif label == "Wrong" and rest.strip():
                wrong.add(spectrum)
            elif label == "Format" and rest.strip():
                fmt.add(spectrum)
    return missed, len(wrong), len(fmt)


def _names(prompt_text: str, field: str) -> bool:
    norm = " " + " ".join(_WORDS.findall(prompt_text.lower().replace("_", " "))) + " "
    return f" {' '.join(_WORDS.findall(humanize(field).lower()))} " in norm


def _checklist(missed: Mapping[str, list[str]], prompt_text: str) -> tuple[str | None, list[str]]:
    lines, fields = [CHECKLIST_INTRO], []
    for spectrum, names in missed.items():
        new = [f for f in names if not _names(prompt_text, f)]
        if new:
            lines.append(f"- {spectrum.replace('_', ' ').capitalize()}: {', '.join(new)}.")
            fields += new
    return ("\n".join(lines), fields) if fields else (None, [])


def _with_format_spec(template: str, system_blocks: list[str]) -> str:
    lines = template.split("\n")
    for i in range(len(lines) - 1, -1, -1):
        if _JSON_WORD.search(lines[i]) and not _PLACEHOLDER.search(lines[i]):
            lines[i] = FORMAT_SPEC
            return "\n".join(lines)
    system_blocks.append(FORMAT_SPEC)
    return template


def rewrite_prompt(user_text: str) -> str:
    """The persona's reply to one optimizer request (see the module docstring)."""
    system_match, template_match = _SYSTEM.search(user_text), _TEMPLATE.search(user_text)
    if template_match is None:
        return NO_PROMPT_TEXT
    system = system_match.group(1).strip() if system_match else ""
    template = template_match.group(1).strip("\n")
    missed, n_wrong, n_format = _evidence(user_text)
    current = f"{system}\n{template}"

    blocks: list[str] = []
    done: list[str] = []
    if n_wrong and GROUNDING not in current:
        blocks.append(GROUNDING)
        done.append(f"grounding (wrong values in {n_wrong} spectrum{'s' if n_wrong != 1 else ''})")
    checklist, fields = _checklist(missed, current)
    if checklist:
        blocks.append(checklist)
        shown = ", ".join(fields[:4]) + (f" and {len(fields) - 4} more" if len(fields) > 4 else "")
        done.append(f"a per-topic checklist of the missed fields ({shown})")
    new_template = template
    if n_format and FORMAT_SPEC not in current:
        new_template = _with_format_spec(template, blocks)
        done.append(f"an explicit JSON format (format failures in {n_format} spectrum{'s' if n_format != 1 else ''})")
    if not done:
        return NO_REWRITE_TEXT
    new_system = "\n\n".join([system, *blocks] if system else blocks)
    rationale = "Simulated optimizer: added " + (", ".join(done[:-1]) + " and " + done[-1] if len(done) > 1
                                                 else done[0]) + "."
    return (f"<rewrite>\n<system>\n{new_system}\n</system>\n<prompt>\n{new_template}\n</prompt>\n"
            f"<rationale>{rationale}</rationale>\n</rewrite>")
