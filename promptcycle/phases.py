"""The phases of the loop, and the name each one is served under as a Prefect deployment.

Every phase is one Prefect flow (`flows/`); served, each pipeline gets one deployment of it, named after the
pipeline, so the full deployment name is ``"<flow>/<pipeline>"`` — for example ``"monitor/customer-insights"``.
The HTTP API's trigger endpoint, `promptcycle serve`, `deployments apply` and healing's `run_deployment` all
go through `deployment_name`.
"""

from __future__ import annotations

from promptcycle.errors import ConfigError

PHASES: dict[str, str] = {
    "baseline": "baseline",
    "optimization": "optimization",
    "deployment": "deployment",
    "canary": "canary",
    "monitor": "monitor",
    "healing": "healing",
    "cycle": "cycle",
}
"""Phase name (as users and the API say it) -> Prefect flow name."""

ALIASES = {"optimize": "optimization", "deploy": "deployment"}


def flow_name(phase: str) -> str:
    """The Prefect flow name of a phase (accepts the CLI's verbs `optimize` and `deploy` too)."""
    key = ALIASES.get(phase, phase)
    if key not in PHASES:
        raise ConfigError(f"unknown phase {phase!r}: expected one of {', '.join(PHASES)}")
    return PHASES[key]


def deployment_name(phase: str, pipeline: str) -> str:
    """The full Prefect deployment name ``"<flow>/<pipeline>"`` a pipeline's phase is served under."""
    return f"{flow_name(phase)}/{pipeline}"
