"""A candidate prompt: what a strategy proposes, with why, and what it was derived from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from promptcycle.prompts import PromptTemplate

__all__ = ["CandidatePrompt"]


@dataclass(frozen=True)
class CandidatePrompt:
    """One proposed prompt.

    `strategy` is the registered name of the strategy that proposed it, `rationale` a sentence a
    person reads (which lever, from what evidence), `parent_hash` the hash of the prompt it was
    derived from, `scope` a model name for a per-model prompt (None: one prompt for all models).
    """

    prompt: PromptTemplate
    strategy: str
    rationale: str
    parent_hash: str
    scope: str | None = None

    @property
    def hash(self) -> str:
        """The prompt's content hash (its version id)."""
        return self.prompt.hash

    @property
    def label(self) -> str:
        """A short readable name: strategy, hash prefix and scope, e.g. "checklist 3fa2c1d0 (sim-nano)"."""
        text = f"{self.strategy} {self.hash[:8]}"
        return f"{text} ({self.scope})" if self.scope else text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict, for the store and artifacts."""
        return {"hash": self.hash, "strategy": self.strategy, "rationale": self.rationale,
                "parent_hash": self.parent_hash, "scope": self.scope,
                "system": self.prompt.system, "template": self.prompt.template}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CandidatePrompt":
        """Rebuild a candidate stored with `to_dict()`."""
        return cls(prompt=PromptTemplate(template=data["template"], system=data.get("system", "")),
                   strategy=data["strategy"], rationale=data.get("rationale", ""),
                   parent_hash=data.get("parent_hash", ""), scope=data.get("scope"))
