"""`promptcycle api` as users run it: a real uvicorn process on loopback, and the trigger and the token block
against a real Prefect server (the session's test harness)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import pytest
import yaml

from deploy_support import NEW, PIPE, PROD, record_version, serving_store
from promptcycle.config import CanaryConfig
from promptcycle.deploy.canary import begin_canary
from promptcycle.deploy.serving import clear_cache, resolve_prompt
from promptcycle.store import MetricsStore
from simserver import unused_port

REPO = Path(__file__).resolve().parent.parent
TOKEN = "server-token-" + "9f" * 12


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    out = dict(os.environ, PYTHONPATH=str(REPO), PROMPTCYCLE_LOG_DIR=str(tmp_path / "logs"))
    for key in ("PREFECT_API_URL", "PROMPTCYCLE_API_TOKEN"):
        out.pop(key, None)
    out.update(extra)
    return out


def config(tmp_path: Path, **top: object) -> Path:
    data = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    data.update(top)
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start_api(tmp_path: Path, store: Path, port: int, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "promptcycle_cli.main", "api", "--port", str(port), "--config",
                             str(config(tmp_path)), "--store", str(store)], env=env(tmp_path, **extra),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_up(port: int, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("the API did not come up")


def test_without_a_token_it_refuses_a_public_address(tmp_path):
    out = subprocess.run([sys.executable, "-m", "promptcycle_cli.main", "api", "--host", "0.0.0.0", "--port",
                          str(unused_port()), "--config", str(config(tmp_path)), "--store", str(tmp_path / "m.duckdb")],
                         env=env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "refusing to serve on 0.0.0.0 without a token" in out.stderr and "PROMPTCYCLE_API_TOKEN" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "m.duckdb").exists()


def test_a_bad_token_block_name_in_the_config_names_the_path(tmp_path):
    out = subprocess.run([sys.executable, "-m", "promptcycle_cli.main", "api", "--port", str(unused_port()),
                          "--config", str(config(tmp_path, api={"token_block": "My Token"}))],
                         env=env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "api.token_block" in out.stderr and "lowercase letters, digits and dashes" in out.stderr


def answers_of_docs_key(store: MetricsStore) -> str:
    clear_cache()
    return resolve_prompt(PIPE, "user-42", store=store.path).version


@pytest.mark.slow
def test_the_api_process_serves_the_split_records_retries_once_and_never_shows_the_token(tmp_path):
    clear_cache()
    store = serving_store(tmp_path / "m.duckdb")
    begin_canary(store, pipeline=PIPE, control_hash=PROD.hash, treatment_hash=NEW.hash, config=CanaryConfig(),
                 actor="test")
    port, dead = unused_port(), unused_port()
    api = start_api(tmp_path, store.path, port, PROMPTCYCLE_API_TOKEN=TOKEN,
                    PREFECT_API_URL=f"http://127.0.0.1:{dead}/api")
    base = f"http://127.0.0.1:{port}/v1"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        wait_until_up(port, api)
        assert httpx.get(f"{base}/pipelines/{PIPE}/prompt?key=u1", timeout=10).status_code == 401
        assert httpx.get(f"{base}/pipelines/{PIPE}/prompt?key=u1", timeout=10,
                         headers={"Authorization": "Bearer wrong"}).status_code == 401

        keys = [f"user-{i}" for i in range(600)]

        async def lookups() -> dict[str, dict]:
            found: dict[str, dict] = {}
            async with httpx.AsyncClient(base_url=base, headers=auth, timeout=60) as client:
                async def worker(mine: list[str]) -> None:  # 16 clients, one connection each
                    for key in mine:
                        r = await client.get(f"/pipelines/{PIPE}/prompt", params={"key": key})
                        assert r.status_code == 200, r.text
                        found[key] = r.json()

                await asyncio.gather(*(worker(keys[i::16]) for i in range(16)))
            return found

        answers = asyncio.run(lookups())
        # The library in this process, reading the same file: the same version, arm and bucket for every key.
        for key, answer in answers.items():
            served = resolve_prompt(PIPE, key, store=store.path, cache_seconds=60)
            assert (answer["version"], answer["arm"], answer["bucket"], answer["canary_id"], answer["split_pct"]) == \
                (served.version, served.arm, served.bucket, served.canary_id, served.split_pct), key
        assert {a["arm"] for a in answers.values()} == {"control", "treatment"}

        async def outcomes() -> list[dict]:
            async with httpx.AsyncClient(base_url=base, headers=auth, timeout=120) as client:
                async def send(i: int) -> dict:
                    body = {"outcomes": [{"request_id": f"b{i % 8}-{k}", "version": PROD.hash, "score": 0.8}
                                         for k in range(100)]}
                    r = await client.post(f"/pipelines/{PIPE}/outcomes", json=body)
                    assert r.status_code == 200, r.text
                    return r.json()

                return await asyncio.gather(*(send(i) for i in range(32)))  # 8 batches, each sent 4 times at once

        results = asyncio.run(outcomes())
        assert sum(r["recorded"] for r in results) == 800 and sum(r["duplicates"] for r in results) == 2400

        # The Python example of docs/api.md, as written, against this server.
        docs = (REPO / "docs" / "api.md").read_text()
        example = docs.split("```python\n", 1)[1].split("```", 1)[0].replace("127.0.0.1:8700", f"127.0.0.1:{port}")
        ran = subprocess.run([sys.executable, "-c", example], env=env(tmp_path, PROMPTCYCLE_API_TOKEN=TOKEN),
                             capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr

        r = httpx.post(f"{base}/pipelines/{PIPE}/trigger/monitor", headers=auth, timeout=60)
        assert r.status_code == 503 and r.json()["error"] == "prefect_unavailable"
        assert f"cannot reach the Prefect API at http://127.0.0.1:{dead}/api" in r.json()["message"]
        status = httpx.get(f"{base}/status", headers=auth, timeout=60).json()
        assert status["pipelines"][PIPE]["canary"]["treatment"] == NEW.hash
    finally:
        api.send_signal(signal.SIGINT)
        stdout, stderr = api.communicate(timeout=120)
    assert api.returncode == 0, stderr[-3000:]
    assert "promptcycle API on http://127.0.0.1" in stderr and "token: from PROMPTCYCLE_API_TOKEN" in stderr
    assert TOKEN not in stdout + stderr and "Traceback" not in stderr
    docs_version = answers_of_docs_key(store)
    with duckdb.connect(str(store.path)) as con:
        assert con.execute("SELECT count(*), count(DISTINCT request_id) FROM production_results").fetchall() == \
            [(801, 801)]
        assert con.execute("SELECT prompt_hash, score FROM production_results WHERE request_id = 'req-9001'"
                           ).fetchall() == [(docs_version, 0.93)]


@pytest.mark.engine
def test_the_trigger_and_the_token_block_against_a_real_prefect_server(prefect_harness, tmp_path):
    """The trigger starts a flow run of a deployment named by `deployment_name` (an idempotency key starts one);
    a missing deployment is a 404 naming it; the token comes from the Secret block named in pipelines.yaml."""
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from promptcycle.api import ApiSettings, create_app
    from promptcycle.catalog import load_config
    from promptcycle.errors import ConfigError
    from promptcycle_cli.commands.api import prefect_trigger, resolve_token

    Secret(value=TOKEN).save("promptcycle-api-token", overwrite=True)
    token, source = resolve_token(load_config(config(tmp_path, api={"token_block": "promptcycle-api-token"})))
    assert token.get_secret_value() == TOKEN and "promptcycle-api-token" in source
    with pytest.raises(ConfigError, match="api.token_block") as missing:
        resolve_token(load_config(config(tmp_path, api={"token_block": "no-such-block"})))
    assert TOKEN not in str(missing.value)

    store = MetricsStore(tmp_path / "m.duckdb")
    app = create_app(ApiSettings(store=store.path, pipelines={PIPE: ["small"]}, token=token,
                                 trigger=prefect_trigger))
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def scenario():
        async with get_client() as client:
            flow_id = await client.create_flow_from_name("monitor")
            await client.create_deployment(flow_id=flow_id, name=PIPE, parameters={"pipeline": PIPE})
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                                         headers=auth) as api:
                missing = await api.post(f"/v1/pipelines/{PIPE}/trigger/cycle")
                first = await api.post(f"/v1/pipelines/{PIPE}/trigger/monitor",
                                       json={"parameters": {"heal": False}, "idempotency_key": "once"})
                again = await api.post(f"/v1/pipelines/{PIPE}/trigger/monitor",
                                       json={"parameters": {"heal": False}, "idempotency_key": "once"})
        async with get_client() as client:
            run = await client.read_flow_run(first.json()["flow_run_id"])
        return missing, first, again, run

    missing, first, again, run = asyncio.run(scenario())
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_deployment"
    assert f"no deployment 'cycle/{PIPE}' on the Prefect server at {PREFECT_API_URL.value()}" in \
        missing.json()["message"]
    assert first.status_code == 202, first.text
    assert first.json()["deployment"] == f"monitor/{PIPE}" and first.json()["state"] == "SCHEDULED"
    assert again.json()["flow_run_id"] == first.json()["flow_run_id"]  # the idempotency key: one run
    assert run.parameters == {"pipeline": PIPE, "heal": False}
    assert json.dumps(first.json()).count(TOKEN) == 0


_FLOW_LIKE_WRITER = """
import sys, time
from promptcycle.store import MetricsStore
store = MetricsStore(sys.argv[1], lock_timeout_s=120)
started = time.monotonic()
for i in range(10):  # what a flow's data worker does: short connections, each waiting for the file
    store.move_label("other", "production", sys.argv[2] if i % 2 else sys.argv[3], actor="flow", reason=str(i))
print(round(time.monotonic() - started, 2), flush=True)
"""


@pytest.mark.slow
def test_a_flow_in_another_process_gets_the_store_while_outcomes_stream_in(tmp_path):
    """The API's writer leaves the file free between bursts: another process's writes go through while a steady
    stream of outcome batches is being recorded, and the stream keeps being recorded."""
    from promptcycle.api import ApiSettings, create_app

    clear_cache()
    store = MetricsStore(tmp_path / "m.duckdb")
    for prompt in (PROD, NEW):
        record_version(store, "other", prompt)
    app = create_app(ApiSettings(store=store.path, pipelines={PIPE: ["small"]}))

    async def scenario() -> tuple[int, str]:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
                flow = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", _FLOW_LIKE_WRITER, str(store.path), PROD.hash, NEW.hash,
                    env=env(tmp_path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                recorded, n = 0, 0

                async def stream(i: int) -> None:
                    nonlocal recorded, n
                    while flow.returncode is None:
                        n += 1
                        body = {"outcomes": [{"request_id": f"s{i}-{n}-{k}", "version": PROD.hash}
                                             for k in range(100)]}
                        r = await api.post(f"/v1/pipelines/{PIPE}/outcomes", json=body, timeout=120)
                        assert r.status_code == 200, r.text
                        recorded += r.json()["recorded"]

                streams = [asyncio.create_task(stream(i)) for i in range(16)]
                out, err = await asyncio.wait_for(flow.communicate(), timeout=300)
                await asyncio.gather(*streams)
                assert flow.returncode == 0, err.decode()[-2000:]
                return recorded, out.decode().strip()

    recorded, flow_seconds = asyncio.run(scenario())
    assert recorded > 0
    assert store.get_label("other", "production") == PROD.hash  # the tenth move (i = 9) landed
    with duckdb.connect(str(store.path)) as con:
        assert con.execute("SELECT count(*) FROM production_results").fetchone()[0] == recorded
    print(f"10 writes of another process took {flow_seconds} s while {recorded:,} outcomes were recorded")
