"""A reduced run of bench/gate_error_rates.py: every scenario of the gate with 300 simulations, tolerant bounds.

The full bench (2,000+ simulations per row) is what the targets are measured with; this keeps each scenario,
the public-API cross-check and the MDE and across-cycle rows from rotting, and catches gross regressions.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import gate_error_rates as bench  # noqa: E402

SIMS = 300
pytestmark = pytest.mark.slow


def _tolerance(target: float) -> float:
    return 3.0 * math.sqrt(target * (1 - target) / SIMS) + 0.01


@pytest.fixture(scope="module")
def rows():
    found, mismatches = bench.run_gate_section(SIMS, seed=7, checks=3)
    assert mismatches == 0, "the public API and the vectorised path disagree"
    return found


def test_every_null_scenario_keeps_false_promotion_near_its_level(rows):
    nulls = [r for r in rows if r.scenario.startswith("null ")]
    assert len(nulls) == 80  # 5 noise models x passfail/graded x 1/3 repeats x N = 50, 100, 200, 500
    for row in nulls:
        assert row.estimate <= bench.NULL_CEILING + _tolerance(bench.NULL_CEILING), row.scenario
    pooled = next(r for r in rows if r.scenario.startswith("all 80 null rows above, pooled, level"))
    assert pooled.estimate <= bench.FIRST_LEVEL + 0.006


def test_power_harm_guard_and_several_candidates_rows(rows):
    targeted = [r for r in rows if r.target is not None and not r.scenario.startswith(("null ", "all "))]
    assert len(targeted) >= 10
    for row in targeted:
        slack = _tolerance(row.target)
        if row.direction == "max":
            assert row.estimate <= row.target + slack, row.scenario
        else:
            assert row.estimate >= row.target - slack, row.scenario


def test_the_old_rule_is_shown_failing_where_the_issue_found_it(rows):
    harm = next(r for r in rows if r.scenario.startswith("+3 overall, -5 on 1 of 7 spectrums, N=500"))
    assert "old rule (plain t on case means): 1.0" in harm.note or "0.99" in harm.note
    no_control = next(r for r in rows if r.scenario.endswith("every cycle at 0.05 (no control)"))
    spending = next(r for r in rows if r.scenario.endswith("alpha spending"))
    assert no_control.estimate > 2 * spending.estimate


def test_world_gains_are_exact_in_expectation():
    world = bench.World()
    rng = np.random.default_rng(3)
    for effect in (bench.Effect(0.03), bench.Effect(broken_share=0.08), bench.Effect(het_sd=0.6),
                   bench.SPECTRUM_HARM):
        base, cand, _ = world.simulate(rng, sims=400, n_cases=210, repeats=1, kind="graded", effects=(effect,))
        gain = float((cand - base[None]).mean())
        expected = 0.03 if effect.gain or effect.spectrum_gains else 0.0
        assert gain == pytest.approx(expected, abs=0.004), effect
