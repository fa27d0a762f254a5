"""A command that runs Prefect flows ends with its own output only: no interpreter-exit noise on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "promptcycle_cli.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.engine
def test_baseline_and_optimize_leave_no_nanobind_leak_warnings(repo_config):
    """DuckDB (a nanobind extension) loaded in the process that runs Prefect printed ~45 lines of
    `nanobind: leaked …` at exit; the data worker owns the store, so the pipeline process never loads it."""
    store = str(repo_config.parent / "m.duckdb")
    common = ("--config", str(repo_config), "--store", store, "--limit", "1")
    baseline = run_cli("baseline", *common, "--json", cwd=repo_config.parent)
    assert baseline.returncode == 0, baseline.stderr[-2000:]
    run_id = __import__("json").loads(baseline.stdout)["run_id"]
    optimize = run_cli("optimize", *common, "--baseline", run_id, "--max-calls", "1", cwd=repo_config.parent)
    assert "Optimizing the prompt" in optimize.stderr  # it went through Prefect, not an early input error
    for result in (baseline, optimize):
        assert "nanobind" not in result.stderr, result.stderr[-3000:]
