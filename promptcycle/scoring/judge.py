"""LLM-as-judge: another model grades the answer against the reference, from 0 to 10.

The judge is sent the judge protocol (system message "You are an impartial evaluation judge. …";
"Question:", "Reference answer:" and "Candidate answer:" sections; a request for
`{"score": <0-10>, "reason": "<one sentence>"}`) through a completion function supplied by the
caller: `JudgeScorer(options, complete=fn)` where `await fn(model_name, messages)` returns a
`promptcycle.providers.base.Completion`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import Field

from promptcycle.errors import MalformedResponseError
from promptcycle.scoring.base import Sample, Score, Scorer, ScorerOptions, scorers

if TYPE_CHECKING:  # the providers package pulls in the HTTP client and the simulator app
    from promptcycle.providers.base import Completion

__all__ = ["JudgeScorer", "JudgeOptions", "CompleteFn", "build_judge_messages", "read_judge_reply"]

CompleteFn = Callable[[str, list[dict[str, str]]], Awaitable["Completion"]]

JUDGE_SYSTEM = ("You are an impartial evaluation judge. Compare the candidate answer with the reference answer "
                "and rate how correctly and completely it answers the question.")
JUDGE_INSTRUCTION = 'Reply with JSON: {"score": <0-10>, "reason": "<one sentence>"}'

_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\r?\n(.*?)```", re.S | re.I)
_DECODER = json.JSONDecoder()


class JudgeOptions(ScorerOptions):
    model: str = Field(description="The pipeline model (a name from `models`) that acts as judge.")


def build_judge_messages(question: str, reference: str, candidate: str) -> list[dict[str, str]]:
    """The judge protocol's two messages."""
    user = (f"Question:\n{question}\n\nReference answer:\n{reference}\n\nCandidate answer:\n{candidate}\n\n"
            f"{JUDGE_INSTRUCTION}")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def read_judge_reply(text: str) -> tuple[float, str]:
    """(score 0-10, reason) from the judge's reply; MalformedResponseError when there is no usable score."""
    candidates = [text.strip()]
    candidates += [m.group(1) for m in _FENCE.finditer(text)]
    start = text.find("{")
    if start >= 0:
        candidates.append(text[start:])
    for chunk in candidates:
        try:
            reply, _ = _DECODER.raw_decode(chunk.strip())
        except ValueError:
            continue
        if isinstance(reply, dict) and "score" in reply:
            score = reply["score"]
            if isinstance(score, str):
                try:
                    score = float(score.strip())
                except ValueError:
                    break
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 10:
                break
            return float(score), str(reply.get("reason", ""))
    shown = text if len(text) <= 120 else text[:117] + "..."
    raise MalformedResponseError(f"the judge's reply has no score from 0 to 10: {shown!r}")


@scorers.register("judge")
class JudgeScorer(Scorer):
    """The judge model's score / 10. Async: call `ascore`."""

    name = "judge"
    Options = JudgeOptions
    options: JudgeOptions

    def __init__(self, options: JudgeOptions | None = None, **context: Any):
        if options is None:
            raise TypeError("the judge scorer needs options naming the judge model")
        super().__init__(options, **context)
        complete = context.get("complete")
        if complete is None:
            raise TypeError("the judge scorer needs a completion function: JudgeScorer(options, complete=fn)")
        self._complete: CompleteFn = complete

    def score(self, sample: Sample) -> Score:
        raise TypeError("the judge scorer calls a model: use `await scorer.ascore(sample)`")

    async def ascore(self, sample: Sample) -> Score:
        case = sample.case
        messages = build_judge_messages(str(case.inputs.get("question", "")), case.reference, sample.output)
        completion = await self._complete(self.options.model, messages)
        score, reason = read_judge_reply(completion.text)
        return Score(score / 10, {"judge": self.options.model, "score": score, "reason": reason})
