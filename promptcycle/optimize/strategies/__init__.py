"""Strategies that propose candidate prompts, behind one registry.

    from promptcycle.optimize.strategies import StrategyContext, create_strategy, strategies

    strategies.names()   # checklist, combined, few_shot, format_spec, grounding, meta, shorten, step_structure
    candidates = await create_strategy("combined").propose(current, diagnosis, train_cases, context=context)

Importing this package registers the built-in strategies.
"""

from promptcycle.optimize.strategies.base import CompleteFn, Strategy, StrategyContext, create_strategy, strategies
from promptcycle.optimize.strategies.deterministic import (
    ChecklistStrategy,
    CombinedStrategy,
    FewShotStrategy,
    FormatSpecStrategy,
    GroundingStrategy,
    ShortenStrategy,
    StepStructureStrategy,
)
from promptcycle.optimize.strategies.meta import META_SYSTEM, MetaStrategy, build_meta_messages, parse_rewrites

__all__ = [
    "CompleteFn",
    "Strategy",
    "StrategyContext",
    "strategies",
    "create_strategy",
    "ChecklistStrategy",
    "FormatSpecStrategy",
    "FewShotStrategy",
    "GroundingStrategy",
    "StepStructureStrategy",
    "ShortenStrategy",
    "CombinedStrategy",
    "MetaStrategy",
    "META_SYSTEM",
    "build_meta_messages",
    "parse_rewrites",
]
