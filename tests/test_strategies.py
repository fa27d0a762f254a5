"""Strategies on real diagnoses; `meta` against the simulated world's optimizer persona; and the measured
effect of the strongest candidates on dev-split cases, scored by the product's scorers."""

from __future__ import annotations

import asyncio
import re

import pytest
from test_diagnosis import DEFAULT_PROMPT, THRESHOLDS, results_frame

from promptcycle.config import OptimizationConfig, SplitConfig
from promptcycle.datasets import assign_splits, load_cases
from promptcycle.optimize import StrategyContext, create_strategy, diagnose, strategies
from promptcycle.optimize.strategies import META_SYSTEM, build_meta_messages, parse_rewrites
from promptcycle.optimize.strategies.levers import GROUNDING, add_instructions, word_count
from promptcycle.prompts import PromptTemplate
from promptcycle.providers.base import Completion
from promptcycle.registry import UnknownNameError
from promptcycle.sim.optimizer import NO_REWRITE_TEXT, OPTIMIZER_OPENING
from promptcycle.sim.reading import read_messages
from promptcycle.sim.world import respond

MODELS = ["sim-nano", "sim-small", "sim-large"]
OPTIMIZER = "sim-xl"
DETERMINISTIC = ["checklist", "format_spec", "few_shot", "grounding", "step_structure", "shorten", "combined"]


async def sim_complete(model: str, messages: list[dict[str, str]]) -> Completion:
    """The simulated world behind the provider interface (what the simulator provider returns)."""
    reply = respond(model, messages)
    return Completion(text=reply.text, model=model, input_tokens=reply.input_tokens,
                      output_tokens=reply.output_tokens, latency_ms=reply.latency_s * 1000, cost_usd=0.0,
                      simulated=True)


@pytest.fixture(scope="module")
def world():
    cases = load_cases("bundled:customer_insights")
    splits = assign_splits(cases, SplitConfig())
    frame = results_frame(DEFAULT_PROMPT, cases, MODELS, splits)
    diagnosis = diagnose(frame, thresholds=THRESHOLDS, cases=cases)
    by_split = {s: [c for c in cases if splits[c.id] == s] for s in ("train", "dev", "test")}
    spectrums = list(dict.fromkeys(c.spectrum for c in cases))
    context = StrategyContext(spectrums=spectrums, seed=7, complete=sim_complete, optimizer_model=OPTIMIZER)
    return diagnosis, by_split, context


def propose(name, current, diagnosis, train, context):
    return asyncio.run(create_strategy(name).propose(current, diagnosis, train, context=context))


def reading_of(prompt: PromptTemplate, case):
    """How a simulated model reads the prompt on one case: which levers it sees."""
    return read_messages(prompt.render(case.inputs))


# --- the registry -------------------------------------------------------------------------------

def test_the_registry_holds_exactly_the_default_strategies():
    assert strategies.names() == sorted(OptimizationConfig().strategies)
    with pytest.raises(UnknownNameError, match="checklist"):
        create_strategy("genetic")


# --- each lever -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", DETERMINISTIC)
def test_each_strategy_keeps_the_variables_and_is_deterministic(world, name):
    diagnosis, split, context = world
    first = propose(name, DEFAULT_PROMPT, diagnosis, split["train"], context)
    again = propose(name, DEFAULT_PROMPT, diagnosis, split["train"], context)
    assert len(first) == 1
    candidate = first[0]
    assert candidate.prompt.variables == DEFAULT_PROMPT.variables
    assert candidate.strategy == name and candidate.parent_hash == DEFAULT_PROMPT.hash and candidate.scope is None
    assert candidate.prompt != DEFAULT_PROMPT and candidate.rationale
    assert [(c.hash, c.rationale) for c in again] == [(c.hash, c.rationale) for c in first]
    # the question is still what the model reads as the question
    case = split["dev"][0]
    assert reading_of(candidate.prompt, case).question == case.inputs["question"]


def test_checklist_names_every_topic_s_fields_from_train_facts(world):
    diagnosis, split, context = world
    (candidate,) = propose("checklist", DEFAULT_PROMPT, diagnosis, split["train"], context)
    train_fields = {f for c in split["train"] for f in c.facts}
    credit = next(c for c in split["dev"] if c.spectrum == "credit_analysis")
    named = reading_of(candidate.prompt, credit).named
    assert set(named) == train_fields
    assert {f for f, where in named.items() if where == "on"} >= set(credit.facts)  # on the question's topic
    assert "off" in named.values()  # other topics' lines are recognised as other topics
    top_missed = next(iter(diagnosis.missed_fields()))
    assert top_missed in candidate.rationale


def test_format_spec_grounding_steps_and_combined_pull_their_levers(world):
    diagnosis, split, context = world
    case = split["dev"][5]
    base = reading_of(DEFAULT_PROMPT, case)
    assert base.json_requested and not base.json_explicit and not base.use_only and not base.steps
    (spec,) = propose("format_spec", DEFAULT_PROMPT, diagnosis, split["train"], context)
    assert reading_of(spec.prompt, case).json_explicit
    assert "Reply with a JSON object." not in spec.prompt.template  # the vague line was replaced
    (grounded,) = propose("grounding", DEFAULT_PROMPT, diagnosis, split["train"], context)
    assert reading_of(grounded.prompt, case).use_only and reading_of(grounded.prompt, case).say_unknown
    (steps,) = propose("step_structure", DEFAULT_PROMPT, diagnosis, split["train"], context)
    assert reading_of(steps.prompt, case).steps
    (combined,) = propose("combined", DEFAULT_PROMPT, diagnosis, split["train"], context)
    seen = reading_of(combined.prompt, case)
    assert seen.json_explicit and seen.use_only and seen.say_unknown and seen.named
    assert all(word in combined.rationale for word in ("grounding", "checklist", "JSON"))


def test_few_shot_examples_come_from_train_cases_only(world):
    diagnosis, split, context = world
    questions = {c.inputs["question"]: c for c in split["train"]}
    # hand it every case: the strategy must still only use the ones the results place in train
    mixed = split["test"] + split["dev"] + split["train"]
    for seed in (1, 2, 3):
        ctx = StrategyContext(spectrums=context.spectrums, seed=seed)
        (candidate,) = propose("few_shot", DEFAULT_PROMPT, diagnosis, mixed, ctx)
        shown = re.findall(r"(?m)^Question: (.*)$", candidate.prompt.system)
        assert len(shown) == 2
        for question in shown:
            assert question in questions
        ids = re.findall(r"[a-z_]+-\d{3}", candidate.rationale)
        assert len(ids) == 2 and all(i in {c.id for c in split["train"]} for i in ids)
        assert reading_of(candidate.prompt, split["dev"][0]).examples == 2
        assert word_count(candidate.prompt) < 200  # short: small models lose skill past ~400 words


def test_shorten_drops_filler_and_keeps_constraints():
    filler = "We value careful, courteous and timely service for the people we support."
    long = PromptTemplate(system=f"You are an analyst at a retail bank. {filler} {filler} Please always report "
                                 "every figure the question needs.",
                          template=DEFAULT_PROMPT.template)
    (candidate,) = asyncio.run(create_strategy("shorten").propose(
        long, None, [], context=StrategyContext(spectrums=[])))
    assert candidate.prompt.variables == long.variables
    assert word_count(candidate.prompt) < word_count(long) - 20
    assert candidate.prompt.system.startswith("You are an analyst at a retail bank.")
    assert "Always report every figure the question needs." in candidate.prompt.system
    assert "Reply with a JSON object." in candidate.prompt.template
    assert "courteous" not in candidate.prompt.system and "dropped 2 sentence(s)" in candidate.rationale


def test_a_lever_already_in_the_prompt_is_not_proposed_again(world):
    diagnosis, split, context = world
    (combined,) = propose("combined", DEFAULT_PROMPT, diagnosis, split["train"], context)
    for name in ("combined", "checklist", "format_spec", "grounding"):
        assert propose(name, combined.prompt, diagnosis, split["train"], context) == []
    grounded = add_instructions(DEFAULT_PROMPT, GROUNDING)
    assert propose("grounding", grounded, diagnosis, split["train"], context) == []


def test_per_model_candidates_carry_their_scope_and_that_model_s_evidence(world):
    diagnosis, split, context = world
    nano = StrategyContext(spectrums=context.spectrums, seed=7, complete=sim_complete, optimizer_model=OPTIMIZER,
                           model="sim-nano")
    (candidate,) = propose("format_spec", DEFAULT_PROMPT, diagnosis, split["train"], nano)
    assert candidate.scope == "sim-nano" and candidate.label.endswith("(sim-nano)")
    rate = diagnosis.format_failure_rate(model="sim-nano")
    assert f"{100 * rate:.0f}% of train answers" in candidate.rationale
    messages = build_meta_messages(DEFAULT_PROMPT, diagnosis, spectrums=list(context.spectrums), model="sim-nano")
    assert "when sent to sim-nano" in messages[1]["content"]


# --- meta and the optimizer persona ---------------------------------------------------------------

def test_meta_prompt_carries_train_evidence_only(world):
    diagnosis, split, context = world
    system, user = (m["content"] for m in build_meta_messages(DEFAULT_PROMPT, diagnosis,
                                                             spectrums=list(context.spectrums)))
    assert system == META_SYSTEM and system.startswith(OPTIMIZER_OPENING)
    assert f"<prompt>\n{DEFAULT_PROMPT.template}\n</prompt>" in user
    train_questions = {c.inputs["question"] for c in split["train"]}
    held_out_only = {c.inputs["question"] for c in split["dev"] + split["test"]} - train_questions
    shown = re.findall(r"(?m)^Question: (.*)$", user)
    assert 1 <= len(shown) <= 8
    assert all(q in train_questions for q in shown) and not any(q in user for q in held_out_only)
    for spectrum in context.spectrums:
        assert f"- {spectrum}: {diagnosis.quality(spectrum):.1f}" in user  # train quality, not all rows


def test_meta_asks_the_simulated_optimizer_and_returns_its_rewrite(world):
    diagnosis, split, context = world
    candidates = propose("meta", DEFAULT_PROMPT, diagnosis, split["train"], context)
    assert len(candidates) == 1
    candidate = candidates[0]
    assert candidate.strategy == "meta" and candidate.prompt.variables == DEFAULT_PROMPT.variables
    assert candidate.rationale.startswith(f"Rewrite by {OPTIMIZER} (simulated): Simulated optimizer: added")
    seen = reading_of(candidate.prompt, split["dev"][0])
    assert seen.json_explicit and seen.use_only and seen.named  # format failures, wrong values, misses
    # the persona answers through the world's ordinary entry point, deterministically, for any model
    messages = build_meta_messages(DEFAULT_PROMPT, diagnosis, spectrums=list(context.spectrums))
    assert respond("sim-nano", messages).text == respond("sim-reasoner", messages).text
    assert propose("meta", DEFAULT_PROMPT, diagnosis, split["train"], context) == candidates


def test_the_optimizer_persona_applies_only_the_levers_the_evidence_points_at():
    evidence = ("Current system message:\n<system>\nBe helpful.\n</system>\n\nCurrent user message template:\n"
                "<prompt>\n{{customer}}\n{{question}}\nAnswer in JSON.\n</prompt>\n\n"
                "Scores per spectrum on training cases (quality 0-100):\n"
                "- credit_analysis: 71.0; missed: credit_limit 40%, debt_to_income_pct 20%\n\n"
                "Reply with up to 2 rewrites")
    messages = [{"role": "system", "content": META_SYSTEM}, {"role": "user", "content": evidence}]
    (rewrite,) = parse_rewrites(respond("sim-small", messages).text)
    assert "credit_limit, debt_to_income_pct" in rewrite.system
    assert "Use only" not in rewrite.system  # no wrong values reported: no grounding
    assert rewrite.template == "{{customer}}\n{{question}}\nAnswer in JSON."  # no format failures: no spec
    satisfied = evidence.replace("Be helpful.", "Report credit_limit and debt_to_income_pct.")
    reply = respond("sim-small", [messages[0], {"role": "user", "content": satisfied}]).text
    assert reply == NO_REWRITE_TEXT and parse_rewrites(reply) == []


def test_parse_rewrites_reads_the_documented_reply_format():
    reply = ("Here you go.\n<rewrite>\n<system>S1</system>\n<prompt>\n```\nT1 {{question}}\n```\n</prompt>\n"
             "<rationale>Added a spec.</rationale>\n</rewrite>\n<rewrite><prompt>T2 {{question}}</prompt></rewrite>\n"
             "<rewrite><system>S1</system><prompt>T1 {{question}}</prompt></rewrite>")
    first, second = parse_rewrites(reply)
    assert (first.system, first.template, first.rationale) == ("S1", "T1 {{question}}", "Added a spec.")
    assert (second.system, second.template, second.rationale) == (None, "T2 {{question}}", "")
    assert [r.template for r in parse_rewrites("<prompt>bare</prompt>")] == ["bare"]
    assert parse_rewrites("I would rather not.") == []


def test_meta_needs_an_optimizer_model(world):
    diagnosis, split, context = world
    with pytest.raises(ValueError, match="optimizer_model"):
        propose("meta", DEFAULT_PROMPT, diagnosis, split["train"], StrategyContext(spectrums=context.spectrums))


# --- the measured effect --------------------------------------------------------------------------

def test_combined_and_meta_raise_dev_quality_over_the_default_prompt(world):
    diagnosis, split, context = world
    dev = split["dev"]
    splits = {c.id: "dev" for c in dev}

    def quality(prompt: PromptTemplate) -> dict[str, float]:
        frame = results_frame(prompt, dev, MODELS, splits)
        return (100 * frame.groupby("model")["overall"].mean()).to_dict()

    baseline = quality(DEFAULT_PROMPT)
    for name in ("combined", "meta"):
        (candidate,) = propose(name, DEFAULT_PROMPT, diagnosis, split["train"], context)
        gains = {m: q - baseline[m] for m, q in quality(candidate.prompt).items()}
        assert sum(g > 0 for g in gains.values()) >= 2, (name, gains)
        assert sum(gains.values()) / len(gains) >= 5, (name, gains)  # points, on 63 dev cases per model
