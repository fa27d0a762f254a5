"""The LangSmith API key is in nothing promptcycle stores or shows: after a baseline on a `langsmith:` dataset
(pulled by the flow from the fake LangSmith), a `datasets push`, a push that fails on an outage and a pull
against a dead endpoint, every file written — DuckDB, the dataset's local copy, the error log, Prefect's
database with its logs and artifacts — and everything printed or logged is searched for the key."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from promptcycle.catalog import load_config
from promptcycle.datasets.loaders import load_cases
from promptcycle.datasets.splits import assign_splits
from promptcycle.config import SplitConfig
from promptcycle.langsmith.connection import connection
from promptcycle.langsmith.datasets import push_cases
from promptcycle_cli.main import main
from simserver import unused_port

REPO = Path(__file__).resolve().parent.parent
PIPE = "customer-insights"
SPECTRUMS = ["customer_profile", "credit_analysis"]


def write_config(directory: Path, source: str) -> Path:
    data = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    pipe = data["pipelines"][PIPE]
    pipe["models"] = ["nano", "xl"]
    pipe["dataset"]["spectrums"] = SPECTRUMS
    pipe["dataset"]["source"] = source
    data["store"] = "metrics.duckdb"
    path = directory / "pipelines.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


@pytest.mark.engine
@pytest.mark.slow
def test_the_api_key_is_in_nothing_stored_logged_or_printed(prefect_harness, langsmith_fake, tmp_path, monkeypatch,
                                                            capsys, caplog):
    import prefect.settings

    caplog.set_level(logging.DEBUG)
    key = langsmith_fake.api_key
    monkeypatch.setenv("LANGSMITH_API_KEY", key)
    monkeypatch.setenv("LANGSMITH_ENDPOINT", langsmith_fake.url)
    monkeypatch.setenv("PROMPTCYCLE_LOG_DIR", str(tmp_path / "logs"))
    cases = [c for c in load_cases("bundled:customer_insights") if c.spectrum in SPECTRUMS]
    config = write_config(tmp_path, "langsmith:support-cases")
    push_cases(connection(load_config(config), PIPE), "support-cases", cases, assign_splits(cases, SplitConfig()),
               pipeline=PIPE)

    # A baseline pulls the dataset in its flow, then evaluates it like any other.
    assert main(["baseline", "--config", str(config), "--limit", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["success"] and result["rows"] == 2 * len(SPECTRUMS) * 2
    assert (tmp_path / ".promptcycle" / "langsmith").is_dir()

    assert main(["datasets", "push", "--pipeline", PIPE, "--config", str(config), "--dataset", "copy", "--json"]) == 0
    langsmith_fake.fail(503)  # an outage: the push fails, with a log file holding the traceback
    assert main(["datasets", "push", "--pipeline", PIPE, "--config", str(config), "--dataset", "copy2"]) == 1
    langsmith_fake.clear_faults()
    monkeypatch.setenv("LANGSMITH_ENDPOINT", f"http://127.0.0.1:{unused_port()}")
    assert main(["datasets", "pull", "--pipeline", PIPE, "--config", str(config)]) == 1
    shown = capsys.readouterr()
    assert "(LangSmithUnavailableError): LangSmith at" in shown.err and "answered GET /info with HTTP 503" in shown.err
    assert "did not answer GET /info within 2 s" in shown.err
    assert list((tmp_path / "logs").glob("*.log"))  # the failures wrote their tracebacks

    secret = key.encode()
    assert files_holding(tmp_path, secret) == []  # DuckDB, the local copy and its sidecar, the error logs
    database = Path(prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    assert files_holding(database.parent, secret) == []  # flow runs, their logs, parameters and artifacts
    assert key not in shown.out + shown.err + caplog.text


def test_the_langsmith_credentials_block_describes_its_field_and_masks_the_key():
    from promptcycle_blocks.credentials import LangSmithCredentials

    block = LangSmithCredentials(api_key="lsv2_pt_block_masked_123")
    assert LangSmithCredentials._block_type_slug == "promptcycle-langsmith-credentials"
    assert all(f.description for f in LangSmithCredentials.model_fields.values())
    assert "lsv2_pt_block_masked_123" not in repr(block) + str(block) + block.model_dump_json()
    assert block.get_api_key().get_secret_value() == "lsv2_pt_block_masked_123"


@pytest.mark.engine
def test_a_flow_task_reads_the_key_from_a_langsmith_credentials_block(prefect_harness, langsmith_fake, tmp_path,
                                                                     monkeypatch):
    import asyncio

    from promptcycle.errors import ConfigError
    from promptcycle_blocks.credentials import LangSmithCredentials
    from promptcycle_tasks.datasets import pull_langsmith_dataset
    from promptcycle_tasks.secrets import aresolve_langsmith_key, resolve_langsmith_key

    monkeypatch.delenv("LANGSMITH_API_KEY", raising=False)
    monkeypatch.setenv("LANGSMITH_ENDPOINT", langsmith_fake.url)
    LangSmithCredentials(api_key=langsmith_fake.api_key).save("ls-test-key", overwrite=True)
    cases = [c for c in load_cases("bundled:customer_insights") if c.spectrum in SPECTRUMS]
    config = write_config(tmp_path, "langsmith:from-block")
    data = yaml.safe_load(config.read_text())
    data["langsmith"] = {"api_key_block": "ls-test-key"}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    loaded = load_config(config)
    key = asyncio.run(aresolve_langsmith_key(loaded, PIPE))  # the async loader: `await Block.aload(name)`
    assert key.get_secret_value() == langsmith_fake.api_key
    push_cases(connection(loaded, PIPE, key), "from-block", cases, assign_splits(cases, SplitConfig()), pipeline=PIPE)

    refreshed = asyncio.run(pull_langsmith_dataset.fn(str(config), PIPE))  # what the baseline flow awaits
    assert refreshed["status"] == "pulled" and refreshed["cases"] == len(cases)

    data["langsmith"] = {"api_key_block": "no-such-block"}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    for resolve in (lambda c: resolve_langsmith_key(c, PIPE), lambda c: asyncio.run(aresolve_langsmith_key(c, PIPE))):
        with pytest.raises(ConfigError, match="no LangSmith Credentials block named 'no-such-block'") as info:
            resolve(load_config(config))
        assert "langsmith.api_key_block" in str(info.value)
