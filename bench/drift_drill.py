"""Drift drill: the continuous-improvement loop on SIMULATED production, with a simulated clock.

    .venv/bin/python bench/drift_drill.py [--scenario repairable|unrepairable] [--model small]
        [--spectrum credit_analysis] [--size 8] [--stable 50] [--after 10] [--cases 60] [--spectrums 2] [--json]

What it runs (everything simulated — the built-in simulator, in process):

1. a fresh store and pipelines.yaml in a temporary directory: the bundled pipeline with one serving model
   (`--model`), its first `--spectrums` spectrums (the drifted one included), `monitor.probe_cases = --cases`;
2. `--stable` monitor periods (30 simulated minutes apart, the clock ending near the real time) with no drift: each
   period is the monitor's own steps (promptcycle/monitor/watch.py: plan, the probe through the cell evaluation,
   observations, assessment from stored state, the alert policy, incidents and healing decisions);
3. then a simulated drift on the serving model × `--spectrum` from the next period on: `field_omission` of `--size`
   points (repairable: a prompt naming the fields repairs it) or `skill_loss` of `--size` points (the model lost
   skill there: no prompt gives it back — a latency regression was tried first, but at the pipeline's weights
   (latency 0.1) a 1.8× slowdown costs under 1 point, below what the drill must show);
4. when the monitor decides a healing, the real `healing` flow runs (Prefect's temporary server; optimization →
   deployment as a canary with simulated traffic → record), then `--after` more monitor periods.

It prints: false pages in the stable period (pages at high/critical), the detection delay in runs, pages per
incident (raised + repeated at a paging severity, and whether the recovery notice came), the healing's optimization
calls and cost, the canary decision, the drifted series' quality before the drift (mean of the last 10 stable
periods), during it (periods between the drift and the healing) and after healing (mean of the `--after` periods),
promotions of a worse prompt (a promoted version whose post-healing quality is below the during-drift quality), and
the outcome (healed or escalated).

Known limits of this first version, stated in its output: the canary's simulated traffic is answered by the
undrifted simulator (deploy/traffic.py calls the simulated world without the drift schedule), so the canary compares
candidate and production prompts on the undrifted world.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

os.environ.setdefault("PROMPTCYCLE_DATA_IN_PROCESS", "1")
for key, value in {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
                   "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
                   "PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": "false",
                   "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "PREFECT_LOGGING_LEVEL": "ERROR"}.items():
    os.environ.setdefault(key, value)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

PIPE = "customer-insights"
INTERVAL = 30


def write_config(root: Path, args, drift_start: datetime) -> Path:
    data = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    pipe = data["pipelines"][PIPE]
    spectrums = pipe["dataset"]["spectrums"]
    chosen = [args.spectrum] + [s for s in spectrums if s != args.spectrum][:max(0, args.spectrums - 1)]
    pipe["dataset"]["spectrums"] = chosen
    pipe.setdefault("deployment", {})["serving_models"] = [args.model]
    pipe["monitor"] = {"interval_minutes": INTERVAL, "probe_cases": args.cases}
    pipe["healing"] = {"canary_requests": args.canary_requests}
    sim_model = data["models"][args.model]["model"]
    drift = ({"kind": "field_omission", "model": sim_model, "spectrum": args.spectrum, "size": args.size}
             if args.scenario == "repairable" else
             {"kind": "skill_loss", "model": sim_model, "spectrum": args.spectrum, "size": args.size})
    data["simulation"] = {"drifts": [dict(drift, start_at=drift_start.isoformat())]}
    data["store"] = "metrics.duckdb"
    data.setdefault("alerts", {})["channels"] = [{"kind": "file", "options": {"path": "alerts.jsonl"}}]
    path = root / "pipelines.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def deploy_configured_prompt(config_path: Path) -> None:
    """The drill starts from a deployed pipeline: the configured prompt holds the `production` label (as after a
    first, direct `promptcycle deploy`; the label is set on the store here, without the deployment stages)."""
    from promptcycle.evaluation.context import load_pipeline
    from promptcycle.store import MetricsStore
    from promptcycle.store.records import PromptVersionRecord

    ctx = load_pipeline(config_path, PIPE)
    store = MetricsStore(ctx.store_path)
    prompt = ctx.prompt
    store.write_prompt_version(PromptVersionRecord(
        prompt_hash=prompt.hash, pipeline=PIPE, system=prompt.system, template=prompt.template,
        variables=prompt.variables, parent_hash=None, strategy="baseline", rationale="The configured prompt.",
        scope=None, created_at=datetime.now(timezone.utc)))
    store.move_label(PIPE, "production", prompt.hash, actor="drift drill", reason="the drill's starting point")


async def probe(ctx, store, plan, schedule) -> int:
    """The period's probe cells through the cell evaluation, with a simulator whose drifts follow the drill's clock."""
    from promptcycle.evaluation.cells import evaluate_cell
    from promptcycle.monitor.watch import probe_cell_spec
    from promptcycle.providers import build_provider
    from promptcycle.scoring import build_scorers

    pname = ctx.config.models[plan.serving_models[0]].provider
    models = {m: c for m, c in ctx.config.models.items() if c.provider == pname}
    provider = build_provider(pname, ctx.config.providers[pname], models, drift=schedule)
    calls = 0
    try:
        for model, spectrum in plan.probe_cells:
            out = await evaluate_cell(probe_cell_spec(ctx, store, plan, model, spectrum), provider=provider,
                                      provider_name=pname, scorers=build_scorers(ctx.pipeline.scorers), store=store)
            calls += out.called
    finally:
        await provider.aclose()
    return calls


def monitor_pass(config_path: Path, now: datetime, schedule):
    from promptcycle.alerts import process_findings
    from promptcycle.evaluation.context import load_pipeline
    from promptcycle.monitor.response import respond
    from promptcycle.monitor.watch import alert_findings, assess_series, collect_observations, plan_monitor
    from promptcycle.store import MetricsStore

    ctx = load_pipeline(config_path, PIPE)
    store = MetricsStore(ctx.store_path)
    plan = plan_monitor(ctx, store, now)
    calls = asyncio.run(probe(ctx, store, plan, schedule)) if plan.probe_cells else 0
    collect_observations(ctx, store, plan)
    series = assess_series(ctx, store, plan)
    events = process_findings(store, ctx.config, PIPE, alert_findings(PIPE, series), now)
    starts = respond(store, PIPE, ctx.pipeline.healing, series, now)
    return series, events, starts, calls


def run(args) -> dict:
    from promptcycle.catalog import load_config
    from promptcycle.sim.drift import DriftSchedule
    from promptcycle.store import MetricsStore

    root = Path(tempfile.mkdtemp(prefix="drift-drill-"))
    total = args.stable + args.max_drift_periods + args.after
    clock = {"now": None}
    t0 = (datetime.now(timezone.utc) - timedelta(minutes=INTERVAL * (total + 2))).replace(second=0, microsecond=0)

    def period_time(i: int) -> datetime:
        return t0 + timedelta(minutes=INTERVAL * i)

    drift_start = period_time(args.stable + 1) - timedelta(seconds=1)
    config_path = write_config(root, args, drift_start)
    config = load_config(config_path)
    deploy_configured_prompt(config_path)
    schedule = DriftSchedule([d.to_drift() for d in config.simulation.drifts], clock=lambda: clock["now"])
    values: list[tuple[int, float]] = []
    pages: list[tuple[int, str, str]] = []
    recovered = False
    healing_result, healed_at, detected_at, probe_calls = None, None, None, 0
    i, after_left = 0, None
    started = time.perf_counter()
    while True:
        i += 1
        now = clock["now"] = period_time(i)
        series, events, starts, calls = monitor_pass(config_path, now, schedule)
        probe_calls += calls
        s = next(x for x in series if x.spectrum == args.spectrum)
        values.append((i, s.value))
        for e in events:
            alert = MetricsStore(root / "metrics.duckdb").get_alert(e.alert_id)
            if alert.detector == "quality" and alert.spectrum == args.spectrum and e.notify:
                if e.severity in ("high", "critical") and e.kind in ("raised", "repeated", "escalated"):
                    pages.append((i, e.kind, e.severity))
                if e.kind == "recovered":
                    recovered = True
        if detected_at is None and i > args.stable and any(j > args.stable for j, _, _ in pages):
            detected_at = i
        if starts and healing_result is None:
            from promptcycle_flows.healing import healing

            start = starts[0]
            healing_result = asyncio.run(healing(pipeline=PIPE, decision_id=start.decision_id, incident_id=start.incident_id,
                                     model=start.model, spectrum=start.spectrum, config_path=str(config_path),
                                     alert_id=start.alert_id, now=now))
            healed_at = i
            after_left = args.after
        elif after_left is not None:
            after_left -= 1
        if after_left == 0 or i >= total:
            break
    store = MetricsStore(root / "metrics.duckdb")
    stable = [v for j, v in values if j <= args.stable]
    during = [v for j, v in values if args.stable < j <= (healed_at or i)]
    after = [v for j, v in values if healed_at is not None and j > healed_at]
    before_q = sum(stable[-10:]) / len(stable[-10:])
    during_q = sum(during) / len(during) if during else None
    after_q = sum(after) / len(after) if after else None
    promoted = [c for c in store.canaries(PIPE) if c.status == "promoted"]
    worse = int(bool(promoted) and after_q is not None and during_q is not None and after_q < during_q)
    incidents = store.incidents(PIPE)
    return {
        "scenario": args.scenario, "simulated": True, "model": args.model, "spectrum": args.spectrum,
        "size_points": args.size, "probe_cases": args.cases, "stable_periods": args.stable,
        "false_pages_stable": sum(1 for j, _, _ in pages if j <= args.stable),
        "detection_delay_runs": (detected_at - args.stable) if detected_at else None,
        "pages_per_incident": len([p for p in pages if p[0] > args.stable]),
        "recovery_notice": recovered,
        "quality_before": round(before_q, 2), "quality_during": None if during_q is None else round(during_q, 2),
        "quality_after": None if after_q is None else round(after_q, 2),
        "worse_promotions": worse,
        "healing_calls": healing_result.calls if healing_result else 0,
        "healing_cost_usd": healing_result.cost_usd if healing_result else 0.0,
        "optimization_outcome": healing_result.optimization_outcome if healing_result else None,
        "canary_decision": healing_result.canary_status if healing_result else None,
        "outcome": ("healed" if healing_result and healing_result.outcome == "healed" else
                    "escalated" if healing_result and healing_result.outcome == "escalated" else
                    (healing_result.outcome if healing_result else "no healing started")),
        "incident_status": incidents[0]["status"] if incidents else None,
        "probe_calls": probe_calls, "periods": i, "wall_seconds": round(time.perf_counter() - started, 1),
        "series": [round(v, 2) for _, v in values],
        "note": "canary traffic is answered by the undrifted simulator in this version",
        "workdir": str(root),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=["repairable", "unrepairable"], default="repairable")
    p.add_argument("--model", default="xl", help="serving model (a name from `models`)")
    p.add_argument("--spectrum", default="credit_analysis")
    p.add_argument("--size", type=float, default=8.0, help="drift size in points")
    p.add_argument("--stable", type=int, default=50)
    p.add_argument("--after", type=int, default=10)
    p.add_argument("--max-drift-periods", type=int, default=15)
    p.add_argument("--cases", type=int, default=60, help="monitor.probe_cases (calls per series per period)")
    p.add_argument("--spectrums", type=int, default=3)
    p.add_argument("--canary-requests", type=int, default=2000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    print(f"drift drill — {result['scenario']} (SIMULATED): {args.model} × {args.spectrum}, {args.size:g} points")
    for k, v in result.items():
        if k not in ("series",):
            print(f"  {k:<22} {v}")
    print("  series: " + " ".join(f"{v:.1f}" for v in result["series"]))


if __name__ == "__main__":
    main()
