"""Rows of the metrics store as dataclasses, and their conversion to and from DuckDB.

Times are UTC. The database keeps them as naive `TIMESTAMP`s in UTC; records read back carry
`tzinfo=timezone.utc`, and an aware time written in another zone is converted first. A naive time
given to a record is taken to be UTC already.

Writes go through Arrow tables with explicit types, so a column that happens to be all-NULL in a
batch still has the right type and DuckDB ingests the batch in one columnar insert.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any


__all__ = [
    "RUN_STATUSES",
    "LABELS",
    "DECISION_KINDS",
    "RunRecord",
    "ResponseRecord",
    "ResultRecord",
    "PromptVersionRecord",
    "LabelEvent",
    "DecisionRecord",
    "DEPLOYMENT_KINDS",
    "DEPLOYMENT_STATUSES",
    "CANARY_STATUSES",
    "STAGES",
    "DeploymentRecord",
    "CanaryRecord",
    "ProductionResult",
    "utc_now",
    "to_db_time",
    "from_db_time",
    "dump_json",
]

RUN_STATUSES = ("running", "completed", "failed")
# What a label says about the version it points at: serving, being tried, the one to roll back to.
LABELS = ("production", "candidate", "previous")
# Which step took a decision; later phases add theirs here.
DECISION_KINDS = ("confirmation", "gate", "canary")


# What a deployment event did, and where it ended.
DEPLOYMENT_KINDS = ("initial", "deploy", "canary", "promote", "rollback", "canary_rollback")
DEPLOYMENT_STATUSES = ("validating", "blocked", "deployed", "canary", "failed")
CANARY_STATUSES = ("running", "promoted", "rolled_back", "failed")
# The validation stages, in the order they run.
STAGES = ("syntax", "content", "integration", "quality")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def to_db_time(value: datetime | None) -> datetime | None:
    """UTC, naive, as the database stores it."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def from_db_time(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=timezone.utc)


def _json_default(value: Any) -> Any:
    # numpy scalars (from pandas aggregates) and times are common in reports; anything else is a bug.
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dump_json(value: Any) -> str | None:
    """Compact JSON (no spaces) for the store's `*_json` and explanation columns; a str passes through."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)


@dataclass
class RunRecord:
    """One run of a phase (`kind`: 'baseline', later 'optimization', 'monitoring', …).

    `fingerprint` hashes what makes two runs the same work: a re-run with the same fingerprint
    resumes the latest unfinished run instead of starting over. `config_json` is the pipeline's
    configuration as JSON — never secrets. `summary_json` is written when the run finishes.
    """

    run_id: str
    pipeline: str
    kind: str
    fingerprint: str
    status: str = "running"
    prompt_hash: str | None = None
    dataset_hash: str | None = None
    models: list[str] = field(default_factory=list)
    repeats: int = 1
    case_limit: int | None = None
    simulated: bool = False
    config_json: str | None = None
    flow_run_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    summary_json: str | None = None

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.config_json) if self.config_json else {}

    @property
    def summary(self) -> dict[str, Any] | None:
        return json.loads(self.summary_json) if self.summary_json else None


@dataclass
class ResponseRecord:
    """One paid model call in the ledger; `call_key` identifies the call (the caller hashes it).

    `model` is the provider's model id, `run_id` the run that paid for the call. `attempts` counts
    every request sent for it (retries included); `wait_ms` is the time it spent queueing and backing
    off between attempts, apart from `latency_ms` (the answering attempt's own duration).
    """

    call_key: str
    provider: str
    model: str
    prompt_hash: str | None
    case_id: str | None
    repeat: int | None
    output: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    attempts: int | None = None
    simulated: bool = False
    created_at: datetime | None = None
    run_id: str | None = None
    wait_ms: float | None = None
    provider_model: str | None = None  # the model id the provider said answered (`model` in its response)
    finish_reason: str | None = None  # the provider's; "length" means max_tokens cut the answer
    tokens_source: str | None = None  # "provider", or "estimated" when its counts were missing or implausible


@dataclass
class ResultRecord:
    """One observation: a (run, model, case, repeat) with its scores, or the terminal error it ended in.

    `scores` maps scorer name to a value in [0, 1]; `explanation` is compact JSON (a dict is
    serialised on write). The output text is not here: it lives once in `responses`, under `call_key`
    (None when the call failed).
    """

    run_id: str
    model: str
    case_id: str
    repeat: int
    spectrum: str | None = None
    split: str | None = None
    prompt_hash: str | None = None
    call_key: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    overall: float | None = None
    explanation: str | dict[str, Any] | None = None
    latency_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    attempts: int | None = None
    error: str | None = None
    error_kind: str | None = None
    simulated: bool | None = None
    created_at: datetime | None = None
    wait_ms: float | None = None
    finish_reason: str | None = None  # of the answer scored; "length" flags a truncated answer
    tokens_source: str | None = None  # "provider" or "estimated" (see ResponseRecord)


@dataclass
class PromptVersionRecord:
    """An immutable prompt version, keyed by its content hash.

    `parent_hash` is the version it was derived from, `strategy` and `rationale` say how and why;
    `scope` is the model it is meant for, or None for every model.
    """

    prompt_hash: str
    pipeline: str
    system: str
    template: str
    variables: list[str] = field(default_factory=list)
    parent_hash: str | None = None
    strategy: str | None = None
    rationale: str | None = None
    scope: str | None = None
    created_at: datetime | None = None


@dataclass
class LabelEvent:
    """One move of a prompt label, as the append-only history records it.

    `from_hash` is the version the label pointed at before (None for its first placement),
    `to_hash` the one it points at after. `actor` is who or what moved it (a user, a flow run),
    `reason` why, `evidence` the numbers behind the move, and `forced` marks a move made by hand
    past the checks that would normally decide it. `scope` is '' for every model, else a model name.
    """

    event_id: str
    pipeline: str
    label: str
    scope: str
    from_hash: str | None
    to_hash: str
    actor: str
    reason: str
    evidence: dict[str, Any] | None = None
    forced: bool = False
    created_at: datetime | None = None


@dataclass
class DecisionRecord:
    """A decision about a candidate prompt (`prompt_hash`) against `baseline_hash`, with its evidence.

    `kind` is the step that decided (one of `DECISION_KINDS`); `decision` is its outcome, e.g.
    'promote', 'no_improvement', 'underpowered', 'regression_in_spectrum' or 'budget_exhausted';
    `evidence` holds the effect, CI, p-value, N, the test used, the MDE, per-spectrum deltas … A
    decision is keyed by (run_id, prompt_hash, kind): writing it again replaces it, keeping its
    `decision_id` (assigned by the store when None).
    """

    run_id: str
    pipeline: str
    kind: str
    prompt_hash: str
    decision: str
    baseline_hash: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    decision_id: str | None = None
    created_at: datetime | None = None


@dataclass
class DeploymentRecord:
    """One deployment event of a pipeline's prompt: who or which flow (`actor`), when, from which
    version to which, why, with what evidence, and what each target did.

    `kind` is one of `DEPLOYMENT_KINDS`, `status` one of `DEPLOYMENT_STATUSES`; `forced` marks a
    deployment pushed past a failing validation stage. `targets` lists one dict per target
    (name, kind, status, detail). `seq` orders a pipeline's deployments (assigned by the store).
    """

    deployment_id: str
    pipeline: str
    kind: str
    status: str
    to_hash: str
    actor: str
    scope: str = ""
    from_hash: str | None = None
    forced: bool = False
    reason: str | None = None
    targets: list[dict[str, Any]] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    flow_run_id: str | None = None
    seq: int | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass
class CanaryRecord:
    """A canary: `treatment_hash` served to `split_pct` percent of requests, `control_hash` (production)
    to the rest, until the sequential test or a guardrail ends it.

    `step` indexes the split schedule in `settings` (the canary's configuration, frozen at start);
    `step_start_treatment` is the treatment's request count when the current step began; `decision`
    is the last look's evidence. `status` is one of `CANARY_STATUSES`.
    """

    canary_id: str
    pipeline: str
    control_hash: str
    treatment_hash: str
    actor: str
    scope: str = ""
    deployment_id: str | None = None
    status: str = "running"
    step: int = 0
    split_pct: float = 0.0
    step_start_treatment: int = 0
    looks: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    decision: dict[str, Any] | None = None
    reason: str | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass
class ProductionResult:
    """The outcome of one production request, as the serving application reports it.

    `prompt_hash` is the version that served it; `score` in [0, 1] or None (not scored); `error`
    whether the request failed. `canary_id` and `arm` are what `resolve_prompt` returned, when known.
    """

    pipeline: str
    request_id: str
    prompt_hash: str
    error: bool = False
    score: float | None = None
    latency_ms: float | None = None
    model: str | None = None
    scope: str = ""
    canary_id: str | None = None
    arm: str | None = None
    metadata: dict[str, Any] | None = None
    created_at: datetime | None = None
