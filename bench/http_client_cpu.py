"""CPU per request of the HTTP client choices, against `promptcycle sim-server` in a separate process.

    python bench/http_client_cpu.py                       # 6,000 requests at 64 connections
    python bench/http_client_cpu.py --requests 6000 --concurrency 32

Sends the same chat-completions body (about 1.5 KB) through each client, `--concurrency` at a
time, after 200 warm-up requests, and prints per client: CPU milliseconds per request of this
process, wall seconds, efficiency against the ideal (requests × latency ÷ concurrency) and the
mean latency seen by the caller. The clients:

- `httpx2-pool`: `httpx2.AsyncClient` with its own connection pool (httpcore2);
- `httpx2-aiohttp`: `httpx2.AsyncClient` over `promptcycle.providers.transport.AiohttpTransport`,
  what the provider uses for its models list (and for every call over a transport it is given);
- `transport-send`: `AiohttpTransport.send`, the path of the provider's chat calls;
- `aiohttp`: a bare `aiohttp.ClientSession`, the floor for an asyncio client in Python.

All answers are simulated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.baseline_throughput import start_sim_server  # noqa: E402

BODY = json.dumps({
    "model": "sim-small", "temperature": 0.0, "seed": 1,
    "messages": [{"role": "system", "content": "You are an analyst at a retail bank. " * 10},
                 {"role": "user", "content": "Customer record: " + json.dumps({f"field_{i}": f"value {i}" for i in range(40)})
                  + "\n\nSummarise the customer's credit position."}],
}).encode()


async def measure(name: str, url: str, requests: int, concurrency: int, latency_s: float) -> dict:
    import httpx2

    from promptcycle.providers.transport import AiohttpTransport

    headers = {"content-type": "application/json"}
    session = client = transport = None
    if name == "transport-send":
        from yarl import URL

        transport = AiohttpTransport(max_connections=concurrency)
        timeout, target = transport.client_timeout(30.0), URL(url)

        async def post() -> bytes:
            return (await transport.send("POST", target, headers=headers, body=BODY, timeout=timeout)).content
    elif name == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

        async def post() -> bytes:
            async with session.post(url, data=BODY, headers=headers) as response:
                return await response.read()
    else:
        transport = AiohttpTransport(max_connections=concurrency) if name == "httpx2-aiohttp" else None
        limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        client = httpx2.AsyncClient(limits=limits, transport=transport, timeout=30.0)

        async def post() -> bytes:
            return (await client.post(url, content=BODY, headers=headers)).content

    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one() -> None:
        async with slots:
            start = time.perf_counter()
            data = json.loads(await post())
            latencies.append(time.perf_counter() - start)
            assert data["choices"], data

    try:
        await asyncio.gather(*(one() for _ in range(200)))
        latencies.clear()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        if session is not None:
            await session.close()
        if client is not None:
            await client.aclose()
        if transport is not None:
            await transport.aclose()
    ideal = requests * latency_s / concurrency
    return {"client": name, "cpu_ms_per_request": round(cpu * 1000 / requests, 3), "wall_s": round(wall, 2),
            "efficiency": round(ideal / wall, 3), "mean_latency_ms": round(1000 * sum(latencies) / len(latencies), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--clients", default="httpx2-pool,httpx2-aiohttp,transport-send,aiohttp")
    args = parser.parse_args()
    server, port = start_sim_server(args.latency_ms)
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        print(f"HTTP client CPU — {args.requests} requests, {args.concurrency} at a time, simulated answers "
              f"after {args.latency_ms:g} ms")
        for name in args.clients.split(","):
            figures = asyncio.run(measure(name, url, args.requests, args.concurrency, args.latency_ms / 1000))
            print("  " + "  ".join(f"{k}={v}" for k, v in figures.items()))
        return 0
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
