"""Statistics behind promptcycle's decisions: paired confirmation of prompt improvements and design power."""

from promptcycle.stats.paired import (
    DECISIONS,
    TEST_NAME,
    ConfirmationResult,
    DifferenceStats,
    SpectrumResult,
    adjust_holm,
    assess_spectrums,
    classify_decisions,
    confirm_candidates,
    confirm_improvement,
    summarize_differences,
)
from promptcycle.stats.power import compute_mde, compute_power, compute_required_cases, noncentrality_for_power

__all__ = [
    "DECISIONS",
    "TEST_NAME",
    "ConfirmationResult",
    "DifferenceStats",
    "SpectrumResult",
    "adjust_holm",
    "assess_spectrums",
    "classify_decisions",
    "confirm_candidates",
    "confirm_improvement",
    "summarize_differences",
    "compute_mde",
    "compute_power",
    "compute_required_cases",
    "noncentrality_for_power",
]
