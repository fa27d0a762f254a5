"""pipelines.yaml: every bad input fails before any model call, naming file, dotted path, found and expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from promptcycle.catalog import load_config
from promptcycle.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def repo_yaml() -> dict:
    return yaml.safe_load((REPO / "pipelines.yaml").read_text())


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "pipelines.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def test_repository_config_loads():
    cfg = load_config(REPO / "pipelines.yaml")
    pipe = cfg.pipeline("customer-insights")
    assert len(pipe.models) == 7
    assert pipe.dataset.spectrums == ["customer_profile", "credit_analysis", "transaction_history",
                                      "call_center_operations", "entity_relationship", "geographic_analysis",
                                      "temporal_analysis"]
    assert (pipe.thresholds.critical, pipe.thresholds.warning, pipe.thresholds.target,
            pipe.thresholds.excellent) == (85, 90, 95, 98)
    assert set(pipe.prompt.to_template().variables) == {"customer", "question"}


def _set(data: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = data
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()
P = "pipelines.customer-insights"


@pytest.mark.parametrize(
    ("dotted", "value", "expect_in_message"),
    [
        # bad values
        (f"{P}.repeats", 0, [f"{P}.repeats", "greater than or equal to 1", "found 0"]),
        (f"{P}.repeats", "many", [f"{P}.repeats", "found 'many'"]),
        ("providers.simulator.max_concurrency", -3, ["providers.simulator.max_concurrency", "found -3"]),
        ("providers.simulator.kind", "magic", ["providers.simulator.kind", "'simulator' or 'openai'", "found 'magic'"]),
        (f"{P}.thresholds.warning", 80, [f"{P}.thresholds", "critical <= warning"]),
        (f"{P}.dataset.splits.train", 0.9, [f"{P}.dataset.splits", "sum to 1"]),
        # missing keys
        (f"{P}.prompt", _DELETE, [f"{P}.prompt", "missing required key"]),
        (f"{P}.dataset.source", _DELETE, [f"{P}.dataset.source", "missing"]),
        # unknown keys (typos)
        (f"{P}.repeat", 3, [f"{P}.repeat", "unknown key"]),
        ("models.nano.latency_target", 3, ["models.nano.latency_target", "unknown key"]),
        # unknown names list the known ones
        (f"{P}.scorers.completness", {"weight": 1}, [f"{P}.scorers.completness", "unknown scorer", "completeness"]),
        (f"{P}.models", ["nano", "gpt-9"], [f"{P}.models.1", "unknown model 'gpt-9'", "reasoner"]),
        ("models.nano.provider", "openia", ["models.nano.provider", "unknown provider 'openia'", "simulator"]),
        ("models.nano.model", "sim-nanoo", ["models.nano.model", "unknown simulated model", "sim-nano"]),
        # scorer options are validated by the scorer's own options model
        (f"{P}.scorers.format", {"weight": 0.1, "kind": "xml"}, [f"{P}.scorers.format.kind", "found 'xml'"]),
        (f"{P}.scorers.accuracy", {"weight": 0.4, "tolerance": 1}, [f"{P}.scorers.accuracy.tolerance", "unknown key"]),
        # the gate's clustering unit and error control
        (f"{P}.optimization.cluster_field", "question", [f"{P}.optimization.cluster_field", "'template', "
                                                                                          "'spectrum' or 'inputs.<key>'"]),
        (f"{P}.optimization.error_control", "lord", [f"{P}.optimization.error_control", "'spending'"]),
        (f"{P}.optimization.spectrum_alpha", 0.7, [f"{P}.optimization.spectrum_alpha", "found 0.7"]),
    ],
)
def test_bad_config_names_file_path_found_expected(tmp_path, dotted, value, expect_in_message):
    data = repo_yaml()
    _set(data, dotted, value)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in expect_in_message:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_openai_provider_needs_base_url(tmp_path):
    data = repo_yaml()
    data["providers"]["real"] = {"kind": "openai", "api_key_env": "X_KEY"}
    with pytest.raises(ConfigError, match=r"providers\.real.*base_url"):
        load_config(write(tmp_path, data))


def test_invalid_yaml_reports_line(tmp_path):
    path = write(tmp_path, "providers:\n  simulator: {kind: simulator\nmodels: [\n")
    with pytest.raises(ConfigError, match=r"not valid YAML: line \d+, column \d+"):
        load_config(path)


def test_a_tab_in_the_indentation_is_named_with_its_line_and_column(tmp_path):
    # libyaml (the fast parser) only says "found character that cannot start any token"
    path = write(tmp_path, "providers:\n\tsimulator: {kind: simulator}\n")
    with pytest.raises(ConfigError, match=r"not valid YAML: line 2, column 1: found character '\\t' that cannot "
                                          r"start any token"):
        load_config(path)


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_several_problems_are_all_listed(tmp_path):
    data = repo_yaml()
    data["pipelines"]["customer-insights"]["repeats"] = 0
    data["providers"]["simulator"]["timeout_seconds"] = -1
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    assert "2 problems" in str(info.value)


def test_prompt_without_variables_is_rejected(tmp_path):
    data = repo_yaml()
    data["pipelines"]["customer-insights"]["prompt"]["template"] = "Tell me about the customer."
    with pytest.raises(ConfigError, match=r"prompt\.template.*no \{\{variables\}\}"):
        load_config(write(tmp_path, data))


def test_unknown_pipeline_lists_known(tmp_path):
    cfg = load_config(REPO / "pipelines.yaml")
    with pytest.raises(ConfigError, match="unknown pipeline 'nope'; known: customer-insights"):
        cfg.pipeline("nope")


def test_secrets_are_not_accepted_inline(tmp_path):
    data = repo_yaml()
    data["providers"]["simulator"]["api_key"] = "sk-live-123"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    assert "unknown key" in str(info.value)
    assert "sk-live-123" not in str(info.value)  # the value of a would-be secret is never echoed


def test_cluster_field_every_case_lacks_fails_at_load_naming_the_setting(tmp_path):
    from promptcycle.evaluation.context import load_pipeline

    data = repo_yaml()
    _set(data, f"{P}.optimization", {"cluster_field": "inputs.branch"})
    _set(data, "store", str(tmp_path / "store.duckdb"))
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path, "customer-insights")
    message = str(info.value)
    assert f"{P}.optimization.cluster_field" in message and "have no 'inputs.branch'" in message
    assert "customer_profile-001" in message


def test_bundled_dataset_clusters_by_template():
    from promptcycle.datasets.cases import cluster_of
    from promptcycle.datasets.loaders import load_cases

    cases = load_cases("bundled:customer_insights")
    templates = {cluster_of(c, "template") for c in cases}
    assert None not in templates and 20 <= len(templates) <= 28
    assert repo_yaml()["pipelines"]["customer-insights"]["optimization"]["cluster_field"] == "template"
