"""The LangSmith prompt-hub target against the fake LangSmith (promptcycle.langsmith.fake) on 127.0.0.1:
the requests promptcycle's hub client makes, what the hub holds afterwards (read back through the real
langsmith SDK too), release and rollback, failures at each step, and the key kept out of everything."""

from __future__ import annotations

import json
import logging
from typing import Any

import langsmith
import pytest

from deploy_support import PIPE, better_prompt, record_version, write_config
from promptcycle.catalog import load_config
from promptcycle.deploy.release import plan_release, release_version, roll_back
from promptcycle.deploy.targets import DeployedPrompt, TargetError, apply_targets, build_targets
from promptcycle.langsmith.fake import FakeLangSmith
from promptcycle.store import MetricsStore

VARIABLES = ("customer", "question")
V1 = DeployedPrompt(pipeline=PIPE, scope="", version="v1aaaaaaaaaaaaaa", system="You are an analyst.",
                    template="{{customer}}\n{{question}}\nReply with a JSON object.", variables=VARIABLES)
V2 = DeployedPrompt(pipeline=PIPE, scope="", version="v2bbbbbbbbbbbbbb", system="You are an analyst. Be exact.",
                    template="{{customer}}\n{{question}}\nReply with valid JSON only.", variables=VARIABLES)


def commits(hub: FakeLangSmith, name: str = PIPE) -> list[dict[str, Any]]:
    return hub.repos[name]["commits"]


def tagged(hub: FakeLangSmith, name: str, tag: str) -> dict[str, Any]:
    repo = hub.repos[name]
    return next(c for c in repo["commits"] if c["id"] == repo["commit_tags"][tag])


@pytest.fixture
def hub(langsmith_fake):
    return langsmith_fake


@pytest.fixture
def hub_key(hub, monkeypatch):
    monkeypatch.setenv("HUB_KEY", hub.api_key)
    return hub.api_key


def langsmith_target(tmp_path, hub, **options):
    entry = {"kind": "langsmith", "options": {"api_url": hub.url, "api_key_env": "HUB_KEY", **options}}
    return build_targets(load_config(write_config(tmp_path, deployment={"targets": [entry]})), PIPE)


def texts(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["id"][-1], m["kwargs"]["prompt"]["kwargs"]["template"]) for m in manifest["kwargs"]["messages"]]


def assert_key_only_in_headers(hub: FakeLangSmith) -> None:
    assert hub.requests
    for r in hub.requests:
        if r.path != "/info":
            assert r.headers["x-api-key"] == hub.api_key
        assert hub.api_key.encode() not in r.body and hub.api_key not in r.path + r.query
        assert "authorization" not in r.headers


def test_push_creates_the_prompt_commits_the_manifest_and_tags_it(tmp_path, hub, hub_key, caplog):
    caplog.set_level(logging.DEBUG)
    [target] = langsmith_target(tmp_path, hub)
    rollout = apply_targets([target], V1)
    assert [o.status for o in rollout.outcomes] == ["written"]
    assert hub.calls() == ["GET /info", f"GET /repos/-/{PIPE}", "POST /repos", f"POST /commits/-/{PIPE}",
                           f"POST /repos/-/{PIPE}/tags"]
    commit = tagged(hub, PIPE, "production")
    assert commit["parent_commit_hash"] is None and commit["description"] == f"promptcycle version {V1.version}"
    assert texts(commit["manifest"]) == [("SystemMessagePromptTemplate", V1.system),
                                         ("HumanMessagePromptTemplate", V1.template)]
    assert commit["manifest"]["kwargs"]["input_variables"] == list(VARIABLES)
    assert commit["commit_hash"][:8] in rollout.outcomes[0].detail
    sdk = langsmith.Client(api_url=hub.url, api_key=hub.api_key)  # what LangSmith users read back
    assert sdk.pull_prompt_commit(f"{PIPE}:production", skip_cache=True).manifest == commit["manifest"]
    assert_key_only_in_headers(hub)
    assert hub.api_key not in caplog.text + repr(target) + str(rollout.outcomes)


def test_a_second_version_commits_on_the_latest_and_undo_pushes_the_previous_back(tmp_path, hub, hub_key):
    [target] = langsmith_target(tmp_path, hub, prompt_name=f"{hub.tenant_handle}/{{pipeline}}", tag="prod")
    langsmith.Client(api_url=hub.url, api_key=hub.api_key).create_prompt(PIPE)  # the prompt exists, empty
    created_by_sdk = len(hub.requests)
    apply_targets([target], V1)
    first = tagged(hub, PIPE, "prod")
    rollout = apply_targets([target], V2, previous=V1)
    second = tagged(hub, PIPE, "prod")
    assert second["parent_commit_hash"] == first["commit_hash"] and texts(second["manifest"])[0][1] == V2.system
    assert "POST /repos" not in hub.calls()[created_by_sdk:]  # the prompt existed: nothing created

    [restored] = rollout.undo()
    assert restored.status == "restored" and V1.version in restored.detail
    third = tagged(hub, PIPE, "prod")
    assert third["parent_commit_hash"] == second["commit_hash"] and third["manifest"] == first["manifest"]
    assert [c["id"] for c in commits(hub)] == [first["id"], second["id"], third["id"]]
    assert_key_only_in_headers(hub)


def test_pushing_the_version_the_hub_already_holds_moves_the_tag_without_a_commit(tmp_path, hub, hub_key):
    [target] = langsmith_target(tmp_path, hub)
    apply_targets([target], V1)
    [staging] = langsmith_target(tmp_path, hub, tag="staging")
    rollout = apply_targets([staging], V1)  # the hub answers 409 "Nothing to commit" to an unchanged manifest
    assert [c["id"] for c in commits(hub)] == [tagged(hub, PIPE, "production")["id"]]
    assert tagged(hub, PIPE, "staging") == tagged(hub, PIPE, "production")
    assert "is already the latest commit" in rollout.outcomes[0].detail
    assert f"POST /commits/-/{PIPE}" not in hub.calls()[-4:]


def test_a_flaky_hub_read_is_retried_and_the_push_goes_through(tmp_path, hub, hub_key):
    [target] = langsmith_target(tmp_path, hub)
    apply_targets([target], V1)
    blip = hub.fail(503, path=f"/repos/-/{PIPE}", method="GET", times=1, retry_after=0)
    apply_targets([target], V2, previous=V1)
    assert blip.hits == 1 and texts(tagged(hub, PIPE, "production")["manifest"])[0][1] == V2.system


def test_a_failing_commit_leaves_no_prompt_behind(tmp_path, hub, hub_key):
    [target] = langsmith_target(tmp_path, hub)
    hub.fail(500, path=f"/commits/-/{PIPE}", method="POST")
    with pytest.raises(TargetError) as info:
        apply_targets([target], V1)
    message = str(info.value)
    assert "injected by the fake LangSmith" in message and "HTTP 500" in message
    assert f"the prompt -/{PIPE} created for this push was deleted again: nothing is left in the hub" in message
    assert hub.repos == {}
    assert hub.calls()[-2:] == [f"POST /commits/-/{PIPE}", f"DELETE /repos/-/{PIPE}"]
    assert hub.calls().count(f"POST /commits/-/{PIPE}") == 1  # a commit is never retried: it could land twice
    assert hub.api_key not in message + repr(info.value.outcomes)


def test_a_failing_commit_to_an_existing_prompt_changes_nothing(tmp_path, hub, hub_key):
    [target] = langsmith_target(tmp_path, hub)
    apply_targets([target], V1)
    before = json.dumps(hub.repos, sort_keys=True)
    hub.fail(503, path=f"/commits/-/{PIPE}", method="POST")
    with pytest.raises(TargetError, match="nothing was changed in the hub"):
        apply_targets([target], V2, previous=V1)
    assert json.dumps(hub.repos, sort_keys=True) == before


def test_when_the_created_prompt_cannot_be_deleted_the_error_says_what_is_left(tmp_path, hub, hub_key):
    [target] = langsmith_target(tmp_path, hub)
    hub.fail(500, path=f"/commits/-/{PIPE}", method="POST")
    hub.fail(503, path=f"/repos/-/{PIPE}", method="DELETE")
    with pytest.raises(TargetError) as info:
        apply_targets([target], V1)
    assert f"the prompt -/{PIPE} created for this push could NOT be deleted again" in str(info.value)
    assert "delete it in LangSmith by hand" in str(info.value)
    assert commits(hub) == []  # an empty prompt: the only thing the API left


def test_a_failing_tag_says_the_commit_stays_untagged(tmp_path, hub, hub_key):
    [target] = langsmith_target(tmp_path, hub)
    apply_targets([target], V1)
    refusal = hub.fail(500, path=f"/repos/-/{PIPE}/tags", method="POST", retry_after=0)
    with pytest.raises(TargetError) as info:
        apply_targets([target], V2, previous=V1)
    assert "is not tagged 'production': the tag still points where it did" in str(info.value)
    assert refusal.hits == 3  # the tag is safe to repeat: retried twice
    assert texts(tagged(hub, PIPE, "production")["manifest"])[0][1] == V1.system


def test_a_wrong_key_creates_nothing_and_is_never_shown(tmp_path, hub, monkeypatch):
    wrong = "lsv2_pt_wrong_key_77aa55cc33ee"
    monkeypatch.setenv("HUB_KEY", wrong)
    [target] = langsmith_target(tmp_path, hub)
    with pytest.raises(TargetError) as info:
        apply_targets([target], V1)
    assert "HTTP 401" in str(info.value) and "nothing was changed in the hub" in str(info.value)
    assert hub.calls() == ["GET /info", f"GET /repos/-/{PIPE}"] and hub.repos == {}
    assert wrong not in str(info.value) + repr(info.value.outcomes)


def test_another_workspaces_missing_prompt_is_not_created(tmp_path, hub, hub_key):
    [target] = langsmith_target(tmp_path, hub, prompt_name="someone-else/{pipeline}")
    with pytest.raises(TargetError, match="creates prompts only in the key's own workspace"):
        apply_targets([target], V1)
    assert hub.repos == {} and "POST /repos" not in hub.calls()


def test_the_target_takes_its_url_and_key_from_the_langsmith_section(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("TEAM_LS_KEY", hub.api_key)
    monkeypatch.delenv("LANGSMITH_ENDPOINT", raising=False)
    config_path = write_config(tmp_path, deployment={"targets": [{"kind": "langsmith"}]})
    import yaml

    data = yaml.safe_load(config_path.read_text())
    data["langsmith"] = {"api_url": hub.url, "api_key_env": "TEAM_LS_KEY"}
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    [target] = build_targets(load_config(config_path), PIPE)
    assert [o.status for o in apply_targets([target], V1).outcomes] == ["written"]
    assert texts(tagged(hub, PIPE, "production")["manifest"])[0][1] == V1.system


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

    made = commits(hub)
    assert len(made) == 3 and made[2]["manifest"] == made[0]["manifest"]
    assert tagged(hub, PIPE, "production")["id"] == made[2]["id"]
    sdk = langsmith.Client(api_url=hub.url, api_key=hub.api_key)
    # Readers of the tag get the rolled-back prompt (skip_cache: the SDK caches prompts process-wide by name).
    assert sdk.pull_prompt_commit(f"{PIPE}:production", skip_cache=True).manifest == made[0]["manifest"]
    assert store.get_label(PIPE, "production") == first
    hub.fail(500, path=f"/commits/-/{PIPE}", method="POST")
    with pytest.raises(TargetError):
        roll_back(cfg, PIPE, store, actor="ana")
    assert_key_only_in_headers(hub)
    assert hub.api_key.encode() not in (tmp_path / "metrics.duckdb").read_bytes()
    assert hub.api_key not in caplog.text
    assert all(hub.api_key not in json.dumps(d.targets) for d in store.deployments(PIPE))


@pytest.mark.engine
def test_the_hub_key_comes_from_a_langsmith_credentials_block(prefect_harness, tmp_path, hub, monkeypatch):
    import yaml

    from promptcycle.errors import ConfigError
    from promptcycle_blocks.credentials import LangSmithCredentials
    from promptcycle_tasks.deployment import block_secret

    monkeypatch.delenv("LANGSMITH_API_KEY", raising=False)
    LangSmithCredentials(api_key=hub.api_key).save("hub-key-block", overwrite=True)
    config_path = write_config(tmp_path, deployment={"targets": [{"kind": "langsmith"}]})
    data = yaml.safe_load(config_path.read_text())
    data["langsmith"] = {"api_url": hub.url, "api_key_block": "hub-key-block"}
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))

    with pytest.raises(ConfigError, match="read through Prefect"):  # a block is never read around Prefect
        build_targets(load_config(config_path), PIPE)
    [target] = build_targets(load_config(config_path), PIPE, block_secret=block_secret)  # Prefect's block loader
    assert [o.status for o in apply_targets([target], V1).outcomes] == ["written"]
    assert texts(tagged(hub, PIPE, "production")["manifest"])[0][1] == V1.system
    assert_key_only_in_headers(hub)

    data["langsmith"]["api_key_block"] = "no-such-block"
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match="no LangSmith Credentials block named 'no-such-block'") as info:
        build_targets(load_config(config_path), PIPE, block_secret=block_secret)
    assert "api_key_block" in str(info.value) and hub.api_key not in str(info.value)
