"""The validation stages' common report, and the two stages that need no model: syntax and content.

Four stages stand between a prompt version and production, in order (the other two live in
smoke.py and gate.py):

1. **syntax** — the template renders with exactly the variables the application supplies: every
   placeholder is well formed and supplied, every supplied variable is used; problems are reported
   with their position (system or template, line, column);
2. **content** — length limits, no credential-like strings, required sections present, banned
   patterns absent (`deployment.content` in pipelines.yaml);
3. **integration** — a smoke evaluation on every configured model completes without provider or
   format errors;
4. **quality** — the optimization evidence holds.

Each stage returns a `StageReport`: passed, failed or skipped, a one-line reason, and one `Check`
per rule with its detail — stored with the deployment and shown as a Prefect artifact.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from promptcycle.prompts import PLACEHOLDER, PromptTemplate, render_value

__all__ = [
    "Check",
    "StageReport",
    "SECRET_PATTERNS",
    "locate",
    "validate_syntax",
    "validate_content",
]


@dataclass
class Check:
    """One rule of a stage: whether it held, the detail, and where in the prompt (if anywhere)."""

    name: str
    passed: bool
    detail: str
    location: str | None = None


@dataclass
class StageReport:
    """The readable outcome of one validation stage."""

    stage: str
    status: str  # "passed" | "failed" | "skipped"
    reason: str
    checks: list[Check] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    duration_ms: float = 0.0

    @property
    def passed(self) -> bool:
        """True unless the stage failed (a skipped stage does not block)."""
        return self.status != "failed"

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @classmethod
    def skipped(cls, stage: str, reason: str) -> StageReport:
        return cls(stage=stage, status="skipped", reason=reason)

    @classmethod
    def from_checks(cls, stage: str, checks: list[Check], *, started: float, details: dict[str, Any] | None = None,
                    ok: str = "") -> StageReport:
        failures = [c for c in checks if not c.passed]
        if failures:
            first = failures[0]
            where = f" at {first.location}" if first.location else ""
            more = f" (and {len(failures) - 1} more problem(s))" if len(failures) > 1 else ""
            reason = f"{first.detail}{where}{more}"
        else:
            reason = ok or f"all {len(checks)} checks passed"
        return cls(stage=stage, status="failed" if failures else "passed", reason=reason, checks=checks,
                   details=details or {}, duration_ms=round((time.perf_counter() - started) * 1000.0, 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageReport:
        data = dict(data)
        data["checks"] = [Check(**c) for c in data.get("checks", [])]
        return cls(**data)

    def to_markdown(self) -> str:
        mark = {"passed": "✅ passed", "failed": "❌ failed", "skipped": "⏭️ skipped"}[self.status]
        lines = [f"### {self.stage} — {mark}", "", self.reason, ""]
        if self.checks:
            lines += ["| check | result | detail | where |", "|---|---|---|---|"]
            for c in self.checks:
                detail = c.detail.replace("|", "\\|").replace("\n", " ")
                lines.append(f"| {c.name} | {'ok' if c.passed else '**FAIL**'} | {detail} | {c.location or ''} |")
        return "\n".join(lines)


def locate(prompt: PromptTemplate, part: str, offset: int) -> str:
    """'template line 3, column 7' for a character offset in the system message or the template."""
    text = prompt.system if part == "system" else prompt.template
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"{part} line {line}, column {column}"


def _parts(prompt: PromptTemplate) -> list[tuple[str, str]]:
    return [("system", prompt.system), ("template", prompt.template)]


# -- 1. syntax --------------------------------------------------------------------------------------------------

def validate_syntax(prompt: PromptTemplate, variables: Sequence[str], *,
                    reference: PromptTemplate | None = None,
                    sample_inputs: Mapping[str, Any] | None = None) -> StageReport:
    """The template renders with exactly `variables` (what the application supplies).

    `reference` (the prompt in production) lets a missing variable be reported where it used to be;
    `sample_inputs` (e.g. one case's inputs) are used for the trial render, placeholders otherwise.
    """
    started = time.perf_counter()
    supplied = list(dict.fromkeys(variables))
    checks: list[Check] = []

    malformed = []
    for part, text in _parts(prompt):
        for m in re.finditer(r"\{\{+", text):
            # In a run like "{{{name}}}" the placeholder starts at the run's last two braces.
            if not PLACEHOLDER.match(text, m.end() - 2):
                close = text.find("}}", m.start())
                line_end = text.find("\n", m.start())
                closed = close != -1 and (line_end == -1 or close < line_end) and close - m.start() < 40
                snippet = text[m.start():close + 2] if closed else text[m.start():m.start() + 24].split("\n")[0]
                malformed.append(Check("well-formed placeholder", False,
                                       f"{'malformed' if closed else 'unclosed'} placeholder {snippet!r} (expected "
                                       "{{name}}: a letter or _ first, then letters, digits or _)",
                                       locate(prompt, part, m.start())))
    checks += malformed or [Check("well-formed placeholders", True, "every {{ opens a valid {{name}} placeholder")]

    unknown = [Check("unknown placeholder", False,
                     f"placeholder {{{{{p.name}}}}} is not a variable the application supplies "
                     f"({', '.join(supplied) or 'none'})", locate(prompt, p.part, p.position))
               for p in prompt.placeholders() if p.name not in supplied]
    checks += unknown or [Check("known placeholders", True, f"every placeholder is one of: {', '.join(supplied)}")]

    used = set(prompt.variables)
    missing = []
    for name in supplied:
        if name in used:
            continue
        where = None
        if reference is not None:
            earlier = [p for p in reference.placeholders() if p.name == name]
            if earlier:
                where = f"production has it at {locate(reference, earlier[0].part, earlier[0].position)}"
        missing.append(Check("missing placeholder", False,
                             f"variable {name!r} is supplied by the application but the prompt has no "
                             f"{{{{{name}}}}}" + (f" ({where})" if where else ""), "system and template"))
    checks += missing or [Check("every variable used", True, f"all of {', '.join(supplied)} appear in the prompt")]

    inputs = {name: (sample_inputs or {}).get(name, f"<{name}>") for name in supplied}
    if not malformed and not unknown:
        try:
            messages = prompt.render(inputs)
            rendered = "\n".join(m["content"] for m in messages)
            # A leftover "{{" means a placeholder survived rendering; inputs may contain braces of their own.
            own = sum(render_value(v).count("{{") for v in inputs.values())
            if rendered.count("{{") > own:
                checks.append(Check("renders", False, "the rendered prompt still contains '{{'"))
            else:
                checks.append(Check("renders", True, f"renders to {len(messages)} message(s), {len(rendered)} chars"))
        except KeyError as exc:
            checks.append(Check("renders", False, f"rendering failed: {exc.args[0]}"))
    else:
        checks.append(Check("renders", False, "not rendered: fix the placeholders first"))
    return StageReport.from_checks("syntax", checks, started=started,
                                   details={"variables": supplied, "placeholders": prompt.variables},
                                   ok=f"renders with exactly the {len(supplied)} variable(s) the application "
                                      f"supplies ({', '.join(supplied)})")


# -- 2. content -------------------------------------------------------------------------------------------------

# (what it looks like, pattern). Matches are reported by kind and position only: never echoed.
SECRET_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((kind, re.compile(pattern)) for kind, pattern in (
    ("an OpenAI-style API key", r"\bsk-(?:proj-)?[A-Za-z0-9_-]{16,}"),
    ("an AWS access key id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("a GitHub token", r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    ("a Slack token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    ("a Google API key", r"\bAIza[0-9A-Za-z_-]{35}\b"),
    ("a LangSmith API key", r"\blsv2_[a-z]{2}_[A-Za-z0-9_]{20,}"),
    ("a private key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    ("a JSON web token", r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
    ("a bearer token", r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{20,}=*"),
    ("a credential assignment", r"(?i)\b(?:api[_-]?key|secret|password|passwd|access[_-]?token)\s*[:=]\s*"
                                r"['\"]?[A-Za-z0-9_\-/+.]{8,}"),
))


def validate_content(prompt: PromptTemplate, rules: Any) -> StageReport:
    """Length limits, no credential-like strings, required sections, banned patterns (`ContentRules`)."""
    started = time.perf_counter()
    checks: list[Check] = []
    length = len(prompt.system) + len(prompt.template)
    if length > rules.max_chars:
        checks.append(Check("length", False, f"the prompt is {length} chars, over the limit of {rules.max_chars}"))
    elif length < rules.min_chars:
        checks.append(Check("length", False, f"the prompt is {length} chars, under the minimum of {rules.min_chars}"))
    else:
        checks.append(Check("length", True, f"{length} chars (limits {rules.min_chars}-{rules.max_chars})"))

    if rules.forbid_secrets:
        found = [Check("no secrets", False, f"looks like {kind} (not shown)", locate(prompt, part, m.start()))
                 for part, text in _parts(prompt) for kind, pattern in SECRET_PATTERNS
                 for m in pattern.finditer(text)]
        checks += found or [Check("no secrets", True, "no credential-like strings")]

    joined = prompt.system + "\n" + prompt.template
    for pattern in rules.required_sections:
        if re.search(pattern, joined, re.IGNORECASE):
            checks.append(Check("required section", True, f"{pattern!r} is present"))
        else:
            checks.append(Check("required section", False, f"required section {pattern!r} is absent"))

    banned = []
    for pattern in rules.banned_patterns:
        for part, text in _parts(prompt):
            for m in re.finditer(pattern, text, re.IGNORECASE):
                shown = m.group(0)[:40]
                banned.append(Check("banned pattern", False, f"banned pattern {pattern!r} matches {shown!r}",
                                    locate(prompt, part, m.start())))
    if rules.banned_patterns:
        checks += banned or [Check("banned patterns", True, f"none of {len(rules.banned_patterns)} pattern(s) match")]
    return StageReport.from_checks("content", checks, started=started, details={"chars": length})
