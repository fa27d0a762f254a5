"""One model x spectrum cell: call identity and how many calls a cell has under way."""

from __future__ import annotations

import asyncio
import hashlib
import json

from promptcycle.config import ModelConfig, ProviderConfig
from promptcycle.datasets import load_cases
from promptcycle.evaluation.cells import CellSpec, RetryCellError, call_key, call_keys, evaluate_cell
from promptcycle.prompts import PromptTemplate
from promptcycle.providers import OpenAICompatibleProvider
from promptcycle.scoring import build_scorers
from promptcycle.sim.server import LatencyOverride
from promptcycle.store import MetricsStore
from simserver import ServerThread

PROMPT = PromptTemplate(system="You are an analyst at a retail bank.",
                        template="Customer record:\n{{customer}}\n\nQuestion: {{question}}")


def test_call_keys_keep_the_stored_encoding():
    """Ledgers in existing stores hold these keys: the bytes hashed must never change."""
    model = ModelConfig(provider="p", model="sim-nano", temperature=0.3, max_tokens=200)
    messages = [{"role": "user", "content": 'naïve "quoted" ✓ text'}]
    for repeat in (0, 1, 7):
        encoded = json.dumps(["p", "sim-nano", 0.3, 200, repeat, messages], separators=(",", ":"),
                             ensure_ascii=False)
        expected = hashlib.sha256(encoded.encode()).hexdigest()[:32]
        assert call_key("p", model, messages, repeat) == expected
    assert call_keys("p", model, messages, [0, 1, 7]) == [call_key("p", model, messages, r) for r in (0, 1, 7)]
    assert len(set(call_keys("p", model, messages, range(5)))) == 5


def test_a_cell_has_at_most_its_concurrency_under_way(tmp_path):
    cases = load_cases("bundled:customer_insights")[:12]
    models = {"nano": ModelConfig(provider="sim", model="sim-nano")}
    with ServerThread(latency=LatencyOverride(fixed_ms=40)) as server:
        async def go():
            provider = OpenAICompatibleProvider("sim", ProviderConfig(kind="openai", base_url=server.base_url,
                                                                      max_concurrency=64), models)
            async with provider:
                spec = CellSpec(run_id="run-1", pipeline="p", model_name="nano", model=models["nano"],
                                spectrum="mixed", prompt=PROMPT, cases=cases, splits={}, repeats=2,
                                weights={"completeness": 1.0})
                return await evaluate_cell(spec, provider=provider, provider_name="sim",
                                           scorers=build_scorers({"completeness": {"weight": 1.0}}),
                                           store=MetricsStore(tmp_path / "m.duckdb"), concurrency=3)

        outcome = asyncio.run(go())
        assert server.state.max_in_flight == 3
    assert outcome.called == 24 and outcome.errors == 0
    assert len(MetricsStore(tmp_path / "m.duckdb").results_frame("run-1")) == 24


def test_a_pipeline_renders_each_case_once_per_prompt(repo_config):
    from promptcycle.evaluation.context import load_pipeline

    ctx = load_pipeline(repo_config, "customer-insights")
    case = ctx.cases[0]
    first = ctx.messages(PROMPT, case)
    assert first == PROMPT.render(case.inputs)
    assert ctx.messages(PROMPT, case) is first  # shared by the cells of every model
    other = PromptTemplate(system=PROMPT.system, template=PROMPT.template + "\nBe brief.")
    assert ctx.messages(other, case) == other.render(case.inputs) != first


def test_a_cell_retried_after_deferred_errors_counts_each_call_once_in_the_progress(tmp_path):
    """A Prefect retry of a cell skips the rows its first attempt recorded: they are not counted again."""
    from promptcycle.evaluation import progress
    from promptcycle.sim.server import FaultConfig

    cases = load_cases("bundled:customer_insights")[:6]
    models = {"nano": ModelConfig(provider="sim", model="sim-nano")}
    seen: list[tuple[int, int | None]] = []
    with ServerThread(faults=FaultConfig(fail_first=2), latency=LatencyOverride(fixed_ms=5)) as server:
        async def go():
            provider = OpenAICompatibleProvider("sim", ProviderConfig(kind="openai", base_url=server.base_url,
                                                                      max_retries=0, max_concurrency=1), models)
            spec = CellSpec(run_id="run-1", pipeline="p", model_name="nano", model=models["nano"],
                            spectrum="mixed", prompt=PROMPT, cases=cases, splits={}, repeats=1,
                            weights={"completeness": 1.0})
            store = MetricsStore(tmp_path / "m.duckdb")
            outcomes = []
            async with provider:
                for final in (False, True):  # the task's first attempt defers its errors; its retry records all
                    try:
                        outcomes.append(await evaluate_cell(
                            spec, provider=provider, provider_name="sim", store=store, final_attempt=final,
                            scorers=build_scorers({"completeness": {"weight": 1.0}}), concurrency=1))
                    except RetryCellError as exc:
                        outcomes.append(exc)
            return outcomes

        listener = lambda done, total: seen.append((done, total))  # noqa: E731
        progress.report_total(6, phase="baseline")
        progress.add_listener(listener)
        try:
            first, second = asyncio.run(go())
        finally:
            progress.remove_listener(listener)
    assert isinstance(first, RetryCellError) and second.called == 2 and second.skipped == 4
    assert progress.snapshot().done == 6 and max(done for done, _ in seen) == 6, seen
