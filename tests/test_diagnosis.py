"""Diagnosis on a real results frame: the simulated world answers, the product's scorers score."""

from __future__ import annotations

import json
import math
from collections import Counter

import pandas as pd
import pytest

from promptcycle.config import SplitConfig, Thresholds
from promptcycle.datasets import Case, assign_splits, limit_cases, load_cases
from promptcycle.optimize import Diagnosis, diagnose
from promptcycle.prompts import PromptTemplate
from promptcycle.scoring import build_scorers, overall, weights_of
from promptcycle.scoring.base import Sample
from promptcycle.sim.world import SIM_MODELS, respond

DEFAULT_PROMPT = PromptTemplate(
    system="You are an analyst at a retail bank. Answer questions about customers accurately.",
    template="Here is the customer record:\n{{customer}}\n\n{{question}}\nReply with a JSON object.")
SCORER_OPTIONS = {"completeness": {"weight": 0.4}, "accuracy": {"weight": 0.4},
                  "format": {"weight": 0.1, "kind": "json"}, "latency": {"weight": 0.1}}
MODELS = ["sim-nano", "sim-large"]
THRESHOLDS = Thresholds()


def results_frame(prompt: PromptTemplate, cases: list[Case], models: list[str], splits: dict[str, str]) -> pd.DataFrame:
    """One row per model x case, as the store returns a run: simulated answers, real scores."""
    scorers = build_scorers(SCORER_OPTIONS)
    weights = weights_of(scorers)
    rows = []
    for model in models:
        for case in cases:
            reply = respond(model, prompt.render(case.inputs))
            sample = Sample(case=case, output=reply.text, model=model, latency_ms=reply.latency_s * 1000,
                            latency_target_ms=SIM_MODELS[model].latency_target_ms)
            values, explanation = {}, {}
            for name, scorer in scorers.items():
                score = scorer.score(sample)
                values[name], explanation[name] = score.value, score.explanation
            rows.append({"model": model, "case_id": case.id, "repeat": 0, "spectrum": case.spectrum,
                         "split": splits[case.id], "overall": overall(values, weights),
                         **{f"score_{k}": v for k, v in values.items()},
                         "explanation": json.dumps(explanation, separators=(",", ":")),
                         "latency_ms": reply.latency_s * 1000, "error": None, "error_kind": None, "simulated": True})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def world():
    cases = limit_cases(load_cases("bundled:customer_insights"), 8)  # 8 per spectrum: 56 cases
    splits = assign_splits(cases, SplitConfig())
    frame = results_frame(DEFAULT_PROMPT, cases, MODELS, splits)
    # one terminal error, recorded as a row the way a run records it
    errored = frame.index[(frame["model"] == "sim-nano") & (frame["case_id"] == cases[0].id)][0]
    frame.loc[errored, ["overall", "score_completeness", "score_accuracy", "score_format", "score_latency",
                        "explanation", "latency_ms"]] = None
    frame.loc[errored, ["error", "error_kind"]] = ["HTTP 503 from the provider", "ServerError"]
    return cases, splits, frame, diagnose(frame, thresholds=THRESHOLDS, cases=cases)


def _explanations(rows: pd.DataFrame) -> list[dict]:
    return [json.loads(e) for e in rows["explanation"] if isinstance(e, str)]


def _miss_rates(rows: pd.DataFrame, cases: dict[str, Case]) -> dict[str, float]:
    required, missed = Counter(), Counter()
    for _, row in rows[rows["error"].isna()].iterrows():
        explanation = json.loads(row["explanation"])
        for name in cases[row["case_id"]].facts:
            required[name] += 1
            missed[name] += name in explanation["completeness"]["missed"]
    return {f: missed[f] / required[f] for f in required if missed[f]}


def test_every_model_x_spectrum_cell_has_its_quality_and_level(world):
    cases, _, frame, d = world
    spectrums = list(dict.fromkeys(c.spectrum for c in cases))
    assert d.models == MODELS and d.spectrums == spectrums
    assert len(d.cells) == len(MODELS) * len(spectrums)
    for cell in d.cells:
        rows = frame[(frame["model"] == cell.model) & (frame["spectrum"] == cell.spectrum)]
        expected = 100 * rows["overall"].fillna(0.0).mean()  # an errored row counts 0
        assert cell.n == len(rows)
        assert cell.quality == pytest.approx(expected, abs=0.01)
        assert cell.level == THRESHOLDS.level(cell.quality)
    # the weak model is weaker everywhere in this simulated world
    for spectrum in spectrums:
        assert d.cell("sim-nano", spectrum).quality < d.cell("sim-large", spectrum).quality


def test_missed_facts_and_wrong_values_are_read_from_the_explanations(world):
    cases, _, frame, d = world
    by_id = {c.id: c for c in cases}
    cell = d.cell("sim-nano", "temporal_analysis")
    rows = frame[(frame["model"] == "sim-nano") & (frame["spectrum"] == "temporal_analysis")]
    expected = _miss_rates(rows, by_id)
    assert cell.missed == pytest.approx(expected)
    assert list(cell.missed.values()) == sorted(cell.missed.values(), reverse=True)
    # every wrong value shown is one the accuracy scorer reported, with its stated and expected values
    reported = {(f, json.dumps(w["expected"])): w["stated"]
                for e in _explanations(rows) for f, w in e["accuracy"].get("wrong", {}).items()}
    assert cell.wrong, "sim-nano states some temporal values wrong on these cases"
    for w in cell.wrong.values():
        assert 0 < w.rate <= 1 and w.count >= 1
        assert reported[(w.field, json.dumps(w.expected))] == w.stated
        assert by_id[w.case_id].facts[w.field] == w.expected


def test_format_latency_and_error_rates(world):
    _, _, frame, d = world
    rows = frame[(frame["model"] == "sim-nano") & (frame["spectrum"] == "customer_profile")]
    cell = d.cell("sim-nano", "customer_profile")
    ok = rows[rows["error"].isna()]
    assert cell.error_rate == pytest.approx(1 / len(rows))
    assert cell.format_failure_rate == pytest.approx((ok["score_format"] < 1).mean())
    assert cell.latency_breach_rate == pytest.approx((ok["score_latency"] < 1).mean())
    assert sum(cell.format_problems.values()) == int((ok["score_format"] < 1).sum())
    assert d.error_rate(split=None) == pytest.approx(1 / len(frame))


def test_strategy_views_use_the_train_split_only(world):
    cases, splits, frame, d = world
    by_id = {c.id: c for c in cases}
    train_rows = frame[frame["split"] == "train"]
    differs = 0
    for spectrum in d.spectrums:
        rows = train_rows[train_rows["spectrum"] == spectrum]
        assert d.missed_fields(spectrum) == pytest.approx(_miss_rates(rows, by_id))
        assert d.quality(spectrum) == pytest.approx(100 * rows["overall"].fillna(0).mean(), abs=0.01)
        differs += d.missed_fields(spectrum) != d.missed_fields(spectrum, split=None)
    assert differs, "train-only statistics should differ from all-rows statistics somewhere"
    failures = d.failing_cases(limit=100)
    assert failures and all(splits[f.case_id] == "train" for f in failures)
    assert len({f.case_id for f in failures}) == len(failures)  # one per case
    assert all(f.question == by_id[f.case_id].inputs["question"] for f in failures)
    # worst first within a spectrum; spectrums taken in turn
    first = [f.spectrum for f in d.failing_cases(limit=len(d.spectrums))]
    assert len(set(first)) == len(first)


def test_weak_cells_and_what_the_best_cells_cover(world):
    _, _, _, d = world
    weak = d.weak_cells()
    assert weak and all(c.quality < THRESHOLDS.warning for c in weak)
    assert [c.quality for c in weak] == sorted(c.quality for c in weak)
    assert any(c.model == "sim-nano" for c in weak)
    assert d.contrasts, "the strong model covers fields the weak one misses"
    for c in d.contrasts:
        assert c.best_coverage - c.weak_coverage >= 0.15
        assert c.best_model not in c.weak_models
        best = d.cell(c.best_model, c.spectrum)
        assert all(d.cell(m, c.spectrum).quality < best.quality for m in c.weak_models)


def test_to_dict_is_json_safe_and_rebuilds_the_same_diagnosis(world):
    _, _, _, d = world
    data = json.loads(json.dumps(d.to_dict()))
    assert data["simulated"] is True
    assert [tuple(x) for x in data["weak_cells"]] == [(c.model, c.spectrum) for c in d.weak_cells()]
    again = Diagnosis.from_dict(data)
    assert again.cells == d.cells
    assert again.failing_cases() == d.failing_cases()
    for spectrum in d.spectrums:
        assert again.missed_fields(spectrum) == d.missed_fields(spectrum)
        assert again.wrong_fields(spectrum, split=None) == d.wrong_fields(spectrum, split=None)
    assert again.to_markdown() == d.to_markdown()


def test_markdown_leads_with_what_fails(world):
    _, _, _, d = world
    text = d.to_markdown()
    assert text.index("## What fails") < text.index("## Cells") < text.index("## What the best cells")
    assert "Simulated results" in text
    worst = d.weak_cells()[0]
    what_fails = text[text.index("## What fails"):text.index("## Cells")]
    assert f"{worst.model} × {worst.spectrum}" in what_fails
    assert "Missed facts" in what_fails and "Wrong values" in what_fails and "Errors" in what_fails
    table = [ln for ln in text.splitlines() if ln.startswith("| sim-")]
    assert len(table) == len(d.cells)
    assert len(text.split()) < 2500  # a minute's read, tables included


def test_rows_without_scorer_explanations_still_count_for_quality():
    case = Case(id="c-1", spectrum="s", inputs={"question": "q?"}, facts={"x": 1})
    frame = pd.DataFrame([{"model": "m", "case_id": "c-1", "repeat": 0, "spectrum": "s", "split": "dev",
                           "overall": 0.5, "explanation": None, "error": math.nan}])
    d = diagnose(frame, thresholds=THRESHOLDS, cases=[case])
    assert d.cell("m", "s").quality == 50.0 and d.cell("m", "s").missed == {}
    assert d.quality("s") is None  # no train rows
    assert d.cell("m", "s").format_failure_rate is None  # no format scorer


def test_a_frame_without_the_needed_columns_is_refused():
    with pytest.raises(ValueError, match="overall"):
        diagnose(pd.DataFrame({"model": [], "case_id": [], "spectrum": []}), thresholds=THRESHOLDS, cases=[])
