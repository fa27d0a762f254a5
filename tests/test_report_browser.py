"""The report in a real browser: headless Chromium loads the HTML file (offline: its charting code is inside it),
runs its scripts, and every figure is an SVG chart with drawn marks; the screenshot is not blank."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import ui_check  # noqa: E402

from promptcycle.catalog import load_config  # noqa: E402
from promptcycle.report import build_report, write_report  # noqa: E402
from promptcycle.store import MetricsStore  # noqa: E402
from report_support import PIPE, populate, write_config  # noqa: E402

pytestmark = pytest.mark.slow


def _chromium() -> None:
    """Skip without a browser, except in CI, where .ci/run installs one (unless it said why it could not)."""
    if ui_check.find_chromium() is None:
        reason = os.environ.get("PROMPTCYCLE_NO_BROWSER")
        message = f"no Chromium ({reason or 'install it: apt-get install -y chromium; .ci/run does'})"
        if os.environ.get("CI") and not reason:
            pytest.fail(message)
        pytest.skip(message)


def test_every_figure_renders_as_svg_in_headless_chromium(tmp_path):
    _chromium()
    config = write_config(tmp_path)
    populate(tmp_path / "metrics.duckdb", config)
    report = write_report(build_report(MetricsStore(tmp_path / "metrics.duckdb"), load_config(config), PIPE),
                          tmp_path / "report.html")

    result = ui_check.check_report(report.path, tmp_path / "report.png", height=3800)
    assert result["ok"], result
    assert set(result["figures"]) == {"heatmap", "quality", "candidates", "canary", "spend"}
    assert result["rendered"] == "5/5" and result["simulated_label"] and not result["missing"]
    # Enough drawn marks that each chart holds its data: 4 cells + labels, 2 spectrum panels with bands and lines …
    assert result["figures"]["heatmap"]["marks"] >= 8 and result["figures"]["quality"]["marks"] >= 30
    assert result["screenshot_colours"] > 20  # not a blank page


def test_a_page_with_nothing_to_draw_says_so_in_the_browser(tmp_path):
    _chromium()
    config = write_config(tmp_path)
    MetricsStore(tmp_path / "metrics.duckdb")
    report = write_report(build_report(MetricsStore(tmp_path / "metrics.duckdb"), load_config(config), PIPE),
                          tmp_path / "empty.html")
    dom = ui_check.rendered_dom(report.path)
    assert dom.count("Nothing to show yet") == 5 and ui_check.figures_in_dom(dom) == {}
    assert "promptcycle baseline --pipeline customer-insights" in dom
