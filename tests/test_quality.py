"""The data-quality suites, run for real through Great Expectations on small frames."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from promptcycle.config import DatasetConfig, SplitConfig
from promptcycle.datasets import Case, assign_splits, load_cases
from promptcycle.errors import DataQualityError
from promptcycle.quality import QualityReport, raise_for_failure, validate_dataset, validate_results

REPO = Path(__file__).resolve().parent.parent

SPECTRUMS = ["credit_analysis", "customer_profile"]
MIN_CASES = 4


@pytest.fixture(scope="module", autouse=True)
def gx_context():
    """Pay Great Expectations' import and context set-up once for the module."""
    from promptcycle.quality.suites import _get_batch_definition

    return _get_batch_definition()


def make_cases(per_spectrum: int = 5) -> list[Case]:
    return [Case(id=f"{s}-{i:03d}", spectrum=s,
                 inputs={"customer": {"credit_score": 700 + i}, "question": "What is the credit score?"},
                 facts={"credit_score": 700 + i}, reference=f"Credit score: {700 + i}.")
            for s in SPECTRUMS for i in range(1, per_spectrum + 1)]


def replace(cases: list[Case], case_id: str, **changes) -> list[Case]:
    return [c.model_copy(update=changes) if c.id == case_id else c for c in cases]


def check_dataset(cases: list[Case], splits: dict[str, str] | None = None, **kwargs) -> QualityReport:
    splits = assign_splits(cases, SplitConfig()) if splits is None else splits
    kwargs.setdefault("spectrums", SPECTRUMS)
    kwargs.setdefault("min_cases_per_spectrum", MIN_CASES)
    return validate_dataset(cases, splits, **kwargs)


def only_failure(report: QualityReport) -> dict:
    assert not report.success
    assert [f["expectation"] for f in report.failures] == [report.failures[0]["expectation"]], report.summary()
    return report.failures[0]


# ---------------------------------------------------------------------------------------------
# Dataset suite

def test_bundled_dataset_passes():
    cases = load_cases("bundled:customer_insights")
    config = DatasetConfig(source="bundled:customer_insights", spectrums=sorted({c.spectrum for c in cases}))
    assert len(config.spectrums) == 7
    splits = assign_splits(cases, config.splits)
    report = validate_dataset(cases, splits, spectrums=config.spectrums,
                              min_cases_per_spectrum=config.min_cases_per_spectrum, recorded_splits=splits)
    assert report.success, report.summary()
    assert report.n_rows == len(cases) and report.n_expectations == 12 and report.failures == []
    assert report.summary().startswith("dataset suite passed: 12 expectations")


def test_clean_small_dataset_passes():
    report = check_dataset(make_cases())
    assert report.success, report.summary()
    assert raise_for_failure(report) is report


def test_duplicate_id_is_named():
    cases = make_cases()
    cases.append(cases[2].model_copy(update={"reference": "another"}))
    failure = only_failure(check_dataset(cases))
    assert failure["expectation"] == "ids unique" and failure["unexpected_count"] == 2
    assert failure["examples"] == ["credit_analysis-003"]
    assert "ids unique: 2 rows share a repeated id (credit_analysis-003)" in check_dataset(cases).summary()


def test_null_question_is_named():
    cases = make_cases()
    cases = replace(cases, "customer_profile-002", inputs={"customer": {"x": 1}, "question": None})
    report = check_dataset(cases)
    failure = only_failure(report)
    assert failure["expectation"] == "inputs have no nulls"
    assert "'question'" in failure["detail"] and failure["examples"] == ["customer_profile-002"]
    assert "customer_profile-002" in report.summary()


def test_blank_question_and_empty_inputs_fail():
    cases = replace(make_cases(), "credit_analysis-001", inputs={"question": "   "})
    cases = replace(cases, "credit_analysis-002", inputs={})
    report = check_dataset(cases)
    named = {f["expectation"]: f["examples"] for f in report.failures}
    assert named == {"inputs have no nulls": ["credit_analysis-001"], "inputs present": ["credit_analysis-002"]}


def test_unknown_spectrum_is_named():
    cases = make_cases() + [Case(id="credit_analysis-009", spectrum="credits", inputs={"question": "q"},
                                 facts={"credit_score": 1})]
    report = check_dataset(cases)
    failure = only_failure(report)
    assert failure["expectation"] == "spectrum in set" and failure["examples"] == ["credit_analysis-009"]
    assert "spectrum in set: 1 row has 'credits' (credit_analysis-009)" in report.summary()


def test_empty_facts_are_named():
    report = check_dataset(replace(make_cases(), "customer_profile-005", facts={}))
    failure = only_failure(report)
    assert failure["expectation"] == "facts non-empty" and failure["column"] == "facts"
    assert failure["examples"] == ["customer_profile-005"]
    assert "customer_profile-005" in report.summary()


def test_too_few_cases_in_a_spectrum():
    cases = [c for c in make_cases() if c.id not in ("customer_profile-001", "customer_profile-002")]
    report = check_dataset(cases, spectrums=[*SPECTRUMS, "temporal_analysis"])
    failures = {f["expectation"]: f for f in report.failures}
    assert set(failures) == {f"at least {MIN_CASES} cases per spectrum"}
    assert failures[f"at least {MIN_CASES} cases per spectrum"]["examples"] == \
        ["customer_profile: 3", "temporal_analysis: 0"]
    assert "2 spectrums short (customer_profile: 3, temporal_analysis: 0)" in report.summary()


def test_case_moved_to_another_split_is_named():
    cases = make_cases()
    recorded = assign_splits(cases, SplitConfig())
    moved = "credit_analysis-004"
    splits = {**recorded, moved: next(s for s in ("train", "dev", "test") if s != recorded[moved])}
    report = check_dataset(cases, splits, recorded_splits=recorded)
    failure = only_failure(report)
    assert failure["expectation"] == "split as recorded" and failure["examples"] == [moved]
    assert f"{recorded[moved]} → {splits[moved]}" in report.summary()


def test_case_without_a_split_or_with_an_unknown_split():
    cases = make_cases()
    splits = assign_splits(cases, SplitConfig())
    del splits["customer_profile-001"]
    splits["customer_profile-002"] = "validation"
    report = check_dataset(cases, splits)
    named = {f["expectation"]: f["examples"] for f in report.failures}
    assert named == {"case in a split": ["customer_profile-001"],
                     "split is one of train/dev/test": ["customer_profile-002"]}


def test_several_failures_read_in_one_summary_and_raise():
    cases = make_cases() + [make_cases()[0]]
    cases = replace(cases, "customer_profile-003", facts={}, spectrum="profiles")
    report = check_dataset(cases)
    assert report.summary().startswith("dataset suite FAILED: 3 of 11 expectations failed — ids unique: ")
    with pytest.raises(DataQualityError) as info:
        raise_for_failure(report)
    assert info.value.report is report and str(info.value) == report.summary()


def test_report_serialises_and_renders():
    report = check_dataset(replace(make_cases(), "credit_analysis-001", facts={}))
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert QualityReport.from_dict(data) == report
    markdown = report.to_markdown()
    assert "dataset suite FAILED" in markdown and "| facts non-empty | facts | 1 |" in markdown


# ---------------------------------------------------------------------------------------------
# Results suite

MODELS = ["nano", "large"]
CASE_IDS = ["credit_analysis-001", "credit_analysis-002", "customer_profile-001"]
SCORERS = ["accuracy", "format"]


def make_results(repeats: int = 2) -> pd.DataFrame:
    rows = []
    for m in MODELS:
        for c in CASE_IDS:
            for r in range(repeats):
                rows.append({"model": m, "case_id": c, "repeat": r, "spectrum": c.rsplit("-", 1)[0],
                             "overall": 0.9, "latency_ms": 120.0 + r, "error": None, "error_kind": None,
                             "score_accuracy": 1.0, "score_format": 0.8})
    return pd.DataFrame(rows)


def check_results(frame: pd.DataFrame, max_error_rate: float = 0.2, repeats: int = 2) -> QualityReport:
    return validate_results(frame, expected_models=MODELS, expected_case_ids=CASE_IDS, repeats=repeats,
                            scorer_names=SCORERS, max_error_rate=max_error_rate)


def set_error(frame: pd.DataFrame, index: int, kind: str = "ServerError") -> None:
    frame.loc[index, ["error", "error_kind"]] = [f"{kind}: simulated failure", kind]
    frame.loc[index, ["overall", "latency_ms", "score_accuracy", "score_format"]] = None


def test_clean_results_pass_and_errored_rows_may_have_null_scores():
    frame = make_results()
    set_error(frame, 3)
    report = check_results(frame)
    assert report.success, report.summary()
    # columns; range and presence for 2 scores + overall; latency; error rate overall and per model; grid x3
    assert report.n_rows == 12 and report.n_expectations == 1 + 2 * 3 + 1 + 2 + 3


def test_out_of_range_score_is_named():
    frame = make_results()
    frame.loc[4, "score_format"] = 1.5
    frame.loc[5, "overall"] = -0.1
    report = check_results(frame)
    named = {f["expectation"]: f for f in report.failures}
    assert set(named) == {"score_format in [0, 1]", "overall in [0, 1]"}
    assert named["score_format in [0, 1]"]["examples"] == ["nano/customer_profile-001#0"]
    assert "1.5" in named["score_format in [0, 1]"]["detail"]
    assert "overall in [0, 1]: 1 row outside [0, 1], e.g. -0.1 (nano/customer_profile-001#1)" in report.summary()


def test_null_score_without_an_error_fails():
    frame = make_results()
    frame.loc[0, "score_accuracy"] = None
    failure = only_failure(check_results(frame))
    assert failure["expectation"] == "score_accuracy present unless errored"
    assert failure["examples"] == ["nano/credit_analysis-001#0"]


def test_missing_model_case_is_reported():
    frame = make_results()
    frame = frame[~((frame.model == "large") & (frame.case_id == "customer_profile-001"))]
    report = check_results(frame)
    failure = only_failure(report)
    assert failure["expectation"] == "every model × case × repeat present"
    assert failure["unexpected_count"] == 2
    assert failure["examples"] == ["large/customer_profile-001#0", "large/customer_profile-001#1"]
    assert "2 of 12 missing (large/customer_profile-001#0, large/customer_profile-001#1)" in report.summary()


def test_duplicate_and_unexpected_rows_are_reported():
    frame = make_results()
    extra = frame.iloc[[0]].assign(model="xl")
    frame = pd.concat([frame, frame.iloc[[1]], extra])
    named = {f["expectation"]: f["examples"] for f in check_results(frame).failures}
    assert named == {"each model × case × repeat once": ["nano/credit_analysis-001#1"],
                     "no rows outside the expected grid": ["xl/credit_analysis-001#0"]}


def test_negative_latency_is_named():
    frame = make_results()
    frame.loc[7, "latency_ms"] = -12.0
    failure = only_failure(check_results(frame))
    assert failure["expectation"] == "latency_ms >= 0" and failure["examples"] == ["large/credit_analysis-001#1"]


def test_error_rate_over_the_ceiling_overall_and_per_model():
    frame = make_results()
    for i in (0, 1, 2):  # three of nano's six rows
        set_error(frame, i, kind="RateLimitError" if i else "ServerError")
    report = check_results(frame, max_error_rate=0.2)
    named = {f["expectation"]: f for f in report.failures}
    assert set(named) == {"error rate <= 20.0%", "error rate per model <= 20.0%"}
    assert named["error rate <= 20.0%"]["detail"] == "25.0% of 12 rows errored"
    # Each kind with its first message: where the provider's status and text reach the user.
    assert named["error rate <= 20.0%"]["examples"] == ["RateLimitError ×2 (RateLimitError: simulated failure)",
                                                        "ServerError ×1 (ServerError: simulated failure)"]
    assert named["error rate per model <= 20.0%"]["examples"] == ["nano 50.0%"]
    # Under a looser ceiling only the model over it fails.
    looser = check_results(frame, max_error_rate=0.3)
    assert [f["expectation"] for f in looser.failures] == ["error rate per model <= 30.0%"]


def test_missing_score_column_is_named():
    frame = make_results().drop(columns=["score_format"])
    failure = only_failure(check_results(frame))
    assert failure["expectation"] == "results columns present" and failure["examples"] == ["score_format"]


# -- the format expectation and the pipeline's own expectations ---------------------------------------------------

def _pipeline(tmp_path, quality: dict | None = None, format_kind: str | None = "json"):
    import shutil

    import yaml

    from promptcycle.catalog import load_config

    path = tmp_path / "pipelines.yaml"
    shutil.copy(REPO / "pipelines.yaml", path)
    data = yaml.safe_load(path.read_text())
    pipe = data["pipelines"]["customer-insights"]
    if format_kind is None:
        del pipe["scorers"]["format"]
    else:
        pipe["scorers"]["format"]["kind"] = format_kind
        if format_kind == "regex":
            pipe["scorers"]["format"]["pattern"] = "^Answer:"
    if quality is not None:
        pipe["quality"] = quality
    path.write_text(yaml.safe_dump(data))
    return load_config(path).pipeline("customer-insights")


def test_all_answers_non_json_fail_the_results_suite_of_a_json_pipeline(tmp_path):
    from promptcycle.quality.suites import results_expectations

    frame = make_results()
    frame["score_format"] = 0.0  # every answer failed the JSON shape
    expectations = results_expectations(_pipeline(tmp_path))
    report = validate_results(frame, expected_models=MODELS, expected_case_ids=CASE_IDS, repeats=2,
                              scorer_names=SCORERS, max_error_rate=0.2, expectations=expectations)
    failure = only_failure(report)
    assert failure["expectation"] == "score_format >= 0.5 on 50.0% of rows (JSON pipeline)"
    assert failure["detail"] == "12 of 12 rows with a value not >= 0.5 (0.0% >= 0.5, needed 50.0%)"
    # The same answers pass once most are JSON; a pipeline without a JSON format scorer has no such check.
    frame.loc[:6, "score_format"] = 1.0
    assert validate_results(frame, expected_models=MODELS, expected_case_ids=CASE_IDS, repeats=2,
                            scorer_names=SCORERS, max_error_rate=0.2, expectations=expectations).success
    assert results_expectations(_pipeline(tmp_path, format_kind="regex")) == []
    assert results_expectations(_pipeline(tmp_path, format_kind=None)) == []


def test_a_pipelines_own_expectations_run_in_the_results_suite(tmp_path):
    from promptcycle.quality.suites import results_expectations

    pipe = _pipeline(tmp_path, {"results_expectations": [{"column": "format", "min": 0.95, "mostly": 0.95},
                                                         {"column": "latency_ms", "max": 121}]})
    expectations = results_expectations(pipe)
    assert [e["column"] for e in expectations] == ["format", "latency_ms"]  # its own replaces the built-in
    frame = make_results()  # score_format 0.8 everywhere; latency 120 or 121
    report = validate_results(frame, expected_models=MODELS, expected_case_ids=CASE_IDS, repeats=2,
                              scorer_names=SCORERS, max_error_rate=0.2, expectations=expectations)
    failure = only_failure(report)
    assert failure["expectation"] == "score_format >= 0.95 on 95.0% of rows"
    assert failure["unexpected_count"] == 12
    frame["score_format"] = 1.0
    frame.loc[0, "score_format"] = 0.5  # 1 of 12 below: 91.7% < 95%
    assert not validate_results(frame, expected_models=MODELS, expected_case_ids=CASE_IDS, repeats=2,
                                scorer_names=SCORERS, max_error_rate=0.2, expectations=expectations).success
    frame.loc[0, "score_format"] = 1.0
    assert validate_results(frame, expected_models=MODELS, expected_case_ids=CASE_IDS, repeats=2,
                            scorer_names=SCORERS, max_error_rate=0.2, expectations=expectations).success


@pytest.mark.parametrize("expectation, path, message", [
    ({"column": "tone", "min": 0.5}, "results_expectations.0.column", "unknown column 'tone'"),
    ({"column": "format"}, "results_expectations.0", "give `min`, `max` or both"),
    ({"column": "format", "min": 0.9, "max": 0.5}, "results_expectations.0", "min (0.9) is above max (0.5)"),
    ({"column": "format", "min": 0.5, "mostly": 1.5}, "results_expectations.0.mostly", "less than or equal to 1"),
    ({"column": "format", "minimum": 0.5}, "results_expectations.0.minimum", "unknown key"),
])
def test_bad_results_expectations_fail_at_load_naming_file_and_path(tmp_path, expectation, path, message):
    from promptcycle.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        _pipeline(tmp_path, {"results_expectations": [expectation]})
    text = str(info.value)
    assert str(tmp_path / "pipelines.yaml") in text
    assert f"pipelines.customer-insights.quality.{path}" in text
    assert message in text


_VALIDATE_WHILE_GX_IMPORTS = """
import threading
import pandas as pd
from promptcycle.quality import suites

threading.Thread(target=suites._get_batch_definition, daemon=True).start()  # the worker's warm-up
frame = pd.DataFrame({"model": ["m"], "case_id": ["c"], "repeat": [0], "spectrum": ["s"], "overall": [0.5],
                      "latency_ms": [10.0], "error": [None], "error_kind": [None], "score_accuracy": [0.5]})
report = suites.validate_results(frame, expected_models=["m"], expected_case_ids=["c"], repeats=1,
                                 scorer_names=["accuracy"], max_error_rate=0.1)
print("validated", report.success)
"""


@pytest.mark.slow
def test_a_validation_that_starts_while_great_expectations_imports_waits_for_it():
    """A short run reaches its results suite while the worker still imports GX in a thread: the
    validation waits for that import instead of importing GX beside it (which failed with an
    ImportError from a partially initialised module). In a fresh interpreter, where GX is not loaded."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _VALIDATE_WHILE_GX_IMPORTS], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "validated True"
