"""Data-quality suites that gate the spend: datasets before any model call, results before they
are stored or used by a gate.

    report = validate_dataset(cases, splits, spectrums=[...], min_cases_per_spectrum=20)
    raise_for_failure(report)   # DataQualityError carrying report.summary()

Great Expectations is imported on the first validation, not on import of this package.
"""

from promptcycle.quality.report import QualityReport, raise_for_failure
from promptcycle.quality.suites import RESULT_COLUMNS, validate_dataset, validate_results

__all__ = ["QualityReport", "raise_for_failure", "validate_dataset", "validate_results", "RESULT_COLUMNS"]
