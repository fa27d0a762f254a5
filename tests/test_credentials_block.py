"""A provider key kept in a Prefect 'Provider Credentials' block reaches the provider, through the real
block loader on the Prefect test server, in a baseline against the simulator over loopback HTTP."""

from __future__ import annotations

import json

import pytest
import yaml
from simserver import ServerThread

from promptcycle_cli.main import main
from promptcycle.store import MetricsStore

SECRET = "sk-test-block-5f2c9a7e41d0"
MODELS = ["nano", "xl"]  # xl: the pipeline's serving model


@pytest.mark.engine
def test_baseline_reads_the_key_from_a_credentials_block(prefect_harness, repo_config, capsys):
    from promptcycle_blocks.credentials import ProviderCredentials

    ProviderCredentials(api_key=SECRET).save("integ-sim-key", overwrite=True)
    with ServerThread(require_api_key=SECRET) as server:
        data = yaml.safe_load(repo_config.read_text())
        data["providers"]["keyed-sim"] = {"kind": "openai", "base_url": server.base_url,
                                          "api_key_block": "integ-sim-key", "max_retries": 0}
        for name in MODELS:
            data["models"][name]["provider"] = "keyed-sim"
        pipeline = data["pipelines"]["customer-insights"]
        pipeline["models"] = MODELS
        repo_config.write_text(yaml.safe_dump(data))

        store = repo_config.parent / "m.duckdb"
        code = main(["baseline", "--config", str(repo_config), "--store", str(store), "--limit", "1", "--json"])
        captured = capsys.readouterr()
        statuses = dict(server.state.statuses)

    assert code == 0, captured.out + captured.err
    result = json.loads(captured.out)
    spectrums = len(pipeline["dataset"]["spectrums"])
    assert result["rows"] == len(MODELS) * spectrums and result["errors"] == 0
    # Every call reached the server with the block's key: a missing or wrong key would be a 401.
    assert statuses == {200: len(MODELS) * spectrums}
    assert SECRET not in captured.out + captured.err
    frame = MetricsStore(store).results_frame(result["run_id"])
    assert len(frame) == result["rows"]
    assert not frame.astype(str).apply(lambda col: col.str.contains(SECRET)).any().any()


@pytest.mark.engine
def test_a_missing_block_is_a_config_error_from_sync_and_async_code(prefect_harness, repo_config):
    import asyncio

    from promptcycle.catalog import load_config
    from promptcycle.errors import ConfigError
    from promptcycle_tasks.secrets import aresolve_api_key, resolve_api_key

    data = yaml.safe_load(repo_config.read_text())
    data["providers"]["keyed"] = {"kind": "openai", "base_url": "http://127.0.0.1:1/v1",
                                  "api_key_block": "no-such-block"}
    repo_config.write_text(yaml.safe_dump(data))
    config = load_config(repo_config)

    async def in_async_code():
        return await aresolve_api_key(config, "keyed")

    for resolve in (lambda: resolve_api_key(config, "keyed"), lambda: asyncio.run(in_async_code())):
        with pytest.raises(ConfigError) as info:
            resolve()
        assert info.value.path == "providers.keyed.api_key_block" and "no-such-block" in str(info.value)
