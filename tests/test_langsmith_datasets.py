"""LangSmith datasets: the `langsmith:` section and source in pipelines.yaml, pulling a dataset (with a field
mapping) into its local copy, the dataset suite on it, and `datasets push` — all against the fake LangSmith
(promptcycle.langsmith.fake) over loopback HTTP, through the real langsmith SDK."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import langsmith
import pytest
import yaml

from promptcycle.catalog import load_config
from promptcycle.config import LangSmithMapping, SplitConfig, effective_langsmith
from promptcycle.datasets.loaders import dataset_hash, load_cases
from promptcycle.datasets.splits import assign_splits
from promptcycle.errors import ConfigError, DatasetError, LangSmithError, LangSmithUnavailableError
from promptcycle.langsmith.connection import DEFAULT_API_URL, api_url_of, connection
from promptcycle.langsmith.datasets import pull_cases, push_cases, refresh_local_copy, snapshot_path
from promptcycle_cli.main import main
from simserver import unused_port

REPO = Path(__file__).resolve().parent.parent
PIPE = "customer-insights"
SPECTRUMS = ["customer_profile", "credit_analysis"]


def write_config(tmp_path: Path, *, source: str | None = None, mapping: dict | None = None,
                 langsmith: dict | None = None, pipeline_langsmith: dict | None = None,
                 min_cases: int | None = None) -> Path:
    data = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    pipe = data["pipelines"][PIPE]
    pipe["models"] = ["nano", "xl"]
    pipe["dataset"]["spectrums"] = SPECTRUMS
    if source is not None:
        pipe["dataset"]["source"] = source
    if mapping is not None:
        pipe["dataset"]["mapping"] = mapping
    if min_cases is not None:
        pipe["dataset"]["min_cases_per_spectrum"] = min_cases
    if langsmith is not None:
        data["langsmith"] = langsmith
    if pipeline_langsmith is not None:
        pipe["langsmith"] = pipeline_langsmith
    data["store"] = "metrics.duckdb"
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def ls_env(langsmith_fake, monkeypatch):
    """LANGSMITH_API_KEY and LANGSMITH_ENDPOINT pointing at the fake."""
    monkeypatch.setenv("LANGSMITH_API_KEY", langsmith_fake.api_key)
    monkeypatch.setenv("LANGSMITH_ENDPOINT", langsmith_fake.url)
    return langsmith_fake


def configured_cases():
    """The pipeline's 60 cases and their splits, as load_pipeline makes them (without opening a store)."""
    cases = [c for c in load_cases("bundled:customer_insights") if c.spectrum in SPECTRUMS]
    return cases, assign_splits(cases, SplitConfig())


def bundled_cases(n_per_spectrum: int = 3):
    cases = load_cases("bundled:customer_insights")
    kept, seen = [], {}
    for c in cases:
        if c.spectrum in SPECTRUMS and seen.get(c.spectrum, 0) < n_per_spectrum:
            kept.append(c)
            seen[c.spectrum] = seen.get(c.spectrum, 0) + 1
    return kept


# -- configuration ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, path, words", [
    ({"langsmith": {"api_key": "lsv2_pt_oops"}}, "langsmith.api_key", "unknown key"),
    ({"langsmith": {"api_url": "smith.example.com"}}, "langsmith.api_url", "must start with http"),
    ({"langsmith": {"timeout_seconds": 0}}, "langsmith.timeout_seconds", "greater than 0"),
    ({"mapping": {"facts": "outputs.facts"}}, "pipelines.customer-insights.dataset",
     "applies to a 'langsmith:DATASET_NAME' source only"),
    ({"source": "langsmith:  "}, "pipelines.customer-insights.dataset", "needs a dataset name"),
    ({"source": "langsmith:cases", "mapping": {"facts": "answer.facts"}},
     "pipelines.customer-insights.dataset.mapping.facts", "starting with one of inputs, outputs, metadata, id"),
    ({"pipeline_langsmith": {"dataset_nam": "x"}}, "pipelines.customer-insights.langsmith.dataset_nam",
     "unknown key"),
])
def test_bad_langsmith_settings_name_the_file_the_path_and_what_was_expected(tmp_path, change, path, words):
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, **change))
    message = str(info.value)
    assert path in message and words in message and str(tmp_path / "pipelines.yaml") in message
    assert "lsv2_pt_oops" not in message  # a misplaced key is never echoed


def test_a_pipeline_overrides_the_keys_it_sets_and_the_endpoint_comes_from_the_environment(tmp_path, monkeypatch):
    config = load_config(write_config(tmp_path, langsmith={"api_key_env": "MY_LS_KEY", "timeout_seconds": 4},
                                      pipeline_langsmith={"dataset_name": "support-{pipeline}"}))
    settings = effective_langsmith(config, PIPE)
    assert (settings.api_key_env, settings.timeout_seconds, settings.dataset_name) == ("MY_LS_KEY", 4, "support-{pipeline}")
    monkeypatch.delenv("LANGSMITH_ENDPOINT", raising=False)
    assert api_url_of(settings) == DEFAULT_API_URL
    monkeypatch.setenv("LANGSMITH_ENDPOINT", "http://127.0.0.1:9/api/")
    assert api_url_of(settings) == "http://127.0.0.1:9/api"
    monkeypatch.delenv("MY_LS_KEY", raising=False)
    assert connection(config, PIPE) is None  # no key: LangSmith is off
    monkeypatch.setenv("MY_LS_KEY", "lsv2_pt_from_env_123")
    conn = connection(config, PIPE)
    assert conn.api_key.get_secret_value() == "lsv2_pt_from_env_123" and "lsv2_pt_from_env_123" not in repr(conn)


# -- push ---------------------------------------------------------------------------------------------------

def test_push_publishes_cases_with_their_splits_and_a_second_push_changes_nothing(tmp_path, ls_env):
    fake = ls_env
    conn = connection(load_config(write_config(tmp_path)), PIPE)
    cases, splits = configured_cases()
    first = push_cases(conn, "cases", cases, splits, pipeline=PIPE)
    assert first.created_dataset and first.created == len(cases) == 60 and first.changed
    stored = fake.examples_of("cases")
    assert len(stored) == 60
    by_case = {e["metadata"]["case_id"]: e for e in stored}
    for case in cases:
        example = by_case[case.id]
        assert example["inputs"] == case.inputs
        assert example["outputs"] == {"facts": case.facts, "reference": case.reference}
        assert example["metadata"]["spectrum"] == case.spectrum
        assert example["metadata"]["dataset_split"] == [splits[case.id]]
    assert first.splits == {s: sum(1 for c in cases if splits[c.id] == s) for s in ("dev", "test", "train")}

    before, state = len(fake.requests), json.dumps(fake.state()["examples"], sort_keys=True)
    again = push_cases(conn, "cases", cases, splits, pipeline=PIPE)
    assert not again.changed and again.unchanged == 60
    assert "nothing changed" in again.summary()
    assert json.dumps(fake.state()["examples"], sort_keys=True) == state
    writes = [c for c in fake.calls()[before:] if not c.startswith("GET ")]
    assert writes == []  # a re-push only reads


def test_push_updates_changed_cases_deletes_removed_ones_and_leaves_other_examples(tmp_path, ls_env):
    fake = ls_env
    conn = connection(load_config(write_config(tmp_path)), PIPE)
    cases = bundled_cases()
    splits = {c.id: ("train", "dev", "test")[i % 3] for i, c in enumerate(cases)}
    push_cases(conn, "cases", cases, splits, pipeline=PIPE)
    client = langsmith.Client(api_url=fake.url, api_key=fake.api_key)
    dataset = client.read_dataset(dataset_name="cases")
    client.create_example(inputs={"q": "a user's own example"}, dataset_id=dataset.id)

    changed = cases[0].model_copy(update={"reference": "a better reference answer"})
    moved = cases[1]
    kept = [changed, moved, *cases[2:-1]]  # the last case is gone
    splits[moved.id] = "test" if splits[moved.id] != "test" else "dev"
    report = push_cases(conn, "cases", kept, splits, pipeline=PIPE)
    assert (report.created, report.updated, report.deleted, report.unchanged) == (0, 2, 1, len(kept) - 2)
    stored = {e["metadata"].get("case_id"): e for e in fake.examples_of("cases")}
    assert stored[changed.id]["outputs"]["reference"] == "a better reference answer"
    assert stored[moved.id]["metadata"]["dataset_split"] == [splits[moved.id]]
    assert cases[-1].id not in stored and None in stored  # the user's example stays
    assert not push_cases(conn, "cases", kept, splits, pipeline=PIPE).changed


@pytest.mark.slow  # the CLI runs the dataset suite in the data worker (a process, and Great Expectations)
def test_the_cli_pushes_idempotently_and_refuses_to_push_into_its_own_source(tmp_path, ls_env, capsys):
    fake = ls_env
    config = write_config(tmp_path)
    assert main(["datasets", "push", "--pipeline", PIPE, "--config", str(config), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["success"] and first["dataset"] == f"promptcycle-{PIPE}" and first["created"] == 60
    assert main(["datasets", "push", "--pipeline", PIPE, "--config", str(config)]) == 0
    assert "already holds these 60 cases: nothing changed" in capsys.readouterr().out
    assert len(fake.examples_of(f"promptcycle-{PIPE}")) == 60

    own = write_config(tmp_path, source=f"langsmith:promptcycle-{PIPE}")
    assert main(["datasets", "push", "--pipeline", PIPE, "--config", str(own)]) == 2
    assert "would add a second copy of every case" in capsys.readouterr().err


# -- pull -----------------------------------------------------------------------------------------------------

def test_pull_reads_back_exactly_what_push_published(tmp_path, ls_env):
    config_path = write_config(tmp_path, source="langsmith:published")
    config = load_config(config_path)
    cases, splits = configured_cases()
    push_cases(connection(config, PIPE), "published", cases, splits, pipeline=PIPE)
    with pytest.raises(DatasetError, match="no local copy of this LangSmith dataset yet"):
        load_cases("langsmith:published", base_dir=tmp_path)
    assert refresh_local_copy(config, PIPE).status == "pulled"
    assert dataset_hash(load_cases("langsmith:published", base_dir=tmp_path)) == dataset_hash(cases)
    assert snapshot_path("published", tmp_path).is_file()


def test_pull_maps_the_examples_fields_and_names_an_example_that_does_not_map(tmp_path, ls_env):
    fake = ls_env
    client = langsmith.Client(api_url=fake.url, api_key=fake.api_key)
    dataset = client.create_dataset("support")
    ids = [uuid.uuid4(), uuid.uuid4()]
    client.create_examples(dataset_id=dataset.id, examples=[
        {"id": ids[0], "inputs": {"customer": {"name": "Ana"}, "question": "Who?"},
         "reference_outputs": {"answer": "Ana", "must_state": {"name": "Ana"}},
         "metadata": {"category": "customer_profile", "ticket": "T-1"}},
        {"id": ids[1], "inputs": {"customer": {"name": "Bo"}, "question": "Who?"},
         "reference_outputs": {"answer": "Bo", "must_state": {"name": "Bo"}},
         "metadata": {"category": "credit_analysis"}},
    ])
    mapping = {"id": "metadata.ticket", "spectrum": "metadata.category", "facts": "outputs.must_state",
               "reference": "outputs.answer", "template": None}
    config = load_config(write_config(tmp_path, source="langsmith:support", mapping=mapping))
    cases, path = pull_cases(connection(config, PIPE), "support", config.pipeline(PIPE).dataset.mapping, tmp_path)
    assert [(c.id, c.spectrum, c.facts, c.reference) for c in cases] == [
        ("T-1", "customer_profile", {"name": "Ana"}, "Ana"),
        (str(ids[1]), "credit_analysis", {"name": "Bo"}, "Bo")]  # no ticket: the example's own id
    assert cases[0].inputs == {"customer": {"name": "Ana"}, "question": "Who?"}
    assert load_cases("langsmith:support", base_dir=tmp_path) == cases

    client.create_example(inputs={"question": "?"}, reference_outputs={"answer": "x"},
                          metadata={"category": "customer_profile"}, dataset_id=dataset.id)
    with pytest.raises(DatasetError) as info:
        pull_cases(connection(config, PIPE), "support", LangSmithMapping(**mapping), tmp_path)
    assert "langsmith:support: example" in str(info.value)
    assert "no value at 'outputs.must_state' for the case's facts (dataset.mapping.facts)" in str(info.value)
    assert load_cases("langsmith:support", base_dir=tmp_path) == cases  # the local copy is as it was
    with pytest.raises(DatasetError, match="no dataset named 'missing'"):
        pull_cases(connection(config, PIPE), "missing", None, tmp_path)


@pytest.mark.slow  # as above
def test_a_langsmith_dataset_goes_through_the_same_dataset_suite(tmp_path, ls_env, capsys):
    fake = ls_env
    client = langsmith.Client(api_url=fake.url, api_key=fake.api_key)
    dataset = client.create_dataset("thin")
    client.create_examples(dataset_id=dataset.id, examples=[
        {"inputs": c.inputs, "reference_outputs": {"facts": c.facts, "reference": c.reference},
         "metadata": {"case_id": "same-id", "spectrum": c.spectrum, "template": c.template}}
        for c in bundled_cases(2)])
    config = write_config(tmp_path, source="langsmith:thin", min_cases=5)
    assert main(["datasets", "pull", "--pipeline", PIPE, "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["validate", "--pipeline", PIPE, "--config", str(config), "--json"]) == 1
    suite = json.loads(capsys.readouterr().out)["pipelines"][PIPE]["dataset_suite"]
    failed = json.dumps(suite)
    assert suite["success"] is False and "unique" in failed  # duplicate case ids, caught by the suite


# -- LangSmith slow, down, or refusing ----------------------------------------------------------------------------

def test_a_run_keeps_the_local_copy_when_langsmith_is_down_or_slow(tmp_path, ls_env):
    fake = ls_env
    cases, splits = configured_cases()
    push_cases(connection(load_config(write_config(tmp_path)), PIPE), "shared", cases, splits, pipeline=PIPE)
    (tmp_path / "run").mkdir()
    config = load_config(write_config(tmp_path / "run", source="langsmith:shared",
                                      langsmith={"probe_timeout_seconds": 0.5, "max_retries": 0}))
    fresh = refresh_local_copy(config, PIPE)
    assert fresh.status == "pulled" and fresh.cases == 60

    fake.fail(503, path="/examples")
    down = refresh_local_copy(config, PIPE)
    assert down.status == "kept" and "LangSmith is unavailable" in down.note and down.cases == 60
    fake.clear_faults()

    fake.slow(5.0, path="/info")
    started = time.monotonic()
    slow = refresh_local_copy(config, PIPE)
    assert slow.status == "kept" and "did not answer GET /info within 0.5 s" in slow.note
    assert time.monotonic() - started < 2.0  # the probe's timeout, not LangSmith's slowness
    fake.clear_faults()

    snapshot_path("shared", tmp_path / "run").unlink()
    fake.fail(503)
    with pytest.raises(DatasetError, match="cannot pull the dataset and there is no local copy yet"):
        refresh_local_copy(config, PIPE)


def test_without_a_key_a_local_copy_is_used_and_without_either_the_error_says_what_to_do(tmp_path, ls_env,
                                                                                       monkeypatch):
    config = load_config(write_config(tmp_path, source="langsmith:none-yet"))
    monkeypatch.delenv("LANGSMITH_API_KEY")
    with pytest.raises(DatasetError, match="needs an API key .* there is no local copy yet"):
        refresh_local_copy(config, PIPE)
    path = snapshot_path("none-yet", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(c.model_dump(mode="json", exclude_none=True)) + "\n" for c in bundled_cases()))
    kept = refresh_local_copy(config, PIPE)
    assert kept.status == "kept" and kept.note.startswith("no LangSmith API key")


def test_the_cli_without_a_key_is_bad_input_naming_the_variable(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LANGSMITH_API_KEY", raising=False)
    config = write_config(tmp_path, source="langsmith:cases")
    assert main(["datasets", "pull", "--pipeline", PIPE, "--config", str(config)]) == 2
    assert "langsmith.api_key_env: no LangSmith API key: environment variable LANGSMITH_API_KEY is not set" in \
        capsys.readouterr().err
    assert main(["datasets", "push", "--pipeline", PIPE, "--config", str(config)]) == 2
    assert main(["datasets", "pull", "--pipeline", PIPE, "--config", str(write_config(tmp_path))]) == 2
    assert "is 'bundled:customer_insights', not a LangSmith dataset" in capsys.readouterr().err


def test_a_refused_or_unreachable_langsmith_is_a_clear_error_without_the_key(tmp_path, ls_env, monkeypatch):
    wrong = "lsv2_pt_wrong_key_5e5e5e5e"
    monkeypatch.setenv("LANGSMITH_API_KEY", wrong)
    config = load_config(write_config(tmp_path, source="langsmith:x"))
    with pytest.raises(LangSmithError) as info:
        pull_cases(connection(config, PIPE), "x", None, tmp_path)
    assert "the API key was refused (HTTP 401)" in str(info.value) and wrong not in str(info.value)
    monkeypatch.setenv("LANGSMITH_ENDPOINT", f"http://127.0.0.1:{unused_port()}")
    with pytest.raises(LangSmithUnavailableError) as info:
        pull_cases(connection(config, PIPE), "x", None, tmp_path)
    assert "did not answer GET /info" in str(info.value) and wrong not in str(info.value)
