"""Error control across optimization cycles: how much of `alpha` each confirmation against one prompt may spend.

Each optimization cycle confirms candidates against the pipeline's current prompt, usually on the same test
split. Testing every cycle at `alpha` promotes noise more and more often as cycles accumulate (ten cycles
without a real improvement would promote something far more often than `alpha`). Instead, the j-th
confirmation against the same current prompt is run at level

    level_j = alpha * gamma_j,   gamma_1 = first_share,   gamma_j = (1 - first_share) * 6 / (pi^2 (j - 1)^2), j >= 2

so sum_j gamma_j = 1. Whatever the dependence between cycles (same test split, same cached baseline answers),
the probability that *any* confirmation against that prompt promotes a candidate that is not better is at
most sum_j level_j <= alpha (a union bound). A promotion changes the current prompt, and the count restarts
for the new one — in the spirit of LORD-style online error control, where a discovery earns new budget: the
expected number of false promotions is at most alpha per prompt that was ever current.

The first confirmation against a prompt gets most of the budget (default 80%: level 0.04 at alpha 0.05), so
a single cycle keeps nearly the power of a lone test; later cycles against the same prompt get little
(0.0061, 0.0015, 0.0007 … at alpha 0.05), which is the honest price of re-testing: to keep detecting small
gains there, confirm on more cases. `spending_level` and `spent_before` are plain functions; the optimization
phase counts the confirmations from the decisions stored in DuckDB (`promptcycle.optimize.search`).
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_FIRST_SHARE", "spending_share", "spending_level", "spent_before", "error_budget"]

DEFAULT_FIRST_SHARE = 0.8


def spending_share(index: int, first_share: float = DEFAULT_FIRST_SHARE) -> float:
    """gamma_index: the share of alpha the `index`-th (1-based) confirmation against one prompt may spend."""
    if index < 1:
        raise ValueError(f"a confirmation's index is 1, 2, 3 …, got {index}")
    if not 0.0 < first_share <= 1.0:
        raise ValueError(f"first_share must be in (0, 1], got {first_share!r}")
    if index == 1:
        return first_share
    return (1.0 - first_share) * 6.0 / (math.pi ** 2 * (index - 1) ** 2)


def spending_level(alpha: float, index: int, first_share: float = DEFAULT_FIRST_SHARE) -> float:
    """The level of the `index`-th confirmation against one prompt."""
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
    return alpha * spending_share(index, first_share)


def spent_before(alpha: float, index: int, first_share: float = DEFAULT_FIRST_SHARE) -> float:
    """The budget the confirmations 1 .. index - 1 against one prompt may have spent."""
    return sum(spending_level(alpha, j, first_share) for j in range(1, index))


def error_budget(alpha: float, index: int, first_share: float = DEFAULT_FIRST_SHARE, *,
                 scheme: str = "spending") -> dict[str, float | int | str]:
    """The evidence of what one confirmation spends: scheme, alpha, index, level, spent before, remaining.

    `scheme` 'per_confirmation' spends `alpha` every time (no control across cycles; documented as such).
    """
    if scheme == "per_confirmation":
        return {"scheme": scheme, "alpha": alpha, "index": index, "level": alpha, "spent_before": None,
                "remaining_after": None,
                "guarantee": "each confirmation alone promotes a candidate that is not better at most alpha of "
                             "the time; nothing bounds errors across cycles"}
    if scheme != "spending":
        raise ValueError(f"scheme is 'spending' or 'per_confirmation', got {scheme!r}")
    level = spending_level(alpha, index, first_share)
    before = spent_before(alpha, index, first_share)
    return {"scheme": scheme, "alpha": alpha, "index": index, "first_share": first_share, "level": level,
            "spent_before": before, "remaining_after": max(alpha - before - level, 0.0),
            "guarantee": "across every confirmation against this current prompt, any false promotion at most "
                         "alpha of the time"}
