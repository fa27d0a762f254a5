"""promptcycle installs no top-level `flows`, `tasks`, `blocks` or `cli` package: its own live under
`promptcycle_*` names, so a user's packages of those names neither shadow nor are shadowed by them."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
USER_PACKAGES = ("flows", "tasks", "blocks", "cli")


def _absolute_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_no_module_imports_the_bare_folder_names():
    sources = [p for folder in ("promptcycle", *USER_PACKAGES, "tests", "bench") for p in (REPO / folder).rglob("*.py")]
    assert len(sources) > 100
    offenders = {str(p.relative_to(REPO)): sorted(_absolute_imports(p) & set(USER_PACKAGES)) for p in sources}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_console_script_names_the_prefixed_cli_package():
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'promptcycle = "promptcycle_cli.main:main"' in text


@pytest.mark.slow
def test_a_users_own_flows_package_does_not_break_the_baseline(tmp_path, repo_config):
    # The user's working directory holds packages named like promptcycle's folders; importing any of them fails.
    for name in USER_PACKAGES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('the user\\'s own {name} package')\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "promptcycle_cli.main", "baseline", "--config", str(repo_config),
                          "--store", str(tmp_path / "m.duckdb"), "--limit", "1", "--repeats", "1", "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["success"] is True and result["rows"] == 7 * 7
    assert "the user's own" not in out.stderr
