"""The simulated LLM world: determinism, messages-only behaviour, prompt levers, the judge persona."""

from __future__ import annotations

import json
import math

import pytest

from promptcycle.datasets.cases import Case
from promptcycle.prompts import PromptTemplate
from promptcycle.sim.calibration import LEVER_PROMPTS, Rates, load_bundled_cases, measure
from promptcycle.sim.reading import read_messages
from promptcycle.sim.world import SIM_MODELS, SPECTRUMS, UnknownSimModelError, estimate_tokens, respond

CASES = load_bundled_cases()
DEFAULT = LEVER_PROMPTS["default"]
WEAK, MIDDLE, STRONG = "sim-nano", "sim-medium", "sim-reasoner"
JUDGE_SYSTEM = "You are an impartial evaluation judge. Compare the candidate answer with the reference answer."


def judge_messages(case: dict, candidate: str) -> list[dict[str, str]]:
    user = (f"Question:\n{case['inputs']['question']}\n\nReference answer:\n{case['reference']}\n\n"
            f"Candidate answer:\n{candidate}\n\n"
            'Reply with JSON: {"score": <0-10>, "reason": "<one sentence>"}')
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


@pytest.fixture(scope="module")
def rates() -> dict[tuple[str, str], Rates]:
    """Every lever prompt x three models over the whole bundled dataset (~5,700 simulated calls)."""
    return {(prompt, model): measure(model, LEVER_PROMPTS[prompt], CASES)
            for prompt in LEVER_PROMPTS for model in (WEAK, MIDDLE, STRONG)}


def mean_of(rates: dict, prompt: str, attr: str, models=(WEAK, MIDDLE, STRONG)) -> float:
    return sum(getattr(rates[prompt, m], attr) for m in models) / len(models)


# --- the catalogue ----------------------------------------------------------------------------

def test_seven_models_with_a_skill_for_every_spectrum_and_a_latency_target():
    assert list(SIM_MODELS) == ["sim-nano", "sim-mini", "sim-small", "sim-medium", "sim-large", "sim-xl",
                                "sim-reasoner"]
    for spec in SIM_MODELS.values():
        assert set(spec.skills) == set(SPECTRUMS)
        assert all(0 < s < 1 for s in spec.skills.values())
        assert spec.latency_target_ms > 0
    # small models find relationships and time hard
    nano = SIM_MODELS["sim-nano"].skills
    assert nano["temporal_analysis"] < nano["customer_profile"]
    assert nano["entity_relationship"] < nano["customer_profile"]


def test_unknown_model_names_the_known_ones():
    with pytest.raises(UnknownSimModelError) as info:
        respond("gpt-imaginary", DEFAULT.render(CASES[0]["inputs"]))
    assert isinstance(info.value, LookupError)
    assert "sim-nano" in str(info.value) and "sim-reasoner" in str(info.value)


# --- determinism and inputs -------------------------------------------------------------------

def test_same_request_gives_the_same_reply():
    messages = DEFAULT.render(CASES[40]["inputs"])
    for model in SIM_MODELS:
        assert respond(model, messages) == respond(model, list(messages))
        assert respond(model, messages, temperature=0.7, seed=3) == respond(model, messages, temperature=0.7, seed=3)


def test_temperature_zero_ignores_the_seed_and_positive_temperature_uses_it():
    rendered = [DEFAULT.render(c["inputs"]) for c in CASES[::10]]
    for messages in rendered:
        assert respond(MIDDLE, messages, seed=0) == respond(MIDDLE, messages, seed=99)
    varied = sum(respond(MIDDLE, m, temperature=0.8, seed=0).text != respond(MIDDLE, m, temperature=0.8, seed=1).text
                 for m in rendered)
    assert varied >= len(rendered) // 3


def test_reply_depends_only_on_the_messages():
    raw = CASES[77]
    original = Case(**raw)
    renamed = Case(**{**raw, "id": "something-else-999", "facts": {"credit_score": 1}, "reference": "x"})
    for model in (WEAK, STRONG):
        assert respond(model, DEFAULT.render(original.inputs)) == respond(model, DEFAULT.render(renamed.inputs))


def test_answers_are_built_from_the_record_in_the_messages():
    case = CASES[5]
    messages = LEVER_PROMPTS["optimized"].render(case["inputs"])
    reply = json.loads(respond(STRONG, messages).text)
    record = case["inputs"]["customer"]
    leaves = {k: v for section in record.values() if isinstance(section, dict) for k, v in section.items()}
    assert set(reply) <= set(leaves)
    assert any(reply[k] == leaves[k] for k in reply)


def test_token_counts_and_max_tokens():
    messages = DEFAULT.render(CASES[3]["inputs"])
    full = respond(MIDDLE, messages)
    chars = sum(len(m["content"]) for m in messages)
    assert full.input_tokens == math.ceil(chars / 4)
    assert full.output_tokens == estimate_tokens(full.text) == math.ceil(len(full.text) / 4)
    assert full.finish_reason == "stop"
    capped = respond(MIDDLE, messages, max_tokens=5)
    assert capped.output_tokens <= 5 and capped.finish_reason == "length"
    assert full.text.startswith(capped.text) and len(capped.text) == 20
    # a reasoning model bills hidden tokens, still within the cap
    reasoner = respond(STRONG, messages)
    assert reasoner.output_tokens > estimate_tokens(reasoner.text)
    assert respond(STRONG, messages, max_tokens=30).output_tokens <= 30


def test_latencies_range_from_fast_small_to_slow_strong_models_and_a_full_run_fits_in_a_minute():
    means = {}
    total_s = 0.0
    for model in SIM_MODELS:
        lat = [respond(model, DEFAULT.render(c["inputs"])).latency_s for c in CASES]
        means[model] = 1000 * sum(lat) / len(lat)
        total_s += sum(lat)
    assert 60 <= means["sim-nano"] <= 120 and 1000 <= means["sim-reasoner"] <= 1600
    assert list(means.values()) == sorted(means.values())
    assert total_s / 64 < 30  # 1,470 calls at concurrency 64


def test_a_message_without_a_record_gets_a_simulated_notice():
    reply = respond(WEAK, [{"role": "user", "content": "Hello, who are you?"}])
    assert "simulated" in reply.text


# --- reading the prompt -----------------------------------------------------------------------

def test_reading_finds_record_question_and_levers():
    case = CASES[30]
    plain = read_messages(DEFAULT.render(case["inputs"]))
    assert plain.question == case["inputs"]["question"]
    assert len(plain.fields) == 36 and plain.topic == "credit"
    assert plain.json_requested and not plain.json_explicit
    assert not (plain.named or plain.use_only or plain.say_unknown or plain.steps or plain.examples)

    optimized = read_messages(LEVER_PROMPTS["optimized"].render(case["inputs"]))
    assert optimized.json_explicit and optimized.use_only and optimized.say_unknown
    assert optimized.named["credit_score"] == "on" and optimized.named["city"] == "off"
    flat = read_messages(LEVER_PROMPTS["flat_checklist"].render(case["inputs"]))
    assert flat.named["credit_score"] == "on" and flat.named["city"] == "listed"
    assert read_messages(LEVER_PROMPTS["examples"].render(case["inputs"])).examples == 1
    assert read_messages(LEVER_PROMPTS["steps"].render(case["inputs"])).steps


def test_a_labelled_question_after_an_example_in_the_user_message_is_the_one_answered():
    case = CASES[100]
    template = ("Example:\nQuestion: Where does the customer live?\nAnswer: {\"city\": \"Ashford\"}\n\n"
                "Record:\n{{customer}}\nQuestion: {{question}}\nReply in JSON.")
    reading = read_messages(PromptTemplate(template).render(case["inputs"]))
    assert reading.question == case["inputs"]["question"]
    assert reading.examples == 1 and len(reading.fields) == 36


# --- the prompt levers, measured over the bundled dataset ---------------------------------------

def test_calibration_default_and_optimized_prompt(rates):
    assert 55 <= rates["default", WEAK].quality <= 70
    assert 85 <= rates["default", STRONG].quality <= 92
    assert 78 <= rates["optimized", WEAK].quality <= 88
    assert 95 <= rates["optimized", STRONG].quality <= 99
    for prompt in ("default", "optimized"):
        assert rates[prompt, WEAK].quality < rates[prompt, MIDDLE].quality < rates[prompt, STRONG].quality


def test_checklist_raises_completeness(rates):
    for model in (WEAK, MIDDLE, STRONG):
        assert rates["checklist", model].completeness > rates["default", model].completeness + 0.08


def test_flat_checklist_costs_tokens_and_latency_over_a_per_topic_one(rates):
    for model in (WEAK, MIDDLE, STRONG):
        flat, topic = rates["flat_checklist", model], rates["checklist", model]
        assert flat.output_tokens > 2.5 * topic.output_tokens - 150 * (model == STRONG)
        assert flat.latency_ms > topic.latency_ms and flat.latency < topic.latency


def test_explicit_format_spec_gives_clean_json(rates):
    for model in (WEAK, MIDDLE, STRONG):
        assert rates["format_spec", model].json_valid >= 0.95
        assert rates["format_spec", model].json_valid > rates["default", model].json_valid
    assert rates["default", WEAK].json_valid < rates["default", STRONG].json_valid


def test_examples_raise_format_compliance_and_accuracy(rates):
    assert mean_of(rates, "examples", "json_valid") > mean_of(rates, "default", "json_valid") + 0.05
    assert mean_of(rates, "examples", "accuracy") > mean_of(rates, "default", "accuracy") + 0.01


def test_grounding_suppresses_hallucinations_and_wrong_values(rates):
    for model in (WEAK, MIDDLE, STRONG):
        assert rates["default", model].hallucinated > 0.03
        assert rates["grounding", model].hallucinated <= 0.02
    assert mean_of(rates, "grounding", "accuracy") > mean_of(rates, "default", "accuracy") + 0.03


def test_steps_add_tokens_and_help_strong_models(rates):
    for model in (WEAK, MIDDLE, STRONG):
        assert rates["steps", model].output_tokens > rates["default", model].output_tokens + 40
    assert rates["steps", STRONG].accuracy > rates["default", STRONG].accuracy + 0.01


def test_long_instructions_hurt_small_models_only(rates):
    assert rates["long", WEAK].quality < rates["default", WEAK].quality - 1.5
    assert abs(rates["long", STRONG].quality - rates["default", STRONG].quality) < 1.5


# --- the judge persona ------------------------------------------------------------------------

def test_judge_scores_a_copy_of_the_reference_high_and_an_empty_answer_low():
    for case in CASES[::30]:
        for model in (WEAK, STRONG):
            high = json.loads(respond(model, judge_messages(case, case["reference"])).text)
            low = json.loads(respond(model, judge_messages(case, "")).text)
            assert high["score"] >= 9 and low["score"] <= 1
            assert isinstance(high["reason"], str) and high["reason"].endswith(".")


def test_judge_compares_values_and_is_deterministic():
    case = CASES[45]
    first_fact = next(iter(case["facts"]))
    partial = case["reference"].splitlines()[0]  # states only the first fact
    verdict = json.loads(respond(MIDDLE, judge_messages(case, partial)).text)
    assert 0 < verdict["score"] < 9 and "missing" in verdict["reason"]
    wrong_text = case["reference"].replace(str(case["facts"][first_fact]), "123456789", 1)
    wrong = json.loads(respond(MIDDLE, judge_messages(case, wrong_text)).text)
    assert wrong["score"] < 10 and "wrong" in wrong["reason"]
    assert respond(MIDDLE, judge_messages(case, partial)) == respond(MIDDLE, judge_messages(case, partial))


def test_judge_reads_json_candidates():
    case = CASES[150]
    candidate = "```json\n" + json.dumps(case["facts"]) + "\n```"
    assert json.loads(respond(STRONG, judge_messages(case, candidate)).text)["score"] >= 9
