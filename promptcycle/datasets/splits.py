"""Deterministic, stratified train/dev/test splits that never move a case.

Within each spectrum, cases are ordered by sha256(seed, case id) and the split sizes follow the
configured fractions by largest remainder, so every spectrum is split in the same proportions
(within one case). A case already recorded in a split keeps it; only new cases are allocated,
each split being topped up toward its target share. Growing a dataset therefore never moves a
case from one split to another — the guarantee that keeps a test set honest.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

from promptcycle.config import SplitConfig
from promptcycle.datasets.cases import SPLITS, Case

__all__ = ["assign_splits", "split_counts"]


def assign_splits(cases: Sequence[Case], splits: SplitConfig,
                  recorded: Mapping[str, str] | None = None) -> dict[str, str]:
    """Map each case id to "train", "dev" or "test".

    Deterministic for a given seed; stratified by spectrum; ids in `recorded` keep their
    recorded split. Ids in `recorded` that are not among `cases` are ignored.
    """
    recorded = recorded or {}
    fractions = [getattr(splits, name) for name in SPLITS]
    by_spectrum: dict[str, list[str]] = {}
    seen: set[str] = set()
    for case in cases:
        if case.id not in seen:  # a repeated id is the dataset suite's to report; split it once
            seen.add(case.id)
            by_spectrum.setdefault(case.spectrum, []).append(case.id)

    assignment: dict[str, str] = {}
    for ids in by_spectrum.values():
        kept = {i: recorded[i] for i in ids if i in recorded}
        new = sorted((i for i in ids if i not in recorded), key=lambda i: _rank(splits.seed, i))
        targets = split_counts(len(ids), fractions)
        deficits = [max(0, t - sum(1 for s in kept.values() if s == name)) for t, name in zip(targets, SPLITS)]
        # When recorded cases overfill a split, the others' deficits exceed the new cases: share them out.
        allocation = split_counts(len(new), deficits) if new else [0] * len(SPLITS)
        assignment.update(kept)
        start = 0
        for name, n in zip(SPLITS, allocation):
            for case_id in new[start:start + n]:
                assignment[case_id] = name
            start += n
    return {case.id: assignment[case.id] for case in cases}


def split_counts(n: int, weights: Sequence[float]) -> list[int]:
    """Divide `n` items in proportion to `weights` by largest remainder (ties go to the earlier)."""
    total = float(sum(weights))
    if n == 0 or total <= 0:
        return [0] * len(weights)
    quotas = [n * w / total for w in weights]
    # The epsilon keeps 0.4 * 10 = 4.000000000000001 (or 3.9999999999999996) at 4.
    counts = [math.floor(q + 1e-9) for q in quotas]
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _rank(seed: int, case_id: str) -> str:
    return hashlib.sha256(f"{seed}\x00{case_id}".encode("utf-8")).hexdigest()
