"""The layering rule: domain code in promptcycle/ never imports Prefect or the orchestration packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = ROOT / "promptcycle"
FORBIDDEN = ("prefect", "flows", "tasks", "blocks", "cli", "promptcycle_flows", "promptcycle_tasks",
             "promptcycle_blocks", "promptcycle_cli")


def forbidden_imports(source: str) -> list[str]:
    """Every absolute import of a forbidden top-level package in `source`, at any depth (functions included)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [name for name in names if name.split(".")[0] in FORBIDDEN]
    return found


def domain_modules() -> list[Path]:
    return sorted(DOMAIN.rglob("*.py"))


def test_the_scan_sees_imports_inside_functions_and_from_imports():
    source = ("import json\nfrom promptcycle import errors\n"
              "def run():\n    from prefect import flow\n    import flows.baseline as b\n"
              "class C:\n    def m(self):\n        from tasks.runs import x\n        import blocks\n")
    assert forbidden_imports(source) == ["prefect", "flows.baseline", "tasks.runs", "blocks"]
    assert forbidden_imports("from . import tasks\nimport prefectlike\nfrom flowsy import f\n") == []


def test_the_scan_covers_the_whole_domain_package():
    modules = {p.relative_to(ROOT).as_posix() for p in domain_modules()}
    assert "promptcycle/store/metrics.py" in modules and "promptcycle/optimize/search.py" in modules
    assert len(modules) > 50


def test_the_command_line_lives_outside_the_domain_and_is_what_imports_prefect():
    """The CLI (which runs flows and Prefect's local server) is the top-level cli/ package, beside flows/."""
    assert not (DOMAIN / "cli.py").exists() and not (DOMAIN / "commands").exists()
    for name in ("cli/main.py", "cli/local_server.py", "cli/commands/deploy.py", "cli/commands/optimize.py"):
        assert forbidden_imports((ROOT / name).read_text(encoding="utf-8")), name


@pytest.mark.parametrize("path", domain_modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_domain_code_imports_no_prefect_flows_tasks_or_blocks(path: Path):
    assert forbidden_imports(path.read_text(encoding="utf-8")) == []


def test_config_holds_models_only_and_imports_no_registry():
    """The models module imports nothing that could import it back: the registries and the name checks are
    the catalog's, so `promptcycle.config` depends on errors and prompts only."""
    imported = set()
    for node in ast.walk(ast.parse((DOMAIN / "config.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("promptcycle"):
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names if a.name.startswith("promptcycle")}
    assert imported == {"promptcycle.errors", "promptcycle.prompts"}
