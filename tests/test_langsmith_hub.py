"""The LangSmith target against a local stand-in of the prompt hub's REST endpoints (the ones the
LangSmith SDK's push_prompt calls), served by uvicorn on 127.0.0.1 and recording every request."""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from simserver import ServerThread

from deploy_support import PIPE, better_prompt, record_version, write_config
from promptcycle.catalog import load_config
from promptcycle.deploy.release import plan_release, release_version, roll_back
from promptcycle.deploy.targets import DeployedPrompt, TargetError, apply_targets, build_targets
from promptcycle.store import MetricsStore

KEY = "lsv2_pt_standin_secret_8c1f0e2d9b7a"
VARIABLES = ("customer", "question")
V1 = DeployedPrompt(pipeline=PIPE, scope="", version="v1aaaaaaaaaaaaaa", system="You are an analyst.",
                    template="{{customer}}\n{{question}}\nReply with a JSON object.", variables=VARIABLES)
V2 = DeployedPrompt(pipeline=PIPE, scope="", version="v2bbbbbbbbbbbbbb", system="You are an analyst. Be exact.",
                    template="{{customer}}\n{{question}}\nReply with valid JSON only.", variables=VARIABLES)


@dataclass
class Hub:
    """The stand-in's state: prompts with their commits and tags, every request, and scripted failures."""

    prompts: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)  # "commit" / "tag" / "delete" -> HTTP status
    ids: Any = field(default_factory=lambda: itertools.count(1))

    def calls(self) -> list[str]:
        return [f"{r['method']} {r['path']}" for r in self.requests]

    def tagged(self, name: str, tag: str) -> dict[str, Any]:
        prompt = self.prompts[name]
        return next(c for c in prompt["commits"] if c["id"] == prompt["tags"][tag])


def hub_app(hub: Hub) -> FastAPI:
    app = FastAPI()

    def now() -> str:
        return datetime.now(timezone.utc).isoformat()

    def repo(name: str) -> dict[str, Any]:
        p = hub.prompts[name]
        return {"repo_handle": name, "id": p["id"], "tenant_id": "tenant-1", "created_at": p["created_at"],
                "updated_at": now(), "is_public": False, "is_archived": False, "tags": [], "owner": None,
                "full_name": name, "num_likes": 0, "num_downloads": 0, "num_views": 0,
                "last_commit_hash": p["commits"][-1]["commit_hash"] if p["commits"] else None,
                "num_commits": len(p["commits"])}  # every field the SDK's `Prompt` schema requires

    @app.middleware("http")
    async def record(request: Request, call_next):
        body = await request.body()
        hub.requests.append({"method": request.method, "path": request.url.path, "query": str(request.url.query),
                             "headers": dict(request.headers), "body": body})
        if request.url.path != "/info" and request.headers.get("x-api-key") != KEY:
            return JSONResponse({"detail": "Invalid token"}, status_code=401)
        return await call_next(request)

    @app.get("/info")
    async def info():
        return {"version": "stand-in", "batch_ingest_config": {}}

    @app.get("/settings")
    async def settings():
        return {"id": "tenant-1", "display_name": "Tests", "created_at": now(), "tenant_handle": "acme"}

    @app.get("/repos/{owner}/{name}")
    async def get_repo(owner: str, name: str):
        if name not in hub.prompts:
            return JSONResponse({"detail": "Repo not found"}, status_code=404)
        return {"repo": repo(name)}

    @app.post("/repos")
    async def create_repo(request: Request):
        name = (await request.json())["repo_handle"]
        if name in hub.prompts:
            return JSONResponse({"detail": "Repo already exists"}, status_code=409)
        hub.prompts[name] = {"id": f"repo-{next(hub.ids)}", "created_at": now(), "commits": [], "tags": {}}
        return {"repo": repo(name)}

    @app.delete("/repos/{owner}/{name}")
    async def delete_repo(owner: str, name: str):
        if "delete" in hub.fail:
            return JSONResponse({"detail": "cannot delete now"}, status_code=hub.fail["delete"])
        hub.prompts.pop(name, None)
        return JSONResponse(None, status_code=204)

    @app.get("/commits/{owner}/{name}")
    async def list_commits(owner: str, name: str, limit: int = 100, offset: int = 0):
        commits = hub.prompts[name]["commits"][::-1]
        return {"commits": commits[offset:offset + limit], "total": len(commits)}

    @app.post("/commits/{owner}/{name}")
    async def commit(owner: str, name: str, request: Request):
        if "commit" in hub.fail:
            return JSONResponse({"detail": "commit refused by the stand-in"}, status_code=hub.fail["commit"])
        if name not in hub.prompts:
            return JSONResponse({"detail": "Repo not found"}, status_code=404)
        data = await request.json()
        commits = hub.prompts[name]["commits"]
        latest = commits[-1]["commit_hash"] if commits else None
        if data.get("parent_commit") != latest:
            return JSONResponse({"detail": "parent is not the latest commit"}, status_code=409)
        n = next(hub.ids)
        entry = {"id": f"commit-{n}", "commit_hash": f"{n:08d}" + "f" * 32, "parent": latest,
                 "manifest": data["manifest"], "description": data.get("description")}
        commits.append(entry)
        return {"commit": entry}

    @app.post("/repos/{owner}/{name}/tags")
    async def tag(owner: str, name: str, request: Request):
        if "tag" in hub.fail:
            return JSONResponse({"detail": "tag refused by the stand-in"}, status_code=hub.fail["tag"])
        data = await request.json()
        hub.prompts[name]["tags"][data["tag_name"]] = data["commit_id"]
        return {"tag_name": data["tag_name"], "commit_id": data["commit_id"]}

    return app


@pytest.fixture
def hub():
    state = Hub()
    with ServerThread(app=hub_app(state), lifespan="off") as server:
        state.url = f"http://127.0.0.1:{server.port}"
        yield state


@pytest.fixture
def hub_key(monkeypatch):
    monkeypatch.setenv("HUB_KEY", KEY)
    return KEY


def langsmith_target(tmp_path, hub, **options):
    entry = {"kind": "langsmith", "options": {"api_url": hub.url, "api_key_env": "HUB_KEY", **options}}
    return build_targets(load_config(write_config(tmp_path, deployment={"targets": [entry]})), PIPE)


def texts(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["id"][-1], m["kwargs"]["prompt"]["kwargs"]["template"]) for m in manifest["kwargs"]["messages"]]


def assert_key_only_in_headers(hub: Hub) -> None:
    assert hub.requests
    for r in hub.requests:
        if r["path"] != "/info":
            assert r["headers"]["x-api-key"] == KEY
        assert KEY.encode() not in r["body"] and KEY not in r["path"] + r["query"]
        assert "authorization" not in r["headers"]


def test_push_creates_the_prompt_commits_the_manifest_and_tags_it(tmp_path, hub, hub_key, caplog):
    caplog.set_level(logging.DEBUG)
    [target] = langsmith_target(tmp_path, hub)
    rollout = apply_targets([target], V1)
    assert [o.status for o in rollout.outcomes] == ["written"]
    assert hub.calls() == ["GET /info", f"GET /repos/-/{PIPE}", "POST /repos", f"POST /commits/-/{PIPE}",
                           f"POST /repos/-/{PIPE}/tags"]
    commit = hub.tagged(PIPE, "production")
    assert commit["parent"] is None and commit["description"] == f"promptcycle version {V1.version}"
    assert texts(commit["manifest"]) == [("SystemMessagePromptTemplate", V1.system),
                                         ("HumanMessagePromptTemplate", V1.template)]
    assert commit["manifest"]["kwargs"]["input_variables"] == list(VARIABLES)
    assert commit["commit_hash"][:8] in rollout.outcomes[0].detail
    assert_key_only_in_headers(hub)
    assert KEY not in caplog.text + repr(target) + str(rollout.outcomes)


def test_a_second_version_commits_on_the_latest_and_undo_pushes_the_previous_back(tmp_path, hub, hub_key):
    [target] = langsmith_target(tmp_path, hub, prompt_name="acme/{pipeline}", tag="prod")
    hub.prompts[PIPE] = {"id": "repo-0", "created_at": "2026-01-01T00:00:00+00:00", "commits": [], "tags": {}}
    apply_targets([target], V1)
    first = hub.tagged(PIPE, "prod")
    rollout = apply_targets([target], V2, previous=V1)
    second = hub.tagged(PIPE, "prod")
    assert second["parent"] == first["commit_hash"] and texts(second["manifest"])[0][1] == V2.system
    assert "POST /repos" not in hub.calls()  # the prompt existed: nothing created

    [restored] = rollout.undo()
    assert restored.status == "restored" and V1.version in restored.detail
    third = hub.tagged(PIPE, "prod")
    assert third["parent"] == second["commit_hash"] and third["manifest"] == first["manifest"]
    assert [c["id"] for c in hub.prompts[PIPE]["commits"]] == [first["id"], second["id"], third["id"]]
    assert_key_only_in_headers(hub)


def test_a_failing_commit_leaves_no_prompt_behind(tmp_path, hub, hub_key):
    [target] = langsmith_target(tmp_path, hub)
    hub.fail["commit"] = 500
    with pytest.raises(TargetError) as info:
        apply_targets([target], V1)
    message = str(info.value)
    assert "commit refused by the stand-in" in message and "HTTP 500" in message
    assert f"the prompt -/{PIPE} created for this push was deleted again: nothing is left in the hub" in message
    assert hub.prompts == {}
    assert hub.calls()[-2:] == [f"POST /commits/-/{PIPE}", f"DELETE /repos/-/{PIPE}"]
    assert KEY not in message + repr(info.value.outcomes)


def test_a_failing_commit_to_an_existing_prompt_changes_nothing(tmp_path, hub, hub_key):
    [target] = langsmith_target(tmp_path, hub)
    apply_targets([target], V1)
    before = json.dumps(hub.prompts, sort_keys=True)
    hub.fail["commit"] = 503
    with pytest.raises(TargetError, match="nothing was changed in the hub"):
        apply_targets([target], V2, previous=V1)
    assert json.dumps(hub.prompts, sort_keys=True) == before


def test_when_the_created_prompt_cannot_be_deleted_the_error_says_what_is_left(tmp_path, hub, hub_key):
    [target] = langsmith_target(tmp_path, hub)
    hub.fail.update(commit=500, delete=503)
    with pytest.raises(TargetError) as info:
        apply_targets([target], V1)
    assert f"the prompt -/{PIPE} created for this push could NOT be deleted again" in str(info.value)
    assert "delete it in LangSmith by hand" in str(info.value)
    assert hub.prompts[PIPE]["commits"] == []  # an empty prompt: the only thing the API left


def test_a_failing_tag_says_the_commit_stays_untagged(tmp_path, hub, hub_key):
    [target] = langsmith_target(tmp_path, hub)
    apply_targets([target], V1)
    hub.fail["tag"] = 500
    with pytest.raises(TargetError) as info:
        apply_targets([target], V2, previous=V1)
    assert "is not tagged 'production': the tag still points where it did" in str(info.value)
    assert texts(hub.tagged(PIPE, "production")["manifest"])[0][1] == V1.system


def test_a_wrong_key_creates_nothing_and_is_never_shown(tmp_path, hub, monkeypatch):
    wrong = "lsv2_pt_wrong_key_77aa55cc33ee"
    monkeypatch.setenv("HUB_KEY", wrong)
    [target] = langsmith_target(tmp_path, hub)
    with pytest.raises(TargetError) as info:
        apply_targets([target], V1)
    assert "HTTP 401" in str(info.value) and "nothing was changed in the hub" in str(info.value)
    assert hub.calls() == ["GET /info", f"GET /repos/-/{PIPE}"] and hub.prompts == {}
    assert wrong not in str(info.value) + repr(info.value.outcomes)


def test_another_workspaces_missing_prompt_is_not_created(tmp_path, hub, hub_key):
    [target] = langsmith_target(tmp_path, hub, prompt_name="someone-else/{pipeline}")
    with pytest.raises(TargetError, match="creates prompts only in the key's own workspace"):
        apply_targets([target], V1)
    assert hub.prompts == {} and "POST /repos" not in hub.calls()


def test_release_and_rollback_through_the_hub_keep_the_key_out_of_duckdb_and_logs(tmp_path, hub, hub_key, caplog):
    caplog.set_level(logging.DEBUG)
    entry = {"kind": "langsmith", "options": {"api_url": hub.url, "api_key_env": "HUB_KEY"}}
    config_path = write_config(tmp_path, models=["small", "xl"],
                               deployment={"serving_models": ["xl"], "targets": [entry]})
    cfg = load_config(config_path)
    store = MetricsStore(tmp_path / "metrics.duckdb")

    def release(version: str) -> None:
        from promptcycle.deploy.locks import release_lock

        plan = plan_release(cfg, PIPE, store, version=version, force=True, actor="test")
        try:
            release_version(cfg, store, plan, None)
        finally:
            release_lock(store, PIPE, plan.deployment_id)

    first = record_version(store, PIPE, cfg.pipeline(PIPE).prompt.to_template())
    release(first)
    second = record_version(store, PIPE, better_prompt(cfg.pipeline(PIPE).prompt.to_template()), parent=first)
    release(second)
    roll_back(cfg, PIPE, store, actor="ana")

    commits = hub.prompts[PIPE]["commits"]
    assert len(commits) == 3 and commits[2]["manifest"] == commits[0]["manifest"]
    assert hub.tagged(PIPE, "production")["id"] == commits[2]["id"]
    assert store.get_label(PIPE, "production") == first
    hub.fail["commit"] = 500
    with pytest.raises(TargetError):
        roll_back(cfg, PIPE, store, actor="ana")
    assert_key_only_in_headers(hub)
    assert KEY.encode() not in (tmp_path / "metrics.duckdb").read_bytes()
    assert KEY not in caplog.text
    assert all(KEY not in json.dumps(d.targets) for d in store.deployments(PIPE))
