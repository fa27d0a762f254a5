"""Optimization, the domain side: diagnose where a prompt fails, propose candidate prompts, and check
that the candidates are sound before they are screened.

    diagnosis = diagnose(frame, thresholds=pipeline.thresholds, cases=cases)
    context = StrategyContext(spectrums=pipeline.dataset.spectrums, seed=7, complete=fn, optimizer_model="xl")
    candidates = [c for name in pipeline.optimization.strategies
                  for c in await create_strategy(name).propose(current, diagnosis, train_cases, context=context)]
    screening = screen_candidates(candidates, variables=current.variables, held_out=dev_cases + test_cases,
                                  train=train_cases)

Evaluating the kept candidates and the statistical decision live elsewhere (`promptcycle.stats`,
the optimization flow). Nothing here imports Prefect; Great Expectations is imported on the first
validation.
"""

from promptcycle.optimize.candidates import CandidatePrompt
from promptcycle.optimize.diagnosis import CaseFailure, CellDiagnosis, Diagnosis, FieldContrast, WrongValue, diagnose
from promptcycle.optimize.leakage import (
    CandidateFindings,
    CandidateScreening,
    inspect_candidates,
    screen_candidates,
    validate_candidates,
)
from promptcycle.optimize.strategies import CompleteFn, Strategy, StrategyContext, create_strategy, strategies

__all__ = [
    "CandidatePrompt",
    "Diagnosis",
    "CellDiagnosis",
    "CaseFailure",
    "FieldContrast",
    "WrongValue",
    "diagnose",
    "Strategy",
    "StrategyContext",
    "CompleteFn",
    "strategies",
    "create_strategy",
    "CandidateFindings",
    "CandidateScreening",
    "inspect_candidates",
    "validate_candidates",
    "screen_candidates",
]
