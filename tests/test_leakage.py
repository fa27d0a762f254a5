"""Candidate validation through a real Great Expectations suite: variables, placeholders, leakage."""

from __future__ import annotations

import asyncio

import pytest

from promptcycle.config import SplitConfig, Thresholds
from promptcycle.datasets import assign_splits, load_cases
from promptcycle.optimize import (
    CandidatePrompt,
    StrategyContext,
    create_strategy,
    diagnose,
    inspect_candidates,
    screen_candidates,
    validate_candidates,
)
from promptcycle.optimize.strategies.levers import add_instructions, format_example
from promptcycle.prompts import PromptTemplate
from promptcycle.quality import QualityReport

CURRENT = PromptTemplate(
    system="You are an analyst at a retail bank. Answer questions about customers accurately.",
    template="Here is the customer record:\n{{customer}}\n\n{{question}}\nReply with a JSON object.")
VARIABLES = ["customer", "question"]


@pytest.fixture(scope="module")
def split():
    cases = load_cases("bundled:customer_insights")
    splits = assign_splits(cases, SplitConfig())
    return {s: [c for c in cases if splits[c.id] == s] for s in ("train", "dev", "test")}


@pytest.fixture(scope="module", autouse=True)
def gx_context():
    """Pay Great Expectations' import and context set-up once for the module."""
    validate_candidates([], variables=VARIABLES, held_out=[])


def candidate(prompt: PromptTemplate, strategy: str = "few_shot") -> CandidatePrompt:
    return CandidatePrompt(prompt=prompt, strategy=strategy, rationale="test", parent_hash=CURRENT.hash)


def with_example(case) -> CandidatePrompt:
    return candidate(add_instructions(CURRENT, format_example(case)))


def failure(report: QualityReport, expectation: str) -> dict:
    return next(f for f in report.failures if f["expectation"] == expectation)


def test_an_example_copied_from_a_test_case_fails_and_a_train_example_passes(split):
    leaked_case = next(c for c in split["test"] if c.spectrum == "credit_analysis")
    train_case = next(c for c in split["train"] if c.spectrum == "credit_analysis")
    held_out = split["dev"] + split["test"]
    report = validate_candidates([with_example(train_case), with_example(leaked_case)], variables=VARIABLES,
                                 held_out=held_out, train=split["train"])
    assert isinstance(report, QualityReport) and report.suite == "candidates" and not report.success
    assert report.n_rows == 2 and report.n_expectations == 7
    assert [f["expectation"] for f in report.failures] == ["no distinctive held-out record values"]
    leak = report.failures[0]
    assert leak["examples"] == [f"#2 {with_example(leaked_case).label}"]  # names the candidate …
    assert leaked_case.id in leak["detail"] and leaked_case.id in report.summary()  # … and the leaked case
    assert validate_candidates([with_example(train_case)], variables=VARIABLES, held_out=held_out,
                               train=split["train"]).success


def test_copied_examples_are_caught_for_most_test_cases_and_train_examples_never(split):
    """The rule's measured behaviour on the bundled dataset (quoted in the leakage module docstring)."""
    held_out, train = split["dev"] + split["test"], split["train"]
    caught = [not f.ok for f in inspect_candidates([with_example(c) for c in split["test"]], variables=VARIABLES,
                                                   held_out=held_out, train=train)]
    assert sum(caught) >= 55, f"{sum(caught)} of {len(caught)} copied test examples caught"
    singles = [with_example(c) for c in train]
    pairs = [candidate(add_instructions(CURRENT, format_example(a, 1) + "\n\n" + format_example(b, 2)))
             for a, b in zip(train, train[1:] + train[:1])]
    flagged = [f.problems for f in inspect_candidates(singles + pairs, variables=VARIABLES, held_out=held_out,
                                                      train=train) if not f.ok]
    assert flagged == []


def test_the_default_strategies_candidates_pass(split):
    from test_diagnosis import DEFAULT_PROMPT, results_frame

    cases = split["train"] + split["dev"] + split["test"]
    splits = {c.id: s for s, group in split.items() for c in group}
    frame = results_frame(DEFAULT_PROMPT, cases, ["sim-nano", "sim-large"], splits)
    diagnosis = diagnose(frame, thresholds=Thresholds(), cases=cases)
    context = StrategyContext(spectrums=list(dict.fromkeys(c.spectrum for c in cases)), seed=3)
    proposed = [c for name in ("checklist", "format_spec", "few_shot", "grounding", "step_structure", "shorten",
                               "combined")
                for c in asyncio.run(create_strategy(name).propose(DEFAULT_PROMPT, diagnosis, split["train"],
                                                                   context=context))]
    screening = screen_candidates(proposed, variables=VARIABLES, held_out=split["dev"] + split["test"],
                                  train=split["train"])
    assert screening.report.success and screening.rejected == [] and screening.kept == proposed


def test_an_unknown_placeholder_is_named_with_its_position():
    template = CURRENT.template.replace("{{question}}", "{{questoin}}")
    position = template.index("{{questoin}}")
    report = validate_candidates([candidate(PromptTemplate(template, CURRENT.system), "meta")],
                                 variables=VARIABLES, held_out=[])
    assert not report.success
    bad = failure(report, "no unknown or malformed placeholder")
    assert "unknown placeholder {{questoin}} in the template" in bad["detail"]
    assert f"position {position} (line 4, column 1)" in bad["detail"]
    missing = failure(report, "uses every pipeline variable")
    assert "{{question}}" in missing["detail"] and missing["examples"] == [bad["examples"][0]]


def test_malformed_and_unclosed_placeholders_and_placeholders_in_the_system_message():
    system = "Answer about {{ customer name }} using {{customer."
    (findings,) = inspect_candidates([candidate(PromptTemplate(CURRENT.template, system), "meta")],
                                     variables=VARIABLES, held_out=[])
    malformed, unclosed = system.index("{{ customer name }}"), system.rindex("{{")
    assert (malformed, unclosed) == (13, 39)
    assert findings.bad_placeholders == [
        "malformed placeholder '{{ customer name }}' in the system message at position 13 (line 1, column 14)",
        "unclosed '{{' in the system message at position 39 (line 1, column 40)"]
    (ok,) = inspect_candidates([candidate(PromptTemplate(CURRENT.template, "Customer: {{customer}}"), "meta")],
                               variables=VARIABLES, held_out=[])
    assert ok.ok  # a known variable may sit in the system message


def test_a_held_out_id_or_reference_sentence_fails(split):
    case = next(c for c in split["dev"] if c.spectrum == "customer_profile")
    sentence = case.reference.splitlines()[0]  # "Full name: <name>."
    by_id = candidate(add_instructions(CURRENT, f"Answer like case {case.id} did."), "meta")
    by_reference = candidate(add_instructions(CURRENT, f"For instance: {sentence}"), "meta")
    report = validate_candidates([by_id, by_reference], variables=VARIABLES, held_out=[case])
    assert failure(report, "no held-out case id")["examples"] == [f"#1 {by_id.label}"]
    reference = failure(report, "no held-out reference sentence")
    assert reference["examples"] == [f"#2 {by_reference.label}"] and case.id in reference["detail"]
    # a sentence that many references share says nothing of one case
    shared = candidate(add_instructions(CURRENT, "Guarantor of: none."), "meta")
    assert validate_candidates([shared], variables=VARIABLES, held_out=split["dev"] + split["test"]).success


def test_screening_drops_unchanged_and_repeated_candidates_with_reasons(split):
    grounded = add_instructions(CURRENT, "Use only the provided data.")
    candidates = [candidate(grounded, "grounding"), candidate(CURRENT, "shorten"), candidate(grounded, "meta"),
                  CandidatePrompt(grounded, "meta", "per model", CURRENT.hash, scope="sim-nano")]
    screening = screen_candidates(candidates, variables=VARIABLES, held_out=split["dev"])
    assert screening.kept == [candidates[0], candidates[3]]  # another scope is another candidate
    reasons = {c.strategy: r for c, r in screening.rejected}
    assert reasons["shorten"] == ["is the prompt it was derived from"]
    assert reasons["meta"] == [f"repeats candidate #1 {candidates[0].label}"]
    assert {f["expectation"] for f in screening.report.failures} == {"changes the prompt",
                                                                       "distinct from earlier candidates"}
