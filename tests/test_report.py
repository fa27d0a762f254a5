"""The report: what it reads from a real DuckDB store, the figures it draws from it, the self-contained HTML file,
the artifacts' pieces, simulated labels, and what an empty store or bad input gives (no browser, no engine)."""

from __future__ import annotations

import json
import re

import pytest

from promptcycle.catalog import load_config
from promptcycle.report import artifact_pieces, build_report, write_report
from promptcycle.store import MetricsStore
from promptcycle_cli.main import main
from report_support import PIPE, populate, write_config


@pytest.fixture(scope="module")
def loop_store(tmp_path_factory):
    """One populated store for the module's tests (they only read it)."""
    root = tmp_path_factory.mktemp("loop")
    config = write_config(root)
    store_path = root / "metrics.duckdb"
    written = populate(store_path, config)
    return config, store_path, written


def _specs(html: str) -> dict:
    return json.loads(re.search(r"const specs = (\{.*?\});\n", html, re.S).group(1))


def _values(spec: dict) -> list[dict]:
    """Every data row inlined anywhere in a Vega-Lite spec."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("values"), list):
                found.extend(v for v in node["values"] if isinstance(v, dict))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    return found


def test_the_report_draws_every_figure_from_what_the_store_holds(loop_store, tmp_path):
    config_path, store_path, written = loop_store
    store = MetricsStore(store_path)
    report = build_report(store, load_config(config_path), PIPE)
    figures = {f.key: f for f in report.figures}
    assert [f.key for f in report.figures] == ["heatmap", "quality", "candidates", "canary", "spend"]
    assert all(f.chart is not None and f.missing is None for f in report.figures)

    # The heatmap is the latest completed baseline's cells, levels included.
    last = written["baselines"][-1]
    assert sorted((r["model"], r["spectrum"], r["quality"], r["level"]) for r in figures["heatmap"].rows) == sorted(
        (c.model, c.spectrum, c.quality, c.level) for c in last.cells)
    assert "baseline-2" in figures["heatmap"].caption

    # Quality over time: both baselines' cells and every observation; the alert and the deployment are marked.
    sources = [r["source"] for r in figures["quality"].rows]
    assert sources.count("baseline") == 8 and sources.count("probe") == len(written["observations"])
    assert [(a["model"], a["spectrum"], a["kind"]) for a in report.data.alerts] == [("xl", "credit_analysis", "raised")]
    assert [d["kind"] for d in report.data.deployments] == ["canary"]
    quality_rows = _values(figures["quality"].chart.to_dict())
    assert any(r.get("kind") == "raised" for r in quality_rows) and any(r.get("to") == "a" * 8 for r in quality_rows)
    bands = {r["level"]: (r["lo"], r["hi"]) for r in quality_rows if "lo" in r}
    assert bands["warning"] == (85, 90) and bands["target"] == (95, 98) and bands["excellent"] == (98, 100)

    # Candidates: effect and CI in points (the store keeps score units), the screened and the rejected ones too.
    cands = {r["candidate"].split()[0]: r for r in figures["candidates"].rows}
    assert cands["combined"]["effect"] == pytest.approx(5.2) and cands["combined"]["ci_low"] == pytest.approx(3.1)
    assert cands["combined"]["ci_high"] == pytest.approx(7.3) and cands["examples"]["dev_delta"] == -2.0
    assert cands["shorten"]["status"] == "rejected" and cands["shorten"]["effect"] is None
    assert report.data.optimization["min_effect"] == pytest.approx(1.0)

    # The canary's looks, in order, with the confidence sequence in points.
    looks = figures["canary"].rows
    assert [(x["look"], x["split_pct"], x["n_treatment"], x["action"]) for x in looks] == [
        (i, s, t, a) for i, (s, _c, t, a, *_rest) in enumerate(written["looks"], start=1)]
    assert looks[-1]["ci_low"] == pytest.approx(1.2) and report.data.canary["status"] == "promoted"

    # Spend: one row per paying run, summing to what the store's own spend() says.
    spend = figures["spend"].rows
    assert [r["run_id"] for r in spend] == written["paid_runs"]
    total = store.spend(written["paid_runs"])
    assert spend[-1]["cumulative_usd"] == pytest.approx(total["cost_usd"])
    assert spend[-1]["cumulative_calls"] == total["calls"]
    assert {r["phase"] for r in spend} == {"baseline", "optimization"}

    # Everything came from the simulator, and every figure says so.
    assert all(f.simulated and f.heading.endswith("SIMULATED") for f in report.figures)


def test_the_html_file_is_self_contained_and_labels_simulated_data(loop_store, tmp_path):
    config_path, store_path, _ = loop_store
    report = write_report(build_report(MetricsStore(store_path), load_config(config_path), PIPE),
                          tmp_path / "out" / "report.html")
    html = report.path.read_text()
    assert report.bytes_written == len(html.encode())
    # Nothing is fetched: no external script, stylesheet, image or frame; the charting code is inline.
    markup = re.sub(r"<script>.*?</script>", "<script></script>", html, flags=re.S)
    assert not re.search(r"<(script|img|iframe)[^>]+src=", markup) and "<link" not in markup
    assert markup.count("<script>") == 2  # the inlined charting code, and the specs
    assert "vegaEmbed" in html and "renderer: 'svg'" in html
    assert len(_specs(html)) == 5 and 'data-figures="5"' in html
    assert "<b>SIMULATED.</b>" in html and html.count('class="badge">SIMULATED') == 6  # title + 5 figures
    # The figures' specs carry no chart-level URL to load data from.
    assert all("url" not in (spec.get("data") or {}) for spec in _specs(html).values())


def test_real_data_is_not_labelled_simulated(tmp_path):
    config = write_config(tmp_path)
    populate(tmp_path / "metrics.duckdb", config, simulated=False)
    report = build_report(MetricsStore(tmp_path / "metrics.duckdb"), load_config(config), PIPE)
    simulated = {f.key: f.simulated for f in report.figures}
    assert simulated == {"heatmap": False, "quality": False, "candidates": False, "canary": False, "spend": False}


def test_artifact_pieces_carry_a_static_image_the_caption_and_the_numbers(loop_store):
    config_path, store_path, _ = loop_store
    report = build_report(MetricsStore(store_path), load_config(config_path), PIPE)
    pieces = artifact_pieces(report.data, report.figures, html_path="/srv/reports/x.html")
    kinds = [(p.name, p.kind) for p in pieces]
    assert kinds == [(k, kind) for k in ("heatmap", "quality", "candidates", "canary", "spend")
                     for kind in ("markdown", "table")] or kinds == [
        (n, k) for f in report.figures for n, k in ((f.key, "markdown"), (f"{f.key}-table", "table"))]
    for piece in pieces:
        if piece.kind == "markdown":
            assert piece.content.startswith("## ") and "SIMULATED" in piece.content
            assert "data:image/png;base64,iVBOR" in piece.content  # a PNG drawn offline by vl-convert
            assert "/srv/reports/x.html" in piece.content
        else:
            assert piece.content and json.dumps(piece.content)  # JSON-safe rows
    assert not any("data:image" in p.content for p in artifact_pieces(report.data, report.figures, images=False)
                   if p.kind == "markdown")


def test_an_empty_store_gives_a_report_that_says_what_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PROMPTCYCLE_DATA_IN_PROCESS", "1")
    config = write_config(tmp_path)
    MetricsStore(tmp_path / "metrics.duckdb")  # created, nothing run yet
    out = tmp_path / "empty.html"
    code = main(["report", "--config", str(config), "--out", str(out), "--no-artifacts", "--json"])
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and payload["empty"] and payload["path"] == str(out.resolve())
    assert [f["shown"] for f in payload["figures"]] == [False] * 5
    assert "promptcycle baseline" in payload["figures"][0]["missing"]
    assert "promptcycle optimize" in payload["figures"][2]["missing"]
    html = out.read_text()
    assert html.count("Nothing to show yet") == 5 and "<script" not in html  # no charts: no code either

    main(["report", "--config", str(config), "--out", str(out), "--no-artifacts"])
    human = capsys.readouterr().out
    assert "nothing yet — no completed baseline run" in human and "start with `promptcycle baseline" in human


def test_bad_input_is_a_clear_message_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PROMPTCYCLE_DATA_IN_PROCESS", "1")
    config = write_config(tmp_path)
    # No store yet: the report does not create one.
    assert main(["report", "--config", str(config), "--no-artifacts"]) == 2
    err = capsys.readouterr().err
    assert "no metrics store at" in err and "Traceback" not in err
    assert not (tmp_path / "metrics.duckdb").exists()
    MetricsStore(tmp_path / "metrics.duckdb")
    assert main(["report", "--config", str(config), "--pipeline", "nope", "--no-artifacts"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["report", "--config", str(config), "--out", str(tmp_path), "--no-artifacts"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a directory" in err


def test_the_default_path_is_beside_the_store(loop_store, capsys, monkeypatch):
    monkeypatch.setenv("PROMPTCYCLE_DATA_IN_PROCESS", "1")
    config_path, store_path, _ = loop_store
    assert main(["report", "--config", str(config_path), "--no-artifacts", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["path"] == str(store_path.parent / "reports" / f"{PIPE}.html")
    assert payload["simulated"] and all(f["shown"] for f in payload["figures"])


@pytest.mark.engine
def test_the_report_flow_writes_the_file_and_publishes_the_figures_as_artifacts(prefect_harness, loop_store,
                                                                                tmp_path):
    import asyncio

    from prefect.artifacts import Artifact

    from promptcycle_flows.report import report

    config_path, store_path, _ = loop_store
    out = tmp_path / "flow.html"
    summary = asyncio.run(report(pipeline=PIPE, config_path=str(config_path), store_path=str(store_path),
                                 out=str(out)))
    assert summary.path == str(out.resolve()) and out.stat().st_size == summary.bytes
    assert all(f.shown for f in summary.figures) and summary.simulated
    assert f"report-heatmap-{PIPE}" in summary.artifacts and f"report-spend-table-{PIPE}" in summary.artifacts
    heatmap = Artifact.get(f"report-heatmap-{PIPE}")
    assert heatmap.type == "markdown" and "data:image/png;base64," in heatmap.data and "SIMULATED" in heatmap.data
    assert str(out.resolve()) in heatmap.data  # where the interactive version is
    table = Artifact.get(f"report-candidates-table-{PIPE}")
    rows = json.loads(table.data)
    assert table.type == "table" and {r["candidate"].split()[0] for r in rows} == {"combined", "format_spec",
                                                                                    "examples", "shorten"}
