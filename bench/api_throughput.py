"""Throughput of `promptcycle api`: prompt lookups and outcome batches at 64 concurrent clients.

    python bench/api_throughput.py [--seconds 10] [--clients 64] [--rate 2000] [--batch 100] [--json]

Builds a store in a temporary directory with a production prompt and a running canary (10% split),
starts `promptcycle api` as its own process (uvicorn, a token set), and drives it from this process:

1. prompt, saturation (closed loop): every client loops
   `GET /v1/pipelines/customer-insights/prompt?key=<random user>`, sending the next request when the
   last is answered; every answer is checked against the split (`bucket_of(key) < split`: treatment,
   else control). This gives the maximum throughput; its latency is queueing at saturation
   (mean = clients / throughput), not the latency at any given rate.
2. prompt, paced (open loop): the same clients together offer `--rate` lookups a second (default
   2,000), client i sending at start + (i + k * clients) / rate for k = 0, 1, ...; a client that is
   behind sends at once. Latency is measured from the scheduled send time, so time spent behind
   schedule counts (no coordinated omission). The achieved rate is answers / (time from the start to
   the last answer). The target "p99 <= 20 ms at >= 2,000/s" is judged on this phase: offered rate
   >= 2,000/s, achieved >= 99 % of it, p99 <= 20 ms, every answer 200 and on the split.
3. outcomes: every client loops `POST …/outcomes` with batches of `--batch` new outcomes; every
   fifth batch (the 2nd, 7th, …) is sent a second time (a retry), which must come back as all duplicates.

Then it stops the server (Ctrl-C: pending outcomes are written first), counts the rows in
`production_results` and checks that every acknowledged outcome is there, once. It prints requests
and outcomes per second, p50/p99 latency, and the server's CPU per request (steadier than rates
on a shared machine). Targets: >= 2,000 lookups/s at p99 <= 20 ms (paced phase); >= 20,000
outcomes/s, none lost.

The load generator is a minimal HTTP/1.1 keep-alive client (an asyncio protocol, uvloop when
installed): one connection per client and a few dozen microseconds of CPU per request, so that on a 2-core machine
the figures measure the server rather than the client (httpx needs milliseconds per request at 64
connections; PLATFORM.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from promptcycle.config import CanaryConfig  # noqa: E402
from promptcycle.deploy.canary import begin_canary  # noqa: E402
from promptcycle.deploy.serving import bucket_of  # noqa: E402
from promptcycle.loopback import free_port  # noqa: E402
from promptcycle.prompts import PromptTemplate  # noqa: E402
from promptcycle.store import MetricsStore  # noqa: E402
from promptcycle.store.records import PromptVersionRecord  # noqa: E402

PIPE = "customer-insights"
TOKEN = "bench-" + os.urandom(12).hex()
PROD = PromptTemplate(system="You are an analyst at a retail bank.", template="{{customer}}\n{{question}}\nReply "
                      "with JSON.")
NEW = PromptTemplate(system="You are an analyst at a retail bank.", template="{{customer}}\n{{question}}\nReply "
                     "with valid JSON only, using only the data provided.")


def build_store(path: Path) -> float:
    """A store with PROD in production and a canary of NEW; return the canary's split (percent)."""
    store = MetricsStore(path)
    for prompt, parent in ((PROD, None), (NEW, PROD.hash)):
        store.write_prompt_version(PromptVersionRecord(
            prompt_hash=prompt.hash, pipeline=PIPE, system=prompt.system, template=prompt.template,
            variables=prompt.variables, parent_hash=parent, strategy="manual", rationale="bench",
            created_at=datetime.now(timezone.utc)))
    store.move_label(PIPE, "production", PROD.hash, actor="bench", reason="bench")
    canary = begin_canary(store, pipeline=PIPE, control_hash=PROD.hash, treatment_hash=NEW.hash,
                          config=CanaryConfig(), actor="bench")
    return canary.split_pct


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; `request` returns (status, body)."""

    def __init__(self, port: int):
        self.port = port
        self.auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.head: tuple[int, int, int] | None = None  # status, body start, body end

    async def open(self) -> None:
        await asyncio.get_running_loop().create_connection(lambda: self, "127.0.0.1", self.port)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            at = head.find(b"content-length:")
            stop = head.find(b"\r\n", at)
            length = int(head[at + 15:stop if stop >= 0 else None])
            self.head = (int(head[9:12]), end + 4, end + 4 + length)
        status, start, stop = self.head
        if len(self.buffer) >= stop:
            body = bytes(self.buffer[start:stop])
            del self.buffer[:stop]
            self.head = None
            self.waiter.set_result((status, body))

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + self.auth
                             + (b"Content-Type: application/json\r\n" if body else b"")
                             + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class SplitCheck:
    """The prompt lookups whose answers were off: statuses other than 200, and keys not served the version the
    split gives them (`bucket_of(key) < split`: treatment NEW, else control PROD)."""

    def __init__(self, split_pct: float):
        self.split_pct = split_pct
        self.failed: list[int] = []
        self.wrong: list[str] = []

    def check(self, key: str, status: int, body: bytes) -> None:
        if status != 200:
            self.failed.append(status)
            return
        expected = NEW.hash if bucket_of(key) < self.split_pct * 100 else PROD.hash
        if orjson.loads(body)["version"] != expected:
            self.wrong.append(key)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run_prompts(port: int, clients: int, seconds: float, split_pct: float) -> dict:
    latencies: list[float] = []
    answers = SplitCheck(split_pct)
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        conn = Connection(port)
        await conn.open()
        rng = random.Random(i)
        try:
            while time.perf_counter() < stop:
                key = f"user-{rng.randrange(1_000_000)}"
                t0 = time.perf_counter()
                status, body = await conn.request("GET", f"/v1/pipelines/{PIPE}/prompt?key={key}")
                latencies.append(time.perf_counter() - t0)
                answers.check(key, status, body)
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return {"mode": "saturation (closed loop, maximum throughput)", "requests": len(latencies),
            "seconds": elapsed, "per_s": len(latencies) / elapsed,
            "p50_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "failed": len(answers.failed), "wrong_version": len(answers.wrong)}


async def run_paced(port: int, clients: int, seconds: float, rate: float, split_pct: float) -> dict:
    """Open loop: `rate` lookups a second in all, latency from each request's scheduled send time."""
    latencies: list[float] = []
    answers = SplitCheck(split_pct)
    late = 0  # requests sent more than 1 ms after their scheduled time (the client was still waiting)
    interval = clients / rate  # each client's period
    conns = [Connection(port) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in conns))
    start = time.perf_counter() + 0.05  # connections open before the schedule begins
    last_answer = start

    async def client(i: int, conn: Connection) -> None:
        nonlocal late, last_answer
        rng = random.Random(1000 + i)
        k = 0
        while True:
            scheduled = start + (i / clients + k) * interval
            if scheduled >= start + seconds:
                break
            k += 1
            key = f"user-{rng.randrange(1_000_000)}"
            wait = scheduled - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.001:
                late += 1
            sent = time.perf_counter()
            status, body = await conn.request("GET", f"/v1/pipelines/{PIPE}/prompt?key={key}")
            done = time.perf_counter()
            latencies.append(done - min(scheduled, sent))  # a timer that fires early does not shorten it
            last_answer = max(last_answer, done)
            answers.check(key, status, body)

    try:
        await asyncio.gather(*(client(i, c) for i, c in enumerate(conns)))
    finally:
        for c in conns:
            c.close()
    elapsed = last_answer - start
    return {"mode": "paced (open loop, latency from the scheduled send time)", "offered_per_s": rate,
            "requests": len(latencies), "seconds": elapsed, "per_s": len(latencies) / elapsed,
            "p50_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "max_ms": max(latencies) * 1000 if latencies else float("nan"), "sent_late": late,
            "failed": len(answers.failed), "wrong_version": len(answers.wrong)}


async def run_outcomes(port: int, clients: int, seconds: float, batch: int) -> dict:
    latencies: list[float] = []
    acknowledged = 0  # unique outcomes answered as recorded
    problems: list[str] = []
    retries = 0
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal acknowledged, retries
        conn = Connection(port)
        await conn.open()
        n = 0
        try:
            while time.perf_counter() < stop:
                body = orjson.dumps({"outcomes": [
                    {"request_id": f"c{i}-b{n}-{k}", "version": PROD.hash, "score": 0.9, "latency_ms": 120.0,
                     "arm": "control", "model": "small"} for k in range(batch)]})
                for attempt in range(2 if n % 5 == 1 else 1):  # every fifth batch: sent again, as a retry
                    t0 = time.perf_counter()
                    status, answer = await conn.request("POST", f"/v1/pipelines/{PIPE}/outcomes", body)
                    latencies.append(time.perf_counter() - t0)
                    if status != 200:
                        problems.append(f"HTTP {status}: {answer[:200]!r}")
                        continue
                    result = orjson.loads(answer)
                    if attempt == 0:
                        acknowledged += result["recorded"]
                        if result["recorded"] != batch:
                            problems.append(f"first send recorded {result['recorded']} of {batch}")
                    else:
                        retries += 1
                        if result["recorded"] != 0 or result["duplicates"] != batch:
                            problems.append(f"a retry recorded {result['recorded']} again")
                n += 1
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "seconds": elapsed, "outcomes": acknowledged,
            "outcomes_per_s": acknowledged / elapsed, "requests_per_s": len(latencies) / elapsed,
            "p50_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "retries": retries, "problems": len(problems), "first_problems": problems[:3]}


def wait_healthy(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the API exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b" 200 " in s.recv(100):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("the API did not answer within 60 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each phase (default 10)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rate", type=float, default=2000.0,
                        help="lookups per second offered in all by the clients in the paced phase (default 2000)")
    parser.add_argument("--batch", type=int, default=100, help="outcomes per request (default 100)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        store_path = Path(tmp) / "metrics.duckdb"
        split = build_store(store_path)
        port = free_port()
        env = {**os.environ, "PROMPTCYCLE_API_TOKEN": TOKEN, "PYTHONPATH": f"{REPO}{os.pathsep}"
               + os.environ.get("PYTHONPATH", ""), "PREFECT_HOME": str(Path(tmp) / "prefect")}
        env.pop("PREFECT_API_URL", None)
        log = open(Path(tmp) / "api.log", "wb")
        server = subprocess.Popen([sys.executable, "-m", "promptcycle_cli.main", "api", "--port", str(port),
                                   "--config", str(REPO / "pipelines.yaml"), "--store", str(store_path)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(port, server)
            cpu0, own0 = cpu_seconds(server.pid), time.process_time()
            prompts = asyncio.run(run_prompts(port, args.clients, args.seconds, split))
            cpu1, own1 = cpu_seconds(server.pid), time.process_time()
            paced = asyncio.run(run_paced(port, args.clients, args.seconds, args.rate, split))
            cpu_p, own_p = cpu_seconds(server.pid), time.process_time()
            outcomes = asyncio.run(run_outcomes(port, args.clients, args.seconds, args.batch))
            cpu2, own2 = cpu_seconds(server.pid), time.process_time()
        finally:
            server.send_signal(signal.SIGINT)  # uvicorn shuts down; the lifespan writes what is pending
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
        with duckdb.connect(str(store_path), read_only=True) as con:
            rows, distinct = con.execute("SELECT count(*), count(DISTINCT request_id) FROM production_results "
                                         "WHERE pipeline = ?", [PIPE]).fetchone()
        log_text = (Path(tmp) / "api.log").read_text(errors="replace")
    prompts["server_cpu_us_per_request"] = (cpu1 - cpu0) / max(prompts["requests"], 1) * 1e6
    paced["server_cpu_us_per_request"] = (cpu_p - cpu1) / max(paced["requests"], 1) * 1e6
    paced["client_cpu_us_per_request"] = (own_p - own1) / max(paced["requests"], 1) * 1e6
    outcomes["server_cpu_us_per_outcome"] = (cpu2 - cpu_p) / max(outcomes["outcomes"], 1) * 1e6
    prompts["client_cpu_us_per_request"] = (own1 - own0) / max(prompts["requests"], 1) * 1e6
    outcomes["client_cpu_us_per_outcome"] = (own2 - own_p) / max(outcomes["outcomes"], 1) * 1e6
    outcomes["rows_in_store"] = rows
    outcomes["lost"] = outcomes["outcomes"] - rows
    checks = {
        "prompt p99 <= 20 ms at >= 2,000/s": (args.rate >= 2000 and paced["per_s"] >= 0.99 * args.rate
                                              and paced["p99_ms"] <= 20),
        "prompt answers match the split": all(phase["wrong_version"] == 0 and phase["failed"] == 0
                                              for phase in (prompts, paced)),
        "outcomes >= 20,000/s": outcomes["outcomes_per_s"] >= 20000,
        "outcomes none lost, none twice": rows == outcomes["outcomes"] == distinct and outcomes["problems"] == 0,
        "token not in the server's output": TOKEN not in log_text,
    }
    report = {"clients": args.clients, "batch": args.batch, "seconds": args.seconds, "client_loop": loop_name,
              "cpus": os.cpu_count(), "load_average_before": load_before,
              "load_average": os.getloadavg(), "rate": args.rate, "prompt": prompts, "prompt_paced": paced,
              "outcomes": outcomes,
              "checks": checks}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"promptcycle api — {args.clients} clients, {args.seconds:g} s per phase, {os.cpu_count()} CPUs, "
              f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after "
              "(figures on a busy machine are indicative)")
        print(f"prompt, paced at {args.rate:,.0f}/s offered (open loop, latency from the scheduled send time):")
        print(f"          {paced['per_s']:8,.0f} requests/s   p50 {paced['p50_ms']:.1f} ms   p99 "
              f"{paced['p99_ms']:.1f} ms   max {paced['max_ms']:.1f} ms   ({paced['requests']:,} requests, "
              f"{paced['sent_late']:,} sent > 1 ms late, {paced['failed']} failed, {paced['wrong_version']} off "
              f"the split; CPU per request: server {paced['server_cpu_us_per_request']:.0f} µs, load generator "
              f"{paced['client_cpu_us_per_request']:.0f} µs)")
        print("prompt, saturation (closed loop: maximum throughput; latency here is queueing, mean = clients / rate):")
        print(f"          {prompts['per_s']:8,.0f} requests/s   p50 {prompts['p50_ms']:.1f} ms   p99 "
              f"{prompts['p99_ms']:.1f} ms   ({prompts['requests']:,} requests, {prompts['failed']} failed, "
              f"{prompts['wrong_version']} off the split; CPU per request: server "
              f"{prompts['server_cpu_us_per_request']:.0f} µs, load generator {prompts['client_cpu_us_per_request']:.0f} µs)")
        print(f"outcomes: {outcomes['outcomes_per_s']:8,.0f} outcomes/s   p50 {outcomes['p50_ms']:.1f} ms   p99 "
              f"{outcomes['p99_ms']:.1f} ms   (batches of {args.batch}, {outcomes['requests']:,} requests incl. "
              f"{outcomes['retries']:,} retries; CPU per outcome: server {outcomes['server_cpu_us_per_outcome']:.1f} µs, "
              f"load generator {outcomes['client_cpu_us_per_outcome']:.1f} µs)")
        print(f"store:    {rows:,} rows for {outcomes['outcomes']:,} acknowledged outcomes ({distinct:,} distinct "
              f"request ids; lost: {outcomes['lost']})")
        for name, ok in checks.items():
            print(f"  [{'ok' if ok else 'MISSED'}] {name}")
        for p in outcomes["first_problems"]:
            print(f"  problem: {p}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
