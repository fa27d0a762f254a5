"""Observations: the quality series of each pipeline × serving model × spectrum, one point per monitor period.

Two sources, production first:

- **production** — the outcomes the serving application reported (`log_production_result`, JSONL ingestion) in the
  period's window (`now − interval`, `now`], of the production arm (a canary's treatment arm is the canary's
  business, not the monitor's). Each outcome's spectrum is its `metadata.spectrum`, else that of its `metadata.case_id`
  in the dataset; outcomes with neither are not attributed. An error counts as 0 points, like an unanswered probe
  call. A series with at least `observe.min_production_outcomes` outcomes in the window is observed from production.
- **probe** — for the other series: the production prompt of the serving model on the fixed monitoring sample
  (`probe_sample`), `monitor.probe_cases` calls per model × spectrum, through the ordinary cell evaluation (ledgered,
  scored, stored as a run of kind `probe`).

**Why each period pays for its probe.** The ledger never pays twice for the same call key, and a key is
(provider, model, settings, repeat, messages). The sample is fixed, so the messages repeat; what differs is the
repeat: a period's calls use the repeats `period × R … period × R + R − 1` (R = repeats per case, `probe_repeats`), and
the repeat is also the simulator's seed. So a new period makes new calls — a fresh measurement — while a monitor run
killed and re-run in the same period finds its calls in the ledger and pays nothing again.

The period is the monitor clock's time divided by `monitor.interval_minutes` (`monitor_period`): the clock is
injectable, so hours of operation run in seconds.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from promptcycle.monitor.detectors import Observation

__all__ = ["monitor_period", "period_window", "probe_sample", "probe_repeats", "probe_first_repeat",
           "production_points", "points_observation"]


def monitor_period(now: datetime, interval_minutes: float) -> int:
    """The index of the monitor period `now` falls in (periods of `interval_minutes` since the Unix epoch)."""
    return int(now.astimezone(timezone.utc).timestamp() // (interval_minutes * 60.0))


def period_window(now: datetime, interval_minutes: float) -> tuple[datetime, datetime]:
    """The production window a monitor run at `now` reads: (now − interval, now]."""
    return now - timedelta(minutes=interval_minutes), now


def probe_sample(cases: Sequence[Any], spectrums: Sequence[str], size: int, seed: int = 0) -> dict[str, list[Any]]:
    """The fixed monitoring sample: per spectrum, up to `size` distinct cases chosen by a hash of (seed, case id).

    Deterministic (the same dataset and seed give the same sample in every process) and stable: adding a case to
    the dataset moves at most one case in or out of each spectrum's sample. Balanced: every spectrum gets its own
    `size` (or all its cases, if fewer)."""
    by_spectrum: dict[str, list[Any]] = defaultdict(list)
    for case in cases:
        by_spectrum[case.spectrum].append(case)

    def rank(case: Any) -> str:
        return hashlib.sha256(f"{seed}|{case.id}".encode()).hexdigest()

    return {s: sorted(by_spectrum.get(s, []), key=rank)[:size] for s in spectrums}


def probe_repeats(size: int, sample_size: int) -> int:
    """Repeats per case so that a period's probe makes at least `size` calls on a sample of `sample_size` cases
    (the bundled dataset has 30 cases per spectrum and the default probe 150 calls: 5 repeats)."""
    return max(1, math.ceil(size / max(1, sample_size)))


def probe_first_repeat(period: int, repeats: int) -> int:
    """The first repeat of `period`'s probe calls: periods never share a call key (see the module docstring)."""
    return int(period) * int(repeats)


def points_observation(time: datetime, scores: Sequence[float | None]) -> Observation:
    """A period's observation from per-outcome scores in [0, 1] (None: an error, counted as 0 points)."""
    return Observation.from_scores(time, [0.0 if s is None else float(s) for s in scores])


def production_points(results: Iterable[Any], case_spectrums: dict[str, str]
                      ) -> tuple[dict[tuple[str, str], list[float | None]], int]:
    """Group production outcomes by (model, spectrum): per-outcome score (None for an error).

    Returns the groups and how many outcomes could not be attributed to a model and spectrum. A canary's
    treatment arm and outcomes that were neither scored nor failed are left out."""
    groups: dict[tuple[str, str], list[float | None]] = defaultdict(list)
    unattributed = 0
    for r in results:
        if r.arm == "treatment" or (r.score is None and not r.error):
            continue
        meta = r.metadata or {}
        spectrum = meta.get("spectrum") or case_spectrums.get(str(meta.get("case_id")))
        if not r.model or not spectrum:
            unattributed += 1
            continue
        groups[(r.model, spectrum)].append(None if r.error else float(r.score))
    return dict(groups), unattributed
