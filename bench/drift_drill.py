"""Drift drill: the continuous-improvement loop on SIMULATED production, with a simulated clock.

    .venv/bin/python bench/drift_drill.py [--scenario repairable|unrepairable] [--model xl]
        [--spectrum credit_analysis] [--kind KIND] [--size POINTS] [--stable 50] [--after 10] [--cases 60]
        [--spectrums 3] [--models xl,...] [--temperature 0.7] [--json]

What it runs (everything simulated — the built-in simulator, in process):

1. a fresh store and pipelines.yaml in a temporary directory: the bundled pipeline evaluated on `--models`
   (default: the serving model alone) and served by one model (`--model`), its first `--spectrums` spectrums (the
   drifted one included), `monitor.probe_cases = --cases`;
2. **production is already optimized**: the `optimization` flow runs on the configured prompt in the undrifted
   world and its winner goes out with the `deployment` flow (the pipeline's first deployment). `unrepairable` runs
   every strategy, so a later healing has nothing left to find but a repair; `repairable` runs the levers that do not
   name fields (`--setup-strategies` to choose), so the field_omission drift meets a prompt that does not name them;
3. `--stable` monitor periods (30 simulated minutes apart, the clock ending near the real time) with no drift: each
   period is the monitor's own steps (promptcycle/monitor/watch.py: plan, the probe through the cell evaluation,
   observations, assessment from stored state, the alert policy, incidents and healing decisions);
4. then a simulated drift of the serving model × `--spectrum` from the next period on (written into the `simulation:`
   section of pipelines.yaml, so every simulated call of the pipeline sees it: the probe on the drill's clock, the
   healing's evaluations and its canary's traffic on the real clock, which is past the drift's start):
   - `repairable` (default kind `field_omission`): the model starts omitting the spectrum's fields unless the
     instructions name them — a prompt that names them repairs it;
   - `unrepairable` (default kind `skill_loss`): the model lost `--size` points of skill there — no prompt gives it
     back (`--kind latency` / `error_rate` try the other drifts; at the pipeline's weights a latency regression
     costs little quality, and the client's retries absorb most of an error rate);
5. when the monitor decides a healing, the real `healing` flow runs (Prefect's temporary server; a baseline of the
   production prompt on the degraded model, an optimization of a prompt for that model alone, deployment as a
   canary with simulated traffic, record, learn), then `--after` more monitor periods.

It prints: false pages in the stable period (pages at high/critical), the detection delay in runs (1 = paged on the
first drifted period), pages per incident (raised + repeated at a paging severity; the healing's escalation and the
recovery notice are counted apart), the healing's calls and cost (its baseline and optimization), the canary
decision, the drifted series' quality before the drift (mean of the last 10 stable periods), during it (periods
between the drift and the healing) and after healing (mean of the `--after` periods), promotions of a worse prompt
(a promoted version whose post-healing quality is below the during-drift quality), deployments made after the
setup, and the outcome (healed or escalated). `--json` prints the same as one object.
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


DEFAULT_KIND = {"repairable": "field_omission", "unrepairable": "skill_loss"}
# The optimized prompt a scenario starts from. Unrepairable: every strategy, so a healing has nothing left to find
# but a repair of the drift (and a skill loss has none). Repairable: the levers that do not name fields, so the
# field_omission drift (a model that stops reporting fields the instructions do not name) meets a production
# prompt that does not name them — as a prompt optimized before the model changed would not need to. (few_shot
# names fields too: its examples list them.)
DEFAULT_SETUP = {"repairable": ["format_spec", "grounding", "step_structure", "shorten"],
                 "unrepairable": None}
DEFAULT_SIZE = {"repairable": 8.0, "unrepairable": 20.0}  # the optimized prompt is less skill-sensitive


def write_config(root: Path, args, drift_start: datetime | None) -> Path:
    """pipelines.yaml of the drill; with `drift_start`, the drift in its `simulation:` section."""
    data = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    pipe = data["pipelines"][PIPE]
    spectrums = pipe["dataset"]["spectrums"]
    chosen = [args.spectrum] + [s for s in spectrums if s != args.spectrum][:max(0, args.spectrums - 1)]
    pipe["dataset"]["spectrums"] = chosen
    pipe["models"] = list(dict.fromkeys([args.model] + [m for m in (args.models or "").split(",") if m]))
    pipe.setdefault("deployment", {})["serving_models"] = [args.model]
    for name in pipe["models"]:  # > 0: each period's probe answers differ (its repeats seed the sampling)
        data["models"][name]["temperature"] = args.temperature
    pipe["monitor"] = {"interval_minutes": INTERVAL, "probe_cases": args.cases}
    pipe["healing"] = {"canary_requests": args.canary_requests}
    data["simulation"] = {"drifts": []}
    if drift_start is not None:
        drift = {"kind": args.kind, "model": data["models"][args.model]["model"], "spectrum": args.spectrum,
                 "size": args.size, "start_at": drift_start.isoformat()}
        data["simulation"]["drifts"] = [drift]
    data["store"] = "metrics.duckdb"
    data.setdefault("alerts", {})["channels"] = [{"kind": "file", "options": {"path": "alerts.jsonl"}}]
    path = root / "pipelines.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def optimize_and_deploy(config_path: Path, strategies: list[str] | None) -> dict:
    """The drill's starting point, as a team would reach it: the optimization flow on the configured prompt (in the
    undrifted world), then the deployment flow puts its winner in production (the pipeline's first deployment)."""
    from promptcycle_flows.deployment import deployment
    from promptcycle_flows.optimization import optimization

    summary = asyncio.run(optimization(pipeline=PIPE, config_path=str(config_path), strategies=strategies))
    version = summary.candidate_hash if summary.outcome == "candidate_found" else None
    outcome = asyncio.run(deployment(pipeline=PIPE, config_path=str(config_path), version=version,
                                     actor="drift drill (setup)"))
    spend = summary.spend or {}
    return {"setup_strategies": strategies or "optimization.strategies", "setup_optimization": summary.outcome, "setup_effect_points": None if summary.effect is None
            else round(100 * summary.effect, 2), "setup_calls": int(spend.get("calls", 0)),
            "production_version": outcome.version, "setup_deployment": outcome.deployment_id}


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
    from promptcycle.sim.drift import schedule_from
    from promptcycle.store import MetricsStore

    root = Path(tempfile.mkdtemp(prefix="drift-drill-"))
    total = args.stable + args.max_drift_periods + args.after
    clock = {"now": None}
    t0 = (datetime.now(timezone.utc) - timedelta(minutes=INTERVAL * (total + 2))).replace(second=0, microsecond=0)

    def period_time(i: int) -> datetime:
        return t0 + timedelta(minutes=INTERVAL * i)

    started = time.perf_counter()
    setup = optimize_and_deploy(write_config(root, args, None), args.setup_strategies)  # production is optimized
    drift_start = period_time(args.stable + 1) - timedelta(seconds=1)
    config_path = write_config(root, args, drift_start)
    config = load_config(config_path)
    schedule = schedule_from(config.simulation, clock=lambda: clock["now"])
    store = MetricsStore(root / "metrics.duckdb")
    setup_deployments = {d.deployment_id for d in store.deployments(PIPE)}
    values: list[tuple[int, float]] = []
    pages: list[tuple[int, str, str]] = []  # (period, kind, severity) of the drifted series' quality pages
    alert_id = None
    recovered = False
    healing_result, healed_at = None, None
    probe_calls, i, after_left = 0, 0, None
    while True:
        i += 1
        now = clock["now"] = period_time(i)
        series, events, starts, calls = monitor_pass(config_path, now, schedule)
        probe_calls += calls
        s = next(x for x in series if x.model == args.model and x.spectrum == args.spectrum)
        values.append((i, s.value))
        for e in events:
            alert = store.get_alert(e.alert_id)
            if alert.detector != "quality" or alert.model != args.model or alert.spectrum != args.spectrum \
                    or not e.notify:
                continue
            if e.severity in ("high", "critical") and e.kind in ("raised", "repeated"):
                pages.append((i, e.kind, e.severity))
            elif e.kind == "recovered":
                recovered = True
        if starts and healing_result is None:
            from promptcycle_flows.healing import healing

            start = starts[0]
            healing_result = asyncio.run(healing(
                pipeline=PIPE, decision_id=start.decision_id, incident_id=start.incident_id, model=start.model,
                spectrum=start.spectrum, config_path=str(config_path), alert_id=start.alert_id, now=now))
            alert_id = start.alert_id
            healed_at = i
            after_left = args.after
        elif after_left is not None:
            after_left -= 1
        if after_left == 0 or i >= total:
            break
    stable = [v for j, v in values if j <= args.stable]
    during = [v for j, v in values if args.stable < j <= (healed_at or i)]
    after = [v for j, v in values if healed_at is not None and j > healed_at]
    before_q = sum(stable[-10:]) / len(stable[-10:])
    during_q = sum(during) / len(during) if during else None
    after_q = sum(after) / len(after) if after else None
    promoted = [c for c in store.canaries(PIPE) if c.status == "promoted"]
    worse = int(bool(promoted) and after_q is not None and during_q is not None and after_q < during_q)
    drift_cost = round(before_q - during_q, 2) if during_q is not None else None
    first_page = next((j for j, _, _ in pages if j > args.stable), None)
    deployed = [d for d in store.deployments(PIPE) if d.deployment_id not in setup_deployments]
    incidents = store.incidents(PIPE)
    outcome = healing_result.outcome if healing_result else "no healing started"
    return {
        "scenario": args.scenario, "simulated": True, "model": args.model, "spectrum": args.spectrum,
        "drift_kind": args.kind, "size_points": args.size, "probe_cases": args.cases, "stable_periods": args.stable,
        "temperature": args.temperature,
        **setup,
        "false_pages_stable": sum(1 for j, _, _ in pages if j <= args.stable),
        "detection_delay_runs": (first_page - args.stable) if first_page else None,
        "pages_per_incident": sum(1 for j, _, _ in pages if j > args.stable),
        "escalations": store.get_alert(alert_id).escalations if alert_id is not None else 0,
        "recovery_notice": recovered,
        "quality_before": round(before_q, 2), "quality_during": None if during_q is None else round(during_q, 2),
        "quality_after": None if after_q is None else round(after_q, 2), "drift_cost_points": drift_cost,
        "worse_promotions": worse,
        "healing_calls": healing_result.calls if healing_result else 0,
        "healing_cost_usd": round(healing_result.cost_usd, 4) if healing_result else 0.0,
        "healing_scope": healing_result.candidate_scope if healing_result else None,
        "optimization_outcome": healing_result.optimization_outcome if healing_result else None,
        "canary_decision": healing_result.canary_status if healing_result else None,
        "deployed_after_setup": [f"{d.kind}:{d.status}" for d in deployed],
        "outcome": outcome,
        "incident_status": incidents[0]["status"] if incidents else None,
        "probe_calls": probe_calls, "periods": i, "wall_seconds": round(time.perf_counter() - started, 1),
        "series": [round(v, 2) for _, v in values],
        "workdir": str(root),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=["repairable", "unrepairable"], default="repairable")
    p.add_argument("--model", default="xl", help="the serving model, which drifts (a name from `models`)")
    p.add_argument("--models", default="", help="more models the pipeline evaluates (comma-separated)")
    p.add_argument("--spectrum", default="credit_analysis", help="the spectrum that drifts")
    p.add_argument("--kind", default=None, help="the drift's kind (default: field_omission for repairable, "
                   "skill_loss for unrepairable; also latency, error_rate)")
    p.add_argument("--size", type=float, default=None, help="drift size (about that many points on the configured "
                   "prompt for skill_loss and field_omission; default 8 repairable, 20 unrepairable)")
    p.add_argument("--setup-strategies", default=None, help="strategies of the optimization production starts from "
                   "(comma-separated; default: the levers that do not name fields for repairable, all for "
                   "unrepairable)")
    p.add_argument("--stable", type=int, default=50)
    p.add_argument("--after", type=int, default=10)
    p.add_argument("--max-drift-periods", type=int, default=15)
    p.add_argument("--cases", type=int, default=60, help="monitor.probe_cases (calls per series per period)")
    p.add_argument("--temperature", type=float, default=0.7,
                   help="the models' sampling temperature (default 0.7): each period's probe answers vary, as real "
                        "production's do; 0 (the bundled config's) gives the same answers every stable period, a "
                        "noiseless series no detector could false-page on")
    p.add_argument("--spectrums", type=int, default=3)
    p.add_argument("--canary-requests", type=int, default=2000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    args.kind = args.kind or DEFAULT_KIND[args.scenario]
    args.size = args.size if args.size is not None else DEFAULT_SIZE[args.scenario]
    args.setup_strategies = (args.setup_strategies.split(",") if args.setup_strategies
                             else DEFAULT_SETUP[args.scenario])
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    print(f"drift drill — {result['scenario']} (SIMULATED): {args.kind} of {args.model} × {args.spectrum}, "
          f"{args.size:g}")
    for k, v in result.items():
        if k not in ("series",):
            print(f"  {k:<22} {v}")
    print("  series: " + " ".join(f"{v:.1f}" for v in result["series"]))


if __name__ == "__main__":
    main()
