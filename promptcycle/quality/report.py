"""The readable outcome of a data-quality suite.

A `QualityReport` is what a flow stores, attaches as an artifact and shows a person when a suite
fails: which expectations failed, on which column, how many rows, and a few offending ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from promptcycle.errors import DataQualityError

__all__ = ["QualityReport", "raise_for_failure", "MAX_EXAMPLES"]

MAX_EXAMPLES = 5

# How many examples a one-line summary shows per failure; the report keeps up to MAX_EXAMPLES.
_SUMMARY_EXAMPLES = 3


@dataclass
class QualityReport:
    """The result of one suite run.

    `failures` holds one dict per failed expectation:
    `{"expectation": <readable name>, "column": <column or None>, "unexpected_count": <int>,
    "examples": [<up to 5 offending case ids or values>], "detail": <short phrase>,
    "type": <the expectation's type>}`. `n_expectations` counts every expectation evaluated.
    """

    suite: str
    success: bool
    n_rows: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    n_expectations: int = 0
    # Set when the verdict is that of an earlier run of the same suite on identical input
    # (promptcycle/quality/verdicts.py): when and under which key it was computed.
    reused: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.n_expectations = max(self.n_expectations, len(self.failures))

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict, for the store and for artifacts."""
        data = {
            "suite": self.suite,
            "success": self.success,
            "n_rows": self.n_rows,
            "failures": self.failures,
            "n_expectations": self.n_expectations,
        }
        if self.reused is not None:
            data["reused"] = self.reused
        return _json_safe(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QualityReport":
        """Rebuild a report stored with `to_dict()`."""
        return cls(suite=data["suite"], success=bool(data["success"]), n_rows=int(data["n_rows"]),
                   failures=list(data.get("failures", [])), n_expectations=int(data.get("n_expectations", 0)),
                   reused=data.get("reused"))

    def summary(self) -> str:
        """One short paragraph a person can read in ten seconds."""
        if self.success:
            return (f"{self.suite} suite passed: {self.n_expectations} expectations met "
                    f"on {self.n_rows} {_plural(self.n_rows, 'row')}"
                    + (f" (the verdict of {self.reused['verified_at']} on identical input)" if self.reused else ""))
        head = (f"{self.suite} suite FAILED: {self.n_failed} of {self.n_expectations} "
                f"{_plural(self.n_expectations, 'expectation')} failed")
        return head + " — " + "; ".join(_describe_failure(f) for f in self.failures)

    def to_markdown(self) -> str:
        """A Markdown rendering for a Prefect artifact."""
        status = "passed" if self.success else "FAILED"
        lines = [f"# Data quality: {self.suite} suite {status}", "",
                 f"{self.n_expectations} expectations on {self.n_rows} rows; {self.n_failed} failed.", ""]
        if self.failures:
            lines += ["| expectation | column | unexpected | detail | examples |",
                      "|---|---|---:|---|---|"]
            for f in self.failures:
                examples = ", ".join(_md_cell(str(e)) for e in f.get("examples", []))
                lines.append(f"| {_md_cell(f['expectation'])} | {_md_cell(str(f.get('column') or ''))} | "
                             f"{f.get('unexpected_count', 0)} | {_md_cell(str(f.get('detail', '')))} | "
                             f"{examples} |")
            lines.append("")
        return "\n".join(lines)


def raise_for_failure(report: QualityReport) -> QualityReport:
    """Raise `DataQualityError` carrying the report when the suite failed; else return the report."""
    if not report.success:
        raise DataQualityError(report.summary(), report=report)
    return report


def _describe_failure(failure: dict[str, Any]) -> str:
    text = f"{failure['expectation']}: {failure.get('detail') or _count_phrase(failure)}"
    examples = [str(e) for e in failure.get("examples", [])]
    if examples:
        shown = examples[:_SUMMARY_EXAMPLES]
        more = len(examples) > len(shown)
        text += " (" + ", ".join(shown) + (", …" if more else "") + ")"
    return text


def _count_phrase(failure: dict[str, Any]) -> str:
    n = int(failure.get("unexpected_count") or 0)
    return f"{n} unexpected {_plural(n, 'row')}"


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _json_safe(value: Any) -> Any:
    """Plain Python types only: numpy scalars unwrapped, NaN as None, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    item = getattr(value, "item", None)  # numpy / pandas scalars
    if callable(item):
        try:
            return _json_safe(item())
        except (TypeError, ValueError):
            pass
    return str(value)
