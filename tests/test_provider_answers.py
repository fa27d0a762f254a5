"""What the provider said about an answer is kept: its model id, its finish reason, and honest token counts."""

from __future__ import annotations

import asyncio

import duckdb
import httpx2
import pytest

from promptcycle.config import ModelConfig, ProviderConfig, Thresholds
from promptcycle.datasets import load_cases
from promptcycle.evaluation.cells import CellSpec, evaluate_cell
from promptcycle.evaluation.summary import quality_markdown, summarize_results
from promptcycle.prompts import PromptTemplate
from promptcycle.providers import OpenAICompatibleProvider
from promptcycle.providers.openai import count_tokens, estimate_tokens
from promptcycle.scoring import build_scorers
from promptcycle.sim.server import LatencyOverride
from promptcycle.store import MetricsStore
from promptcycle.store.schema import MIGRATIONS, apply_migrations
from simserver import ServerThread

PROMPT = PromptTemplate(system="You are an analyst at a retail bank.",
                        template="Customer record:\n{{customer}}\n\nQuestion: {{question}}")
SCORERS = {"completeness": {"weight": 1.0}}


def run_cell(store: MetricsStore, run_id: str, provider_factory, model: ModelConfig, cases) -> object:
    async def go():
        provider = provider_factory({"m": model})
        async with provider:
            spec = CellSpec(run_id=run_id, pipeline="p", model_name="m", model=model, spectrum="mixed",
                            prompt=PROMPT, cases=cases, splits={}, repeats=1, weights={"completeness": 1.0})
            return await evaluate_cell(spec, provider=provider, provider_name="sim", scorers=build_scorers(SCORERS),
                                       store=store)

    return asyncio.run(go())


def stored(store: MetricsStore, sql: str) -> list[tuple]:
    with duckdb.connect(str(store.path), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_truncated_answers_are_stored_flagged_and_counted(tmp_path):
    cases = load_cases("bundled:customer_insights")[:6]
    store = MetricsStore(tmp_path / "m.duckdb")
    capped = ModelConfig(provider="sim", model="sim-nano", max_tokens=12)
    with ServerThread(latency=LatencyOverride(fixed_ms=5)) as server:
        def factory(models):
            return OpenAICompatibleProvider("sim", ProviderConfig(kind="openai", base_url=server.base_url), models)

        outcome = run_cell(store, "run-1", factory, capped, cases)
        assert outcome.called == 6
        assert stored(store, "SELECT DISTINCT provider_model, tokens_source FROM responses") == [
            ("sim-nano", "provider")]
        [(cut,)] = stored(store, "SELECT count(*) FROM responses WHERE finish_reason = 'length'")
        assert cut >= 4  # most answers run past 12 tokens
        assert stored(store, "SELECT count(*) FROM results WHERE finish_reason = 'length'") == [(cut,)]
        assert stored(store, "SELECT count(*) FROM results WHERE finish_reason IS NULL") == [(0,)]
        # The same calls again, in another run: reused from the ledger, still flagged.
        again = run_cell(store, "run-2", factory, capped, cases)
        assert again.reused == 6 and again.called == 0
    frame = store.results_frame("run-2")
    assert frame["finish_reason"].eq("length").sum() == cut
    summary = summarize_results(frame, thresholds=Thresholds(), run_id="run-2", pipeline="p", prompt_hash="h",
                                status="completed", models=["m"], spectrums=sorted(frame["spectrum"].unique()))
    assert summary.truncated == cut and sum(c.truncated for c in summary.cells) == cut


def test_implausible_provider_token_counts_are_replaced_by_the_estimate_and_priced_from_it(tmp_path):
    """A LiteLLM-style mock reports 10 prompt and 20 completion tokens whatever the text."""
    cases = load_cases("bundled:customer_insights")[:3]
    answer = "The customer's credit score is 712 and their monthly spend is 2,340 EUR. " * 8

    def reply(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={
            "id": "x", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}})

    def factory(models):
        return OpenAICompatibleProvider("sim", ProviderConfig(kind="openai", base_url="http://provider.test/v1"),
                                        models, transport=httpx2.MockTransport(reply))

    model = ModelConfig(provider="sim", model="gpt-4o-mini", input_cost_per_mtok=1.0, output_cost_per_mtok=2.0)
    store = MetricsStore(tmp_path / "m.duckdb")
    run_cell(store, "run-1", factory, model, cases)
    frame = store.results_frame("run-1")
    assert frame["tokens_source"].eq("estimated").all()
    by_id = {c.id: c for c in cases}
    assert len(frame) == 3
    for _, row in frame.iterrows():
        prompt_chars = sum(len(m["content"]) for m in PROMPT.render(by_id[row["case_id"]].inputs))
        assert prompt_chars > 1000  # a real prompt, for which 10 tokens cannot be true
        assert abs(row["input_tokens"] - prompt_chars / 4) <= 2
        assert row["output_tokens"] == estimate_tokens(answer)
        assert row["cost_usd"] == pytest.approx((row["input_tokens"] * 1.0 + row["output_tokens"] * 2.0) / 1e6)
    assert stored(store, "SELECT DISTINCT provider_model, tokens_source FROM responses") == [
        ("gpt-4o-mini-2024-07-18", "estimated")]
    # The summary says so: its cost rests on the local estimate, not on the provider's counts.
    summary = summarize_results(frame, thresholds=Thresholds(), run_id="run-1", pipeline="p", prompt_hash="h",
                                status="completed", models=["m"], spectrums=sorted(frame["spectrum"].unique()))
    assert summary.tokens_estimated == 3
    assert "3 answers' token counts were estimated locally" in quality_markdown(summary, Thresholds())


def test_the_token_rule():
    messages = [{"role": "user", "content": "x" * 2500}]  # estimate: 625 tokens
    text = "y" * 400  # estimate: 100 tokens
    assert count_tokens({"prompt_tokens": 700, "completion_tokens": 90}, messages, text) == (700, 90, "provider")
    # a reasoning model bills hidden tokens: a completion count above the visible text's is plausible
    assert count_tokens({"prompt_tokens": 640, "completion_tokens": 900}, messages, text) == (640, 900, "provider")
    assert count_tokens({"prompt_tokens": 10, "completion_tokens": 20}, messages, text) == (625, 100, "estimated")
    assert count_tokens({"prompt_tokens": 9000, "completion_tokens": 90}, messages, text) == (625, 90, "estimated")
    assert count_tokens(None, messages, text) == (625, 100, "estimated")
    assert count_tokens({"prompt_tokens": "n/a"}, messages, text) == (625, 100, "estimated")
    # tiny texts: a few tokens either way is not "far off"
    assert count_tokens({"prompt_tokens": 3, "completion_tokens": 1}, [{"role": "user", "content": "hi there"}],
                        "ok") == (3, 1, "provider")


def test_a_store_from_before_migration_5_gains_the_columns_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:
        apply_migrations(con, MIGRATIONS[:3])
        con.execute("INSERT INTO responses (call_key, provider, model, output) VALUES ('k', 'p', 'm', 'old answer')")
    store = MetricsStore(path)
    old = store.get_responses(["k"])["k"]
    assert old.output == "old answer" and old.finish_reason is None and old.tokens_source is None
    assert stored(store, "SELECT max(version) FROM schema_migrations") == [(len(MIGRATIONS),)]
    assert stored(store, "SELECT column_name FROM duckdb_columns() WHERE table_name = 'results' "
                         "AND column_name IN ('finish_reason', 'tokens_source') ORDER BY 1") == [
        ("finish_reason",), ("tokens_source",)]
