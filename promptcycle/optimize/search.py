"""The search: screen candidates on dev, confirm the best on test against the current prompt, decide.

    arms = [Arm.of(run_id, "screen", current.hash, None, models, "dev", repeats, current=True), …]
    rows = rank_candidates(rows, dev_quality={hash_or_current: points}, top=3)   # who goes to confirmation
    paired = pair_observations(frame, current_run_id, {hash: run_id}, models=[…])
    results = confirm_candidates(paired.candidates, paired.baseline, paired.case_ids, spectrums=paired.spectrums, …)
    outcome, headline = decide_outcome(results, budget_exhausted=False)

An **arm** is one prompt evaluated with some models on one split with some repeats; each arm is its
own run in the store (kind 'screen' or 'confirm'), its id derived from the optimization's run id,
the kind, the prompt hash and the scope, so a re-run resumes it.

**Observations** are paired by (model, case, repeat): the candidate's answer to a case is compared
with the current prompt's answer to the same case, by the same model, on the same repeat. A
terminal error scores 0 (an answer that never came is a failed answer, as in every quality figure
of promptcycle); an observation missing from either arm is left out of both. The statistics
average models and repeats within each case, then sum cases within their cluster (the case, or
`optimization.cluster_field`) before the paired test.

**Error budget**: each confirmation against the pipeline's current prompt spends its share of
`optimization.alpha` (`promptcycle.stats.spending`); `confirmation_index` counts the earlier ones
from the stored confirmation decisions, which are the ledger.

The **outcome** of an optimization is one of

- ``candidate_found``             a candidate passed the confirmation (`promote`) and got the label;
- ``no_significant_improvement``  no candidate passed: not significant although the design could detect
                                  the minimum effect, below it, blocked by a spectrum's regression, or no
                                  candidate beat the current prompt on dev;
- ``underpowered``                no candidate passed and the design cannot detect the minimum effect at
                                  this N — a miss that says nothing either way;
- ``budget_exhausted``            a cap stopped the search before a decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from promptcycle.config import Thresholds
from promptcycle.datasets.cases import Case, cluster_of
from promptcycle.optimize.budget import BudgetEstimate
from promptcycle.promptdiff import diff_markdown, prompt_markdown

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SCREEN", "CONFIRM", "OUTCOMES", "Arm", "candidate_key", "evaluation_run_id", "CandidateRow", "arm_quality",
           "rank_candidates", "PairedObservations", "pair_observations", "decide_outcome",
           "OptimizationSummary", "candidates_table", "confirmation_markdown", "ArmCheck", "ScopeConfirmation",
           "diagnose_stored_run", "check_stored_arms", "ErrorControl", "case_clusters", "confirmation_index",
           "confirm_stored_arms"]

SCREEN, CONFIRM = "screen", "confirm"
OUTCOMES = ("candidate_found", "no_significant_improvement", "underpowered", "budget_exhausted")


def candidate_key(prompt_hash: str, scope: str | None = None) -> str:
    """A candidate's key in a search: its hash, and the model for a per-model candidate (the same text
    proposed for two models is two candidates)."""
    return prompt_hash if scope is None else f"{prompt_hash}@{scope}"


def evaluation_run_id(optimization_run_id: str, kind: str, prompt_hash: str, scope: str | None = None) -> str:
    """The run id of one arm: it starts with the optimization's id, so `MetricsStore.spend(run_id)`
    sums what the whole optimization paid."""
    return f"{optimization_run_id}/{kind}/{prompt_hash}" + (f"/{scope}" if scope else "")


class Arm(BaseModel):
    """One prompt evaluated with `models` on `split`, `repeats` times per case: one run in the store."""

    run_id: str
    kind: str  # 'screen' or 'confirm'
    prompt_hash: str
    scope: str | None  # the model a per-model candidate is for; None: every model
    models: list[str]
    split: str
    repeats: int
    current: bool = False  # the current prompt (the baseline's), not a candidate


class CandidateRow(BaseModel):
    """One candidate, as it moves through the search: the candidates table's row."""

    hash: str
    strategy: str
    scope: str | None = None
    rationale: str = ""
    # rejected (validation) | over_cap | failed | stopped (the budget ran out first) | unscreened | screened
    # | selected (for confirmation) | confirmed
    status: str
    reasons: list[str] = []
    dev_quality: float | None = None  # points
    dev_delta: float | None = None  # points over the current prompt on dev (same models)
    test_quality: float | None = None
    decision: str | None = None  # the confirmation's decision
    effect: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    adjusted_p_value: float | None = None

    def table_row(self) -> dict[str, Any]:
        """The artifact's row: readable numbers, no prompt text."""
        return {"candidate": f"{self.strategy} {self.hash[:8]}" + (f" ({self.scope})" if self.scope else ""),
                "status": self.status, "dev quality": _round(self.dev_quality),
                "Δ dev vs current": _round(self.dev_delta), "decision": self.decision or "",
                "effect (points)": _round(None if self.effect is None else 100 * self.effect),
                "p (Holm)": _round(self.adjusted_p_value, 4),
                "rationale": self.rationale, "why not": "; ".join(self.reasons)}


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def arm_quality(frame: pd.DataFrame) -> float | None:
    """Mean weighted score of the rows in points (0-100), a terminal error counting 0; None when empty."""
    if frame.empty:
        return None
    overall = frame["overall"].where(frame["error"].isna(), 0.0).fillna(0.0)
    return round(float(overall.mean()) * 100, 2)


def rank_candidates(rows: Sequence[CandidateRow], *, current_dev: Mapping[str | None, float | None],
                    top: int) -> list[CandidateRow]:
    """Order the screened candidates of each scope by dev quality and mark the `top` that beat the
    current prompt on dev (on the same models) as 'selected'. Returns the rows, best first."""
    out = [r.model_copy() for r in rows]
    for row in out:
        base = current_dev.get(row.scope)
        if row.status == "screened" and row.dev_quality is not None and base is not None:
            row.dev_delta = round(row.dev_quality - base, 2)
    for scope in dict.fromkeys(r.scope for r in out):
        screened = sorted((r for r in out if r.scope == scope and r.status == "screened" and r.dev_delta is not None),
                          key=lambda r: (-r.dev_quality, r.strategy, r.hash))
        for rank, row in enumerate(screened):
            if row.dev_delta > 0 and rank < top:
                row.status = "selected"
            elif row.dev_delta <= 0:
                row.reasons.append(f"no better than the current prompt on dev ({row.dev_delta:+.2f} points)")
            else:
                row.reasons.append(f"not among the best {top} on dev")
    order = {"selected": 0, "screened": 1}
    return sorted(out, key=lambda r: (order.get(r.status, 2), -(r.dev_quality or -1.0), r.strategy, r.hash))


class PairedObservations(BaseModel):
    """Observations of each candidate and of the current prompt, aligned position by position."""

    candidates: dict[str, list[float]]
    baseline: list[float]
    case_ids: list[str]
    spectrums: list[str]
    clusters: list[str] | None = None  # each observation's cluster (None: the case)
    models: list[str]
    dropped: int = 0  # (model, case, repeat) keys missing from some arm, left out of all

    @property
    def n_observations(self) -> int:
        return len(self.baseline)


def _scores(frame: pd.DataFrame) -> pd.Series:
    import pandas as pd

    scores = frame["overall"].where(frame["error"].isna(), 0.0).fillna(0.0).clip(0.0, 1.0)
    return pd.Series(scores.to_numpy(), index=pd.MultiIndex.from_frame(frame[["model", "case_id", "repeat"]]))


def pair_observations(frame: pd.DataFrame, current_run_id: str, candidate_runs: Mapping[str, str], *,
                      models: Sequence[str], clusters: Mapping[str, str] | None = None) -> PairedObservations:
    """Align the current prompt's and each candidate's observations by (model, case, repeat).

    `frame` holds every arm's rows (`MetricsStore.results_frame_many`); `candidate_runs` maps a
    candidate's name (its hash) to its arm's run id; only `models` are compared. `clusters` maps a
    case id to its cluster (`optimization.cluster_field`); None: every case is its own.
    """
    frame = frame[frame["model"].isin(list(models))]
    current = frame[frame["run_id"] == current_run_id]
    arms = {name: _scores(frame[frame["run_id"] == run_id]) for name, run_id in candidate_runs.items()}
    base = _scores(current)
    keys, union = base.index, base.index
    for scores in arms.values():
        keys, union = keys.intersection(scores.index), union.union(scores.index)
    keys = keys.sort_values()
    spectrum_of = dict(zip(current["case_id"], current["spectrum"]))
    return PairedObservations(
        candidates={name: scores.loc[keys].astype(float).tolist() for name, scores in arms.items()},
        baseline=base.loc[keys].astype(float).tolist(),
        case_ids=[str(case) for _, case, _ in keys], spectrums=[str(spectrum_of[case]) for _, case, _ in keys],
        clusters=None if clusters is None else [str(clusters[str(case)]) for _, case, _ in keys],
        models=list(models), dropped=len(union) - len(keys))


def decide_outcome(results: Mapping[str, Mapping[str, Any]], *,
                   budget_exhausted: bool = False) -> tuple[str, str | None]:
    """The optimization's outcome and its headline candidate (module docstring), from each confirmed
    candidate's result (`ConfirmationResult.to_dict()`).

    The headline is the promoted candidate with the largest effect, else the candidate with the
    smallest adjusted p-value (ties: the larger effect).
    """
    promoted = [k for k, r in results.items() if r["decision"] == "promote"]
    if promoted:
        return "candidate_found", max(promoted, key=lambda k: results[k]["effect"])
    if budget_exhausted:
        return "budget_exhausted", None
    if not results:
        return "no_significant_improvement", None
    headline = min(results, key=lambda k: (results[k]["adjusted_p_value"], -(results[k]["effect"] or 0.0)))
    decision = results[headline]["decision"]
    return ("underpowered" if decision == "underpowered" else "no_significant_improvement"), headline


class OptimizationSummary(BaseModel):
    """The typed result of an optimization run (what `promptcycle optimize --json` prints)."""

    run_id: str
    pipeline: str
    outcome: str  # one of OUTCOMES
    reason: str
    simulated: bool
    resumed: bool = False
    baseline_run_id: str
    current_hash: str
    strategies: list[str]
    per_model_prompts: bool = False
    # the headline candidate (the one labelled, when found) and its evidence
    candidate_hash: str | None = None
    candidate_strategy: str | None = None
    candidate_scope: str | None = None
    candidate_rationale: str | None = None
    candidate_system: str | None = None
    candidate_template: str | None = None
    # what the candidate is compared with in the report: the production version, else the current prompt
    compared_hash: str | None = None
    compared_label: str | None = None  # "production" | "current prompt"
    compared_system: str | None = None
    compared_template: str | None = None
    flow_run_id: str | None = None  # the optimization's flow run
    langsmith: dict | None = None  # the LangSmith mirror's report, when mirroring was on (MirrorReport.to_dict)
    baseline_flow_run_id: str | None = None
    labelled: list[dict[str, str | None]] = []  # {"scope": …, "hash": …} for every label moved
    decision: str | None = None
    effect: float | None = None  # mean per-case score difference, score units (0.01 = 1 point)
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None
    p_value: float | None = None
    adjusted_p_value: float | None = None
    n_cases: int | None = None
    n_observations: int | None = None
    repeats: float | None = None
    n_models: int | None = None
    test: str | None = None
    cluster_unit: str | None = None
    n_clusters: int | None = None
    error_budget: dict[str, Any] = {}
    mde: float | None = None
    underpowered: bool | None = None
    min_effect: float
    alpha: float
    per_spectrum: list[dict[str, Any]] = []
    current_test_quality: float | None = None  # points, on the confirmation's observations
    candidate_test_quality: float | None = None
    current_dev_quality: float | None = None
    candidates: list[CandidateRow] = []
    estimate: BudgetEstimate | None = None
    spend: dict[str, int | float] = {}  # calls, cost_usd, input_tokens, output_tokens paid by this optimization
    max_calls: int | None = None
    max_cost_usd: float | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    def evidence(self, data: Mapping[str, Any]) -> None:
        """Copy a confirmation's evidence (`ConfirmationResult.to_dict()`) into the headline fields."""
        for name in ("decision", "effect", "ci_low", "ci_high", "ci_level", "p_value", "adjusted_p_value",
                     "n_cases", "n_observations", "repeats", "test", "mde", "underpowered"):
            setattr(self, name, data[name])
        self.cluster_unit, self.n_clusters = data.get("cluster_unit"), data.get("n_clusters")
        self.error_budget = dict(data.get("error_budget") or {})
        self.per_spectrum = data["per_spectrum"]


# -- run in the data worker (where DuckDB, pandas, Great Expectations and scipy live) -------------------

def _open(store_path: str) -> Any:
    from promptcycle.store.metrics import MetricsStore

    return MetricsStore(store_path)


def diagnose_stored_run(store_path: str, run_id: str, baseline_run_id: str, *, thresholds: Thresholds,
                        cases: Sequence[Case], models: Sequence[str], scorers: Sequence[str]) -> str:
    """Diagnose the baseline run's results, store the diagnosis with optimization `run_id`, return its report."""
    from promptcycle.errors import RunFailedError
    from promptcycle.optimize.diagnosis import diagnose

    store = _open(store_path)
    frame = store.results_frame(baseline_run_id, scorers=list(scorers))
    if frame.empty:
        raise RunFailedError(f"baseline run {baseline_run_id} has no results to diagnose")
    diagnosis = diagnose(frame, thresholds=thresholds, cases=cases, models=list(models))
    store.write_diagnosis(run_id, baseline_run_id, diagnosis.to_dict())
    return diagnosis.to_markdown()


class ArmCheck(BaseModel):
    """Whether an arm has every observation, what the results suite said, and its quality."""

    run_id: str
    complete: bool
    observations: int
    expected: int
    problem: str | None = None  # why its results cannot be used (the results suite failed)
    quality: float | None = None  # points, over the arm's models
    quality_of: dict[str, float | None] = {}  # ",".join(models) -> points over those models only


def check_stored_arms(store_path: str, arms: Sequence[Arm], *, case_ids: Mapping[str, Sequence[str]],
                      scorers: Sequence[str], max_error_rate: float,
                      model_groups: Sequence[Sequence[str]] = (),
                      expectations: Sequence[Mapping[str, Any]] = ()) -> dict[str, ArmCheck]:
    """Check each arm's stored results: complete arms go through the results suite (stored as the arm
    run's data-quality result; the run is closed) and are scored; the current prompt's arm is also
    scored over each of `model_groups`. Incomplete arms (the budget stopped them) stay open."""
    from promptcycle.quality.suites import validate_results

    store = _open(store_path)
    frame = store.results_frame_many([a.run_id for a in arms], scorers=list(scorers))
    checks = {}
    for arm in arms:
        rows = frame[(frame["run_id"] == arm.run_id) & frame["model"].isin(arm.models)]
        ids = list(case_ids[arm.split])
        expected = len(arm.models) * len(ids) * arm.repeats
        done = int((rows["overall"].notna() | rows["error"].notna()).sum())
        check = ArmCheck(run_id=arm.run_id, complete=done >= expected, observations=done, expected=expected)
        if check.complete:
            report = validate_results(rows, expected_models=list(arm.models), expected_case_ids=ids,
                                      repeats=arm.repeats, scorer_names=list(scorers), max_error_rate=max_error_rate,
                                      expectations=expectations)
            store.write_dq_result(arm.run_id, "results", report.success, report.to_dict())
            check.quality = arm_quality(rows)
            check.problem = None if report.success else f"results suite failed: {report.summary()}"
            if arm.current:
                check.quality_of = {",".join(g): arm_quality(rows[rows["model"].isin(list(g))]) for g in model_groups}
            store.finish_run(arm.run_id, "completed" if report.success else "failed",
                             {"quality": check.quality, "rows": done, "results_suite": report.success})
        checks[arm.run_id] = check
    return checks


class ScopeConfirmation(BaseModel):
    """The confirmation of the candidates of one scope against the current prompt."""

    scope: str | None
    models: list[str]
    dropped: int
    current_quality: float  # points, over the paired observations
    candidate_quality: dict[str, float]
    results: dict[str, dict[str, Any]]  # candidate hash -> ConfirmationResult.to_dict()


class ErrorControl(BaseModel):
    """Where a confirmation sits in its pipeline's error budget (`promptcycle.stats.spending`)."""

    pipeline: str
    baseline_hash: str  # the current prompt the candidates are confirmed against
    run_id: str  # this optimization run
    scheme: str = "spending"  # or 'per_confirmation'
    first_share: float = 0.8


def case_clusters(cases: Sequence[Case], field: str | None) -> dict[str, str] | None:
    """Case id -> cluster for the confirmation test (`optimization.cluster_field`); None: by case.
    A case without a value is its own cluster (the pipeline's loader refuses such datasets first)."""
    if field is None:
        return None
    return {c.id: cluster_of(c, field) or f"case:{c.id}" for c in cases}


def confirmation_index(store: Any, control: ErrorControl) -> int:
    """1 + the number of other optimization runs whose confirmation was decided against the same current
    prompt of the pipeline (read from the stored decisions: the error-budget ledger). A resumed run keeps
    its own place; a run stopped by the budget before deciding spent nothing."""
    earlier = {d.run_id for d in store.decisions(pipeline=control.pipeline, kind="confirmation")
               if d.baseline_hash == control.baseline_hash and d.run_id != control.run_id
               and d.decision != "budget_exhausted"}
    return len(earlier) + 1


def confirm_stored_arms(store_path: str, current_run_id: str,
                        groups: Sequence[tuple[str | None, Sequence[str], Mapping[str, str]]], *,
                        scorers: Sequence[str], min_effect: float, alpha: float,
                        spectrum_margin: float, spectrum_alpha: float = 0.06,
                        clusters: Mapping[str, str] | None = None, cluster_unit: str = "case",
                        control: ErrorControl | None = None) -> list[ScopeConfirmation]:
    """The paired test of each group's candidates against the current prompt's arm.

    A group is (scope, models, {candidate hash: arm run id}). Within a group the candidates share the
    current prompt's observations and are Holm-corrected together; several groups (per-model
    prompts) split the level evenly (Bonferroni). The level is `alpha` itself without `control`; with it,
    this confirmation's share of the pipeline's error budget against its current prompt, recorded with
    every result (`error_budget`). `clusters` maps case ids to clusters named `cluster_unit`.
    """
    from promptcycle.stats.paired import confirm_candidates
    from promptcycle.stats.spending import error_budget

    store = _open(store_path)
    run_ids = [current_run_id] + [r for _, _, runs in groups for r in runs.values()]
    frame = store.results_frame_many(run_ids, scorers=list(scorers))
    if control is None:
        budget = error_budget(alpha, 1, scheme="per_confirmation")
    else:
        budget = error_budget(alpha, confirmation_index(store, control), control.first_share, scheme=control.scheme)
        budget |= {"current_prompt": control.baseline_hash}
    level = float(budget["level"]) / max(1, len(groups))
    budget |= {"scopes": len(groups), "level_per_scope": level}
    out = []
    for scope, models, runs in groups:
        paired = pair_observations(frame, current_run_id, runs, models=models, clusters=clusters)
        decided = confirm_candidates(paired.candidates, paired.baseline, paired.case_ids, spectrums=paired.spectrums,
                                     clusters=paired.clusters, cluster_unit=cluster_unit, min_effect=min_effect,
                                     alpha=level, spectrum_margin=spectrum_margin, spectrum_alpha=spectrum_alpha,
                                     error_budget=budget)
        out.append(ScopeConfirmation(
            scope=scope, models=list(models), dropped=paired.dropped,
            current_quality=round(100 * sum(paired.baseline) / len(paired.baseline), 2),
            candidate_quality={h: round(100 * sum(v) / len(v), 2) for h, v in paired.candidates.items()},
            results={h: r.to_dict() for h, r in decided.items()}))
    return out


def candidates_table(rows: Sequence[CandidateRow]) -> list[dict[str, Any]]:
    """The candidates artifact: one row per candidate, selected and screened first."""
    return [r.table_row() for r in rows]


def _points(x: float | None, signed: bool = True) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def _spend_line(s: OptimizationSummary) -> str:
    caps = [f"{s.max_calls:,} calls" if s.max_calls is not None else None,
            f"${s.max_cost_usd:g}" if s.max_cost_usd is not None else None]
    cap = " and ".join(c for c in caps if c) or "no cap"
    est = f"; estimated {s.estimate.total_calls:,} calls, ${s.estimate.total_cost_usd:.4f}" if s.estimate else ""
    return (f"Spend: {int(s.spend.get('calls', 0)):,} paid calls, ${s.spend.get('cost_usd', 0.0):.4f}, "
            f"{int(s.spend.get('input_tokens', 0)):,} input + {int(s.spend.get('output_tokens', 0)):,} output "
            f"tokens (budget: {cap}{est}).")


def _run_link(run_id: str, flow_run_id: str | None, url_of: Callable[[str], str | None] | None) -> str:
    url = url_of(flow_run_id) if url_of is not None and flow_run_id else None
    return f"[`{run_id}`]({url})" if url else f"`{run_id}`" + (f" (flow run `{flow_run_id}`)" if flow_run_id else "")


def _budget_line(budget: Mapping[str, Any]) -> str:
    if not budget:
        return "—"
    if budget.get("scheme") != "spending":
        return f"level {budget.get('level')} per confirmation (no control across cycles)"
    return (f"confirmation #{budget['index']} against the current prompt: level {budget['level_per_scope']:.4g} "
            f"spent, {budget['spent_before']:.4g} before, {budget['remaining_after']:.4g} of alpha "
            f"{budget['alpha']:g} left")


def confirmation_markdown(s: OptimizationSummary, url_of: Callable[[str], str | None] | None = None) -> str:
    """The confirmation artifact: the outcome, the runs it describes (linked to their flow runs when
    `url_of(flow_run_id)` gives a URL), the evidence, per-spectrum deltas, spend vs budget, and the
    candidate's text with its diff against production (or the current prompt)."""
    lines = [f"# Optimization — `{s.pipeline}`: **{s.outcome.replace('_', ' ')}**", ""]
    if s.simulated:
        lines += ["*Simulated results (the offline simulated LLM world): the gain is within that world.*", ""]
    lines += [s.reason, "", f"Run {_run_link(s.run_id, s.flow_run_id, url_of)} · baseline run "
              f"{_run_link(s.baseline_run_id, s.baseline_flow_run_id, url_of)} · current prompt "
              f"`{s.current_hash}`" + (f" · candidate `{s.candidate_hash}` ({s.candidate_strategy}"
                                       + (f", for {s.candidate_scope}" if s.candidate_scope else "") + ")"
                                       if s.candidate_hash else ""), ""]
    if s.effect is not None:
        level = f"{100 * s.ci_level:.0f}%" if s.ci_level else "CI"
        lines += ["| evidence | value |", "|---|---|",
                  f"| decision | {s.decision} |",
                  f"| effect (points) | {_points(s.effect)} |",
                  f"| {level} CI (points) | {_points(s.ci_low)} to {_points(s.ci_high)} |",
                  f"| p-value (one-sided; Holm-adjusted) | {s.p_value:.3g}; {s.adjusted_p_value:.3g} |",
                  f"| cases (N) · observations · per case | {s.n_cases} · {s.n_observations} · {s.repeats:g} |",
                  f"| test · clustered by | {s.test} · {s.cluster_unit or 'case'} ({s.n_clusters} clusters) |",
                  f"| MDE of the rule at this N and level (points) | {_points(s.mde, signed=False)}"
                  + (" — underpowered for the minimum effect" if s.underpowered else "") + " |",
                  f"| minimum effect · alpha | {_points(s.min_effect, signed=False)} · {s.alpha:g} |",
                  f"| error budget | {_budget_line(s.error_budget)} |",
                  f"| test quality current → candidate | {s.current_test_quality} → {s.candidate_test_quality} |",
                  ""]
    if s.per_spectrum:
        lines += ["| spectrum | Δ (points) | harm test upper bound | cases | harmed |", "|---|---:|---:|---:|---|"]
        for sp in s.per_spectrum:
            lines.append(f"| {sp['spectrum']} | {_points(sp['delta'])} | {_points(sp.get('upper_bound'))} | "
                         f"{sp['n_cases']} | {'**yes**' if sp.get('harmed') else 'no'} |")
        lines.append("")
    lines.append(_spend_line(s))
    if s.candidate_hash and s.candidate_template is not None:
        lines += ["", f"## Candidate `{s.candidate_hash}` ({s.candidate_strategy})", "",
                  prompt_markdown(s.candidate_system, s.candidate_template)]
        if s.compared_hash and s.compared_template is not None:
            lines += ["", f"## Diff against {s.compared_label} `{s.compared_hash}`", "",
                      diff_markdown((s.compared_system, s.compared_template),
                                    (s.candidate_system, s.candidate_template),
                                    f"{s.compared_label} {s.compared_hash}", f"candidate {s.candidate_hash}")]
    return "\n".join(lines)
