"""The data-quality suites: Great Expectations checks on datasets (before any model call) and on
results (before they are stored or used by a gate).

Each suite turns its input into small pandas frames, runs real GX expectation suites on them and
returns a `QualityReport`; `raise_for_failure(report)` stops a flow with the readable summary.

Great Expectations takes seconds to import, so it is imported on first use, and one ephemeral
context (in memory, progress bars off) serves the whole process.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING, Any

from promptcycle.datasets.cases import SPLITS
from promptcycle.quality.report import MAX_EXAMPLES, QualityReport

if TYPE_CHECKING:
    import pandas as pd

    from promptcycle.datasets.cases import Case

__all__ = ["validate_dataset", "validate_results", "results_expectations", "RESULT_COLUMNS", "Check", "run_checks",
           "gx_expectations"]

# Columns every results frame carries, besides one `score_<name>` per scorer.
RESULT_COLUMNS = ("model", "case_id", "repeat", "spectrum", "overall", "latency_ms", "error", "error_kind")

_lock = threading.RLock()  # one context, shared: set-up and validations run one at a time
_batch_definition: Any = None


def _get_batch_definition() -> Any:
    """The one whole-dataframe batch definition of the process's ephemeral GX context."""
    global _batch_definition
    with _lock:
        if _batch_definition is None:
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            context = gx.get_context(mode="ephemeral")
            context.variables.progress_bars = ProgressBarsConfig(globally=False)
            asset = context.data_sources.add_pandas("promptcycle").add_dataframe_asset("frame")
            _batch_definition = asset.add_batch_definition_whole_dataframe("whole frame")
        return _batch_definition


def _gx_expectations() -> Any:
    _get_batch_definition()  # GX's import, once, under the lock (see _column)
    import great_expectations.expectations as gxe

    return gxe


def _column(name: str) -> Any:
    """A GX row-condition column: `_column("x") == 0` keeps the rows where x is 0."""
    # Importing GX from two threads at once (the worker's warm-up and a validation) hands one of them a
    # partially initialised module (ImportError: cannot import name ...): every GX import here waits for
    # the one `_get_batch_definition` makes under the lock.
    _get_batch_definition()
    from great_expectations.expectations.row_conditions import Column

    return Column(name)


@dataclass
class _Check:
    """One expectation plus how to tell a person what its failure means."""

    label: str
    expectation: Any
    column: str | None
    # (unexpected_count, offending values, raw GX result) -> a short phrase such as "3 rows have 'x'"
    describe: Callable[[int, list[Any], dict[str, Any]], str]
    # Examples and count for aggregate checks, where GX reports no offending rows.
    examples: list[Any] | None = None
    count: int | None = None


def _run_checks(frame: "pd.DataFrame", checks: list[_Check], index_column: str) -> list[dict[str, Any]]:
    """Validate `frame` against `checks` in one GX suite; return the failures in check order.

    A first pass asks GX for pass/fail only (a fifth of the time on a 10,000-row run); the checks that
    fail are validated again for their offending values and rows, which the failures report."""
    if not checks:
        return []
    with _lock:
        batch_definition = _get_batch_definition()  # also makes the context current, which suites need
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        verdicts = _validate(batch, checks, range(len(checks)), {"result_format": "BOOLEAN_ONLY"})
        failed = [i for i in range(len(checks)) if not verdicts[i].success]
        if not failed:
            return []
        details = _validate(batch, checks, failed,
                            {"result_format": "SUMMARY", "unexpected_index_column_names": [index_column]})
    return [_failure(checks[i], details[i], index_column) for i in failed if not details[i].success]


def _validate(batch: Any, checks: list[_Check], which: Iterable[int], result_format: dict[str, Any]) -> dict[int, Any]:
    """GX's result of each of `checks` numbered in `which`, validated together as one suite."""
    import great_expectations as gx

    suite = gx.ExpectationSuite(name="promptcycle")
    for i in which:
        expectation = checks[i].expectation.copy()
        expectation.meta = {**(expectation.meta or {}), "check": i}
        suite.add_expectation(expectation)
    result = batch.validate(suite, result_format=result_format)
    return {r.expectation_config.meta["check"]: r for r in result.results}


def _failure(check: _Check, outcome: Any, index_column: str) -> dict[str, Any]:
    raw = dict(outcome.result or {})
    error = _exception_message(outcome.exception_info)
    values = [_plain(v) for v in raw.get("partial_unexpected_list") or []]
    ids = _distinct(_plain(row.get(index_column)) for row in raw.get("partial_unexpected_index_list") or [])
    count = check.count if check.count is not None else int(raw.get("unexpected_count") or 0)
    if error:
        detail = f"could not be evaluated: {error}"
    else:
        detail = check.describe(count, values, raw)
    examples = check.examples if check.examples is not None else (ids or _distinct(values))
    return {
        "expectation": check.label,
        "column": check.column,
        "unexpected_count": count,
        "examples": [_plain(e) for e in examples[:MAX_EXAMPLES]],
        "detail": detail,
        "type": outcome.expectation_config.type,
    }


def _exception_message(info: Any) -> str | None:
    # GX reports either one exception dict or a dict of them keyed by metric.
    if not isinstance(info, dict):
        return None
    if "raised_exception" in info:
        return info.get("exception_message") if info.get("raised_exception") else None
    for sub in info.values():
        message = _exception_message(sub)
        if message:
            return message
    return None


def _plain(value: Any) -> Any:
    """numpy/pandas scalars to plain Python; NaN/NA to None."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    item = getattr(value, "item", None)
    if callable(item):
        try:
            value = item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, (int, float)):
        return value
    return None if str(value) in ("<NA>", "NaT") else str(value)


def _distinct(values: Iterable[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _has(n: int) -> str:
    return "has" if n == 1 else "have"


def _quoted(values: list[Any], limit: int = 3) -> str:
    distinct = _distinct(values)
    text = ", ".join(repr(v) for v in distinct[:limit])
    return text + (", …" if len(distinct) > limit else "")


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%"


# Public for suites defined next to their domain (candidate validation in promptcycle.optimize.leakage).
Check = _Check
run_checks = _run_checks
gx_expectations = _gx_expectations


# --------------------------------------------------------------------------------------------
# Dataset suite
# --------------------------------------------------------------------------------------------

def validate_dataset(cases: Sequence["Case"], splits: Mapping[str, str], *, spectrums: list[str],
                     min_cases_per_spectrum: int, recorded_splits: Mapping[str, str] | None = None
                     ) -> QualityReport:
    """Check a dataset before any model is called.

    Expectations: ids unique; id, spectrum, inputs and facts present; no null (or blank) input
    value such as the question; spectrum in the configured `spectrums`; at least one fact per
    case; at least `min_cases_per_spectrum` cases in every configured spectrum; every case in
    exactly one of train/dev/test; and, given `recorded_splits`, no case in a different split
    than the one recorded for it.

    Pass the cases the pipeline will evaluate: to evaluate a subset of a dataset's spectrums,
    select those cases first, or the others fail "spectrum in set".
    """
    import pandas as pd

    gxe = _gx_expectations()
    frame = pd.DataFrame([_case_row(c, splits, recorded_splits) for c in cases],
                         columns=["case_id", "spectrum", "inputs", "null_inputs", "facts", "n_facts",
                                  "split", "recorded_split"])
    frame["n_facts"] = frame["n_facts"].astype("int64")
    spectrum_set = list(spectrums)
    checks = [
        _Check("ids unique", gxe.ExpectColumnValuesToBeUnique(column="case_id"), "case_id",
               lambda n, v, r: f"{_rows(n)} share a repeated id"),
        _Check("id present", gxe.ExpectColumnValuesToNotBeNull(column="case_id"), "case_id",
               lambda n, v, r: f"{_rows(n)} with no id"),
        _Check("spectrum present", gxe.ExpectColumnValuesToNotBeNull(column="spectrum"), "spectrum",
               lambda n, v, r: f"{_rows(n)} with no spectrum"),
        _Check("spectrum in set", gxe.ExpectColumnValuesToBeInSet(column="spectrum", value_set=spectrum_set),
               "spectrum", lambda n, v, r: f"{_rows(n)} {_has(n)} {_quoted(v)}"),
        _Check("inputs present", gxe.ExpectColumnValuesToNotBeNull(column="inputs"), "inputs",
               lambda n, v, r: f"{_rows(n)} with no inputs"),
        _Check("inputs have no nulls", gxe.ExpectColumnValuesToBeNull(column="null_inputs"), "inputs",
               lambda n, v, r: f"{_rows(n)} {_has(n)} a null or blank {_quoted(v)}"),
        _Check("facts present", gxe.ExpectColumnValuesToNotBeNull(column="facts"), "facts",
               lambda n, v, r: f"{_rows(n)} with no facts object"),
        _Check("facts non-empty", gxe.ExpectColumnValuesToBeBetween(column="n_facts", min_value=1), "facts",
               lambda n, v, r: f"{_rows(n)} with no facts"),
        _Check("case in a split", gxe.ExpectColumnValuesToNotBeNull(column="split"), "split",
               lambda n, v, r: f"{_rows(n)} in no split"),
        _Check("split is one of " + "/".join(SPLITS), gxe.ExpectColumnValuesToBeInSet(
            column="split", value_set=list(SPLITS)), "split",
            lambda n, v, r: f"{_rows(n)} {_has(n)} split {_quoted(v)}"),
    ]
    if recorded_splits is not None:
        checks.append(_Check(
            "split as recorded", gxe.ExpectColumnPairValuesToBeEqual(
                column_A="split", column_B="recorded_split", ignore_row_if="either_value_is_missing"),
            "split", lambda n, v, r: f"{n} {'case' if n == 1 else 'cases'} moved from the recorded split ("
            + ", ".join(f"{b} → {a}" for a, b in _distinct(tuple(x) for x in v)[:3]) + ")"))
    failures = _run_checks(frame, checks, "case_id")

    counts = frame.groupby("spectrum", dropna=True).size() if len(frame) else pd.Series(dtype="int64")
    count_frame = pd.DataFrame({"spectrum": spectrum_set,
                                "n_cases": [int(counts.get(s, 0)) for s in spectrum_set]})
    count_frame["n_cases"] = count_frame["n_cases"].astype("int64")
    short = count_frame[count_frame["n_cases"] < min_cases_per_spectrum]
    count_checks = [_Check(
        f"at least {min_cases_per_spectrum} {'case' if min_cases_per_spectrum == 1 else 'cases'} per spectrum",
        gxe.ExpectColumnValuesToBeBetween(column="n_cases", min_value=min_cases_per_spectrum), "spectrum",
        lambda n, v, r: f"{n} {'spectrum' if n == 1 else 'spectrums'} short",
        examples=[f"{s}: {k}" for s, k in zip(short["spectrum"], short["n_cases"])])]
    failures += _run_checks(count_frame, count_checks, "spectrum")

    n_expectations = len(checks) + len(count_checks)
    return QualityReport(suite="dataset", success=not failures, n_rows=len(frame),
                         n_expectations=n_expectations, failures=failures)


def _case_row(case: Any, splits: Mapping[str, str], recorded: Mapping[str, str] | None) -> dict[str, Any]:
    case_id = getattr(case, "id", None)
    inputs = getattr(case, "inputs", None)
    facts = getattr(case, "facts", None)
    null_inputs = [k for k, v in (inputs or {}).items() if v is None or (isinstance(v, str) and not v.strip())]
    return {
        "case_id": case_id,
        "spectrum": getattr(case, "spectrum", None),
        "inputs": json.dumps(inputs, sort_keys=True, default=str) if inputs else None,
        "null_inputs": ", ".join(null_inputs) or None,
        "facts": json.dumps(facts, sort_keys=True, default=str) if facts is not None else None,
        "n_facts": len(facts) if isinstance(facts, Mapping) else 0,
        "split": splits.get(case_id) if case_id is not None else None,
        "recorded_split": recorded.get(case_id) if recorded is not None and case_id is not None else None,
    }


# --------------------------------------------------------------------------------------------
# Results suite
# --------------------------------------------------------------------------------------------

# The built-in format expectation of a pipeline whose `format` scorer asks for JSON: most answered rows
# have the shape (a JSON object; with require_keys, at least half of those keys).
DEFAULT_FORMAT_EXPECTATION = {"column": "format", "min": 0.5, "max": None, "mostly": 0.5}
JSON_FORMAT_KINDS = ("json", "json_schema")


def results_expectations(pipeline: Any) -> list[dict[str, Any]]:
    """The expectations a pipeline (a `PipelineConfig`) adds to its results suite: its own
    `quality.results_expectations`, plus the built-in format expectation when its `format` scorer asks
    for JSON and none of its own is on `format`."""
    own = [e.model_dump() for e in pipeline.quality.results_expectations]
    format_options = pipeline.scorers.get("format")
    if format_options is not None and (format_options or {}).get("kind", "json") in JSON_FORMAT_KINDS \
            and not any(e["column"] == "format" for e in own):
        own.append(dict(DEFAULT_FORMAT_EXPECTATION, builtin=True))
    return own


def _expectation_checks(data: "pd.DataFrame", expectations: Sequence[Mapping[str, Any]],
                        scorer_names: list[str]) -> list[_Check]:
    import pandas as pd

    gxe = _gx_expectations()
    checks = []
    for e in expectations:
        column = f"score_{e['column']}" if e["column"] in scorer_names else e["column"]
        if column not in data.columns:
            continue  # a missing column is reported by "results columns present"
        data[column] = pd.to_numeric(data[column], errors="coerce").astype("float64")
        lo, hi, mostly = e.get("min"), e.get("max"), float(e.get("mostly", 1.0))
        bounds = (f">= {lo:g}" if hi is None else f"<= {hi:g}" if lo is None else f"in [{lo:g}, {hi:g}]")
        label = f"{column} {bounds} on {_percent(mostly)} of rows" + (" (JSON pipeline)" if e.get("builtin") else "")
        n_valued = int(data[column].notna().sum())
        checks.append(_Check(
            label, gxe.ExpectColumnValuesToBeBetween(column=column, min_value=lo, max_value=hi, mostly=mostly),
            column, lambda n, v, r, b=bounds, k=n_valued, m=mostly:
            f"{n} of {k} rows with a value not {b} ({_percent(1 - n / k if k else 0)} {b}, needed {_percent(m)})"))
    return checks


def validate_results(frame: "pd.DataFrame", *, expected_models: list[str], expected_case_ids: list[str],
                     repeats: int, scorer_names: list[str], max_error_rate: float,
                     expectations: Sequence[Mapping[str, Any]] = ()) -> QualityReport:
    """Check a run's results before they are stored or used by a gate.

    `frame` has one row per (model, case_id, repeat) — repeats numbered 0 … repeats-1 — with
    columns model, case_id, repeat, spectrum, overall, latency_ms, error, error_kind and
    `score_<name>` per scorer; a row with an error has null scores and latency.

    Expectations: the columns are present; every score and `overall` lies in [0, 1] and is
    present unless the row errored; latency_ms >= 0; every model x case x repeat of the expected
    grid appears exactly once and no row lies outside it; the share of errored rows is at most
    `max_error_rate`, overall and for each model; and each of `expectations` (dicts with column — a
    scorer name, overall or latency_ms —, min, max, mostly; see `results_expectations`).
    """
    import pandas as pd

    gxe = _gx_expectations()
    score_columns = [f"score_{name}" for name in scorer_names]
    required = [*RESULT_COLUMNS, *score_columns]
    missing = [c for c in required if c not in frame.columns]
    # Only the columns checked (GX hashes the whole batch: answer text would triple its cost), with unique
    # index labels (GX finds offending rows by label).
    checked = {*required,
               *(f"score_{e['column']}" if e["column"] in scorer_names else e["column"] for e in expectations)}
    data = frame[[c for c in frame.columns if c in checked]].reset_index(drop=True)
    data["_key"] = _result_keys(data)
    has_error = "error" in data.columns
    if has_error:
        error = data["error"]
        data["_errored"] = (error.notna() & (error.astype(str).str.strip() != "")).astype(bool)

    checks: list[_Check] = [_Check(
        "results columns present", gxe.ExpectTableColumnsToMatchSet(column_set=required, exact_match=False),
        None, lambda n, v, r: f"{n} {'column' if n == 1 else 'columns'} missing", examples=missing,
        count=len(missing))]
    for column in [*score_columns, "overall"]:
        if column not in data.columns:
            continue
        data[column] = pd.to_numeric(data[column], errors="coerce").astype("float64")
        checks.append(_Check(
            f"{column} in [0, 1]", gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0, max_value=1),
            column, lambda n, v, r: f"{_rows(n)} outside [0, 1], e.g. {_quoted(v, 2)}"))
        if has_error:
            checks.append(_Check(
                f"{column} present unless errored", gxe.ExpectColumnValuesToNotBeNull(
                    column=column, row_condition=_column("_errored") == False),  # noqa: E712 (builds a condition)
                column, lambda n, v, r, c=column: f"{_rows(n)} without an error {_has(n)} no {c}"))
    if "latency_ms" in data.columns:
        data["latency_ms"] = pd.to_numeric(data["latency_ms"], errors="coerce").astype("float64")
        checks.append(_Check(
            "latency_ms >= 0", gxe.ExpectColumnValuesToBeBetween(column="latency_ms", min_value=0), "latency_ms",
            lambda n, v, r: f"{_rows(n)} negative, e.g. {_quoted(v, 2)}"))
    if has_error and len(data):
        rate = float(data["_errored"].mean())
        data["_errored_number"] = data["_errored"].astype("float64")
        kinds = _error_kinds(data[data["_errored"]])
        checks.append(_Check(
            f"error rate <= {_percent(max_error_rate)}",
            gxe.ExpectColumnMeanToBeBetween(column="_errored_number", min_value=0, max_value=max_error_rate),
            "error", lambda n, v, r: f"{_percent(rate)} of {len(data)} rows errored",
            examples=kinds, count=int(data["_errored"].sum())))
    checks += _expectation_checks(data, expectations, scorer_names)
    failures = _run_checks(data, checks, "_key")
    n_expectations = len(checks)

    if has_error and "model" in data.columns and len(data):
        per_model = (data.groupby("model", dropna=False)["_errored"].agg(["size", "sum"]).reset_index())
        per_model["error_rate"] = (per_model["sum"] / per_model["size"]).astype("float64")
        per_model["model"] = per_model["model"].astype(str)
        over = per_model[per_model["error_rate"] > max_error_rate]
        model_checks = [_Check(
            f"error rate per model <= {_percent(max_error_rate)}",
            gxe.ExpectColumnValuesToBeBetween(column="error_rate", min_value=0, max_value=max_error_rate),
            "error", lambda n, v, r: f"{n} {'model' if n == 1 else 'models'} over the ceiling",
            examples=[f"{m} {_percent(x)}" for m, x in zip(over["model"], over["error_rate"])])]
        failures += _run_checks(per_model, model_checks, "model")
        n_expectations += len(model_checks)

    if {"model", "case_id", "repeat"} <= set(data.columns):
        grid = _grid_frame(data, expected_models, expected_case_ids, repeats)
        grid_checks = [
            _Check("every model × case × repeat present", gxe.ExpectColumnValuesToBeBetween(
                column="n_rows", min_value=1, row_condition=_column("in_grid") == True),  # noqa: E712
                "case_id", lambda n, v, r: f"{n} of {int(grid['in_grid'].sum())} missing"),
            _Check("each model × case × repeat once", gxe.ExpectColumnValuesToBeBetween(
                column="n_rows", max_value=1), "case_id",
                lambda n, v, r: f"{n} {'key appears' if n == 1 else 'keys appear'} more than once"),
            _Check("no rows outside the expected grid", gxe.ExpectColumnValuesToBeInSet(
                column="in_grid", value_set=[True]), "case_id",
                lambda n, v, r: f"{n} unexpected model × case × repeat {'key' if n == 1 else 'keys'}"),
        ]
        failures += _run_checks(grid, grid_checks, "key")
        n_expectations += len(grid_checks)

    return QualityReport(suite="results", success=not failures, n_rows=len(frame),
                         n_expectations=n_expectations, failures=failures)


def _result_keys(frame: "pd.DataFrame") -> list[str]:
    """A readable row id: model/case_id#repeat."""
    n = len(frame)
    models = frame["model"].tolist() if "model" in frame.columns else ["?"] * n
    case_ids = frame["case_id"].tolist() if "case_id" in frame.columns else ["?"] * n
    repeats = frame["repeat"].tolist() if "repeat" in frame.columns else ["?"] * n
    return [_key(m, c, r) for m, c, r in zip(models, case_ids, repeats)]


def _key(model: Any, case_id: Any, repeat: Any) -> str:
    if type(model) is str and type(case_id) is str and type(repeat) is int:  # the usual row: nothing to convert
        return f"{model}/{case_id}#{repeat}"
    return f"{_plain(model)}/{_plain(case_id)}#{_plain(repeat)}"


def _error_kinds(errored: "pd.DataFrame") -> list[str]:
    """"kind ×n: first message" per error kind: the message carries the provider's status and text."""
    column = "error_kind" if "error_kind" in errored.columns else "error"
    kinds = [str(_plain(v)) for v in errored[column].tolist()]
    messages = errored["error"].tolist() if "error" in errored.columns else [None] * len(kinds)
    counts = Counter(kinds)
    first: dict[str, str] = {}
    for kind, message in zip(kinds, messages):
        if kind not in first and message is not None and column != "error":
            first[kind] = str(_plain(message))[:240]
    return [f"{kind} ×{n}" + (f" ({first[kind]})" if kind in first else "")
            for kind, n in counts.most_common(MAX_EXAMPLES)]


def _grid_frame(data: "pd.DataFrame", models: list[str], case_ids: list[str], repeats: int) -> "pd.DataFrame":
    """Expected grid joined with the observed rows: one row per key, with its count and membership."""
    import pandas as pd

    observed = Counter(data["_key"])  # validate_results' row keys
    expected = list(dict.fromkeys(_key(m, c, r) for m, c, r in product(models, case_ids, range(repeats))))
    expected_set = set(expected)
    extra = [k for k in observed if k not in expected_set]
    keys = expected + extra
    return pd.DataFrame({
        "key": keys,
        "n_rows": pd.Series([observed.get(k, 0) for k in keys], dtype="int64"),
        "in_grid": pd.Series([k in expected_set for k in keys], dtype="bool"),
    })
