"""Continuous monitoring: quality observations, the detectors registry and the assessment that runs them.

Plain domain code (no Prefect, no store): the monitor flow reads the series and the detector states from the
store, calls `assess`, stores what it returns and hands the findings to the alert policy.
"""

from promptcycle.monitor.assessment import Assessment, assess
from promptcycle.monitor.detectors import (
    PAGING_SEVERITIES,
    SEVERITIES,
    Detector,
    DetectorContext,
    Finding,
    Observation,
    detectors,
)

__all__ = [
    "PAGING_SEVERITIES",
    "SEVERITIES",
    "Assessment",
    "Detector",
    "DetectorContext",
    "Finding",
    "Observation",
    "assess",
    "detectors",
]
