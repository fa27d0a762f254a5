"""One pass of the continuous-improvement loop for a pipeline: what a schedule runs.

    monitor (observe → assess → record → alert → decide) → the healings it decided → done

Today the loop's pass is the monitor with its healings; the learning that follows each optimization is recorded
by the optimization itself. `cycle` is the single entry point a schedule (`promptcycle serve`, a cron deployment)
or the API starts, so what a pass contains can grow without changing how it is scheduled.
"""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from promptcycle_flows.monitor import monitor
from promptcycle.monitor.report import MonitorSummary
from promptcycle_tasks.runs import run_name

__all__ = ["cycle"]


@flow(name="cycle", flow_run_name=run_name("cycle"))
async def cycle(pipeline: str = "customer-insights", config_path: str = "pipelines.yaml",
                store_path: str | None = None, now: datetime | None = None, heal: bool = True) -> MonitorSummary:
    """One pass of the loop for `pipeline` (see the module docstring).

    Args:
        pipeline: the pipeline's name in pipelines.yaml.
        config_path: path to pipelines.yaml.
        store_path: the DuckDB file (default: the config's `store`).
        now: the loop's clock (default: now).
        heal: run the healings the monitor decides.
    """
    return await monitor(pipeline=pipeline, config_path=config_path, store_path=store_path, now=now, heal=heal)
