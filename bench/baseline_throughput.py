"""Throughput of the baseline pipeline, end to end including start-up.

    python bench/baseline_throughput.py --calls 10000 --concurrency 64            # the command, end to end
    python bench/baseline_throughput.py --calls 10000 --concurrency 64 --warm     # after a warm-up command
    python bench/baseline_throughput.py --builtin                                 # the default 1,470-call baseline
    python bench/baseline_throughput.py --calls 20000 --concurrency 64 --in-process   # the evaluation window only
    python bench/baseline_throughput.py --calls 1470 --mirror-langsmith --rounds 2     # mirroring off vs on

By default it starts `promptcycle sim-server`'s app on a free loopback port with a fixed 100 ms
latency (in a separate process that also notes when the first and last requests arrive), writes a
pipelines.yaml pointing the seven simulated models at it (kind: openai, so the real HTTP path is
measured), and runs the `promptcycle baseline` command itself as a child process, timed from the
moment it is started. It prints:

- calls; time to first call (the command starts → the first request reaches the server);
  end-to-end wall (the command starts → it exits); evaluation wall (first request → last answer);
- the provider-bound ideal = calls × latency ÷ concurrency; efficiency = ideal ÷ evaluation wall, and
  end-to-end efficiency = ideal ÷ end-to-end wall;
- the command's CPU per call (whole command, start-up included) and peak RSS; the sim-server's CPU
  per call; DuckDB bytes per result row; the mean recorded latency.

`--mirror-langsmith` measures the cost of mirroring to LangSmith: it serves the fake LangSmith
(promptcycle.langsmith.fake, a test double) in a process of its own and runs the same command with mirroring off
and on (`--rounds N` pairs, in the order off, on, on, off, … so drift of a busy machine cancels), each on a fresh
store, and prints both end-to-end walls, the slowdown (of the medians, and the median of each round's pair) and
what was mirrored (every result, or the count not mirrored). The target: mirroring on is less than 5% slower end
to end.

`--builtin` runs the default pipelines.yaml (the built-in, in-process simulator: 7 models × 210
cases) on a fresh store instead; its ideal is Σ simulated latency ÷ the provider's concurrency, and
its time to first call is read from the store (the earliest answer's time minus its latency).
`--warm` first caches the checkout's bytecode (`compileall`: Python would have written it on a first run,
unless PYTHONDONTWRITEBYTECODE is set), runs `promptcycle validate` and a one-case baseline with the same
Prefect home (on another store), so the figures describe a start after earlier use (`PREFECT_HOME` is the
environment's unless `--prefect-home` is given). `--in-process` runs the flow inside this process
and reports the CPU of each process over the evaluation window.

All answers are simulated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from promptcycle.loopback import free_port  # noqa: E402
from promptcycle_cli.main import _apply_offline_defaults  # noqa: E402

_apply_offline_defaults()
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")


def wait_healthy(port: int, timeout: float = 30.0) -> None:
    import httpx2

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                return
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"sim-server on port {port} did not become healthy in {timeout:.0f} s")


def start_sim_server(latency_ms: float) -> tuple[subprocess.Popen, int]:
    """The simulator app on a free loopback port with a fixed latency (see `serve_probe`), once it answers."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-probe", str(port),
                               "--latency-ms", str(latency_ms)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port)
    except BaseException:
        server.terminate()
        raise
    return server, port


def serve_probe(port: int, latency_ms: float) -> None:
    """`promptcycle sim-server --latency-ms L --latency-dist fixed`, plus GET /bench/arrivals: the
    time.monotonic() (system-wide on Linux) of the first and last chat request and their count."""
    import uvicorn

    from promptcycle.sim.server import LatencyOverride, create_app

    app = create_app(latency=LatencyOverride(fixed_ms=latency_ms))
    seen = {"first": None, "last": None, "requests": 0}

    async def probe(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/v1/chat/completions":
            now = time.monotonic()
            seen["first"] = seen["first"] or now
            seen["last"] = now
            seen["requests"] += 1
        elif scope["type"] == "http" and scope["path"] == "/bench/arrivals":
            body = json.dumps(seen).encode()
            if scope["method"] == "DELETE":  # start counting afresh (after a warm-up command)
                seen.update(first=None, last=None, requests=0)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    uvicorn.run(probe, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on",
                timeout_keep_alive=75, server_header=False)


FAKE_LANGSMITH_KEY = "lsv2_pt_bench_fake_key"


def serve_langsmith(port: int) -> None:
    """The fake LangSmith (a test double) on `port`, until terminated."""
    import signal

    from promptcycle.langsmith.fake import FakeLangSmith, FakeLangSmithServer

    with FakeLangSmithServer(FakeLangSmith(api_key=FAKE_LANGSMITH_KEY), port=port):
        signal.sigwait({signal.SIGTERM, signal.SIGINT})


def start_fake_langsmith() -> tuple[subprocess.Popen, str]:
    import signal

    import httpx2

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-langsmith", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM,
                                                                                           signal.SIGINT}))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"{url}/info", timeout=1.0).status_code == 200:
                return proc, url
        except Exception:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the fake LangSmith did not start")


def arrivals(port: int, reset: bool = False) -> dict:
    import httpx2

    return httpx2.request("DELETE" if reset else "GET", f"http://127.0.0.1:{port}/bench/arrivals", timeout=5.0).json()


def cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """User + system CPU seconds of another process (Linux /proc) — with `reaped_children`, of the children it has
    reaped instead — 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    first = 13 if reaped_children else 11
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def host_pid(env: dict) -> int | None:
    """The command host serving this Prefect home (cli/host.py), if one runs: commands run in its forks."""
    home = os.fsencode(env.get("PREFECT_HOME") or str(Path.home() / ".prefect"))
    pids = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if b"promptcycle_cli.host" in argv and home in argv:
                pids[int(entry.name)] = ppid
    hosts = [pid for pid, ppid in pids.items() if ppid not in pids]  # not its forks
    return hosts[0] if len(hosts) == 1 else None


def wait_reaped(pid: int, timeout: float = 15.0) -> None:
    """Wait until `pid` has no children left (a host reaps its forks within a second of their end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children")
        try:
            if not children.read_text().split():
                return
        except OSError:
            return
        time.sleep(0.1)


def child_pids() -> dict[int, str]:
    """This process's direct children (sim-server, data worker, Prefect's server), pid -> command line."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                    children[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError, IndexError):
                continue
    return children


def write_config(workdir: Path, port: int, concurrency: int, timeout: float) -> Path:
    data = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    data["store"] = str(workdir / "bench.duckdb")
    data["providers"] = {"simserver": {"kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
                                       "max_concurrency": concurrency, "timeout_seconds": timeout,
                                       "max_retries": 4}}
    for model in data["models"].values():
        model["provider"] = "simserver"
        model["latency_target_ms"] = 1000  # the server answers in 100 ms; the latency scorer is not under test
    path = workdir / "pipelines.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Window:
    """Captures wall and CPU time from the first progress report to the last finished call."""

    def __init__(self, server_pid: int):
        self.server_pid = server_pid
        self.start_wall = self.end_wall = None
        self.start_cpu = self.end_cpu = None
        self.total = None

    def __call__(self, done: int, total: int | None) -> None:
        if self.start_wall is None and total:
            self.total = total
            self.start_wall, self.start_cpu = time.perf_counter(), time.process_time()
            children = child_pids()
            self.workers = [pid for pid, cmd in children.items() if "promptcycle.dataworker" in cmd]
            self.others = [pid for pid in children if pid != self.server_pid and pid not in self.workers]
            self.start_server_cpu = cpu_seconds(self.server_pid)
            self.start_worker_cpu = sum(cpu_seconds(pid) for pid in self.workers)
            self.start_others_cpu = sum(cpu_seconds(pid) for pid in self.others)
            self.rss_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            self.heavy_modules = [m for m in ("pandas", "pyarrow", "duckdb", "great_expectations", "numpy")
                                  if m in sys.modules]
        if total and done >= total:
            self.end_wall, self.end_cpu = time.perf_counter(), time.process_time()
            self.end_server_cpu = cpu_seconds(self.server_pid)
            self.end_worker_cpu = sum(cpu_seconds(pid) for pid in self.workers)
            self.end_others_cpu = sum(cpu_seconds(pid) for pid in self.others)
            self.rss_after_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_in_process(args: argparse.Namespace, repeats: int) -> dict:
    """The flow in this process: figures of the evaluation window (the original form of this bench)."""
    workdir = Path(tempfile.mkdtemp(prefix="promptcycle-bench-"))
    server, port = start_sim_server(args.latency_ms)
    try:
        config = write_config(workdir, port, args.concurrency, timeout=30.0)
        from promptcycle_flows.baseline import baseline
        from promptcycle.evaluation import progress

        window = Window(server.pid)
        progress.add_listener(window)
        t0 = time.perf_counter()
        summary = asyncio.run(baseline(pipeline="customer-insights", config_path=str(config),
                                       store_path=None, repeats=repeats))
        end_to_end = time.perf_counter() - t0
        # The pipeline's peak, before this script reads the store for its own figures below.
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        calls = summary.calls_paid
        wall = window.end_wall - window.start_wall
        cpu = window.end_cpu - window.start_cpu
        ideal = calls * args.latency_ms / 1000 / args.concurrency
        from promptcycle.store import MetricsStore  # only now: the pipeline itself never loads DuckDB here

        store = MetricsStore(workdir / "bench.duckdb")
        frame = store.results_frame(summary.run_id)
        db_bytes = (workdir / "bench.duckdb").stat().st_size
        figures = {
            "calls": calls,
            "repeats": repeats,
            "concurrency": args.concurrency,
            "server_latency_ms": args.latency_ms,
            "errors": summary.errors,
            "evaluation_wall_s": round(wall, 2),
            "end_to_end_wall_s": round(end_to_end, 2),
            "ideal_s": round(ideal, 2),
            "efficiency": round(ideal / wall, 3),
            "cpu_ms_per_call": round(cpu * 1000 / calls, 3),
            # Context: the other processes share this machine's cores during the window.
            "sim_server_cpu_ms_per_call": round((window.end_server_cpu - window.start_server_cpu) * 1000 / calls, 3),
            "data_worker_cpu_ms_per_call": round((window.end_worker_cpu - window.start_worker_cpu) * 1000 / calls, 3),
            "prefect_server_cpu_ms_per_call": round((window.end_others_cpu - window.start_others_cpu) * 1000 / calls, 3),
            "peak_rss_mb": round(peak_rss_mb, 1),
            "peak_rss_before_evaluation_mb": round(window.rss_before_mb, 1),
            "peak_rss_after_evaluation_mb": round(window.rss_after_mb, 1),
            "heavy_modules_in_pipeline_process": ",".join(window.heavy_modules) or "none",
            "duckdb_bytes_per_row": round(db_bytes / len(frame), 1),
            "mean_recorded_latency_ms": round(float(frame["latency_ms"].mean()), 2),
        }
        return figures
    finally:
        server.terminate()
        server.wait(timeout=10)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def run_command(argv: list[str], env: dict) -> tuple[float, float, resource.struct_rusage, str, str]:
    """Run `promptcycle ARGV` as a child process: (started, ended) in time.monotonic(), its rusage, out, err."""
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "promptcycle_cli.main", *argv], stdout=out, stderr=err, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    ended = time.monotonic()
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"promptcycle {' '.join(argv)} exited {proc.returncode}:\n{stderr[-3000:]}")
    return started, ended, usage, stdout, stderr


SOURCES = ("promptcycle", "flows", "tasks", "cli", "blocks")  # the checkout's packages


def warm_up(config: Path, workdir: Path, env: dict) -> bool:
    """As after earlier use: the checkout's bytecode cached (Python writes it on a first run, unless
    PYTHONDONTWRITEBYTECODE is set — then it is compiled here), `promptcycle validate` of the dataset (its
    verdict is kept) and a one-case baseline (Prefect's home and its local server are warm), both on
    another store."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(REPO / name) for name in SOURCES)],
                   check=True, stdout=subprocess.DEVNULL)
    warm_store = str(workdir / "warm-up.duckdb")
    run_command(["validate", "--config", str(config), "--store", warm_store, "--json"], env)
    run_command(["baseline", "--config", str(config), "--store", warm_store, "--limit", "1", "--repeats", "1",
                 "--json"], env)
    return wait_for_worker_host(env)


def wait_for_worker_host(env: dict, timeout: float = 60.0) -> bool:
    """Wait until the command host (cli/host.py) that the warm-up command started when it ended is serving (as it is
    for a user's next command, which comes seconds to minutes later; promptcycle/workerhost.py)."""
    probe = ("import os, pathlib; from promptcycle import workerhost; "
             "print(workerhost.socket_path(pathlib.Path(os.environ.get('PREFECT_HOME') or "
             "pathlib.Path.home() / '.prefect').expanduser()) if workerhost.enabled() else '')")
    path = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()
    deadline = time.monotonic() + timeout
    while path and not Path(path).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return bool(path)


def store_figures(store_path: Path, run_id: str, started_wall: float) -> dict:
    from promptcycle.store import MetricsStore

    store = MetricsStore(store_path)
    frame = store.results_frame(run_id)
    dataset = next((d["report"] or {} for d in store.dq_results(run_id) if d["suite"] == "dataset"), {})
    created = frame["created_at"]
    created = created.dt.tz_localize("UTC") if created.dt.tz is None else created
    left = created.map(lambda t: t.timestamp()) - frame["latency_ms"].fillna(0) / 1000
    return {"rows": len(frame), "dataset_suite": "reused verdict" if dataset.get("reused") else "ran",
            "first_call_wall": float(left.min()) - started_wall,
            "latency_sum_s": float(frame["latency_ms"].sum()) / 1000,
            "mean_recorded_latency_ms": round(float(frame["latency_ms"].mean()), 2),
            "duckdb_bytes_per_row": round(store_path.stat().st_size / len(frame), 1)}


def run_end_to_end(args: argparse.Namespace, repeats: int, langsmith_url: str | None = None) -> dict:
    """The `promptcycle baseline` command as a child process, timed from its start to its exit (with
    `langsmith_url`: mirroring its results to the LangSmith there)."""
    workdir = Path(tempfile.mkdtemp(prefix="promptcycle-bench-"))
    env = dict(os.environ)
    if langsmith_url:
        env.update(LANGSMITH_ENDPOINT=langsmith_url, LANGSMITH_API_KEY=FAKE_LANGSMITH_KEY)
    if args.prefect_home:
        env["PREFECT_HOME"] = args.prefect_home
    server = port = None
    try:
        if args.builtin:
            data = yaml.safe_load((REPO / "pipelines.yaml").read_text())
            data["store"] = str(workdir / "bench.duckdb")
            config = workdir / "pipelines.yaml"
            config.write_text(yaml.safe_dump(data, sort_keys=False))
            concurrency = data["providers"]["simulator"]["max_concurrency"]
        else:
            server, port = start_sim_server(args.latency_ms)
            config = write_config(workdir, port, args.concurrency, timeout=30.0)
            concurrency = args.concurrency
        if args.warm:
            host_serving = warm_up(config, workdir, env)
        if port is not None:
            arrivals(port, reset=True)
        server_cpu0 = cpu_seconds(server.pid) if server else 0.0
        host = host_pid(env)  # with a host, the command runs in its fork, and so does its data worker
        host_cpu0 = cpu_seconds(host, reaped_children=True) if host else 0.0
        wall0 = time.time()
        argv = ["baseline", "--config", str(config), "--json"] + ([] if args.builtin else ["--repeats", str(repeats)])
        argv += ["--mirror-langsmith"] if langsmith_url else []
        started, ended, usage, stdout, _ = run_command(argv, env)
        summary = json.loads(stdout)
        calls = summary["calls_paid"]
        end_to_end = ended - started
        if host:
            wait_reaped(host)
        command_cpu = usage.ru_utime + usage.ru_stime
        if host:
            command_cpu += cpu_seconds(host, reaped_children=True) - host_cpu0
        stored = store_figures(workdir / "bench.duckdb", summary["run_id"], wall0)
        if args.builtin:
            ideal = stored["latency_sum_s"] / concurrency
            first_call = stored["first_call_wall"]
            evaluation = end_to_end - first_call  # an upper bound: it includes the results suite and exit
        else:
            seen = arrivals(port)
            ideal = calls * args.latency_ms / 1000 / concurrency
            first_call = seen["first"] - started
            evaluation = seen["last"] + args.latency_ms / 1000 - seen["first"]
        figures = {
            "calls": calls,
            "repeats": summary.get("repeats", repeats) if not args.builtin else 1,
            "concurrency": concurrency,
            "server_latency_ms": "simulated per model" if args.builtin else args.latency_ms,
            "prefect_home": ("warm (bytecode cached, validate + a one-case baseline ran first, "
                             f"command host {'serving' if host_serving else 'not serving'})") if args.warm
            else "as found",
            "errors": summary["errors"],
            "dataset_suite": stored["dataset_suite"],
            "time_to_first_call_s": round(first_call, 2),
            "evaluation_wall_s": round(evaluation, 2),
            "end_to_end_wall_s": round(end_to_end, 2),
            "ideal_s": round(ideal, 2),
            "efficiency": round(ideal / evaluation, 3),
            "end_to_end_efficiency": round(ideal / end_to_end, 3),
            # the promptcycle process, its data worker and, when the command host ran it, the host's fork
            "command_cpu_ms_per_call": round(command_cpu * 1000 / calls, 3),
            "command_run_by": "a fork of the command host" if host else "its own process",
            "command_peak_rss_mb": None if host else round(usage.ru_maxrss / 1024, 1),  # a fork's is not measured
            "duckdb_bytes_per_row": stored["duckdb_bytes_per_row"],
            "mean_recorded_latency_ms": stored["mean_recorded_latency_ms"],
        }
        if server:
            figures["sim_server_cpu_ms_per_call"] = round((cpu_seconds(server.pid) - server_cpu0) * 1000 / calls, 3)
        mirror = summary.get("langsmith")
        if langsmith_url:
            figures["langsmith_mirrored"] = mirror["mirrored"] if mirror else 0
            figures["langsmith_not_mirrored"] = mirror["pending"] if mirror else stored["rows"]
        return figures
    finally:
        if server:
            server.terminate()
            server.wait(timeout=10)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def compare_mirroring(args: argparse.Namespace, repeats: int) -> int:
    """The command end to end with mirroring off and on, alternating (off, on, on, off, …)."""
    import statistics

    langsmith, url = start_fake_langsmith()
    runs: dict[bool, list[dict]] = {False: [], True: []}
    try:
        for r in range(args.rounds):
            for mirrored in ((False, True) if r % 2 == 0 else (True, False)):
                fake_cpu = cpu_seconds(langsmith.pid)
                runs[mirrored].append(run_end_to_end(args, repeats, url if mirrored else None))
                figures = runs[mirrored][-1]
                # The fake's CPU competes with the command on this machine; a real LangSmith's would not.
                figures["fake_langsmith_cpu_s"] = round(cpu_seconds(langsmith.pid) - fake_cpu, 2)
                print(f"  round {r + 1} mirroring {'on ' if mirrored else 'off'}: end to end "
                      f"{figures['end_to_end_wall_s']} s, evaluation {figures['evaluation_wall_s']} s"
                      + (f", mirrored {figures['langsmith_mirrored']}, not mirrored "
                         f"{figures['langsmith_not_mirrored']}, fake LangSmith CPU "
                         f"{figures['fake_langsmith_cpu_s']} s" if mirrored else ""), flush=True)
    finally:
        langsmith.terminate()
        langsmith.wait(timeout=10)
    off = statistics.median(f["end_to_end_wall_s"] for f in runs[False])
    on = statistics.median(f["end_to_end_wall_s"] for f in runs[True])
    result = {"calls": runs[False][0]["calls"], "rounds": args.rounds,
              "end_to_end_wall_s_off": off, "end_to_end_wall_s_on": on,
              "slowdown": round(on / off - 1.0, 4),
              # Each round's off and on ran back to back: the median of their ratios cancels a machine's drift
              # between rounds, which the ratio of the two medians above does not.
              "paired_slowdown": round(statistics.median(b["end_to_end_wall_s"] / a["end_to_end_wall_s"] - 1.0
                                                         for a, b in zip(runs[False], runs[True])), 4),
              "evaluation_wall_s_off": statistics.median(f["evaluation_wall_s"] for f in runs[False]),
              "evaluation_wall_s_on": statistics.median(f["evaluation_wall_s"] for f in runs[True]),
              "command_cpu_ms_per_call_off": statistics.median(f["command_cpu_ms_per_call"] for f in runs[False]),
              "command_cpu_ms_per_call_on": statistics.median(f["command_cpu_ms_per_call"] for f in runs[True]),
              "fake_langsmith_cpu_s": statistics.median(f["fake_langsmith_cpu_s"] for f in runs[True]),
              "every_result_mirrored": all(f["langsmith_not_mirrored"] == 0 for f in runs[True]),
              "target": "mirroring on < 5% slower end to end"}
    print("baseline throughput with LangSmith mirroring (to the fake LangSmith, a test double) off and on — "
          "simulated models, the command end to end (medians)")
    width = max(map(len, result))
    for k, v in result.items():
        print(f"  {k:<{width}}  {v}")
    print(json.dumps(result))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10000, help="approximate number of calls (rounded up to "
                        "whole repeats of 7 models x 210 cases)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--builtin", action="store_true",
                        help="the default pipelines.yaml on the built-in simulator (1,470 calls), end to end")
    parser.add_argument("--warm", action="store_true",
                        help="cache the bytecode, run `validate` and a one-case baseline first (a warm Prefect home)")
    parser.add_argument("--prefect-home", default=None, help="PREFECT_HOME for the command (default: inherited)")
    parser.add_argument("--in-process", action="store_true", help="run the flow in this process instead")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--mirror-langsmith", action="store_true",
                        help="compare the command with mirroring to a fake LangSmith off and on")
    parser.add_argument("--rounds", type=int, default=1, help="with --mirror-langsmith: pairs of runs (off, on)")
    parser.add_argument("--serve-probe", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve-langsmith", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_probe is not None:
        serve_probe(args.serve_probe, args.latency_ms)
        return 0
    if args.serve_langsmith is not None:
        serve_langsmith(args.serve_langsmith)
        return 0

    from promptcycle.datasets.loaders import load_cases

    per_repeat = len(load_cases("bundled:customer_insights")) * 7
    repeats = max(1, -(-args.calls // per_repeat))
    if args.mirror_langsmith:
        return compare_mirroring(args, repeats)
    figures = run_in_process(args, repeats) if args.in_process else run_end_to_end(args, repeats)
    width = max(map(len, figures))
    where = ("the built-in simulator, in-process" if args.builtin
             else f"`promptcycle sim-server` ({args.latency_ms:g} ms fixed)")
    mode = "evaluation window, in-process" if args.in_process else "the command end to end, start-up included"
    print(f"baseline throughput — simulated models behind {where}; {mode}")
    for k, v in figures.items():
        print(f"  {k:<{width}}  {v}")
    print(json.dumps(figures))
    return 0

if __name__ == "__main__":
    sys.exit(main())
