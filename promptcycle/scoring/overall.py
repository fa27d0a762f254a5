"""The configured scorer set, and the weighted overall score it produces for one sample."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from promptcycle.errors import ConfigError
from promptcycle.scoring.base import Scorer, scorers

__all__ = ["build_scorers", "overall", "weights_of"]


def build_scorers(scorer_options: Mapping[str, Mapping[str, Any] | None], **context: Any) -> dict[str, Scorer]:
    """Instantiate the scorers of a pipeline's `scorers:` mapping (name -> options).

    `context` is handed to every scorer (the judge takes `complete=`). An unknown name or a bad
    option raises ConfigError naming `scorers.<name>`.
    """
    built: dict[str, Scorer] = {}
    for name, raw in scorer_options.items():
        if name not in scorers:
            raise ConfigError(f"unknown scorer {name!r}; known: {', '.join(scorers.names())}",
                              path=f"scorers.{name}", found=name, expected="a registered scorer")
        cls = scorers.get(name)
        try:
            options = cls.Options.model_validate(dict(raw or {}))
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(err["msg"].removeprefix("Value error, "),
                              path=f"scorers.{name}" + (f".{where}" if where else ""),
                              found=err.get("input"), expected=None) from None
        built[name] = cls(options, **context)
    return built


def weights_of(built: Mapping[str, Scorer]) -> dict[str, float]:
    """Each built scorer's configured weight."""
    return {name: scorer.options.weight for name, scorer in built.items()}


def overall(scores: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """The weighted mean of the scores given (scorers that produced no score are simply absent).

    A scorer missing from `weights` weighs 1.0. Raises ValueError when there is nothing to weigh
    (no scores, or all their weights are 0) or a weight is negative.
    """
    total = weighted = 0.0
    for name, value in scores.items():
        weight = weights.get(name, 1.0)
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(f"weight of {name!r} must be a finite number >= 0, found {weight}")
        total += weight
        weighted += weight * value
    if total <= 0:
        raise ValueError("no scores to combine" if not scores else "the scores given all have weight 0")
    return weighted / total
