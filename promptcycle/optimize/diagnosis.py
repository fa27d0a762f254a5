"""Where a prompt fails, read from a run's results.

    diagnosis = diagnose(frame, thresholds=pipeline.thresholds, cases=cases)
    diagnosis.to_markdown()                                  # the artifact a person reads
    diagnosis.missed_fields("credit_analysis")               # train split only: safe to put in a prompt

`frame` has one row per model x case x repeat (columns model, case_id, repeat, spectrum, split,
overall, score_<scorer>, explanation, latency_ms, error, error_kind — as the store returns them).
Per model x spectrum the diagnosis measures quality (points, errors counting 0) and level, the
required facts missed most (field -> miss rate), the values wrong most (field -> wrong rate, with
an example stated vs expected), the format failure rate (format score < 1), the latency breach
rate (latency score < 1) and the error rate; it lists the cells below the warning threshold and
what the best cell of each spectrum covers that the weak cells miss.

The report (`cells`, `contrasts`, `to_markdown`) uses every row. Anything a strategy may write into
a prompt must come from the **train** split only, so the query methods (`missed_fields`,
`wrong_fields`, `quality`, `failing_cases`, …) default to `split="train"`; `split=None` means every
row and is for reports. Case-level failures are kept for the train split only.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from promptcycle.config import Thresholds
from promptcycle.datasets.cases import Case

if TYPE_CHECKING:  # pandas is imported where a frame is diagnosed, not when strategies are looked up
    import pandas as pd

__all__ = ["Diagnosis", "CellDiagnosis", "WrongValue", "CaseFailure", "FieldContrast", "diagnose"]

TRAIN = "train"
REQUIRED_COLUMNS = ("model", "case_id", "spectrum", "overall")
FAILURES_PER_CELL = 3  # worst train cases kept per model x spectrum
CONTRAST_GAP = 0.15  # a field the best cell covers this much more often than the weak cells
_TOP = 3  # fields shown per cell in the report


@dataclass(frozen=True)
class WrongValue:
    """How often a stated field is wrong, with one example."""

    field: str
    rate: float  # wrong / stated
    count: int
    stated: Any
    expected: Any
    case_id: str


@dataclass(frozen=True)
class CellDiagnosis:
    """One model x spectrum cell."""

    model: str
    spectrum: str
    n: int
    quality: float  # points, 0-100; an errored row counts 0
    level: str
    missed: dict[str, float]  # field -> miss rate (of the answers that needed it), most missed first
    wrong: dict[str, WrongValue]  # field -> wrong rate and example, most wrong first
    format_failure_rate: float | None  # None without a format scorer
    latency_breach_rate: float | None  # None without a latency scorer
    error_rate: float
    format_problems: dict[str, int]  # the format scorer's reason -> count
    mean_latency_ms: float | None


@dataclass(frozen=True)
class CaseFailure:
    """One failing answer of the train split, concrete enough to show an optimizer."""

    case_id: str
    model: str
    spectrum: str
    question: str | None
    quality: float  # points
    missed: list[str]
    wrong: dict[str, dict[str, Any]]  # field -> {"stated": …, "expected": …}
    format_problem: str | None
    error: str | None


@dataclass(frozen=True)
class FieldContrast:
    """A field the best cell of a spectrum covers far more often than that spectrum's weak cells."""

    spectrum: str
    field: str
    best_model: str
    best_coverage: float
    weak_coverage: float
    weak_models: list[str]


@dataclass
class _Tally:
    """Counts for one model x spectrum x split; merged to answer any query."""

    n: int = 0
    errors: int = 0
    overall_sum: float = 0.0
    format_n: int = 0
    format_fail: int = 0
    latency_n: int = 0
    latency_breach: int = 0
    latency_ms_sum: float = 0.0
    latency_ms_n: int = 0
    required: Counter = field(default_factory=Counter)
    missed: Counter = field(default_factory=Counter)
    stated: Counter = field(default_factory=Counter)
    wrong: Counter = field(default_factory=Counter)
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)  # field -> first wrong example
    format_problems: Counter = field(default_factory=Counter)
    error_kinds: Counter = field(default_factory=Counter)

    def merge(self, other: "_Tally") -> None:
        for name in ("n", "errors", "overall_sum", "format_n", "format_fail", "latency_n", "latency_breach",
                     "latency_ms_sum", "latency_ms_n"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("required", "missed", "stated", "wrong", "format_problems", "error_kinds"):
            getattr(self, name).update(getattr(other, name))
        for key, example in other.examples.items():
            self.examples.setdefault(key, example)

    def quality(self) -> float | None:
        return round(100 * self.overall_sum / self.n, 2) if self.n else None

    def missed_rates(self) -> dict[str, float]:
        rates = {f: self.missed[f] / self.required[f] for f in self.required if self.missed[f]}
        return dict(sorted(rates.items(), key=lambda kv: (-kv[1], kv[0])))

    def coverage(self, name: str) -> float | None:
        return 1 - self.missed[name] / self.required[name] if self.required[name] else None

    def wrong_values(self) -> dict[str, WrongValue]:
        out = [WrongValue(f, self.wrong[f] / self.stated[f], self.wrong[f], self.examples[f]["stated"],
                          self.examples[f]["expected"], self.examples[f]["case_id"])
               for f in self.wrong if self.wrong[f] and self.stated[f]]
        return {w.field: w for w in sorted(out, key=lambda w: (-w.rate, w.field))}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("required", "missed", "stated", "wrong", "format_problems", "error_kinds"):
            data[name] = dict(sorted(getattr(self, name).items()))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "_Tally":
        tally = cls(**{k: v for k, v in data.items() if not isinstance(v, dict)})
        for name in ("required", "missed", "stated", "wrong", "format_problems", "error_kinds"):
            setattr(tally, name, Counter(data.get(name, {})))
        tally.examples = dict(data.get("examples", {}))
        return tally


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass
class Diagnosis:
    """What fails, per model x spectrum, with train-only views for strategies (see the module docstring)."""

    thresholds: Thresholds
    models: list[str]
    spectrums: list[str]
    n_rows: int
    simulated: bool
    splits: dict[str, str]  # case id -> split, as the results recorded it
    tallies: dict[tuple[str, str, str], _Tally]  # (model, spectrum, split) -> counts
    failures: list[CaseFailure]  # train split only, worst first within each cell
    cells: list[CellDiagnosis] = field(init=False)
    contrasts: list[FieldContrast] = field(init=False)

    def __post_init__(self) -> None:
        self.cells = [self._cell(m, s) for m in self.models for s in self.spectrums
                      if self._merged(s, split=None, model=m).n]
        self.contrasts = self.field_contrasts(split=None)

    # -- queries ----------------------------------------------------------------------------------

    def _merged(self, spectrum: str | None = None, *, split: str | None = TRAIN,
                model: str | None = None) -> _Tally:
        total = _Tally()
        for (m, s, sp), tally in self.tallies.items():
            if (model is None or m == model) and (spectrum is None or s == spectrum) \
                    and (split is None or sp == split):
                total.merge(tally)
        return total

    def _cell(self, model: str, spectrum: str) -> CellDiagnosis:
        t = self._merged(spectrum, split=None, model=model)
        quality = t.quality() or 0.0
        return CellDiagnosis(
            model=model, spectrum=spectrum, n=t.n, quality=quality, level=self.thresholds.level(quality),
            missed={k: round(v, 4) for k, v in t.missed_rates().items()}, wrong=t.wrong_values(),
            format_failure_rate=_rate(t.format_fail, t.format_n),
            latency_breach_rate=_rate(t.latency_breach, t.latency_n), error_rate=t.errors / t.n if t.n else 0.0,
            format_problems=dict(t.format_problems.most_common()),
            mean_latency_ms=round(t.latency_ms_sum / t.latency_ms_n, 1) if t.latency_ms_n else None)

    def cell(self, model: str, spectrum: str) -> CellDiagnosis:
        for c in self.cells:
            if c.model == model and c.spectrum == spectrum:
                return c
        raise KeyError((model, spectrum))

    def weak_cells(self) -> list[CellDiagnosis]:
        """Cells below the warning threshold, worst first."""
        return sorted((c for c in self.cells if c.quality < self.thresholds.warning),
                      key=lambda c: (c.quality, c.model, c.spectrum))

    def quality(self, spectrum: str | None = None, *, split: str | None = TRAIN,
                model: str | None = None) -> float | None:
        """Mean quality in points of the rows selected (None when there are none)."""
        return self._merged(spectrum, split=split, model=model).quality()

    def missed_fields(self, spectrum: str | None = None, *, split: str | None = TRAIN,
                      model: str | None = None) -> dict[str, float]:
        """Field -> miss rate among the answers that needed it, most missed first (train by default)."""
        return self._merged(spectrum, split=split, model=model).missed_rates()

    def wrong_fields(self, spectrum: str | None = None, *, split: str | None = TRAIN,
                     model: str | None = None) -> dict[str, WrongValue]:
        """Field -> wrong rate among the answers that stated it, with an example (train by default)."""
        return self._merged(spectrum, split=split, model=model).wrong_values()

    def format_failure_rate(self, spectrum: str | None = None, *, split: str | None = TRAIN,
                            model: str | None = None) -> float | None:
        t = self._merged(spectrum, split=split, model=model)
        return _rate(t.format_fail, t.format_n)

    def format_problems(self, spectrum: str | None = None, *, split: str | None = TRAIN,
                        model: str | None = None) -> dict[str, int]:
        return dict(self._merged(spectrum, split=split, model=model).format_problems.most_common())

    def latency_breach_rate(self, spectrum: str | None = None, *, split: str | None = TRAIN,
                            model: str | None = None) -> float | None:
        t = self._merged(spectrum, split=split, model=model)
        return _rate(t.latency_breach, t.latency_n)

    def error_rate(self, spectrum: str | None = None, *, split: str | None = TRAIN,
                   model: str | None = None) -> float | None:
        t = self._merged(spectrum, split=split, model=model)
        return _rate(t.errors, t.n)

    def split_of(self, case_id: str) -> str | None:
        """The split the results recorded for a case (None when it is not in the results)."""
        return self.splits.get(case_id)

    def failing_cases(self, spectrum: str | None = None, *, model: str | None = None,
                      limit: int = 10) -> list[CaseFailure]:
        """Failing train answers, one per case (its worst), worst first, taken round-robin over spectrums."""
        chosen: dict[str, list[CaseFailure]] = {}
        seen: set[str] = set()
        for f in sorted(self.failures, key=lambda f: (f.quality, f.case_id, f.model)):
            if (spectrum is None or f.spectrum == spectrum) and (model is None or f.model == model) \
                    and f.case_id not in seen:
                seen.add(f.case_id)
                chosen.setdefault(f.spectrum, []).append(f)
        order = [s for s in self.spectrums if s in chosen] + sorted(set(chosen) - set(self.spectrums))
        out: list[CaseFailure] = []
        depth = 0
        while len(out) < limit and any(depth < len(chosen[s]) for s in order):
            out += [chosen[s][depth] for s in order if depth < len(chosen[s])][:limit - len(out)]
            depth += 1
        return out

    def field_contrasts(self, spectrum: str | None = None, *, split: str | None = TRAIN) -> list[FieldContrast]:
        """Fields the best cell of a spectrum covers at least 15 points more often than its weak cells."""
        out: list[FieldContrast] = []
        for s in [spectrum] if spectrum else self.spectrums:
            per_model = {m: self._merged(s, split=split, model=m) for m in self.models}
            per_model = {m: t for m, t in per_model.items() if t.n}
            if len(per_model) < 2:
                continue
            best = max(per_model, key=lambda m: (per_model[m].quality() or 0.0, -self.models.index(m)))
            weak = [m for m, t in per_model.items() if m != best and (t.quality() or 0.0) < self.thresholds.warning]
            if not weak:
                continue
            weak_tally = _Tally()
            for m in weak:
                weak_tally.merge(per_model[m])
            found = []
            for name in per_model[best].required:
                best_cov, weak_cov = per_model[best].coverage(name), weak_tally.coverage(name)
                if best_cov is not None and weak_cov is not None and best_cov - weak_cov >= CONTRAST_GAP:
                    found.append(FieldContrast(s, name, best, round(best_cov, 4), round(weak_cov, 4), weak))
            out += sorted(found, key=lambda c: (c.weak_coverage - c.best_coverage, c.field))
        return out

    # -- output -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (stored with the optimization run); `from_dict` rebuilds the diagnosis."""
        return _json_safe({
            "simulated": self.simulated,
            "n_rows": self.n_rows,
            "thresholds": self.thresholds.model_dump(),
            "models": self.models,
            "spectrums": self.spectrums,
            "cells": [asdict(c) for c in self.cells],
            "weak_cells": [[c.model, c.spectrum] for c in self.weak_cells()],
            "contrasts": [asdict(c) for c in self.contrasts],
            "failures": [asdict(f) for f in self.failures],
            "tallies": [{"model": m, "spectrum": s, "split": sp, **t.to_dict()}
                        for (m, s, sp), t in self.tallies.items()],
            "splits": self.splits,
        })

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Diagnosis":
        tallies = {}
        for row in data["tallies"]:
            row = dict(row)
            key = (row.pop("model"), row.pop("spectrum"), row.pop("split"))
            tallies[key] = _Tally.from_dict(row)
        return cls(thresholds=Thresholds.model_validate(data["thresholds"]), models=list(data["models"]),
                   spectrums=list(data["spectrums"]), n_rows=int(data["n_rows"]), simulated=bool(data["simulated"]),
                   splits=dict(data.get("splits", {})), tallies=tallies,
                   failures=[CaseFailure(**f) for f in data.get("failures", [])])

    def to_markdown(self) -> str:
        """A report a person reads in a minute: what fails first, then the cells and the best cells' patterns."""
        return _markdown(self)


# ------------------------------------------------------------------------------------------------
# Building a diagnosis
# ------------------------------------------------------------------------------------------------

def _is_na(value: Any) -> bool:
    import pandas as pd

    return value is pd.NA


def diagnose(frame: pd.DataFrame, *, thresholds: Thresholds, cases: Sequence[Case],
             models: Sequence[str] | None = None) -> Diagnosis:
    """Diagnose a results frame (see the module docstring).

    `cases` supplies each case's required facts and question (rows of cases not among them still
    count for quality, format and latency) and the order of the spectrums; `models` the order of
    the models in the report (default: as they first appear in the frame).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"the results frame lacks the column(s) {', '.join(missing)}; "
                         f"found: {', '.join(map(str, frame.columns))}")
    by_id = {c.id: c for c in cases}
    ordered = frame.sort_values([c for c in ("model", "case_id", "repeat") if c in frame.columns], kind="stable")
    rows = ordered.to_dict("records")
    seen = list(dict.fromkeys(str(m) for m in frame["model"]))
    models = [m for m in (models or []) if m in seen] + [m for m in seen if m not in (models or [])]
    present_spectrums = list(dict.fromkeys(str(r["spectrum"]) for r in rows))
    case_order = list(dict.fromkeys(c.spectrum for c in cases))
    spectrums = [s for s in case_order if s in present_spectrums] + \
        [s for s in present_spectrums if s not in case_order]

    tallies: dict[tuple[str, str, str], _Tally] = {}
    failures: dict[tuple[str, str], list[CaseFailure]] = {}
    splits: dict[str, str] = {}
    simulated = False
    for row in rows:
        model, spectrum, case_id = str(row["model"]), str(row["spectrum"]), str(row["case_id"])
        split = _text(row.get("split")) or "unknown"
        splits.setdefault(case_id, split)
        simulated = simulated or row.get("simulated") is True or bool(_number(row.get("simulated")))
        tally = tallies.setdefault((model, spectrum, split), _Tally())
        failure = _add_row(tally, row, by_id.get(case_id))
        if failure is not None and split == TRAIN:
            failures.setdefault((model, spectrum), []).append(failure)

    kept = []
    for key in sorted(failures):
        kept += sorted(failures[key], key=lambda f: (f.quality, f.case_id))[:FAILURES_PER_CELL]
    return Diagnosis(thresholds=thresholds, models=models, spectrums=spectrums, n_rows=len(rows),
                     simulated=simulated, splits=splits, tallies=tallies, failures=kept)


def _add_row(tally: _Tally, row: dict[str, Any], case: Case | None) -> CaseFailure | None:
    """Count one result row; return its failure when the answer lost points."""
    tally.n += 1
    error = _text(row.get("error"))
    question = _question(case)
    if error:
        tally.errors += 1
        tally.error_kinds[_text(row.get("error_kind")) or "error"] += 1
        return CaseFailure(str(row["case_id"]), str(row["model"]), str(row["spectrum"]), question, 0.0, [], {},
                           None, error[:200])
    overall = _number(row.get("overall")) or 0.0
    tally.overall_sum += overall
    latency_ms = _number(row.get("latency_ms"))
    if latency_ms is not None:
        tally.latency_ms_sum += latency_ms
        tally.latency_ms_n += 1
    explanation = _explanation(row.get("explanation"))

    format_problem = None
    format_score = _number(row.get("score_format"))
    if format_score is not None:
        tally.format_n += 1
        if format_score < 1:
            tally.format_fail += 1
            format_problem = _format_problem(explanation.get("format"))
            tally.format_problems[format_problem] += 1
    latency_score = _number(row.get("score_latency"))
    if latency_score is not None:
        tally.latency_n += 1
        tally.latency_breach += latency_score < 1

    completeness = explanation.get("completeness") or {}
    accuracy = explanation.get("accuracy") or {}
    wrong = accuracy.get("wrong") if isinstance(accuracy.get("wrong"), dict) else {}
    if isinstance(completeness.get("missed"), list):
        missed = [str(m) for m in completeness["missed"]]
    elif isinstance(accuracy.get("missed"), list):  # the accuracy scorer lists them when nothing was stated
        missed = [str(m) for m in accuracy["missed"]]
    else:
        missed = None  # no scorer says what was missed
    if missed is not None:
        required = list(case.facts) if case is not None else list(dict.fromkeys([*missed, *wrong]))
        for name in required:
            tally.required[name] += 1
            if name in missed:
                tally.missed[name] += 1
                continue
            tally.stated[name] += 1
            if name in wrong:
                tally.wrong[name] += 1
                tally.examples.setdefault(name, {"stated": wrong[name].get("stated"),
                                                 "expected": wrong[name].get("expected"),
                                                 "case_id": str(row["case_id"])})
    if missed or wrong or format_problem:
        return CaseFailure(str(row["case_id"]), str(row["model"]), str(row["spectrum"]), question,
                           round(100 * overall, 2), list(missed or []),
                           {k: {"stated": v.get("stated"), "expected": v.get("expected")} for k, v in wrong.items()},
                           format_problem, None)
    return None


def _question(case: Case | None) -> str | None:
    if case is None:
        return None
    question = case.inputs.get("question")
    return str(question) if question is not None else None


def _format_problem(explanation: Any) -> str:
    """The format scorer's reason, without the quoted detail after its colon."""
    reason = str((explanation or {}).get("reason") or "not the expected format") if isinstance(explanation, dict) \
        else "not the expected format"
    head = reason.split(":", 1)[0].strip()
    return head[:80]


def _explanation(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    text = _text(value)
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or _is_na(value):
        return None
    text = str(value).strip()
    return text or None


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, str) or _is_na(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    item = getattr(value, "item", None)  # numpy scalars
    return _json_safe(item()) if callable(item) else str(value)


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    if x is None:
        return "—"
    return "<1%" if 0 < x < 0.005 else f"{100 * x:.0f}%"


def _cell_name(c: CellDiagnosis) -> str:
    return f"{c.model} × {c.spectrum}"


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _listing(items: Iterable[str]) -> str:
    return ", ".join(items) or "—"


def _what_fails(d: Diagnosis) -> list[str]:
    bullets = []
    weak = d.weak_cells()
    if weak:
        worst = "; ".join(f"{_cell_name(c)} {c.quality:.1f} ({c.level})" for c in weak[:3])
        bullets.append(f"**{len(weak)} of {len(d.cells)} cells below {d.thresholds.warning:g}** — worst: {worst}.")
    else:
        bullets.append(f"No cell is below the warning threshold ({d.thresholds.warning:g}).")

    missed = sorted(((rate, s, f) for s in d.spectrums
                     for f, rate in d.missed_fields(s, split=None).items()), key=lambda x: (-x[0], x[1], x[2]))
    if missed:
        shown = "; ".join(f"{f} missed in {_pct(rate)} of {s} answers" for rate, s, f in missed[:4])
        bullets.append(f"**Missed facts**: {shown}.")
    wrong = sorted(((w.rate, s, w) for s in d.spectrums for w in d.wrong_fields(s, split=None).values()),
                   key=lambda x: (-x[0], x[1], x[2].field))
    if wrong:
        shown = "; ".join(f"{w.field} wrong in {_pct(rate)} of {s} answers that state it (e.g. "
                          f"{w.stated!r} for {w.expected!r}, {w.case_id})" for rate, s, w in wrong[:3])
        bullets.append(f"**Wrong values**: {shown}.")
    fmt = d.format_failure_rate(split=None)
    if fmt:
        problems = d.format_problems(split=None)
        top = next(iter(problems), "")
        by_model = sorted(((d.format_failure_rate(model=m, split=None) or 0.0, m) for m in d.models), reverse=True)
        bullets.append(f"**Format**: {_pct(fmt)} of answers fail the format check (most often: {top}); "
                       f"worst model {by_model[0][1]} at {_pct(by_model[0][0])}.")
    breach = d.latency_breach_rate(split=None)
    if breach:
        worst_model = max(d.models, key=lambda m: d.latency_breach_rate(model=m, split=None) or 0.0)
        bullets.append(f"**Latency**: {_pct(breach)} of answers exceed their model's latency target; worst "
                       f"{worst_model} at {_pct(d.latency_breach_rate(model=worst_model, split=None))}.")
    errors = d.error_rate(split=None)
    if errors:
        kinds = d._merged(split=None).error_kinds.most_common(3)
        bullets.append(f"**Errors**: {_pct(errors)} of calls ended in an error ("
                       + ", ".join(f"{k} ×{n}" for k, n in kinds) + ").")
    if d.contrasts:
        c = max(d.contrasts, key=lambda c: c.best_coverage - c.weak_coverage)
        bullets.append(f"**Best cells**: in {c.spectrum}, {c.best_model} states {c.field} in "
                       f"{_pct(c.best_coverage)} of answers, the weak cells in {_pct(c.weak_coverage)}.")
    return bullets


def _markdown(d: Diagnosis) -> str:
    overall = d.quality(split=None)
    lines = ["# Diagnosis: where the prompt fails", ""]
    if d.simulated:
        lines += ["*Simulated results (the offline simulated LLM world), not measurements of real models.*", ""]
    lines += [f"{d.n_rows} results, {len(d.models)} models × {len(d.spectrums)} spectrums; overall quality "
              f"{overall or 0.0:.1f} ({d.thresholds.level(overall or 0.0)}).", "", "## What fails", ""]
    lines += [f"- {b}" for b in _what_fails(d)]
    lines += ["", "## Cells, worst first", "",
              "| model | spectrum | quality | level | n | most missed | most wrong (stated → expected) "
              "| format fail | latency breach | errors |",
              "|---|---|---:|---|---:|---|---|---:|---:|---:|"]
    for c in sorted(d.cells, key=lambda c: (c.quality, c.model, c.spectrum)):
        missed = _listing(f"{f} {_pct(r)}" for f, r in list(c.missed.items())[:_TOP])
        wrong = _listing(f"{w.field} {_pct(w.rate)} ({w.stated!r} → {w.expected!r})"
                         for w in list(c.wrong.values())[:2])
        lines.append(f"| {_md(c.model)} | {_md(c.spectrum)} | {c.quality:.1f} | {c.level} | {c.n} | {_md(missed)} "
                     f"| {_md(wrong)} | {_pct(c.format_failure_rate)} | {_pct(c.latency_breach_rate)} "
                     f"| {_pct(c.error_rate)} |")
    lines += ["", "## What the best cells do differently", ""]
    if d.contrasts:
        lines += ["| spectrum | best cell | field | best cell states it | weak cells state it | weak cells |",
                  "|---|---|---|---:|---:|---|"]
        for c in d.contrasts:
            quality = d.cell(c.best_model, c.spectrum).quality
            lines.append(f"| {_md(c.spectrum)} | {_md(c.best_model)} ({quality:.1f}) | {_md(c.field)} | "
                         f"{_pct(c.best_coverage)} | {_pct(c.weak_coverage)} | {_md(', '.join(c.weak_models))} |")
    else:
        lines.append("No spectrum has both a clearly better cell and weak cells to contrast.")
    lines.append("")
    return "\n".join(lines)
