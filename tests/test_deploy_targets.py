"""Deployment targets: atomic files with backups, a webhook over real loopback HTTP, the LangSmith hub target,
and all-or-nothing across them."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import yaml

from promptcycle.catalog import load_config
from promptcycle.deploy.targets import DeployedPrompt, TargetError, apply_targets, build_targets
from promptcycle.errors import ConfigError
from deploy_support import PIPE, reload_endpoint, write_config
from simserver import unused_port

VARIABLES = ("customer", "question")
V1 = DeployedPrompt(pipeline=PIPE, scope="", version="v1aaaaaaaaaaaaaa", system="You are an analyst.",
                    template="{{customer}}\n{{question}}\nReply with a JSON object.", variables=VARIABLES)
V2 = DeployedPrompt(pipeline=PIPE, scope="", version="v2bbbbbbbbbbbbbb", system="You are an analyst. Be exact.",
                    template="{{customer}}\n{{question}}\nReply with valid JSON only.", variables=VARIABLES)


def targets_for(tmp_path: Path, targets: list[dict]):
    config = load_config(write_config(tmp_path, deployment={"targets": targets}))
    return build_targets(config, PIPE)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_payload_is_deterministic_json_of_the_version():
    data = json.loads(V1.payload())
    assert data == {"format": "promptcycle.prompt/1", "pipeline": PIPE, "scope": "", "version": V1.version,
                    "system": V1.system, "template": V1.template, "variables": ["customer", "question"]}
    assert V1.payload() == V1.payload() and V1.payload().endswith(b"\n")


def test_file_target_writes_atomically_keeps_backups_and_restores_byte_for_byte(tmp_path):
    [target] = targets_for(tmp_path, [{"kind": "file", "options": {"path": "out/{pipeline}.json", "keep_backups": 2}}])
    path = tmp_path / "out" / f"{PIPE}.json"
    first = apply_targets([target], V1)
    assert first.outcomes[0].status == "written" and path.read_bytes() == V1.payload()
    v1_hash = sha(path)
    second = apply_targets([target], V2, previous=V1)
    assert path.read_bytes() == V2.payload()
    backups = sorted((tmp_path / "out" / f"{PIPE}.json.backups").glob("*.bak"))
    assert len(backups) == 1 and V1.version in backups[0].name and backups[0].read_bytes() == V1.payload()
    # No temporary file is left behind next to the target.
    assert [p.name for p in (tmp_path / "out").iterdir() if p.is_file()] == [f"{PIPE}.json"]
    second.undo()
    assert sha(path) == v1_hash
    # Deploying the same version again changes nothing; backups are pruned to keep_backups.
    assert apply_targets([target], V1).outcomes[0].status == "unchanged"
    for v in (V2, V1, V2, V1):
        time.sleep(0.002)
        apply_targets([target], v)
    assert len(list((tmp_path / "out" / f"{PIPE}.json.backups").glob("*.bak"))) == 2
    first_undo = apply_targets([target], V2)
    first_undo.undo()
    assert path.read_bytes() == V1.payload()


def test_undoing_a_first_write_removes_the_file(tmp_path):
    [target] = targets_for(tmp_path, [{"kind": "file", "options": {"path": "new.json"}}])
    rollout = apply_targets([target], V1)
    assert (tmp_path / "new.json").exists()
    rollout.undo()
    assert not (tmp_path / "new.json").exists()


def test_an_unwritable_target_path_fails_clearly_and_writes_nothing(tmp_path):
    (tmp_path / "blocker").write_text("a file where a directory should be")
    [target] = targets_for(tmp_path, [{"kind": "file", "options": {"path": "blocker/prompt.json"}}])
    with pytest.raises(TargetError, match=r"cannot write .*blocker/prompt.json") as info:
        apply_targets([target], V1)
    assert [o.status for o in info.value.outcomes] == ["failed"]
    assert (tmp_path / "blocker").read_text() == "a file where a directory should be"


def test_webhook_posts_the_payload_with_the_token_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RELOAD_TOKEN", "tok-s3cret-value")
    with reload_endpoint() as app:
        options = {"url": app.url, "token_env": "RELOAD_TOKEN"}
        [target] = targets_for(tmp_path, [{"kind": "webhook", "options": options}])
        rollout = apply_targets([target], V2, previous=V1)
        assert app.bodies == [V2.payload()]
        headers = {k.lower(): v for k, v in app.requests[0]["headers"].items()}
        assert headers["authorization"] == "Bearer tok-s3cret-value"
        assert headers["x-promptcycle-version"] == V2.version
        assert "tok-s3cret-value" not in rollout.outcomes[0].detail
        rollout.undo()  # restoring re-sends the previous version's exact bytes
        assert app.bodies[-1] == V1.payload()


def test_webhook_retries_server_errors_then_succeeds(tmp_path):
    with reload_endpoint(statuses=[503, 500]) as app:
        [target] = targets_for(tmp_path, [{"kind": "webhook", "options": {"url": app.url, "backoff_seconds": 0.01}}])
        rollout = apply_targets([target], V1)
    assert len(app.requests) == 3
    assert "after 3 attempt(s)" in rollout.outcomes[0].detail


def test_webhook_does_not_retry_a_refusal(tmp_path):
    with reload_endpoint(statuses=[400]) as app:
        [target] = targets_for(tmp_path, [{"kind": "webhook", "options": {"url": app.url, "backoff_seconds": 0.01}}])
        with pytest.raises(TargetError, match="refused version .*HTTP 400.*not retried"):
            apply_targets([target], V1)
    assert len(app.requests) == 1


def test_a_webhook_that_is_down_fails_after_retries_and_the_file_is_restored(tmp_path):
    file_path = tmp_path / "deployed" / "prompt.json"
    file_path.parent.mkdir()
    file_path.write_bytes(V1.payload())
    before = sha(file_path)
    url = f"http://127.0.0.1:{unused_port()}/reload"
    targets = targets_for(tmp_path, [
        {"kind": "file", "options": {"path": "deployed/prompt.json"}},
        {"kind": "webhook", "name": "app", "options": {"url": url, "max_retries": 2, "backoff_seconds": 0.01,
                                                        "timeout_seconds": 1}},
        {"kind": "file", "name": "mirror", "options": {"path": "mirror.json"}},
    ])
    started = time.monotonic()
    with pytest.raises(TargetError) as info:
        apply_targets(targets, V2, previous=V1)
    message = str(info.value)
    assert "failed at target 'app'" in message and "after 3 attempt(s)" in message and "ConnectError" in message
    assert "restored the 1 target(s) already written" in message
    assert [(o.target, o.status) for o in info.value.outcomes] == [("file", "restored"), ("app", "failed"),
                                                                   ("mirror", "not_run")]
    assert sha(file_path) == before  # nothing half-deployed
    assert not (tmp_path / "mirror.json").exists()
    assert time.monotonic() - started < 10


def test_langsmith_is_skipped_with_a_clear_message_without_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("LANGSMITH_API_KEY", raising=False)
    [target] = targets_for(tmp_path, [{"kind": "langsmith"}])
    rollout = apply_targets([target], V1)
    assert rollout.outcomes[0].status == "skipped"
    assert "no LangSmith API key" in rollout.outcomes[0].detail and "LANGSMITH_API_KEY" in rollout.outcomes[0].detail


def test_langsmith_unreachable_fails_and_restores_the_others(tmp_path, monkeypatch):
    monkeypatch.setenv("HUB_KEY", "lsv2_pt_not_a_real_key_0000000000")
    targets = targets_for(tmp_path, [
        {"kind": "file", "options": {"path": "p.json"}},
        {"kind": "langsmith", "options": {"api_url": f"http://127.0.0.1:{unused_port()}", "api_key_env": "HUB_KEY"}},
    ])
    with pytest.raises(TargetError, match="is not reachable") as info:
        apply_targets(targets, V1)
    assert "lsv2_pt_not_a_real_key" not in str(info.value)
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize(("target", "message"), [
    ({"kind": "ftp"}, "unknown target kind 'ftp'; known: file, langsmith, webhook"),
    ({"kind": "file", "options": {}}, "targets.0.options.path: missing required key"),
    ({"kind": "file", "options": {"path": "x", "colour": 1}}, "targets.0.options.colour: unknown key"),
    ({"kind": "webhook", "options": {"url": "ftp://x"}}, "url must start with http"),
])
def test_bad_target_configuration_names_the_path(tmp_path, target, message):
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, deployment={"targets": [target]}))
    assert message in str(info.value)
    assert "pipelines.customer-insights.deployment.targets" in str(info.value)


def test_a_missing_token_variable_is_a_configuration_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    config = load_config(write_config(tmp_path, deployment={"targets": [
        {"kind": "webhook", "options": {"url": "http://127.0.0.1:9/x", "token_env": "NO_SUCH_TOKEN"}}]}))
    with pytest.raises(ConfigError, match="NO_SUCH_TOKEN is not set"):
        build_targets(config, PIPE)


def test_the_repository_config_has_a_file_target(tmp_path):
    data = yaml.safe_load((Path(__file__).parent.parent / "pipelines.yaml").read_text())
    targets = data["pipelines"][PIPE]["deployment"]["targets"]
    assert targets[0] == {"kind": "file", "options": {"path": "deployed/customer-insights.prompt.json"}}


def test_a_webhook_token_can_come_from_a_credentials_block(tmp_path):
    from pydantic import SecretStr

    from promptcycle_blocks.credentials import WebhookCredentials

    block = WebhookCredentials(token="blk-s3cret")
    assert "blk-s3cret" not in repr(block) and block.get_token().get_secret_value() == "blk-s3cret"
    config = load_config(write_config(tmp_path, deployment={"targets": [
        {"kind": "webhook", "options": {"url": "http://127.0.0.1:9/x", "credentials_block": "app-token"}}]}))
    with pytest.raises(ConfigError, match="credentials blocks are read through Prefect"):
        build_targets(config, PIPE)
    looked_up = []

    def lookup(block_type: str, name: str) -> SecretStr:
        looked_up.append((block_type, name))
        return block.get_token()

    with reload_endpoint() as app:
        config.pipeline(PIPE).deployment.targets[0].options["url"] = app.url
        [target] = build_targets(config, PIPE, block_secret=lookup)
        apply_targets([target], V1)
    assert looked_up == [("Webhook Credentials", "app-token")]
    assert {k.lower(): v for k, v in app.requests[0]["headers"].items()}["authorization"] == "Bearer blk-s3cret"
