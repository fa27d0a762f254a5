"""Statistics behind promptcycle's decisions: paired confirmation of prompt improvements, design power and error
control across optimization cycles."""

from promptcycle.stats.paired import (
    DECISIONS,
    EXACT_MAX_CLUSTERS,
    RESOLUTION,
    TEST_NAME,
    ConfirmationResult,
    DifferenceStats,
    SpectrumResult,
    SpectrumStats,
    adjust_holm,
    assess_spectrums,
    classify_decisions,
    cluster_totals,
    confirm_candidates,
    confirm_improvement,
    summarize_differences,
)
from promptcycle.stats.power import (
    RuleDesign,
    compute_mde,
    compute_power,
    compute_required_cases,
    noncentrality_for_power,
)
from promptcycle.stats.spending import error_budget, spending_level, spending_share, spent_before

__all__ = [
    "DECISIONS",
    "EXACT_MAX_CLUSTERS",
    "RESOLUTION",
    "TEST_NAME",
    "ConfirmationResult",
    "DifferenceStats",
    "SpectrumResult",
    "SpectrumStats",
    "adjust_holm",
    "assess_spectrums",
    "classify_decisions",
    "cluster_totals",
    "confirm_candidates",
    "confirm_improvement",
    "summarize_differences",
    "RuleDesign",
    "compute_mde",
    "compute_power",
    "compute_required_cases",
    "noncentrality_for_power",
    "error_budget",
    "spending_level",
    "spending_share",
    "spent_before",
]
