"""The scorers: facts read from JSON and prose, value comparison, format, latency, judge, overall."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from promptcycle.catalog import load_config
from promptcycle.datasets.cases import Case
from promptcycle.errors import ConfigError, MalformedResponseError
from promptcycle.providers.base import Completion
from promptcycle.scoring import Sample, Score, build_scorers, overall, parse_answer, scorers, weights_of
from promptcycle.scoring.accuracy import AccuracyOptions, AccuracyScorer
from promptcycle.scoring.completeness import CompletenessScorer
from promptcycle.scoring.facts import normalise_key, read_value, value_matches
from promptcycle.scoring.format import FormatOptions, FormatScorer
from promptcycle.scoring.judge import JudgeOptions, JudgeScorer, build_judge_messages, read_judge_reply
from promptcycle.scoring.latency import LatencyOptions, LatencyScorer

DATASET = Path(__file__).resolve().parents[1] / "promptcycle" / "data" / "customer_insights.jsonl"

FACTS = {"credit_score": 712, "credit_utilization_pct": 23.5, "credit_limit": 12500, "segment": "Premium",
         "complaint_open": False, "account_opened": "2019-05-01"}


def make_sample(output: str, facts: dict | None = None, *, latency_ms: float = 100.0,
                target_ms: float | None = 1000.0, reference: str = "", question: str = "Summarise.") -> Sample:
    case = Case(id="t-1", spectrum="credit_analysis", inputs={"customer": {}, "question": question},
                facts=FACTS if facts is None else facts, reference=reference)
    return Sample(case=case, output=output, model="m", latency_ms=latency_ms, latency_target_ms=target_ms)


def complete_and_accurate(output: str, facts: dict | None = None) -> tuple[Score, Score]:
    sample = make_sample(output, facts)
    return CompletenessScorer().score(sample), AccuracyScorer().score(sample)


ALL_RIGHT_JSON = json.dumps({"credit_score": 712, "credit_utilization_pct": 23.5, "credit_limit": 12500,
                             "segment": "Premium", "complaint_open": False, "account_opened": "2019-05-01"})

# (id, output, completeness, accuracy)
FACT_TABLE = [
    ("json", ALL_RIGHT_JSON, 1.0, 1.0),
    ("fenced json", f"```json\n{ALL_RIGHT_JSON}\n```", 1.0, 1.0),
    ("json in chatter", f"Sure! Here it is:\n```json\n{ALL_RIGHT_JSON}\n```\nHope this helps.", 1.0, 1.0),
    ("json inline in chatter", f"Sure! {ALL_RIGHT_JSON}\nLet me know.", 1.0, 1.0),
    ("nested json", json.dumps({"customer": {"credit": {"credit_score": 712, "credit_utilization_pct": 23.5,
                                                        "credit_limit": 12500},
                                             "profile": {"segment": "premium"}},
                                "call_center": {"complaint_open": "no"},
                                "temporal": [{"account_opened": "2019-05-01T09:30:00Z"}]}), 1.0, 1.0),
    ("parent and leaf keys", json.dumps({"credit": {"score": 712, "limit": 12500}}), 2 / 6, 1.0),
    ("value objects", json.dumps({"credit_score": {"value": 712, "band": "good"}}), 1 / 6, 1.0),
    ("title-case and camelCase keys", json.dumps({"Credit Score": 712, "creditUtilizationPct": 23.5,
                                                  "Credit Limit": "$12,500.00", "SEGMENT": "Premium"}), 4 / 6, 1.0),
    ("unit left out of key", json.dumps({"credit_utilization": "23.5%", "credit_utilization_percent": 23.5}),
     1 / 6, 1.0),
    ("formatted json values", json.dumps({"credit_score": "712", "credit_utilization_pct": "23.5 %",
                                          "credit_limit": "$12,500", "complaint_open": "No"}), 4 / 6, 1.0),
    ("prose labels", "Here is what the record shows:\n- Credit score: 712\n- Credit utilization pct: 23.5%\n"
     "- **Credit limit**: $12,500.00\n- Segment: Premium\n- Complaint open: no\n- Account opened: 2019-05-01",
     1.0, 1.0),
    ("prose sentences", "The credit score is 712. The credit utilization pct is 23.5%. The credit limit is "
     "$12,500. The segment is Premium. The complaint open is no. The account opened is 2019-05-01.", 1.0, 1.0),
    ("natural sentences", "The customer's credit score is 712, with a credit limit of $12,500.00 and a credit "
     "utilization of 23.5 percent; the account was opened on 2019-05-01.", 3 / 6, 1.0),
    ("markdown table", "| Field | Value |\n|---|---|\n| Credit score | 712 |\n| Credit utilization (%) | 23.5 |\n"
     "| Segment | premium |", 3 / 6, 1.0),
    ("wrong values", json.dumps({"credit_score": 650, "credit_utilization_pct": 23.5, "credit_limit": 15000,
                                 "segment": "Gold", "complaint_open": True, "account_opened": "2019-06-01"}),
     1.0, 1 / 6),
    ("contradiction in json", json.dumps({"credit_score": 712, "summary": "The credit score is 680."}), 1 / 6, 0.0),
    ("contradiction in prose", "Credit score: 712. Segment: Premium.\nLater: the credit score is 730.", 2 / 6, 0.5),
    ("repeated, consistent", "Credit score: 712.\nTo repeat, the credit score is 712.", 1 / 6, 1.0),
    ("missing facts", "Credit score: 712", 1 / 6, 1.0),
    ("nothing stated", "I could not find that information in the customer record.", 0.0, 0.0),
    ("empty answer", "", 0.0, 0.0),
    ("placeholders are not statements", "Credit score: N/A\nSegment: unknown\nCredit limit: 12,500", 1 / 6, 1.0),
    ("sentence with no value is not a statement", "The credit score is an important factor. "
     "Credit limit: 12,500", 1 / 6, 1.0),
    ("labelled line with unreadable value is wrong", "Credit score: excellent\nCredit limit: 12,500", 2 / 6, 0.5),
    ("a longer label is not this field", "The average credit score is 650. Maximum credit limit: 20,000.",
     0.0, 0.0),
    ("wrong segment variant", "Segment: Premium Plus", 1 / 6, 0.0),
    ("segment followed by clause", "Segment: Premium, since 2021", 1 / 6, 1.0),
]


@pytest.mark.parametrize("output,completeness,accuracy", [row[1:] for row in FACT_TABLE],
                         ids=[row[0] for row in FACT_TABLE])
def test_completeness_and_accuracy(output, completeness, accuracy):
    c, a = complete_and_accurate(output)
    assert c.value == pytest.approx(completeness), c.explanation
    assert a.value == pytest.approx(accuracy), a.explanation


def test_explanations_name_missed_wrong_and_contradicted_facts():
    output = json.dumps({"credit_score": 712, "credit_limit": 15000, "segment": "Gold",
                         "note": "The credit score is 680."})
    c, a = complete_and_accurate(output)
    assert c.explanation == {"stated": 3, "required": 6,
                             "missed": ["credit_utilization_pct", "complaint_open", "account_opened"]}
    assert a.explanation["correct"] == 0 and a.explanation["stated"] == 3
    wrong = a.explanation["wrong"]
    assert wrong["credit_limit"] == {"stated": "15000", "expected": 12500}
    assert wrong["segment"] == {"stated": "Gold", "expected": "Premium"}
    assert wrong["credit_score"] == {"stated": ["712", "680"], "expected": 712, "contradicted": True}


def test_the_same_wrong_value_written_twice_is_not_a_contradiction():
    _, a = complete_and_accurate("Credit limit: $15,000.\nThe credit limit is 15000.")
    assert a.value == 0.0
    assert a.explanation["wrong"]["credit_limit"] == {"stated": ["$15,000", "15000"], "expected": 12500}


def test_explanations_are_json():
    sample = make_sample('Sure! {"credit_score": 650, "note": "The credit score is 712."}')
    for scorer in build_scorers({"completeness": {}, "accuracy": {}, "format": {}, "latency": {}}).values():
        json.dumps(scorer.score(sample).explanation)


def test_accuracy_explains_a_score_of_zero_when_nothing_is_stated():
    _, a = complete_and_accurate("No idea.")
    assert a.value == 0.0
    assert "none of the 6 required facts" in a.explanation["reason"]


def test_case_without_facts_scores_full_marks():
    c, a = complete_and_accurate("anything", facts={})
    assert c.value == a.value == 1.0


@pytest.mark.parametrize("output,facts,completeness,accuracy", [
    ('{"Transactions 30D": 9, "Delinquencies 12M": 0}', {"transactions_30d": 9, "delinquencies_12m": 0}, 1.0, 1.0),
    ("Guarantor of: none\nFull name: none", {"guarantor_of": "none", "full_name": "Bram Sandoval"}, 1.0, 0.5),
    ("Average handle time (minutes): 6.5\nDistance to branch: 4.2 km", {"avg_handle_time_min": 6.5,
                                                                         "distance_to_branch_km": 4.2}, 1.0, 1.0),
    ('{"avgHandleTimeMinutes": 6.5, "tenure_yrs": 7}', {"avg_handle_time_min": 6.5, "tenure_years": 7}, 1.0, 1.0),
    ('{"tenure_months": 84}', {"tenure_years": 7}, 0.0, 0.0),  # another unit is another field
])
def test_field_names_with_digits_units_and_none(output, facts, completeness, accuracy):
    c, a = complete_and_accurate(output, facts)
    assert (c.value, a.value) == (pytest.approx(completeness), pytest.approx(accuracy)), (c, a)


def test_account_balance_is_not_read_as_balance_when_both_are_facts():
    facts = {"balance": 5000, "account_balance": 300}
    c, a = complete_and_accurate("Account balance: 300. The balance is 5,000.", facts)
    assert (c.value, a.value) == (1.0, 1.0), a.explanation


# (expected, stated text, tolerance, match)
TOLERANCE_TABLE = [
    (100, "101", 0.01, True),
    (100, "99", 0.01, True),
    (100, "101.01", 0.01, False),
    (100, "98.99", 0.01, False),
    (712, "712.0", 0.0, True),
    (712, "713", 0.0, False),
    (23.5, "23.735%", 0.01, True),
    (23.5, "23.74%", 0.01, False),
    (0, "0", 0.01, True),
    (0, "0.001", 0.01, False),
    (-250.5, "-$250.50", 0.01, True),
    (-250.5, "$250.50", 0.01, False),
    (12500, "$12,500.00", 0.0, True),
    (12500, "12 500", 0.0, False),  # a space is not a thousands separator here
    (1200, "1.2k", 0.01, False),  # suffixes are not read
]


@pytest.mark.parametrize("expected,stated,tolerance,match", TOLERANCE_TABLE)
def test_numeric_tolerance_edges(expected, stated, tolerance, match):
    value = read_value(stated, "number")
    assert value_matches(value, expected, numeric_tolerance=tolerance) is match


@pytest.mark.parametrize("raw,kind,expected", [
    ("yes", "bool", True), ("No.", "bool", False), ("TRUE", "bool", True), (1, "bool", True), (2, "bool", None),
    ("maybe", "bool", None), ("2024-03-15T10:22:00Z", "date", "2024-03-15"), ("on 2024-03-15.", "date", "2024-03-15"),
    ("15/03/2024", "date", None), ("  Premium   Plus. ", "text", "Premium Plus"), ("**Gold**", "text", "Gold"),
    (True, "text", "true"), ("$1,234.50", "number", 1234.5), ("23.5%", "number", 23.5), (True, "number", None),
    (["Gold"], "text", "Gold"), (["a", "b"], "text", "a, b"),
])
def test_read_value(raw, kind, expected):
    assert read_value(raw, kind) == expected


@pytest.mark.parametrize("stated,expected,case_sensitive,match", [
    ("premium", "Premium", False, True),
    ("premium", "Premium", True, False),
    ("Premium", "Premium", True, True),
    ("credit card", "credit_card", False, True),
    ("Premium Plus", "Premium", False, False),
    ("Premium (since 2021)", "Premium", False, True),
    ("new  york", "New York", False, True),
])
def test_text_matching(stated, expected, case_sensitive, match):
    assert value_matches(stated, expected, case_sensitive=case_sensitive) is match


def test_accuracy_options_reach_the_comparison():
    facts = {"credit_score": 712, "segment": "Premium"}
    sample = make_sample("Credit score: 718\nSegment: premium", facts)
    assert AccuracyScorer().score(sample).value == 1.0  # 718 is within 1% of 712
    strict = AccuracyScorer(AccuracyOptions(numeric_tolerance=0.0, case_sensitive=True)).score(sample)
    assert strict.value == 0.0
    assert set(strict.explanation["wrong"]) == {"credit_score", "segment"}


@pytest.mark.parametrize("key,normal", [
    ("Credit Score", "credit_score"), ("creditScore", "credit_score"), ("credit-score", "credit_score"),
    ("Credit utilization %", "credit_utilization_pct"), ("average_balance", "avg_balance"),
    ("  __x__  ", "x"),
])
def test_normalise_key(key, normal):
    assert normalise_key(key) == normal


def test_parse_is_shared_between_scorers():
    text = "Credit score: 712 — unique text for this test"
    assert parse_answer(text) is parse_answer(text)


# --- format -----------------------------------------------------------------------------------
SCHEMA = {"type": "object", "required": ["credit_score"],
          "properties": {"credit_score": {"type": "integer", "minimum": 300, "maximum": 850}}}

# (id, options, output, score, reason fragment)
FORMAT_TABLE = [
    ("bare object", {}, '{"a": 1}', 1.0, None),
    ("fenced object", {}, '\n```json\n{"a": 1}\n```\n', 1.0, None),
    ("fence without language", {}, '```\n{"a": 1}\n```', 1.0, None),
    ("chatter before", {}, 'Sure! {"a": 1}', 0.0, "other text around it: 'Sure!'"),
    ("chatter after fence", {}, '```json\n{"a": 1}\n```\nHope this helps.', 0.0, "Hope this helps."),
    ("prose", {}, "Credit score: 712", 0.0, "not JSON"),
    ("broken json", {}, '{"a": 1,', 0.0, "not valid JSON"),
    ("broken fenced json", {}, '```json\n{"a": }\n```', 0.0, "does not hold valid JSON"),
    ("array", {}, "[1, 2]", 0.0, "array, not an object"),
    ("required keys present", {"require_keys": ["Credit Score", "segment"]},
     '{"credit_score": 1, "profile": {"segment": "x"}}', 1.0, None),
    ("required keys partly present", {"require_keys": ["credit_score", "segment"]}, '{"credit_score": 1}', 0.5,
     None),
    ("regex match", {"kind": "regex", "pattern": r"score:\s*\d+"}, "Credit score: 712", 1.0, None),
    ("regex anchored miss", {"kind": "regex", "pattern": r"^\d+$"}, "Score: 712", 0.0, "does not match"),
    ("schema valid", {"kind": "json_schema", "schema": SCHEMA}, '```json\n{"credit_score": 712}\n```', 1.0, None),
    ("schema invalid", {"kind": "json_schema", "schema": SCHEMA}, '{"credit_score": 900}', 0.0, None),
    ("schema on prose", {"kind": "json_schema", "schema": SCHEMA}, "credit score 712", 0.0, "not JSON"),
]


@pytest.mark.parametrize("options,output,expected,reason", [row[1:] for row in FORMAT_TABLE],
                         ids=[row[0] for row in FORMAT_TABLE])
def test_format(options, output, expected, reason):
    scorer = FormatScorer(FormatOptions.model_validate(options))
    result = scorer.score(make_sample(output))
    assert result.value == pytest.approx(expected), result.explanation
    if reason:
        assert reason in result.explanation["reason"]


def test_format_explains_schema_errors_and_missing_keys():
    schema = FormatScorer(FormatOptions.model_validate({"kind": "json_schema", "schema": SCHEMA}))
    assert schema.score(make_sample('{"credit_score": 900}')).explanation["errors"] == [
        "credit_score: 900 is greater than the maximum of 850"]
    keys = FormatScorer(FormatOptions(require_keys=["credit_score", "segment"]))
    assert keys.score(make_sample('{"credit_score": 1}')).explanation["missing_keys"] == ["segment"]


@pytest.mark.parametrize("options,message", [
    ({"kind": "regex"}, "needs a pattern"),
    ({"kind": "regex", "pattern": "("}, "not a valid regular expression"),
    ({"kind": "json_schema"}, "needs a schema"),
    ({"kind": "json_schema", "schema": {"type": "nope"}}, "not a valid JSON Schema"),
    ({"kind": "json", "pattern": "x"}, "applies to kind 'regex'"),
    ({"kind": "regex", "pattern": "x", "require_keys": ["a"]}, "not 'regex'"),
    ({"kind": "xml"}, "'json', 'regex' or 'json_schema'"),
    ({"kinds": "json"}, "Extra inputs"),
])
def test_format_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        FormatOptions.model_validate(options)


# --- latency ----------------------------------------------------------------------------------
@pytest.mark.parametrize("latency,target,multiple,expected", [
    (0, 1000, 2.0, 1.0),
    (1000, 1000, 2.0, 1.0),
    (1500, 1000, 2.0, 0.5),
    (1750, 1000, 2.0, 0.25),
    (2000, 1000, 2.0, 0.0),
    (5000, 1000, 2.0, 0.0),
    (2000, 1000, 3.0, 0.5),
    (-5, 1000, 2.0, 1.0),
    (3000, None, 2.0, 0.5),  # no model target: the default 2000 ms
])
def test_latency(latency, target, multiple, expected):
    scorer = LatencyScorer(LatencyOptions(zero_at_multiple=multiple))
    result = scorer.score(make_sample("", latency_ms=latency, target_ms=target))
    assert result.value == pytest.approx(expected)
    assert result.explanation["target_ms"] == (target or 2000.0)
    assert result.explanation["latency_ms"] == max(0, latency)


def test_latency_multiple_must_exceed_one():
    with pytest.raises(ValueError, match="greater than 1"):
        LatencyOptions(zero_at_multiple=1.0)


# --- overall and the registry -----------------------------------------------------------------
@pytest.mark.parametrize("scores,weights,expected", [
    ({"a": 1.0, "b": 0.0}, {"a": 1.0, "b": 1.0}, 0.5),
    ({"a": 1.0, "b": 0.0}, {"a": 3.0, "b": 1.0}, 0.75),
    ({"a": 1.0}, {"a": 0.4, "b": 0.6}, 1.0),  # b produced no score: the mean is over a only
    ({"a": 0.5, "b": 1.0}, {"a": 0.4}, 1.2 / 1.4),  # b has no weight given: 1.0
    ({"a": 0.2, "b": 0.9}, {"a": 0.0, "b": 2.0}, 0.9),
])
def test_overall(scores, weights, expected):
    assert overall(scores, weights) == pytest.approx(expected)


@pytest.mark.parametrize("scores,weights,message", [
    ({}, {"a": 1.0}, "no scores"),
    ({"a": 1.0}, {"a": 0.0}, "weight 0"),
    ({"a": 1.0}, {"a": -1.0}, ">= 0"),
])
def test_overall_refuses_nothing_to_weigh(scores, weights, message):
    with pytest.raises(ValueError, match=message):
        overall(scores, weights)


def test_built_ins_are_registered():
    assert {"completeness", "accuracy", "format", "latency", "judge"} <= set(scorers.names())


def test_build_scorers_and_weights():
    built = build_scorers({"completeness": {"weight": 0.4}, "accuracy": {"weight": 0.4, "numeric_tolerance": 0.05},
                           "format": None, "latency": {"weight": 0.1, "zero_at_multiple": 3}})
    assert isinstance(built["accuracy"], AccuracyScorer)
    assert built["accuracy"].options.numeric_tolerance == 0.05
    assert weights_of(built) == {"completeness": 0.4, "accuracy": 0.4, "format": 1.0, "latency": 0.1}
    sample = make_sample(ALL_RIGHT_JSON, latency_ms=1500, target_ms=1000)
    values = {name: s.score(sample).value for name, s in built.items()}
    assert values == {"completeness": 1.0, "accuracy": 1.0, "format": 1.0, "latency": 0.75}
    assert overall(values, weights_of(built)) == pytest.approx((0.4 + 0.4 + 1.0 + 0.1 * 0.75) / 1.9)


@pytest.mark.parametrize("options,path,message", [
    ({"completness": {}}, "scorers.completness", "known: accuracy, completeness"),
    ({"accuracy": {"numeric_tolerance": -1}}, "scorers.accuracy.numeric_tolerance", "greater than or equal"),
    ({"format": {"kind": "regex"}}, "scorers.format", "needs a pattern"),
    ({"judge": {}}, "scorers.judge.model", "Field required"),
])
def test_build_scorers_errors_name_the_scorer(options, path, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_scorers(options)
    assert info.value.path == path


def test_config_loading_checks_scorer_options(tmp_path):
    text = Path(__file__).resolve().parents[1].joinpath("pipelines.yaml").read_text()
    bad = text.replace("format: {weight: 0.1, kind: json}", "format: {weight: 0.1, kind: regex}")
    assert bad != text
    path = tmp_path / "pipelines.yaml"
    path.write_text(bad)
    with pytest.raises(ConfigError, match="needs a pattern") as info:
        load_config(path)
    assert info.value.path == "pipelines.customer-insights.scorers.format"


# --- judge ------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply,score,reason", [
    ('{"score": 8, "reason": "Close."}', 8.0, "Close."),
    ('```json\n{"score": 7.5, "reason": "ok"}\n```', 7.5, "ok"),
    ('Here is my grade: {"score": "3", "reason": "Mostly wrong."} Thanks.', 3.0, "Mostly wrong."),
    ('{"score": 0}', 0.0, ""),
])
def test_read_judge_reply(reply, score, reason):
    assert read_judge_reply(reply) == (score, reason)


@pytest.mark.parametrize("reply", ["I'd give it an 8.", '{"reason": "no score"}', '{"score": 11}',
                                   '{"score": "high"}', '{"score": true}', ""])
def test_read_judge_reply_without_a_score_is_malformed(reply):
    with pytest.raises(MalformedResponseError):
        read_judge_reply(reply)


def test_judge_messages_follow_the_protocol():
    system, user = build_judge_messages("Q?", "Ref.", "Cand.")
    assert system["role"] == "system" and system["content"].startswith("You are an impartial evaluation judge.")
    assert user["content"] == ('Question:\nQ?\n\nReference answer:\nRef.\n\nCandidate answer:\nCand.\n\n'
                               'Reply with JSON: {"score": <0-10>, "reason": "<one sentence>"}')


def test_judge_needs_a_completion_function_and_is_async():
    with pytest.raises(TypeError, match="completion function"):
        JudgeScorer(JudgeOptions(model="judge"))

    async def complete(model, messages):
        return Completion(text='{"score": 6, "reason": "r"}', model=model, input_tokens=1, output_tokens=1,
                          latency_ms=1.0, cost_usd=0.0)

    judge = JudgeScorer(JudgeOptions(model="judge"), complete=complete)
    with pytest.raises(TypeError, match="ascore"):
        judge.score(make_sample("x"))
    result = asyncio.run(judge.ascore(make_sample("x")))
    assert result.value == pytest.approx(0.6)
    assert result.explanation == {"judge": "judge", "score": 6.0, "reason": "r"}


def _sim_complete():
    """The simulated world's `respond`, as the judge's completion function."""
    world = pytest.importorskip("promptcycle.sim.world")

    async def complete(model: str, messages: list[dict[str, str]]) -> Completion:
        reply = world.respond(model, messages)
        return Completion(text=reply.text, model=model, input_tokens=reply.input_tokens,
                          output_tokens=reply.output_tokens, latency_ms=reply.latency_s * 1000, cost_usd=0.0,
                          simulated=True)

    return complete


def _dataset_cases() -> list[Case]:
    if not DATASET.exists():
        pytest.skip("the bundled dataset is not there yet")
    return [Case.model_validate_json(line) for line in DATASET.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def test_judge_in_the_simulated_world_prefers_the_reference_to_an_empty_answer():
    cases = _dataset_cases()[:: 25]
    judge = JudgeScorer(JudgeOptions(model="sim-large"), complete=_sim_complete())

    async def grade() -> list[tuple[Score, Score]]:
        pairs = []
        for case in cases:
            good = Sample(case=case, output=case.reference, model="m", latency_ms=1.0)
            empty = Sample(case=case, output="", model="m", latency_ms=1.0)
            pairs.append((await judge.ascore(good), await judge.ascore(empty)))
        return pairs

    for good, empty in asyncio.run(grade()):
        assert good.value > empty.value, (good.explanation, empty.explanation)
        assert 0.0 <= empty.value <= 1.0 and good.explanation["judge"] == "sim-large"


# --- the bundled dataset ----------------------------------------------------------------------
def test_every_reference_answer_states_its_facts_correctly():
    cases = _dataset_cases()
    completeness, accuracy = CompletenessScorer(), AccuracyScorer()
    failures = []
    for case in cases:
        sample = Sample(case=case, output=case.reference, model="reference", latency_ms=0.0)
        c, a = completeness.score(sample), accuracy.score(sample)
        if c.value != 1.0 or a.value != 1.0:
            failures.append((case.id, c.explanation, a.explanation))
    assert not failures, failures[:5]
    assert len(cases) >= 7 * 20
