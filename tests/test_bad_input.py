"""Bad input a user can hand the command line: a clear one-line message and exit 2, never a traceback,
never a network attempt."""

from __future__ import annotations

import socket
import sqlite3
import threading
from pathlib import Path

import duckdb
import pytest
import yaml

from promptcycle_cli.main import main
from promptcycle.datasets.loaders import load_cases
from promptcycle.errors import DatasetError, ServingError, StorePathError
from promptcycle.store import MetricsStore


# -- a foreign file as the store ------------------------------------------------------------------

class RecordingProxy:
    """An HTTP proxy on 127.0.0.1 that answers nothing and records every request line it receives.

    DuckDB sends its extension downloads through HTTP_PROXY, so with the environment pointing here,
    any attempt to reach extensions.duckdb.org (or anywhere) is recorded instead of leaving the machine.
    """

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                self.requests.append(conn.recv(4096).split(b"\r\n", 1)[0])

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def proxy(monkeypatch):
    recorder = RecordingProxy()
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, recorder.url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield recorder
    recorder.close()


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Path:
    path = tmp_path / "metrics.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE runs (run_id TEXT)")
    return path


def test_the_proxy_sees_what_duckdb_would_download(proxy, sqlite_file):
    """The recorder is a real witness: DuckDB's default configuration does reach for the network."""
    with pytest.raises(duckdb.Error, match="download"):
        duckdb.connect(str(sqlite_file))
    assert any(b"sqlite_scanner" in line for line in proxy.requests)


def test_a_sqlite_file_as_store_is_named_and_nothing_is_downloaded(proxy, sqlite_file):
    with pytest.raises(StorePathError) as info:
        MetricsStore(sqlite_file)
    message = str(info.value)
    assert f"{sqlite_file} exists but is not a DuckDB database (it is a SQLite database)" in message
    assert "download" not in message.lower() and "http" not in message
    assert proxy.requests == []


def test_serving_names_a_sqlite_store_and_downloads_nothing(proxy, sqlite_file):
    from promptcycle.deploy.serving import resolve_prompt

    with pytest.raises(ServingError, match=r"exists but is not a DuckDB database \(it is a SQLite database\)"):
        resolve_prompt("customer-insights", "user-1", store=sqlite_file)
    assert proxy.requests == []


def test_cli_refuses_a_sqlite_store_with_exit_2(proxy, sqlite_file, repo_config, capsys):
    code = main(["status", "--config", str(repo_config), "--store", str(sqlite_file)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error (StorePathError): ") and "not a DuckDB database (it is a SQLite database)" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert proxy.requests == []


def test_store_connections_never_auto_install_extensions(tmp_path):
    from promptcycle.store.offline import connect

    MetricsStore(tmp_path / "m.duckdb")
    with connect(tmp_path / "m.duckdb") as con:
        settings = dict(con.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN "
            "('autoinstall_known_extensions', 'autoload_known_extensions')").fetchall())
    assert settings == {"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}


def test_a_directory_as_store_is_bad_input(tmp_path, repo_config, capsys):
    (tmp_path / "store").mkdir()
    code = main(["status", "--config", str(repo_config), "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 2 and "is a directory" in err and "Traceback" not in err


# -- sim-server options ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--error-rate", "2"], "argument --error-rate: expected a share between 0 and 1"),
    (["--rate-limit-rate", "-0.1"], "argument --rate-limit-rate: expected a share between 0 and 1"),
    (["--timeout-rate", "nan"], "argument --timeout-rate: expected a share between 0 and 1"),
    (["--malformed-rate", "lots"], "argument --malformed-rate: expected a share between 0 and 1"),
    (["--hang-seconds", "-5"], "argument --hang-seconds: expected a number >= 0"),
    (["--retry-after", "inf"], "argument --retry-after: expected a number >= 0"),
    (["--port", "70000"], "argument --port: expected a TCP port"),
])
def test_sim_server_refuses_bad_options_before_serving(args, expected, capsys):
    with pytest.raises(SystemExit) as info:
        main(["sim-server", *args])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert expected in err and "Traceback" not in err


def test_sim_server_refuses_fault_rates_that_sum_above_one(capsys):
    code = main(["sim-server", "--error-rate", "0.6", "--timeout-rate", "0.5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "the fault rates sum to 1.1" in err and "--error-rate + --rate-limit-rate" in err
    assert "Traceback" not in err


# -- a directory as the dataset -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cases.jsonl", "cases"])
def test_a_dataset_path_that_is_a_directory_says_so(tmp_path, name):
    (tmp_path / name).mkdir()
    with pytest.raises(DatasetError) as info:
        load_cases(name, base_dir=tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / name}: is a directory, expected a JSONL, CSV or Parquet file")
    assert "not found" not in message


def test_cli_validate_reports_a_dataset_directory_with_exit_2(tmp_path, repo_config, capsys):
    (tmp_path / "cases.jsonl").mkdir()
    data = yaml.safe_load(repo_config.read_text())
    data["pipelines"]["customer-insights"]["dataset"]["source"] = "cases.jsonl"
    repo_config.write_text(yaml.safe_dump(data))
    code = main(["validate", "--config", str(repo_config)])
    err = capsys.readouterr().err
    assert code == 2 and "cases.jsonl: is a directory, expected a JSONL, CSV or Parquet file" in err


# -- scorer weights, as docs/configuration.md describes them ---------------------------------------

def test_a_negative_weight_is_refused_at_load_as_documented(repo_config):
    from promptcycle.catalog import load_config
    from promptcycle.errors import ConfigError

    data = yaml.safe_load(repo_config.read_text())
    data["pipelines"]["customer-insights"]["scorers"]["latency"]["weight"] = -1
    repo_config.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(repo_config)
    assert "pipelines.customer-insights.scorers.latency.weight" in str(info.value)

    docs = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    row = next(line for line in docs.splitlines() if line.startswith("| `weight` |"))
    assert "negative weight is refused when pipelines.yaml is loaded" in row
