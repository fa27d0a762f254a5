"""What people see, checked in a real browser: headless Chromium renders pages to PNGs and to their DOM.

    .venv/bin/python bench/ui_check.py cycle [--out-dir DIR] [--pipeline NAME] [--limit N] [--probe-cases N] [--keep]
    .venv/bin/python bench/ui_check.py report --config pipelines.yaml [--pipeline NAME] [--out-dir DIR]
    .venv/bin/python bench/ui_check.py shot URL_OR_FILE OUT.png [--width 1400 --height 1000]

`cycle` is the whole check, on throw-away state: it starts a real `prefect server start` on a free loopback port
(a Prefect home of its own in a temporary directory), runs `promptcycle serve` for the repository's pipelines.yaml
(copied there, with a fresh store), runs a short cycle through the served deployments (a baseline of the first
`--limit` cases per spectrum, then `--monitor-passes` monitor passes one period apart), writes the HTML report with
`promptcycle report` (whose flow run publishes the same figures as artifacts), then saves screenshots of the Prefect
UI's deployments page, the monitor run's page on its Artifacts tab, its quality-trend artifact, and the report.
Each screenshot must show what it is of (its rendered DOM names the deployments and schedules, the artifacts, the
figures) and not be blank (distinct colours). It prints what it ran and the PNGs' paths, and stops every process it
started on exit, Ctrl-C included.

`report` writes the pipeline's HTML report (`promptcycle report --no-artifacts`), loads it in headless Chromium,
checks that every figure the report drew is an SVG chart in the rendered page, and saves a screenshot of the whole
page. `shot` saves a screenshot of any URL or file (e.g. a Prefect UI page).

The browser pieces are bench/browser.py: Debian's Chromium (`apt-get install -y chromium`), networking features off,
a throw-away profile; a virtual-time budget (or, for the flow run's tab, the DevTools protocol) lets the page's
JavaScript finish before the capture.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser import (  # noqa: E402 - bench/ holds no package; this file runs as a script
    BrowserError,
    find_chromium,
    interactive_screenshot,
    png_colours,
    rendered_dom,
    screenshot,
)

from promptcycle.loopback import free_port  # noqa: E402

__all__ = ["find_chromium", "screenshot", "rendered_dom", "figures_in_dom", "check_report", "png_colours",
           "interactive_screenshot", "run_cycle_check", "BrowserError", "CheckError"]

REPO = Path(__file__).resolve().parent.parent
SERVER_PORTS = range(42000, 43000)  # the Prefect server's and the API's: apart from other local servers


def figures_in_dom(dom: str) -> dict[str, dict[str, int]]:
    """Per figure container of a rendered report (`data-chart="…"`): how many SVG charts and drawn marks it holds.

    A figure is drawn when its container holds an `<svg class="marks">` (vega-embed's SVG renderer) with paths or
    shapes in it; a figure whose script failed holds none, and its container says why."""
    out: dict[str, dict[str, int]] = {}
    starts = [(m.start(), m.group(1)) for m in re.finditer(r'<div[^>]*data-chart="([^"]+)"', dom)]
    for i, (start, key) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(dom)
        chunk = dom[start:end]
        out[key] = {"svg": len(re.findall(r'<svg[^>]*class="marks"', chunk)),
                    "marks": len(re.findall(r"<(?:path|rect|line|circle|text)\b", chunk))}
    return out


def check_report(html_path: str | Path, png_path: str | Path | None = None, *, width: int = 1400,
                 height: int = 4600) -> dict:
    """Load a written report in headless Chromium: every figure container must hold a drawn SVG chart, and the page
    must say it rendered them all (`<body data-rendered="n/n">`). Saves a screenshot when `png_path` is given."""
    dom = rendered_dom(html_path)
    figures = figures_in_dom(dom)
    expected = re.search(r'<body[^>]*data-figures="(\d+)"', dom)
    rendered = re.search(r'<body[^>]*data-rendered="(\d+)/(\d+)"', dom)
    missing = re.findall(r'data-missing="([^"]+)"', dom)
    result = {"figures": figures, "expected": int(expected.group(1)) if expected else None,
              "rendered": None if not rendered else f"{rendered.group(1)}/{rendered.group(2)}",
              "missing": missing, "simulated_label": "SIMULATED" in dom,
              "blank": [k for k, v in figures.items() if v["svg"] == 0 or v["marks"] < 5]}
    if png_path is not None:
        result["screenshot"] = str(screenshot(html_path, png_path, width=width, height=height))
        result["screenshot_colours"] = png_colours(png_path)
    result["ok"] = (result["expected"] == len(figures) and not result["blank"]
                    and result["rendered"] == f"{len(figures)}/{len(figures)}"
                    and result.get("screenshot_colours", 100) > 20)
    return result


# -- the whole check: a Prefect server, `promptcycle serve`, a short cycle, three screenshots ----------------------

class CheckError(RuntimeError):
    """A step of the cycle check failed: the message says which, and what it saw."""


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


class _Processes:
    """The processes the check starts, each in a session of its own, stopped in reverse order on exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen, int]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path, stop_with: int) -> subprocess.Popen:
        out = open(self.logs / f"{name}.out", "wb")
        err = open(self.logs / f"{name}.log", "wb")
        process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        out.close()
        err.close()
        self.started.append((name, process, stop_with))
        return process

    def stop_all(self) -> None:
        for name, process, sig in reversed(self.started):
            if process.poll() is not None:
                continue
            try:
                os.killpg(process.pid, sig)  # serve: SIGINT, as Ctrl-C (cancels its runs, pauses the schedules)
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
            except ProcessLookupError:
                pass
            print(f"  stopped {name} (pid {process.pid}, exit {process.returncode})", file=sys.stderr)
        self.started.clear()

    def check_alive(self) -> None:
        for name, process, _ in self.started:
            if process.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise CheckError(f"{name} exited with status {process.returncode}: {tail}")


def _wait(what: str, ready, timeout: float, processes: _Processes) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        processes.check_alive()
        if time.monotonic() > deadline:
            raise CheckError(f"{what}: not within {timeout:.0f} s")
        time.sleep(1)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _run_deployment(name: str, parameters: dict, timeout: float):
    """Start a flow run of the served deployment `name` and wait for its end: the run when it Completed."""
    import asyncio

    from prefect import get_client
    from prefect.deployments import run_deployment

    async with get_client() as client:
        run = await run_deployment(name, client=client, parameters=parameters, timeout=0, as_subflow=False)
        deadline = time.monotonic() + timeout
        while not (run.state and run.state.is_final()):
            if time.monotonic() > deadline:
                raise CheckError(f"the run {run.name} of {name} did not end within {timeout:.0f} s "
                                 f"(state {run.state_name})")
            await asyncio.sleep(2)
            run = await client.read_flow_run(run.id)
    if not run.state.is_completed():
        raise CheckError(f"the run {run.name} of {name} ended {run.state.type.value} ({run.state.name}): "
                         f"{run.state.message}")
    return run


def _write_config(work: Path, pipeline: str, probe_cases: int | None) -> tuple[Path, dict]:
    """The repository's pipelines.yaml, copied into `work` with a fresh store there (and what was changed)."""
    import yaml

    data = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    if pipeline not in data.get("pipelines", {}):
        raise CheckError(f"no pipeline {pipeline!r} in {REPO / 'pipelines.yaml'}: known "
                         f"{', '.join(data.get('pipelines', {}))}")
    changed = {"store": str(work / "metrics.duckdb")}
    data["store"] = changed["store"]
    if probe_cases is not None:
        data["pipelines"][pipeline].setdefault("monitor", {})["probe_cases"] = probe_cases
        changed[f"pipelines.{pipeline}.monitor.probe_cases"] = probe_cases
    path = work / "pipelines.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, changed


def _dom_has(dom: str, needles: list[str]) -> dict[str, bool]:
    text = re.sub(r"\s+", " ", dom)
    return {needle: needle in text for needle in needles}


def _check_page(url: str, png: Path, needles: list[str], *, width: int, height: int, budget_ms: int) -> dict:
    """Screenshot a page of the Prefect UI, and check its rendered DOM shows `needles` and the PNG is not blank."""
    found = _dom_has(rendered_dom(url, budget_ms=budget_ms), needles)
    screenshot(url, png, width=width, height=height, budget_ms=budget_ms)
    colours = png_colours(png)
    return {"url": url, "png": str(png), "colours": colours, "shows": found,
            "ok": colours > 20 and all(found.values())}


def _check_artifacts_tab(url: str, run_name: str, artifacts: list[str], png: Path) -> dict:
    """The flow run's page on its Artifacts tab (clicked: the UI ignores `?tab=` while the run loads)."""
    png, html = interactive_screenshot(url, png, shows=[run_name, "Artifacts"], click="Artifacts",
                                       then_shows=artifacts[:1], width=1400, height=1500)
    colours = png_colours(png)
    found = _dom_has(html, [run_name, *artifacts])
    return {"url": url + " (Artifacts tab)", "png": str(png), "colours": colours, "shows": found,
            "ok": colours > 20 and all(found.values())}


def run_cycle_check(out_dir: Path, *, pipeline: str = "customer-insights", limit: int = 2,
                    probe_cases: int | None = 20, monitor_passes: int = 2, heal: bool = False, keep: bool = False,
                    budget_ms: int = 20000, run_timeout: float = 900) -> dict:
    """Start a Prefect server and `promptcycle serve`, run a short cycle, screenshot what a user looks at.

    Returns what it ran and found; raises CheckError when a step fails. Every process it started is stopped
    before it returns or raises (KeyboardInterrupt included)."""
    import asyncio
    from datetime import datetime, timedelta, timezone

    if find_chromium() is None:
        raise BrowserError("no Chromium found: install Debian's package with `apt-get install -y chromium`")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from promptcycle_cli.main import OFFLINE_DEFAULTS

    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="promptcycle-uicheck-"))
    (work / "logs").mkdir()
    processes = _Processes(work / "logs")
    ran: list[str] = []
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        port = free_port(SERVER_PORTS)
        api = f"http://127.0.0.1:{port}/api"
        ui = api.removesuffix("/api")
        base_env = {**OFFLINE_DEFAULTS, **os.environ}  # what the user set wins, as in the CLI
        base_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        base_env.pop("PREFECT_API_URL", None)

        # 1. the Prefect server, in a home of its own
        server_env = {**base_env, "PREFECT_HOME": str(work / "server-home"), "PREFECT_SERVER_UI_API_URL": api,
                      "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        processes.start("prefect-server", cmd, server_env, work, signal.SIGTERM)
        ran.append(f"PREFECT_HOME={work / 'server-home'} PREFECT_SERVER_UI_API_URL={api} prefect server start "
                   f"--host 127.0.0.1 --port {port}")
        _say(f"ui_check: starting a Prefect server on {ui} …")
        started = time.monotonic()
        _wait("the Prefect server's /api/health", lambda: _answers(f"{api}/health"), 300, processes)
        _say(f"ui_check: the server answers after {time.monotonic() - started:.0f} s")

        # 2. promptcycle serve, for the repository's pipelines.yaml with a fresh store
        config, changed = _write_config(work, pipeline, probe_cases)
        client_env = {**base_env, "PREFECT_API_URL": api, "PREFECT_HOME": str(work / "client-home"),
                      "PROMPTCYCLE_LOG_DIR": str(work / "logs"),
                      "PREFECT_RUNNER_POLL_FREQUENCY": "2"}  # the runner picks a run up in 2 s, not 10
        cmd = [sys.executable, "-m", "promptcycle_cli.main", "serve", "--config", str(config), "--json"]
        processes.start("serve", cmd, client_env, work, signal.SIGINT)
        ran.append(f"PREFECT_API_URL={api} promptcycle serve --config {config} --json   "
                   f"(the repository's pipelines.yaml with {json.dumps(changed)})")
        served: dict = {}

        def serve_printed() -> bool:
            for line in (work / "logs" / "serve.out").read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    served.update(json.loads(line))
                    return True
            return False

        _wait("`promptcycle serve` printing its deployments", serve_printed, 300, processes)
        deployments = [row["deployment"] for row in served["deployments"]]
        _say(f"ui_check: serving {len(deployments)} deployments: {', '.join(deployments)}")

        # 3. a short cycle, through the served deployments
        os.environ.setdefault("PREFECT_HOME", str(work / "client-home"))
        for key, value in OFFLINE_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        runs: dict[str, list] = {"baseline": [], "monitor": [], "report": []}
        with temporary_settings(updates={PREFECT_API_URL: api}):
            params = {"limit": limit}
            _say(f"ui_check: baseline/{pipeline} {params} …")
            run = asyncio.run(_run_deployment(f"baseline/{pipeline}", params, run_timeout))
            runs["baseline"].append(run)
            ran.append(f"run_deployment('baseline/{pipeline}', parameters={params}) -> {run.name}: "
                       f"{run.state.name}")
            interval = float(_interval_minutes(config, pipeline))
            for k in range(monitor_passes):
                params = {"heal": heal}
                if k:  # the next periods, as the schedule would run them (the monitor's `now`)
                    params["now"] = (datetime.now(timezone.utc) + timedelta(minutes=interval * k)).isoformat()
                _say(f"ui_check: monitor/{pipeline} {params} …")
                run = asyncio.run(_run_deployment(f"monitor/{pipeline}", params, run_timeout))
                runs["monitor"].append(run)
                ran.append(f"run_deployment('monitor/{pipeline}', parameters={params}) -> {run.name}: "
                           f"{run.state.name}")

        # 4. the report: its flow run publishes the figures as artifacts on this server too
        html = out_dir / f"report-{pipeline}.html"
        cmd = [sys.executable, "-m", "promptcycle_cli.main", "report", "--config", str(config), "--pipeline",
               pipeline, "--out", str(html), "--json"]
        _say("ui_check: promptcycle report …")
        done = subprocess.run(cmd, env=client_env, cwd=work, capture_output=True, text=True, timeout=run_timeout,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise CheckError(f"promptcycle report exited {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")
        report = json.loads(done.stdout)
        ran.append(f"PREFECT_API_URL={api} promptcycle report --config {config} --pipeline {pipeline} --out {html} "
                   f"-> flow run {report.get('flow_run_id')}")

        # 5. what a user looks at
        _say("ui_check: screenshots …")
        monitor_run = runs["monitor"][-1]
        artifact_ids = asyncio.run(_artifacts(api, monitor_run.id))
        artifacts = sorted(artifact_ids)
        shots = {
            "deployments": _check_page(f"{ui}/deployments", out_dir / "prefect-deployments.png",
                                       [pipeline, *sorted({d.split("/")[0] for d in deployments}),
                                        *_schedule_texts(served["deployments"])],
                                       width=1400, height=1000, budget_ms=budget_ms),
            "monitor_run": _check_artifacts_tab(f"{ui}/runs/flow-run/{monitor_run.id}", monitor_run.name,
                                                artifacts, out_dir / "prefect-monitor-run-artifacts.png"),
        }
        trend = f"monitor-trend-{pipeline}"
        if trend in artifact_ids:  # one artifact opened: the quality table the monitor wrote
            shots["monitor_trend_artifact"] = _check_page(
                f"{ui}/artifacts/artifact/{artifact_ids[trend]}", out_dir / "prefect-monitor-trend-artifact.png",
                [trend, *_spectrums(config, pipeline)[:1]], width=1400, height=1000, budget_ms=budget_ms)
        checked = check_report(html, out_dir / f"report-{pipeline}.png", width=1400, height=4600)
        shots["report"] = {"url": html.as_uri(), "png": checked["screenshot"],
                           "colours": checked["screenshot_colours"], "figures": checked["figures"],
                           "rendered": checked["rendered"], "simulated_label": checked["simulated_label"],
                           "ok": checked["ok"]}
        return {"ok": all(s["ok"] for s in shots.values()), "prefect_ui": ui, "work_dir": str(work),
                "ran": ran, "monitor_artifacts": artifacts, "screenshots": shots,
                "runs": {k: [{"name": r.name, "id": str(r.id), "state": r.state.name} for r in v]
                         for k, v in runs.items()}}
    finally:
        _say("ui_check: stopping what it started …")
        processes.stop_all()
        signal.signal(signal.SIGTERM, previous_term)
        if keep:
            _say(f"ui_check: kept {work} (logs, store, Prefect homes)")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _schedule_texts(rows: list[dict]) -> list[str]:
    """How the Prefect UI words the interval schedules `serve` registered ("Every 30 minutes")."""
    minutes = {int(r["interval_seconds"] // 60) for r in rows
               if r.get("interval_seconds") and r["interval_seconds"] % 60 == 0 and 1 < r["interval_seconds"] // 60 < 60}
    return [f"Every {m} minutes" for m in sorted(minutes)]


def _interrupt(signum, frame):  # SIGTERM: clean up as Ctrl-C does
    raise KeyboardInterrupt


def _interval_minutes(config: Path, pipeline: str) -> float:
    from promptcycle.catalog import load_config

    return load_config(config).pipeline(pipeline).monitor.interval_minutes


def _spectrums(config: Path, pipeline: str) -> list[str]:
    from promptcycle.catalog import load_config

    return list(load_config(config).pipeline(pipeline).dataset.spectrums)


async def _artifacts(api: str, flow_run_id) -> dict[str, str]:
    """The keyed artifacts of a flow run: key -> id."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}):
        async with get_client() as client:
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: str(a.id) for a in artifacts if a.key}


def _cycle(args: argparse.Namespace) -> int:
    try:
        result = run_cycle_check(Path(args.out_dir), pipeline=args.pipeline, limit=args.limit,
                                 probe_cases=args.probe_cases or None, monitor_passes=args.monitor_passes, heal=args.heal,
                                 keep=args.keep, budget_ms=args.budget_ms)
    except CheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every process it started is stopped", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=2))
    print("\nIt ran:", *(f"  {line}" for line in result["ran"]), sep="\n")
    print("Screenshots:", *(f"  {name}: {s['png']}  ({s['colours']} colours, {'ok' if s['ok'] else 'NOT OK'})"
                            for name, s in result["screenshots"].items()), sep="\n")
    return 0 if result["ok"] else 1


def _report(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir).resolve()
    html = out_dir / f"report-{args.pipeline}.html"
    cmd = [sys.executable, "-m", "promptcycle_cli.main", "report", "--no-artifacts", "--json", "--config",
           args.config, "--pipeline", args.pipeline, "--out", str(html)]
    if args.store:
        cmd += ["--store", args.store]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        print(done.stdout, done.stderr, sep="\n", file=sys.stderr)
        return done.returncode
    result = check_report(html, out_dir / f"report-{args.pipeline}.png", width=args.width, height=args.height)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("cycle", help="start a Prefect server, serve the deployments, run a short cycle, screenshot "
                       "the deployments page, a monitor run's artifacts and the report")
    p.add_argument("--out-dir", default="ui-check", help="where the PNGs and the report go (default: ./ui-check)")
    p.add_argument("--pipeline", default="customer-insights")
    p.add_argument("--limit", type=int, default=2, help="the baseline's cases per spectrum (default 2)")
    p.add_argument("--probe-cases", type=int, default=20,
                   help="the monitor probe's cases per spectrum (default 20; pipelines.yaml's own value: 0)")
    p.add_argument("--monitor-passes", type=int, default=2, help="monitor passes, one period apart (default 2)")
    p.add_argument("--heal", action="store_true", help="let the monitor start healings (default: decide only)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, store, homes)")
    p.add_argument("--budget-ms", type=int, default=20000, help="Chromium's virtual-time budget per page")
    p = sub.add_parser("report", help="write a pipeline's report, check its figures in Chromium, screenshot it")
    p.add_argument("--config", default="pipelines.yaml")
    p.add_argument("--store", default=None)
    p.add_argument("--pipeline", default="customer-insights")
    p.add_argument("--out-dir", default="ui-check")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=4600)
    p = sub.add_parser("shot", help="screenshot a URL or file")
    p.add_argument("target")
    p.add_argument("out")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=1000)
    p.add_argument("--budget-ms", type=int, default=15000)
    args = parser.parse_args(argv)
    try:
        if args.command == "cycle":
            return _cycle(args)
        if args.command == "report":
            return _report(args)
        print(screenshot(args.target, args.out, width=args.width, height=args.height, budget_ms=args.budget_ms))
        return 0
    except BrowserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
