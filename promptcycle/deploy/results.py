"""The typed results of the deployment and canary flows, and of the tasks they are made of.

    result = await deployment(pipeline="customer-insights", canary=True)      # a DeploymentResult
    result.canary_id, result.gate.decision, result.stages["quality"].status
    result.model_dump()      # what `promptcycle deploy --json` prints (with the flow run's fields)

A deployment either releases the version (`status`, `targets`, `previous`) or starts a canary (`canary_id`,
`split_pct`, `control`, `treatment`, `plan`, `reason`); the fields of the other kind are not part of its
JSON, and `canary` (the canary flow's result) is there only when the canary ran on simulated traffic.

The results also read as the dicts these flows returned before they were typed (`result["canary_id"]`,
`result.get("canary")`, `{**result}`): each read is of `model_dump()`, so nested results read as dicts too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_serializer

from promptcycle.deploy.gate import GateDecision

__all__ = ["FlowResult", "StageOutcome", "ReleaseOutcome", "CanaryStart", "RunningCanary", "IngestedOutcomes",
           "CanaryConclusion", "CanaryResult", "DeploymentResult"]


class FlowResult(BaseModel):
    """A flow's typed result, readable as the mapping of its JSON fields (`model_dump()`)."""

    def _absent(self) -> set[str]:
        """Fields that are not part of this result's JSON (none by default)."""
        return set()

    @model_serializer(mode="wrap")
    def _without_absent(self, handler) -> dict[str, Any]:
        data = handler(self)
        for name in self._absent():
            data.pop(name, None)
        return data

    def keys(self) -> list[str]:
        return list(self.model_dump())

    def __getitem__(self, key: str) -> Any:
        return self.model_dump()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.model_dump()

    def get(self, key: str, default: Any = None) -> Any:
        return self.model_dump().get(key, default)


class StageOutcome(BaseModel):
    """How one validation stage ended: passed, failed or skipped, and why."""

    status: str
    reason: str


class ReleaseOutcome(BaseModel):
    """A version written to every target (all or nothing), the labels moved."""

    deployment_id: str
    status: str
    targets: list[dict[str, Any]]
    version: str
    previous: str | None  # the production version it replaced


class CanaryStart(BaseModel):
    """A canary started for the version: production and the targets stay as they are."""

    canary_id: str
    split_pct: float
    control: str
    treatment: str
    plan: dict[str, Any] | None  # the sequential test's design (horizon, power, variance source)
    reason: str | None


class RunningCanary(BaseModel):
    """The pipeline's running canary, as the canary flow finds it."""

    canary_id: str
    control: str
    treatment: str
    split_pct: float
    looks: int
    settings: dict[str, Any]  # the canary's configuration, frozen at its start


class IngestedOutcomes(BaseModel):
    """Production outcomes read from a JSONL file: lines read, recorded now, already recorded."""

    path: str
    lines: int
    new: int
    duplicates: int


class CanaryConclusion(BaseModel):
    """A canary ended: promoted (targets, then labels) or rolled back (production restored everywhere)."""

    deployment_id: str
    kind: str  # "promote" | "rollback"
    status: str
    version: str
    targets: list[dict[str, Any]]


class CanaryResult(FlowResult):
    """What the canary flow did: its looks, the last decision, and how the canary stands (`status`)."""

    canary_id: str
    pipeline: str
    control: str
    simulated: bool
    treatment: str
    looks: int
    simulated_requests: int
    action: str | None  # the last look's: "promote", "rollback" or "continue"; None when no look was taken
    reason: str | None
    split_pct: float
    decision: dict[str, Any] | None  # the last look's sequential-test decision with its evidence
    outcome: CanaryConclusion | None
    ingested: IngestedOutcomes | None
    status: str  # "promoted" | "rolled_back" | "running"


_RELEASED = ("status", "targets", "previous")
_CANARY_STARTED = ("canary_id", "split_pct", "control", "treatment", "plan", "reason")


class DeploymentResult(FlowResult):
    """What the deployment flow did: the version, every stage's outcome, the gate — then the release, or the
    canary it started (and, on simulated traffic, the canary flow's result)."""

    deployment_id: str
    pipeline: str
    kind: str  # "initial" | "deploy" | "canary"
    version: str
    production_before: str | None
    gate: GateDecision
    stages: dict[str, StageOutcome]
    # released
    status: str | None = None
    targets: list[dict[str, Any]] | None = None
    previous: str | None = None
    # a canary started
    canary_id: str | None = None
    split_pct: float | None = None
    control: str | None = None
    treatment: str | None = None
    plan: dict[str, Any] | None = None
    reason: str | None = None
    canary: CanaryResult | None = None

    @property
    def started_canary(self) -> bool:
        return self.canary_id is not None

    def _absent(self) -> set[str]:
        absent = set(_RELEASED if self.started_canary else _CANARY_STARTED)
        return absent | ({"canary"} if self.canary is None else set())
