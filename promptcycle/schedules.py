"""What `promptcycle serve` and `promptcycle deployments apply` register: every phase of every pipeline as one
Prefect deployment, with the pipeline's schedules and the parameters its runs get by default.

    baseline      cron `schedules.baseline` (in `schedules.timezone`), if set
    cycle         every `monitor.interval_minutes` when `schedules.monitor` (one pass: monitor, then healings)
    canary        every `schedules.canary_minutes` (a look; with no canary running it ends at once)
    optimization, deployment, monitor, healing: no schedule — started from the UI, the API, or by the loop

Pure data, no Prefect: flows/served.py turns each `DeploymentPlan` into a Prefect deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptcycle.config import PipelineConfig, PromptcycleConfig
from promptcycle.phases import PHASES, deployment_name

__all__ = ["DeploymentPlan", "plan_deployments", "SCHEDULED_PARAMETERS"]

SCHEDULED_PARAMETERS: dict[str, dict[str, Any]] = {"canary": {"if_running": True}}
"""Parameters a phase's scheduled runs get on top of the pipeline's (a scheduled canary look with no canary
running is not a failure)."""


@dataclass(frozen=True)
class DeploymentPlan:
    """One deployment: `phase` of `pipeline`, named `full_name` ("<flow>/<pipeline>")."""

    phase: str
    pipeline: str
    parameters: dict[str, Any]
    cron: str | None = None
    interval_seconds: float | None = None
    timezone: str = "UTC"
    schedule_parameters: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    @property
    def flow_name(self) -> str:
        return PHASES[self.phase]

    @property
    def name(self) -> str:
        """The deployment's own name: the pipeline's."""
        return self.pipeline

    @property
    def full_name(self) -> str:
        return deployment_name(self.phase, self.pipeline)

    @property
    def scheduled(self) -> bool:
        return self.cron is not None or self.interval_seconds is not None

    def schedule_text(self) -> str:
        """The schedule in words, e.g. "cron '0 2 * * *' (Europe/Paris)", "every 30 min", "not scheduled"."""
        if self.cron is not None:
            return f"cron '{self.cron}' ({self.timezone})"
        if self.interval_seconds is not None:
            minutes = self.interval_seconds / 60
            return f"every {minutes:g} min" if minutes >= 1 else f"every {self.interval_seconds:g} s"
        return "not scheduled"


def _schedule(phase: str, pipe: PipelineConfig) -> tuple[str | None, float | None]:
    s = pipe.schedules
    if phase == "baseline":
        return s.baseline, None
    if phase == "cycle" and s.monitor:
        return None, pipe.monitor.interval_minutes * 60.0
    if phase == "canary" and s.canary_minutes is not None:
        return None, s.canary_minutes * 60.0
    return None, None


def plan_deployments(config: PromptcycleConfig, config_path: str | Path, store_path: str | None = None,
                     pipelines: list[str] | None = None) -> list[DeploymentPlan]:
    """Every phase of every pipeline (or of `pipelines`), in the order of PHASES, pipelines sorted.

    `config_path` is what the runs get as their `config_path` parameter: where the process running them finds
    pipelines.yaml (an absolute path on this machine for `serve`; as the workers see it for a work pool)."""
    names = pipelines or sorted(config.pipelines)
    plans = []
    for name in names:
        pipe = config.pipeline(name)
        base = {"pipeline": name, "config_path": str(config_path)}
        if store_path is not None:
            base["store_path"] = str(store_path)
        for phase in PHASES:
            cron, interval = _schedule(phase, pipe)
            plans.append(DeploymentPlan(
                phase=phase, pipeline=name, parameters=dict(base), cron=cron, interval_seconds=interval,
                timezone=pipe.schedules.timezone, tags=("promptcycle", f"pipeline:{name}", f"phase:{phase}"),
                schedule_parameters=dict(SCHEDULED_PARAMETERS.get(phase, {})) if (cron or interval) else {}))
    return plans
