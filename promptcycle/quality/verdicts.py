"""Passing dataset-suite verdicts, kept so that an unchanged dataset is not re-validated on every run.

The dataset suite is a pure function of its input — the cases, their splits, the configured
spectrums and minimum, the splits recorded in the store — and of the suite's own code and the
Great Expectations version. A passing verdict is stored under a SHA-256 of all of these; a later
run whose key is identical gets that verdict back (marked `reused`, with the time it was computed)
instead of waiting seconds for Great Expectations to import. Any change to any of them — one
character of one case, a split, the suite's source — is a different key, and the suite runs.
Failing verdicts are never kept: a failure is always computed afresh, with its full report.

The verdicts live in `PROMPTCYCLE_CACHE_DIR` (default `$XDG_CACHE_HOME/promptcycle`, else
`~/.cache/promptcycle`) under `dataset-suite/`; `PROMPTCYCLE_REUSE_DATASET_VERDICTS=0` turns reuse off.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptcycle.quality.report import QualityReport

if TYPE_CHECKING:
    from promptcycle.datasets.cases import Case

__all__ = ["enabled", "cache_dir", "dataset_key", "load", "save"]

# The suite's code: what it checks (suites.py, with the split names of datasets/cases.py), how it reports, and this.
_SUITE_SOURCES = ("quality/suites.py", "quality/report.py", "quality/verdicts.py", "datasets/cases.py")


def enabled() -> bool:
    return os.environ.get("PROMPTCYCLE_REUSE_DATASET_VERDICTS", "1").lower() not in {"0", "false", "no", "off"}


def cache_dir() -> Path:
    root = os.environ.get("PROMPTCYCLE_CACHE_DIR") or \
        str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "promptcycle")
    return Path(root) / "dataset-suite"


def _suite_fingerprint() -> str:
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for name in _SUITE_SOURCES:
        digest.update((package / name).read_bytes())
    try:
        digest.update(metadata.version("great-expectations").encode())
    except metadata.PackageNotFoundError:
        digest.update(b"great-expectations: unknown")
    return digest.hexdigest()


def dataset_key(cases: Sequence["Case"], splits: Mapping[str, str], *, spectrums: list[str],
                min_cases_per_spectrum: int, recorded_splits: Mapping[str, str] | None) -> str:
    """The SHA-256 of everything the dataset suite's verdict depends on."""
    payload = {
        "suite": _suite_fingerprint(),
        "cases": [c.model_dump(mode="json") for c in cases],
        "splits": sorted(splits.items()),
        "spectrums": list(spectrums),
        "min_cases_per_spectrum": min_cases_per_spectrum,
        "recorded_splits": sorted(recorded_splits.items()) if recorded_splits is not None else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
                          .encode()).hexdigest()


def load(key: str) -> QualityReport | None:
    """The passing verdict stored under `key`, marked reused; None if there is none (or it is unreadable)."""
    try:
        data: dict[str, Any] = json.loads((cache_dir() / f"{key}.json").read_text())
        report = QualityReport.from_dict(data["report"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not report.success or data.get("key") != key:
        return None
    report.reused = {"key": key, "verified_at": data["verified_at"]}
    return report


def save(key: str, report: QualityReport) -> None:
    """Keep a passing verdict (a failing one is never kept). Best effort: an unwritable cache is skipped."""
    if not report.success or report.reused is not None:
        return
    directory = cache_dir()
    data = {"key": key, "verified_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "report": report.to_dict()}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, directory / f"{key}.json")
    except OSError:
        return
