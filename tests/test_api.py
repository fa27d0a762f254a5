"""The HTTP API in-process (FastAPI's TestClient, httpx's ASGI transport) against a real store file:
auth, validation errors naming the field, unknown pipelines, idempotent outcomes, the sticky split equal
to resolve_prompt, status, and the trigger's errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import asdict

import duckdb
import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from deploy_support import NEW, PIPE, PROD, record_version, serving_store
from promptcycle.api import ApiSettings, BearerToken, create_app, is_loopback
from promptcycle.api.app import ServedPrompt
from promptcycle.config import CanaryConfig
from promptcycle.deploy.canary import begin_canary
from promptcycle.deploy.serving import clear_cache, resolve_prompt
from promptcycle.errors import TriggerError
from promptcycle.prompts import PromptTemplate

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODELS = ["small", "large"]
LARGE_ONLY = PromptTemplate(system="You are a careful analyst.", template="{{customer}}\n{{question}}\nJSON.")


@pytest.fixture
def store(tmp_path):
    clear_cache()
    yield serving_store(tmp_path / "m.duckdb")
    clear_cache()


def make_app(store, token: str | None = TOKEN, trigger=None, **settings):
    return create_app(ApiSettings(store=store.path, pipelines={PIPE: MODELS, "other": ["small"]},
                                  token=SecretStr(token) if token else None, trigger=trigger, **settings))


def rows(store, sql: str):
    with duckdb.connect(str(store.path)) as con:
        return con.execute(sql).fetchall()


# -- auth -------------------------------------------------------------------------------------------------------

def test_requests_without_the_token_or_with_a_wrong_one_are_refused(store):
    with TestClient(make_app(store)) as client:
        prompt = f"/v1/pipelines/{PIPE}/prompt?key=u1"
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
            for method, path, body in (("GET", prompt, None), ("GET", "/v1/status", None),
                                       ("POST", f"/v1/pipelines/{PIPE}/outcomes",
                                        {"outcomes": [{"request_id": "r", "version": PROD.hash}]}),
                                       ("POST", f"/v1/pipelines/{PIPE}/trigger/monitor", None),
                                       ("GET", "/v1/no-such-route", None)):
                r = client.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (headers, path, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
                assert r.json()["error"] == "unauthorized" and TOKEN not in r.text
        assert rows(store, "SELECT count(*) FROM production_results") == [(0,)]  # nothing got through
        assert client.get(prompt, headers=AUTH).json()["version"] == PROD.hash
        assert client.get("/v1/health").json() == {"status": "ok"}  # liveness needs no token
        assert client.get("/openapi.json").status_code == 200


def test_without_a_token_every_request_is_accepted_and_the_document_says_so(store):
    with TestClient(make_app(store, token=None)) as client:
        assert client.get(f"/v1/pipelines/{PIPE}/prompt?key=u1").status_code == 200
        spec = client.get("/openapi.json").json()
    assert "securitySchemes" not in spec.get("components", {})
    assert all("security" not in op for methods in spec["paths"].values() for op in methods.values())


def test_the_token_compare_and_loopback():
    token = BearerToken(SecretStr("s3cret"))
    assert token.accepts("Bearer s3cret") and token.accepts("bearer s3cret")
    assert not any(token.accepts(h) for h in (None, "", "Bearer", "Bearer s3cre", "Bearer s3cret2", "s3cret"))
    assert "s3cret" not in repr(token)
    with pytest.raises(ValueError):
        BearerToken(SecretStr("  "))
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com", "192.168.1.1"))


# -- validation -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path,body,field", [
    ("GET", f"/v1/pipelines/{PIPE}/prompt", None, "query.key"),
    ("GET", f"/v1/pipelines/{PIPE}/prompt?key=", None, "query.key"),
    ("GET", f"/v1/pipelines/{PIPE}/prompt?key={'k' * 513}", None, "query.key"),
    ("GET", f"/v1/pipelines/{PIPE}/prompt?key=u1&model=", None, "query.model"),
    ("GET", f"/v1/pipelines/{PIPE}/prompt?key=u1&model=huge", None, "query.model"),
    ("POST", f"/v1/pipelines/{PIPE}/outcomes", {}, "body.outcomes"),
    ("POST", f"/v1/pipelines/{PIPE}/outcomes", {"outcomes": []}, "body.outcomes"),
    ("POST", f"/v1/pipelines/{PIPE}/outcomes", {"outcomes": [{"version": "v"}]}, "body.outcomes.0.request_id"),
    ("POST", f"/v1/pipelines/{PIPE}/outcomes",
     {"outcomes": [{"request_id": "a", "version": "v"}, {"request_id": "b", "version": "v", "score": 1.5}]},
     "body.outcomes.1.score"),
    ("POST", f"/v1/pipelines/{PIPE}/outcomes", {"outcomes": [{"request_id": "a", "version": "v", "error": "no"}]},
     "body.outcomes.0.error"),
    ("POST", f"/v1/pipelines/{PIPE}/outcomes", {"outcomes": [{"request_id": "a", "version": "v", "colour": 1}]},
     "body.outcomes.0.colour"),
    ("POST", f"/v1/pipelines/{PIPE}/outcomes", {"outcomes": [{"request_id": "a", "version": "v", "arm": "B"}]},
     "body.outcomes.0.arm"),
    ("POST", f"/v1/pipelines/{PIPE}/outcomes", {"outcomes": [{"request_id": "a", "version": "v", "at": "noon"}]},
     "body.outcomes.0.at"),
    ("POST", f"/v1/pipelines/{PIPE}/trigger/monitr", None, "path.phase"),
    ("POST", f"/v1/pipelines/{PIPE}/trigger/monitor", {"parameters": {"pipeline": "other"}},
     "body.parameters.pipeline"),
    ("POST", f"/v1/pipelines/{PIPE}/trigger/monitor", {"params": {}}, "body.params"),
])
def test_a_bad_request_is_a_422_naming_the_field(store, method, path, body, field):
    with TestClient(make_app(store)) as client:
        r = client.request(method, path, json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["error"] == "invalid_request" and problem["message"].startswith(field), problem
    assert rows(store, "SELECT count(*) FROM production_results") == [(0,)]


def test_a_body_that_is_not_json_is_a_422(store):
    with TestClient(make_app(store)) as client:
        r = client.post(f"/v1/pipelines/{PIPE}/outcomes", content=b"{not json",
                        headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["message"].startswith("body") and "JSON" in r.json()["message"]


def test_an_unknown_pipeline_is_a_404_listing_the_known_ones(store):
    with TestClient(make_app(store)) as client:
        for method, path, body in (("GET", "/v1/pipelines/nope/prompt?key=u", None),
                                   ("POST", "/v1/pipelines/nope/outcomes",
                                    {"outcomes": [{"request_id": "r", "version": "v"}]}),
                                   ("POST", "/v1/pipelines/nope/trigger/cycle", None)):
            r = client.request(method, path, json=body, headers=AUTH)
            assert r.status_code == 404, r.text
            assert r.json() == {"error": "unknown_pipeline",
                                "message": f"unknown pipeline 'nope'; known: {PIPE}, other"}
        r = client.get("/v1/pipelines/other/prompt?key=u", headers=AUTH)  # known, nothing deployed
        assert r.status_code == 404 and r.json()["error"] == "no_production_prompt"
        assert "promptcycle deploy --pipeline other" in r.json()["message"]


# -- outcomes ---------------------------------------------------------------------------------------------------

def batch(prefix: str, n: int, **fields) -> dict:
    return {"outcomes": [{"request_id": f"{prefix}-{i}", "version": PROD.hash, "score": 0.9, "latency_ms": 100.0,
                          "arm": "control", "model": "small", **fields} for i in range(n)]}


def test_outcomes_are_recorded_once_however_often_they_are_sent(store):
    with TestClient(make_app(store)) as client:
        url = f"/v1/pipelines/{PIPE}/outcomes"
        first = client.post(url, json=batch("a", 50), headers=AUTH)
        assert first.json() == {"received": 50, "recorded": 50, "duplicates": 0}
        again = client.post(url, json=batch("a", 50, score=0.1), headers=AUTH)  # a retry, even with other values
        assert again.json() == {"received": 50, "recorded": 0, "duplicates": 50}
        overlap = batch("a", 60)
        overlap["outcomes"].append(dict(overlap["outcomes"][-1]))  # the same id twice in one batch
        assert client.post(url, json=overlap, headers=AUTH).json() == {"received": 61, "recorded": 10,
                                                                       "duplicates": 51}
        other = client.post("/v1/pipelines/other/outcomes", json=batch("a", 5), headers=AUTH)
        assert other.json()["recorded"] == 5  # request ids are per pipeline
    assert rows(store, f"SELECT count(*), count(DISTINCT request_id), min(score) FROM production_results "
                       f"WHERE pipeline = '{PIPE}'") == [(60, 60, 0.9)]  # the first outcome of each id stays
    recorded = store.production_results(PIPE, scope=None)
    assert {r.arm for r in recorded} == {"control"} and recorded[0].latency_ms == 100.0


def test_concurrent_retries_never_double_count(store):
    """Twenty clients send overlapping batches at once, several times: every id is recorded exactly once and
    the answers' `recorded` add up to the rows in the store."""
    app = make_app(store)

    async def scenario() -> list[dict]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=AUTH) as client:
                async def send(i: int) -> dict:
                    body = batch(f"c{i % 5}", 40)  # five distinct batches, each sent by four clients
                    r = await client.post(f"/v1/pipelines/{PIPE}/outcomes", json=body)
                    assert r.status_code == 200, r.text
                    return r.json()

                return [a for _ in range(3) for a in await asyncio.gather(*(send(i) for i in range(20)))]

    answers = asyncio.run(scenario())
    assert sum(a["recorded"] for a in answers) == 200
    assert sum(a["duplicates"] for a in answers) == 60 * 40 - 200
    assert rows(store, "SELECT count(*), count(DISTINCT request_id) FROM production_results") == [(200, 200)]


def test_an_outcome_writer_that_cannot_write_answers_503_and_records_nothing(store):
    app = make_app(store, lock_timeout_s=0.3)
    with TestClient(app) as client:
        blocker = subprocess.Popen(  # another process takes the file (retrying while the API reads it) and keeps it
            [sys.executable, "-c", "import duckdb, time\n"
             "while True:\n"
             "    try:\n"
             f"        con = duckdb.connect({str(store.path)!r}, config={{'autoinstall_known_extensions': False, "
             "'autoload_known_extensions': False})\n"
             "        break\n"
             "    except duckdb.IOException:\n"
             "        time.sleep(0.01)\n"
             "print('held', flush=True)\ntime.sleep(60)\n"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert blocker.stdout.readline().strip() == "held"
            r = client.post(f"/v1/pipelines/{PIPE}/outcomes", json=batch("busy", 3), headers=AUTH)
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            assert "retry" in r.json()["message"] and r.json()["error"] == "store_unavailable"
            # the prompt keeps being served from memory meanwhile
            assert client.get(f"/v1/pipelines/{PIPE}/prompt?key=u", headers=AUTH).json()["version"] == PROD.hash
        finally:
            blocker.kill()
            blocker.wait()
        retry = client.post(f"/v1/pipelines/{PIPE}/outcomes", json=batch("busy", 3), headers=AUTH)
        assert retry.json() == {"received": 3, "recorded": 3, "duplicates": 0}


# -- the sticky split -------------------------------------------------------------------------------------------

def fields(served) -> dict:
    """`resolve_prompt`'s answer in the published `ServedPrompt` schema, built from the dataclass's own fields (not
    with the API's mapping, which the comparison checks)."""
    return ServedPrompt.model_validate(asdict(served)).model_dump()


def test_the_prompt_is_resolve_prompt_exactly_during_a_canary_and_after_the_split_moves(store):
    canary = begin_canary(store, pipeline=PIPE, control_hash=PROD.hash, treatment_hash=NEW.hash,
                          config=CanaryConfig(), actor="test")
    keys = [f"user-{i}" for i in range(1000)] + ["ünïcode ключ", "a&b=c", "x" * 512, " spaced "]
    with TestClient(make_app(store, refresh_s=0.1)) as client:
        def compare(split: float) -> set[str]:
            clear_cache()  # the library reads the store afresh once (and the API, in this process, too)
            treated = set()
            for key in keys:
                answer = client.get(f"/v1/pipelines/{PIPE}/prompt", params={"key": key}, headers=AUTH).json()
                expected = fields(resolve_prompt(PIPE, key, store=store.path, cache_seconds=60))
                assert answer == expected, key
                assert answer["split_pct"] == split
                if answer["arm"] == "treatment":
                    treated.add(key)
            return treated

        first = compare(10.0)
        assert 0.07 < len(first) / len(keys) < 0.13
        store.update_canary(canary.canary_id, step=1, split_pct=50.0)
        deadline = time.monotonic() + 10
        while client.get(f"/v1/pipelines/{PIPE}/prompt?key=u", headers=AUTH).json()["split_pct"] != 50.0:
            assert time.monotonic() < deadline, "the API did not see the new split"
            time.sleep(0.05)
        second = compare(50.0)
        assert first <= second and 0.45 < len(second) / len(keys) < 0.55  # sticky as the split grows


def test_a_model_scoped_label_is_served_to_that_model_as_resolve_prompt_does(store):
    record_version(store, PIPE, LARGE_ONLY)
    store.move_label(PIPE, "production", LARGE_ONLY.hash, scope="large", actor="test", reason="large only")
    with TestClient(make_app(store)) as client:
        for model in (None, "small", "large"):
            params = {"key": "u7", **({"model": model} if model else {})}
            answer = client.get(f"/v1/pipelines/{PIPE}/prompt", params=params, headers=AUTH).json()
            clear_cache()
            assert answer == fields(resolve_prompt(PIPE, "u7", model=model, store=store.path))
            assert answer["version"] == (LARGE_ONLY.hash if model == "large" else PROD.hash)


def test_fastapi_answers_what_the_fast_path_declines_with_the_same_payload(store):
    """A repeated parameter is left to FastAPI's route (which takes the last value): same answer as the fast path."""
    with TestClient(make_app(store)) as client:
        fast = client.get(f"/v1/pipelines/{PIPE}/prompt?key=u9&model=large", headers=AUTH)
        routed = client.get(f"/v1/pipelines/{PIPE}/prompt?key=zz&key=u9&model=large", headers=AUTH)
        unknown = client.get(f"/v1/pipelines/{PIPE}/prompt?key=u9&debug=1", headers=AUTH)  # extra: ignored
    assert fast.status_code == routed.status_code == unknown.status_code == 200
    assert fast.json() == routed.json() == unknown.json()
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"


def test_a_label_moved_by_a_flow_reaches_the_api_within_a_refresh(store):
    with TestClient(make_app(store, refresh_s=0.1)) as client:
        assert client.get(f"/v1/pipelines/{PIPE}/prompt?key=u", headers=AUTH).json()["version"] == PROD.hash
        store.move_label(PIPE, "production", NEW.hash, actor="test", reason="promoted")
        deadline = time.monotonic() + 10
        while client.get(f"/v1/pipelines/{PIPE}/prompt?key=u", headers=AUTH).json()["version"] != NEW.hash:
            assert time.monotonic() < deadline
            time.sleep(0.05)


# -- status and docs --------------------------------------------------------------------------------------------

def test_status_shows_labels_the_running_canary_and_the_rest(store):
    canary = begin_canary(store, pipeline=PIPE, control_hash=PROD.hash, treatment_hash=NEW.hash,
                          config=CanaryConfig(), actor="test")
    with TestClient(make_app(store)) as client:
        status = client.get("/v1/status", headers=AUTH).json()
    mine = status["pipelines"][PIPE]
    assert mine["labels"][""]["production"]["version"] == PROD.hash
    assert mine["canary"]["canary_id"] == canary.canary_id and mine["canary"]["treatment"] == NEW.hash
    assert mine["open_alerts"] == [] and mine["open_incidents"] == []
    assert set(mine["last_runs"]) == {"baseline", "optimization", "probe", "smoke", "monitor"}
    assert status["pipelines"]["other"]["labels"] == {}


def test_the_openapi_document_and_its_page_need_no_network(store):
    with TestClient(make_app(store)) as client:
        spec = client.get("/openapi.json").json()
        page = client.get("/docs").text
    assert {"/v1/pipelines/{name}/prompt", "/v1/pipelines/{name}/outcomes", "/v1/status",
            "/v1/pipelines/{name}/trigger/{phase}"} <= set(spec["paths"])
    assert spec["paths"]["/v1/status"]["get"]["security"] == [{"bearer": []}]
    assert "Outcome" in spec["components"]["schemas"]
    assert "<script" not in page and "http://" not in page and "https://" not in page  # no external assets
    assert "/v1/pipelines/{name}/outcomes" in page and "request_id" in page


# -- trigger ----------------------------------------------------------------------------------------------------

def test_the_trigger_starts_the_phase_deployment_and_reports_prefect_errors(store):
    started = []

    async def trigger(deployment, parameters, idempotency_key):
        if deployment.startswith("healing/"):
            raise TriggerError("no deployment 'healing/customer-insights' on the Prefect server", status=404)
        if deployment.startswith("cycle/"):
            raise TriggerError("cannot reach the Prefect API at http://127.0.0.1:9/api", status=503)
        started.append((deployment, parameters, idempotency_key))
        return {"flow_run_id": "0000", "flow_run_name": "brave-fox", "state": "SCHEDULED", "url": None}

    with TestClient(make_app(store, trigger=trigger)) as client:
        r = client.post(f"/v1/pipelines/{PIPE}/trigger/monitor", json={"parameters": {"heal": False},
                                                                       "idempotency_key": "k1"}, headers=AUTH)
        assert r.status_code == 202 and r.json()["deployment"] == f"monitor/{PIPE}"
        assert started == [(f"monitor/{PIPE}", {"heal": False}, "k1")]
        r = client.post(f"/v1/pipelines/{PIPE}/trigger/healing", headers=AUTH)
        assert r.status_code == 404 and r.json()["error"] == "unknown_deployment"
        r = client.post(f"/v1/pipelines/{PIPE}/trigger/cycle", headers=AUTH)
        assert r.status_code == 503 and "cannot reach" in r.json()["message"]
    with TestClient(make_app(store)) as client:  # started without a trigger
        r = client.post(f"/v1/pipelines/{PIPE}/trigger/monitor", headers=AUTH)
        assert r.status_code == 503 and r.json()["error"] == "no_prefect"
