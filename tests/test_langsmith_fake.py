"""The fake LangSmith (promptcycle.langsmith.fake), exercised through the real langsmith 0.15 SDK over
loopback HTTP: what the SDK sends is what the fake stores, and its faults look like LangSmith's."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import httpx2
import langsmith
import pytest
from langsmith import utils as ls_utils
from urllib3.util.retry import Retry

from promptcycle.deploy.hub import PromptHub
from promptcycle.langsmith.fake import FakeLangSmith, FakeLangSmithServer
from pydantic import SecretStr

MANIFEST = {"lc": 1, "type": "constructor", "id": ["langchain", "prompts", "chat", "ChatPromptTemplate"],
            "kwargs": {"input_variables": ["q"], "messages": []}}


def sdk(fake: FakeLangSmith, **options) -> langsmith.Client:
    return langsmith.Client(api_url=fake.url, api_key=fake.api_key, **options)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def test_info_carries_the_whole_batch_ingest_config_and_the_key_is_required(langsmith_fake):
    info = sdk(langsmith_fake).info
    assert set(info.batch_ingest_config) == {"use_multipart_endpoint", "scale_up_qsize_trigger",
                                             "scale_up_nthreads_limit", "scale_down_nempty_trigger",
                                             "size_limit", "size_limit_bytes"}
    assert info.instance_flags == {"zstd_compression_enabled": True}
    wrong = langsmith.Client(api_url=langsmith_fake.url, api_key="lsv2_pt_wrong")
    with pytest.raises(ls_utils.LangSmithAuthError):
        wrong.read_dataset(dataset_name="anything")
    assert [r.status for r in langsmith_fake.requests if r.path == "/datasets"] == [401]


def test_datasets_and_examples_round_trip_with_splits(langsmith_fake):
    client = sdk(langsmith_fake)
    dataset = client.create_dataset("cases", description="from promptcycle", metadata={"pipeline": "p"})
    assert client.read_dataset(dataset_name="cases").id == dataset.id
    assert client.has_dataset(dataset_name="cases") and not client.has_dataset(dataset_name="other")
    assert [d.name for d in client.list_datasets(metadata={"pipeline": "p"})] == ["cases"]
    with pytest.raises(ls_utils.LangSmithConflictError):
        client.create_dataset("cases")

    ids = [uuid.uuid4() for _ in range(3)]
    client.create_examples(dataset_id=dataset.id, examples=[
        {"id": ids[0], "inputs": {"q": "a"}, "reference_outputs": {"answer": "A"}, "metadata": {"spectrum": "s1"},
         "split": "train"},
        {"id": ids[1], "inputs": {"q": "b"}, "reference_outputs": {"answer": "B"}, "split": "test"},
        {"id": ids[2], "inputs": {"q": "c"}},
    ])
    assert "POST /examples/bulk" in langsmith_fake.calls()
    listed = {e.id: e for e in client.list_examples(dataset_name="cases")}
    assert set(listed) == set(ids)
    assert listed[ids[0]].outputs == {"answer": "A"}
    assert listed[ids[0]].metadata == {"spectrum": "s1", "dataset_split": ["train"]}
    assert listed[ids[2]].metadata == {"dataset_split": ["base"]}
    assert sorted(client.list_dataset_splits(dataset_id=dataset.id)) == ["base", "test", "train"]
    assert [e.id for e in client.list_examples(dataset_id=dataset.id, splits=["test"])] == [ids[1]]
    assert [e.id for e in client.list_examples(dataset_id=dataset.id, metadata={"spectrum": "s1"})] == [ids[0]]

    client.update_examples(dataset_id=dataset.id, updates=[{"id": ids[2], "outputs": {"answer": "C"},
                                                             "split": "validation"}])
    client.update_example(ids[1], inputs={"q": "b2"})
    client.delete_example(ids[0])
    stored = {e["id"]: e for e in langsmith_fake.examples_of("cases")}
    assert set(stored) == {str(ids[1]), str(ids[2])}
    assert stored[str(ids[2])]["outputs"] == {"answer": "C"}
    assert stored[str(ids[2])]["metadata"]["dataset_split"] == ["validation"]
    assert stored[str(ids[1])]["inputs"] == {"q": "b2"}
    assert stored[str(ids[1])]["metadata"]["dataset_split"] == ["test"]  # untouched by an inputs-only update
    with pytest.raises(ls_utils.LangSmithConflictError):  # an id that exists is not created twice
        client.create_examples(dataset_id=dataset.id, examples=[{"id": ids[1], "inputs": {"q": "x"}}])


def test_listing_pages_through_more_than_one_page(langsmith_fake):
    client = sdk(langsmith_fake)
    dataset = client.create_dataset("big")
    client.create_examples(dataset_id=dataset.id, examples=[{"inputs": {"i": i}} for i in range(230)])
    assert sorted(e.inputs["i"] for e in client.list_examples(dataset_id=dataset.id)) == list(range(230))
    assert langsmith_fake.calls().count("GET /examples") == 3


def test_traced_runs_and_feedback_arrive_through_compressed_multipart(langsmith_fake):
    client = sdk(langsmith_fake)
    dataset = client.create_dataset("cases")
    example = client.create_example(inputs={"q": "a"}, reference_outputs={"answer": "A"}, dataset_id=dataset.id)
    project = client.create_project("exp-baseline", reference_dataset_id=dataset.id,
                                    metadata={"prompt_version": "v1"})
    run_ids = []
    for i in range(3):
        rid = uuid.uuid4()
        run_ids.append(rid)
        start = now()
        client.create_run("answer", {"q": f"q{i}"}, "llm", id=rid, project_name="exp-baseline", start_time=start,
                          reference_example_id=example.id, tags=["model:small"],
                          extra={"metadata": {"prompt_version": "v1", "case": f"c{i}"}})
        client.update_run(rid, end_time=start + dt.timedelta(seconds=1.5),
                          outputs={"answer": f"A{i}", "usage_metadata": {"input_tokens": 10, "output_tokens": 5,
                                                                         "total_cost": 0.002}},
                          trace_id=rid, dotted_order=f"{start.strftime('%Y%m%dT%H%M%S%fZ')}{rid}")
        client.create_feedback(rid, key="accuracy", score=i / 2, trace_id=rid, session_id=project.id)
    client.flush()
    ingest = [r for r in langsmith_fake.requests if r.path == "/runs/multipart"]
    assert ingest and all(r.headers.get("content-encoding") == "zstd" and r.status == 202 for r in ingest)

    runs = {r.id: r for r in client.list_runs(project_name="exp-baseline")}
    assert set(runs) == set(run_ids)
    first = runs[run_ids[0]]
    assert first.outputs["answer"] == "A0" and first.total_tokens == 15 and float(first.total_cost) == 0.002
    assert first.reference_example_id == example.id and first.status == "success"
    assert first.latency == pytest.approx(1.5)
    assert first.feedback_stats["accuracy"]["n"] == 1
    assert sorted(f.score for f in client.list_feedback(run_ids=run_ids, feedback_key=["accuracy"])) == [0, 0.5, 1]
    assert langsmith_fake.duplicate_run_posts == []
    assert client.read_project(project_name="exp-baseline", include_stats=True).run_count == 3
    assert [p.name for p in client.list_projects(reference_dataset_id=dataset.id)] == ["exp-baseline"]


def test_run_queries_filter_by_tag_metadata_feedback_and_time_and_page_with_cursors(langsmith_fake):
    client = sdk(langsmith_fake)
    base = now() - dt.timedelta(hours=1)
    posts = []
    for i in range(120):
        rid = str(uuid.uuid4())
        start = base + dt.timedelta(seconds=i)
        posts.append({"id": rid, "trace_id": rid, "name": "production", "run_type": "chain",
                      "session_name": "prod", "start_time": start.isoformat(),
                      "end_time": (start + dt.timedelta(seconds=1)).isoformat(), "inputs": {"i": i},
                      "outputs": {"ok": True}, "dotted_order": f"{start.strftime('%Y%m%dT%H%M%S%fZ')}{rid}",
                      "tags": [f"prompt:{'v1' if i < 60 else 'v2'}"],
                      "extra": {"metadata": {"prompt_version": "v1" if i < 60 else "v2"}}})
    client.batch_ingest_runs(create=posts)
    for i, post in enumerate(posts[:10]):
        client.create_feedback(post["id"], key="user_score", score=1.0 if i < 5 else 0.0)

    everything = list(client.list_runs(project_name="prod"))
    assert len(everything) == 120 and langsmith_fake.calls().count("POST /runs/query") == 2  # two cursor pages
    assert [r.inputs["i"] for r in everything[:2]] == [119, 118]  # newest first, as LangSmith answers
    assert len(list(client.list_runs(project_name="prod", filter='has(tags, "prompt:v2")'))) == 60
    v1 = 'and(eq(metadata_key, "prompt_version"), eq(metadata_value, "v1"))'
    assert len(list(client.list_runs(project_name="prod", filter=v1))) == 60
    low = 'and(eq(feedback_key, "user_score"), lt(feedback_score, 0.5))'
    assert sorted(r.inputs["i"] for r in client.list_runs(project_name="prod", filter=low)) == [5, 6, 7, 8, 9]
    since = (base + dt.timedelta(seconds=100)).isoformat()
    assert len(list(client.list_runs(project_name="prod", filter=f'gte(start_time, "{since}")'))) == 20
    assert len(list(client.list_runs(project_name="prod", start_time=base + dt.timedelta(seconds=110)))) == 10
    ascending = list(client.list_runs(project_name="prod", order="asc", limit=3))
    assert [r.inputs["i"] for r in ascending] == [0, 1, 2]
    with pytest.raises(ls_utils.LangSmithError, match="400"):
        list(client.list_runs(project_name="prod", filter='search("x")'))


def test_traceable_functions_are_traced_into_the_fake(langsmith_fake):
    client = sdk(langsmith_fake)

    @langsmith.traceable(run_type="chain", name="answer_case")
    def answer_case(question: str) -> dict:
        return {"answer": question.upper()}

    with langsmith.tracing_context(enabled=True, client=client, project_name="traced"):
        assert answer_case("hello") == {"answer": "HELLO"}
    client.flush()
    [run] = langsmith_fake.runs_in("traced")
    assert run["name"] == "answer_case" and run["inputs"] == {"question": "hello"}
    assert run["outputs"] == {"answer": "HELLO"} and run["status"] == "success"


def test_a_run_posted_twice_is_stored_once_and_counted(langsmith_fake):
    client = sdk(langsmith_fake)
    rid = str(uuid.uuid4())
    run = {"id": rid, "trace_id": rid, "name": "x", "run_type": "llm", "session_name": "p", "inputs": {},
           "start_time": now().isoformat(), "dotted_order": f"{now().strftime('%Y%m%dT%H%M%S%fZ')}{rid}"}
    client.batch_ingest_runs(create=[run])
    client.batch_ingest_runs(create=[run])
    assert len(langsmith_fake.runs_in("p")) == 1 and langsmith_fake.duplicate_run_posts == [rid]


def test_the_hub_commits_pushed_by_promptcycle_read_back_through_the_sdk(langsmith_fake):
    client = sdk(langsmith_fake)
    hub = PromptHub(langsmith_fake.url, SecretStr(langsmith_fake.api_key))
    first = hub.push("support-prompt", MANIFEST, tag="production", description="v1")
    second_manifest = {**MANIFEST, "kwargs": {**MANIFEST["kwargs"], "input_variables": ["q", "ctx"]}}
    second = hub.push("support-prompt", second_manifest, tag="production", description="v2")
    assert first.created_prompt and not second.created_prompt

    prompt = client.get_prompt("support-prompt")
    assert prompt.num_commits == 2 and prompt.last_commit_hash == second.commit_hash
    listed = list(client.list_prompt_commits("support-prompt"))
    assert [c.commit_hash for c in listed] == [second.commit_hash, first.commit_hash]
    assert listed[0].parent_commit_hash == first.commit_hash
    assert client.pull_prompt_commit("support-prompt:production", skip_cache=True).manifest == second_manifest
    assert client.pull_prompt_commit(f"support-prompt:{first.commit_hash[:8]}", skip_cache=True).manifest == MANIFEST
    assert [p.repo_handle for p in client.list_prompts().repos] == ["support-prompt"]

    refused = httpx2.post(f"{langsmith_fake.url}/commits/-/support-prompt", headers={"x-api-key": langsmith_fake.api_key},
                          json={"parent_commit": second.commit_hash, "manifest": second_manifest})
    assert refused.status_code == 409 and refused.json()["detail"] == "Nothing to commit"  # as the hub answers
    stale = httpx2.post(f"{langsmith_fake.url}/commits/-/support-prompt", headers={"x-api-key": langsmith_fake.api_key},
                        json={"parent_commit": first.commit_hash, "manifest": MANIFEST})
    assert stale.status_code == 409  # a parent that is not the latest commit
    client.create_prompt("empty-prompt", description="made by the SDK")
    assert client.get_prompt("empty-prompt").num_commits == 0
    client.delete_prompt("empty-prompt")
    assert client.get_prompt("empty-prompt") is None


def test_injected_5xx_and_429_meet_the_sdks_own_retries(langsmith_fake):
    client = sdk(langsmith_fake)
    flaky = langsmith_fake.fail(503, path="/datasets", times=2)
    assert not client.has_dataset(dataset_name="x")  # the SDK's urllib3 retries absorb two 503s
    assert flaky.hits == 2 and [r.status for r in langsmith_fake.requests if r.path == "/datasets"] == [503, 503, 200]

    limited = langsmith_fake.fail(429, path="/sessions", times=1, retry_after=1)
    started = time.monotonic()
    assert not client.has_project("p")
    assert limited.hits == 1 and time.monotonic() - started >= 1.0  # Retry-After was honoured

    impatient = sdk(langsmith_fake, retry_config=Retry(total=0))
    langsmith_fake.fail(500, path="/examples")
    with pytest.raises(ls_utils.LangSmithAPIError):
        list(impatient.list_examples(dataset_id=uuid.uuid4()))
    langsmith_fake.fail(429, path="/feedback", retry_after=7)
    with pytest.raises(ls_utils.LangSmithRateLimitError):
        list(impatient.list_feedback(run_ids=[uuid.uuid4()]))
    answer = httpx2.get(f"{langsmith_fake.url}/feedback", headers={"x-api-key": langsmith_fake.api_key})
    assert answer.status_code == 429 and answer.headers["retry-after"] == "7"


def test_slow_answers_are_slow_only_where_asked(langsmith_fake):
    client = sdk(langsmith_fake)
    langsmith_fake.slow(0.4, path="/datasets", method="GET", times=1)
    started = time.monotonic()
    assert not client.has_dataset(dataset_name="x")
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    assert not client.has_dataset(dataset_name="x") and not client.has_project("p")
    assert time.monotonic() - started < 0.4


def test_the_control_endpoint_injects_and_clears_faults_from_another_process(langsmith_fake):
    key = {"x-api-key": langsmith_fake.api_key}
    with httpx2.Client(base_url=langsmith_fake.url) as http:
        assert http.post("/_fake/faults", json={"status": 503, "path": "/feedback", "times": 2}).status_code == 200
        assert http.post("/_fake/faults", json={"statu": 503}).status_code == 422  # a typo is refused
        assert http.post("/_fake/faults", json={"status": 429, "retry_after": 0.5}).status_code == 422
        assert [http.get("/feedback", headers=key).status_code for _ in range(3)] == [503, 503, 200]
        langsmith_fake.fail(503)
        assert http.delete("/_fake/faults").status_code == 200
        assert http.get("/feedback", headers=key).status_code == 200
        sdk(langsmith_fake).create_dataset("seen")
        assert [d["name"] for d in http.get("/_fake/state").json()["datasets"]] == ["seen"]
        http.post("/_fake/reset")
    assert langsmith_fake.datasets == {} and list(langsmith_fake.sessions) != []  # "default" stays


def test_an_outage_during_tracing_drops_the_batch_without_raising_into_the_traced_code():
    fake = FakeLangSmith(api_key="k")
    with FakeLangSmithServer(fake):
        client = langsmith.Client(api_url=fake.url, api_key="k", retry_config=Retry(total=0))
        fake.fail(503, path="/runs")

        @langsmith.traceable(name="work")
        def work(x: int) -> int:
            return x + 1

        with langsmith.tracing_context(enabled=True, client=client, project_name="down"):
            assert work(1) == 2
        client.flush()
        assert fake.runs == {} and any(r.path == "/runs/multipart" and r.status == 503 for r in fake.requests)


def test_the_sdks_evaluate_runs_an_experiment_over_a_dataset_in_the_fake(langsmith_fake):
    client = sdk(langsmith_fake)
    dataset = client.create_dataset("cases")
    client.create_examples(dataset_id=dataset.id, examples=[{"inputs": {"q": i}, "reference_outputs": {"a": i % 2}}
                                                           for i in range(4)])

    def exact(outputs: dict, reference_outputs: dict) -> dict:
        return {"key": "exact", "score": float(outputs["a"] == reference_outputs["a"])}

    result = langsmith.evaluate(lambda inputs: {"a": 0}, data="cases", evaluators=[exact], client=client,
                                experiment_prefix="baseline", max_concurrency=0)
    client.flush()
    experiment = langsmith_fake.session_by_name(result.experiment_name)
    assert experiment["reference_dataset_id"] == str(dataset.id)
    runs = langsmith_fake.runs_in(result.experiment_name)
    assert len(runs) == 4 and all(r["reference_example_id"] for r in runs)
    scores = sorted(f["score"] for r in runs for f in langsmith_fake.feedback_for(r["id"]))
    assert scores == [0.0, 0.0, 1.0, 1.0]
    assert all(r.status < 400 for r in langsmith_fake.requests)
