"""The `meta` strategy: an optimizer model rewrites the prompt from evidence of where it fails.

The optimizer (any chat model: `context.optimizer_model`, called through `context.complete`) gets
two messages:

- system: `META_SYSTEM`, which starts with "You are a prompt optimizer.";
- user: the current prompt (system message between `<system>` and `</system>` after the line
  "Current system message:", template between `<prompt>` and `</prompt>` after "Current user
  message template:"), its variables, its quality per spectrum on the **train** split ("Scores per
  spectrum on training cases" — one line per spectrum: "- <spectrum>: <quality>; missed: <field>
  <rate>%, …; wrong: <field> <rate>%, …; format failures: <rate>%"), a few concrete failing train
  cases ("Case <n> (spectrum: <spectrum>, quality <q>)" then "Question:", "Missed:", "Wrong:",
  "Format:" lines) and the reply format.

The reply holds one or more rewrites, each

    <rewrite>
    <system>the new system message</system>
    <prompt>the new user message template</prompt>
    <rationale>one sentence</rationale>
    </rewrite>

`<system>` and `<rationale>` may be left out (the current system message is kept); a reply without
`<rewrite>` blocks is read as one rewrite if it has a `<prompt>`. A reply with no `<prompt>` gives
no candidate. The rewrites are returned as written: like every candidate, they are checked by
`promptcycle.optimize.leakage` (variables kept, nothing held out copied in) before they are used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from promptcycle.optimize.candidates import CandidatePrompt
from promptcycle.optimize.diagnosis import TRAIN, CaseFailure, Diagnosis
from promptcycle.optimize.strategies.base import Strategy, StrategyContext, strategies
from promptcycle.prompts import PromptTemplate

__all__ = ["META_SYSTEM", "MetaStrategy", "Rewrite", "build_meta_messages", "parse_rewrites",
           "MAX_FAILURES", "MAX_REWRITES"]

META_SYSTEM = ("You are a prompt optimizer. You rewrite the prompt of a language-model task so that its answers "
               "score higher, using evidence of where the current prompt fails. Keep every {{variable}} "
               "placeholder exactly as written, add no new placeholder, and keep the prompt concise.")
MAX_FAILURES = 8  # failing train cases shown to the optimizer
MAX_REWRITES = 2
FIELDS_PER_LINE = 5

_REWRITE = re.compile(r"<rewrite>(.*?)</rewrite>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^```[a-z]*\n(.*?)\n?```$", re.DOTALL)


@dataclass(frozen=True)
class Rewrite:
    template: str
    system: str | None  # None: keep the current system message
    rationale: str


def _tag(block: str, tag: str) -> str | None:
    m = re.search(rf"<{tag}>(.*?)</{tag}>", block, re.DOTALL | re.IGNORECASE)
    if m is None:
        return None
    text = m.group(1).strip()
    fenced = _FENCE.match(text)
    return fenced.group(1).strip() if fenced else text


def parse_rewrites(text: str) -> list[Rewrite]:
    """The rewrites of an optimizer's reply, in order, without duplicates (see the module docstring)."""
    blocks = _REWRITE.findall(text) or [text]
    found: list[Rewrite] = []
    for block in blocks:
        template = _tag(block, "prompt")
        if not template:
            continue
        rewrite = Rewrite(template=template, system=_tag(block, "system"),
                          rationale=" ".join((_tag(block, "rationale") or "").split()))
        if all((r.template, r.system) != (rewrite.template, rewrite.system) for r in found):
            found.append(rewrite)
    return found


def _rate(rate: float | None) -> str:
    return f"{100 * (rate or 0.0):.0f}%"


def _score_line(diagnosis: Diagnosis, spectrum: str, model: str | None) -> str | None:
    quality = diagnosis.quality(spectrum, split=TRAIN, model=model)
    if quality is None:
        return None
    parts = [f"- {spectrum}: {quality:.1f}"]
    missed = list(diagnosis.missed_fields(spectrum, split=TRAIN, model=model).items())[:FIELDS_PER_LINE]
    if missed:
        parts.append("missed: " + ", ".join(f"{f} {_rate(r)}" for f, r in missed))
    wrong = list(diagnosis.wrong_fields(spectrum, split=TRAIN, model=model).values())[:FIELDS_PER_LINE]
    if wrong:
        parts.append("wrong: " + ", ".join(f"{w.field} {_rate(w.rate)}" for w in wrong))
    fmt = diagnosis.format_failure_rate(spectrum, split=TRAIN, model=model)
    if fmt:
        parts.append(f"format failures: {_rate(fmt)}")
    return "; ".join(parts)


def _case_block(number: int, failure: CaseFailure) -> str:
    lines = [f"Case {number} (spectrum: {failure.spectrum}, quality {failure.quality:.1f})"]
    if failure.question:
        lines.append(f"Question: {' '.join(failure.question.split())}")
    if failure.error:
        lines.append(f"Error: {failure.error}")
    if failure.missed:
        lines.append(f"Missed: {', '.join(failure.missed)}")
    if failure.wrong:
        lines.append("Wrong: " + "; ".join(f"{f} stated {v.get('stated')!r}, expected {v.get('expected')!r}"
                                           for f, v in failure.wrong.items()))
    if failure.format_problem:
        lines.append(f"Format: {failure.format_problem}")
    return "\n".join(lines)


def build_meta_messages(current: PromptTemplate, diagnosis: Diagnosis, *, spectrums: list[str],
                        model: str | None = None, max_failures: int = MAX_FAILURES,
                        max_rewrites: int = MAX_REWRITES) -> list[dict[str, str]]:
    """The optimizer's two messages: evidence from the train split only."""
    variables = ", ".join("{{" + v + "}}" for v in current.variables) or "(none)"
    scores = [line for s in spectrums if (line := _score_line(diagnosis, s, model))]
    failures = diagnosis.failing_cases(model=model, limit=max_failures)
    who = f" when sent to {model}" if model else ""
    sections = [
        f"Improve the prompt below{who}. It is sent once per test case with its variables filled in; answers "
        "are scored for completeness (the required facts stated), accuracy (values correct), format and latency.",
        f"Current system message:\n<system>\n{current.system}\n</system>",
        f"Current user message template:\n<prompt>\n{current.template}\n</prompt>",
        f"Variables: {variables} (keep each exactly as written, add none)",
        "Scores per spectrum on training cases (quality 0-100):\n" + ("\n".join(scores) or "(no training results)"),
    ]
    if failures:
        sections.append("Failing training cases:\n" + "\n\n".join(_case_block(i + 1, f)
                                                                   for i, f in enumerate(failures)))
    sections.append(f"Reply with up to {max_rewrites} rewrites, each in this form:\n<rewrite>\n<system>the new "
                    "system message</system>\n<prompt>the new user message template</prompt>\n<rationale>one "
                    "sentence: what you changed and why</rationale>\n</rewrite>")
    return [{"role": "system", "content": META_SYSTEM}, {"role": "user", "content": "\n\n".join(sections)}]


@strategies.register("meta")
class MetaStrategy(Strategy):
    name = "meta"
    summary = "An optimizer model rewrites the prompt from train-split failures (reply format: <rewrite> blocks)."

    async def propose(self, current, diagnosis, train_cases, *, context: StrategyContext) -> list[CandidatePrompt]:
        if context.complete is None or not context.optimizer_model:
            raise ValueError("the meta strategy needs context.complete and context.optimizer_model "
                             "(the model that writes the rewrites)")
        messages = build_meta_messages(current, diagnosis, spectrums=list(context.spectrums), model=context.model)
        completion = await context.complete(context.optimizer_model, messages)
        out = []
        for rewrite in parse_rewrites(completion.text)[:MAX_REWRITES]:
            prompt = PromptTemplate(template=rewrite.template,
                                    system=current.system if rewrite.system is None else rewrite.system)
            if prompt == current:
                continue
            why = rewrite.rationale or "no rationale given"
            simulated = " (simulated)" if getattr(completion, "simulated", False) else ""
            out.append(self.candidate(prompt, current, f"Rewrite by {context.optimizer_model}{simulated}: {why}",
                                      context))
        return out
