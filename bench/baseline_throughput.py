"""Throughput of the baseline pipeline against the simulator served by a separate process.

    python bench/baseline_throughput.py --calls 10000 --concurrency 32
    python bench/baseline_throughput.py --calls 10000 --concurrency 64
    python bench/baseline_throughput.py --calls 20000 --concurrency 64     # peak RSS at 20k calls

Starts `promptcycle sim-server` on a free loopback port with a fixed 100 ms latency, writes a
pipelines.yaml pointing the seven simulated models at it (kind: openai, so the real HTTP path is
measured), runs the real baseline flow (Prefect, Great Expectations, DuckDB) in this process, and
prints:

- calls, evaluation wall seconds (first call planned → last result written) and end-to-end wall
  (including Prefect's temporary server start and the data-quality suites);
- the provider-bound ideal = calls × latency ÷ concurrency, and efficiency = ideal ÷ evaluation wall;
- CPU milliseconds per call of this (the pipeline) process over the evaluation window;
- the CPU the sim-server, the data worker and Prefect's server used in the same window (they share
  the machine's cores with the pipeline process);
- peak RSS of this process; DuckDB bytes per result row; the mean recorded latency.

All answers are simulated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from promptcycle.cli import _apply_offline_defaults  # noqa: E402

_apply_offline_defaults()
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    """`promptcycle sim-server` on a free loopback port with a fixed latency, once it answers /health."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "promptcycle.cli", "sim-server", "--port", str(port),
                               "--latency-ms", str(latency_ms), "--latency-dist", "fixed"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port)
    except BaseException:
        server.terminate()
        raise
    return server, port


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc), 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10000, help="approximate number of calls (rounded up to "
                        "whole repeats of 7 models x 210 cases)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    from promptcycle.datasets.loaders import load_cases

    per_repeat = len(load_cases("bundled:customer_insights")) * 7
    repeats = max(1, -(-args.calls // per_repeat))
    workdir = Path(tempfile.mkdtemp(prefix="promptcycle-bench-"))
    server, port = start_sim_server(args.latency_ms)
    try:
        config = write_config(workdir, port, args.concurrency, timeout=30.0)
        from flows.baseline import baseline
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
        width = max(map(len, figures))
        print(f"baseline throughput — simulated models behind `promptcycle sim-server` ({args.latency_ms:g} ms fixed)")
        for k, v in figures.items():
            print(f"  {k:<{width}}  {v}")
        print(json.dumps(figures))
        return 0
    finally:
        server.terminate()
        server.wait(timeout=10)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
