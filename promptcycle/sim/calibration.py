"""Calibration of the simulated world: how each model does on the bundled dataset under a prompt.

A quick, self-contained measure that follows the same definitions as the product's scorers (it is
not them): per call, completeness = share of required facts stated; accuracy = share of the stated
required facts that are correct (0 when none is stated); json = the reply is a JSON object alone or
alone in a ```json fence; latency = 1 within the model's recommended target, falling linearly to 0
at twice the target. quality = 100 x (0.4 completeness + 0.4 accuracy + 0.1 json + 0.1 latency).

    python -m promptcycle.sim.calibration            # tables for the default prompt and every lever
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptcycle.prompts import PromptTemplate
from promptcycle.sim.statements import normalize_key, read_statements, values_match
from promptcycle.sim.world import SIM_MODELS, respond

__all__ = ["BUNDLED_DATASET", "Rates", "DEFAULT_PROMPT", "LEVER_PROMPTS", "load_bundled_cases", "measure", "main"]

BUNDLED_DATASET = Path(__file__).resolve().parent.parent / "data" / "customer_insights.jsonl"
_SYSTEM = "You are an analyst at a retail bank. Answer questions about customers accurately."
_TEMPLATE = "Here is the customer record:\n{{customer}}\n\n{{question}}\nReply with a JSON object."
DEFAULT_PROMPT = PromptTemplate(template=_TEMPLATE, system=_SYSTEM)

CHECKLIST = """For each topic, report these fields:
- Customer profile: full_name, age, segment, tenure_years, occupation.
- Credit: credit_score, credit_limit, credit_utilization_pct, delinquencies_12m, debt_to_income_pct.
- Transactions: monthly_spend, largest_transaction, top_merchant_category, transactions_30d, international_share_pct.
- Call center: calls_90d, last_call_reason, avg_handle_time_min, complaint_open, satisfaction_score.
- Relationships: household_members, linked_accounts, employer, guarantor_of, joint_account_holder.
- Geography: city, region, distance_to_branch_km, nearest_branch, relocated_12m.
- Timeline: account_opened, last_login, days_since_last_txn, spend_trend_pct_3m, last_address_change."""
FLAT_CHECKLIST = "Always report: " + ", ".join(
    line.split(": ", 1)[1].rstrip(".") for line in CHECKLIST.splitlines()[1:]) + "."
FORMAT_SPEC = ("Respond with only a JSON object whose keys are the field names and whose values are copied "
               "from the record.")
GROUNDING = "Use only the provided data; if a value is unknown, say \"unknown\"."
EXAMPLES = """Example:
Question: How old is the customer and how long have they been with us?
Answer: {"age": 44, "tenure_years": 9}"""
STEPS = "Work step by step: first find the fields the question needs, then copy their values exactly."
FILLER = " ".join(["Our bank serves families and small firms across the country and values careful, "
                   "courteous and timely service in every interaction with the people we support."] * 24)

LEVER_PROMPTS: dict[str, PromptTemplate] = {
    "default": DEFAULT_PROMPT,
    "checklist": PromptTemplate(_TEMPLATE, f"{_SYSTEM}\n{CHECKLIST}"),
    "flat_checklist": PromptTemplate(_TEMPLATE, f"{_SYSTEM}\n{FLAT_CHECKLIST}"),
    "format_spec": PromptTemplate(_TEMPLATE.replace("Reply with a JSON object.", FORMAT_SPEC), _SYSTEM),
    "examples": PromptTemplate(_TEMPLATE, f"{_SYSTEM}\n{EXAMPLES}"),
    "grounding": PromptTemplate(_TEMPLATE, f"{_SYSTEM} {GROUNDING}"),
    "steps": PromptTemplate(_TEMPLATE, f"{_SYSTEM} {STEPS}"),
    "long": PromptTemplate(_TEMPLATE, f"{_SYSTEM}\n{FILLER}"),
    "optimized": PromptTemplate(_TEMPLATE.replace("Reply with a JSON object.", FORMAT_SPEC),
                                f"{_SYSTEM} {GROUNDING}\n{CHECKLIST}"),
}


@dataclass(frozen=True)
class Rates:
    completeness: float
    accuracy: float
    json_valid: float
    latency: float
    latency_ms: float
    output_tokens: float
    hallucinated: float  # share of replies stating a field the record does not have
    calls: int

    @property
    def quality(self) -> float:
        return 100 * (0.4 * self.completeness + 0.4 * self.accuracy + 0.1 * self.json_valid
                      + 0.1 * self.latency)


def load_bundled_cases() -> list[dict[str, Any]]:
    """The bundled dataset as plain dicts."""
    text = BUNDLED_DATASET.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


_LONE_FENCE = re.compile(r"^```[ \t]*(?:json)?[ \t]*\n(.*?)\s*```$", re.DOTALL | re.IGNORECASE)


def _is_json_object(text: str) -> bool:
    text = text.strip()
    fenced = _LONE_FENCE.match(text)
    try:
        return isinstance(json.loads(fenced.group(1) if fenced else text), dict)
    except ValueError:
        return False


def _latency_score(latency_ms: float, target_ms: float) -> float:
    return min(1.0, max(0.0, (2 * target_ms - latency_ms) / target_ms))


def _record_keys(record: Any, into: set[str]) -> set[str]:
    for key, value in record.items():
        if isinstance(value, dict):
            _record_keys(value, into)
        into.add(normalize_key(key))
    return into


def measure(model: str, prompt: PromptTemplate, cases: list[dict[str, Any]], *, temperature: float = 0.0,
            repeats: int = 1, drifts: tuple = ()) -> Rates:
    """Average rates of one model under one prompt over `cases` (x `repeats` seeds), with the
    simulated `drifts` (promptcycle.sim.drift) active on every call."""
    target = SIM_MODELS[model].latency_target_ms
    sums: dict[str, float] = defaultdict(float)
    n = 0
    for case in cases:
        messages = prompt.render(case["inputs"])
        known = _record_keys(case["inputs"].get("customer", {}), set())
        for r in range(repeats):
            reply = respond(model, messages, temperature=temperature, seed=r, drifts=drifts)
            stated = read_statements(reply.text)
            facts = case["facts"]
            found = [k for k in facts if normalize_key(k) in stated]
            right = [k for k in found if values_match(facts[k], stated[normalize_key(k)])]
            sums["c"] += len(found) / len(facts)
            sums["a"] += len(right) / len(found) if found else 0.0
            sums["j"] += _is_json_object(reply.text)
            sums["l"] += _latency_score(reply.latency_s * 1000, target)
            sums["ms"] += reply.latency_s * 1000
            sums["tok"] += reply.output_tokens
            sums["h"] += any(key not in known for key in stated)
            n += 1
    return Rates(sums["c"] / n, sums["a"] / n, sums["j"] / n, sums["l"] / n, sums["ms"] / n, sums["tok"] / n,
                 sums["h"] / n, n)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print simulated quality per model for each prompt lever.")
    parser.add_argument("--prompts", nargs="*", default=list(LEVER_PROMPTS))
    parser.add_argument("--by-spectrum", action="store_true", help="also print default-prompt quality per spectrum")
    args = parser.parse_args(argv)
    cases = load_bundled_cases()
    print("simulated quality (0.4 completeness + 0.4 accuracy + 0.1 json + 0.1 latency) on the bundled dataset")
    print(f"{'prompt':<15}" + "".join(f"{m:>13}" for m in SIM_MODELS))
    started = time.process_time()
    calls = 0
    for name in args.prompts:
        row = []
        for model in SIM_MODELS:
            rates = measure(model, LEVER_PROMPTS[name], cases)
            calls += rates.calls
            row.append(f"{rates.quality:6.1f} {rates.output_tokens:5.0f}t")
        print(f"{name:<15}" + "".join(f"{cell:>13}" for cell in row))
    print(f"({calls} calls, {1e3 * (time.process_time() - started) / calls:.3f} ms CPU per call incl. measuring)")
    if args.by_spectrum:
        spectrums = list(dict.fromkeys(c["spectrum"] for c in cases))
        for name in ("default", "optimized"):
            print(f"\n{name} prompt, quality by spectrum")
            print(f"{'model':<14}" + "".join(f"{s[:12]:>13}" for s in spectrums))
            for model in SIM_MODELS:
                cells = [measure(model, LEVER_PROMPTS[name], [c for c in cases if c["spectrum"] == s]).quality
                         for s in spectrums]
                print(f"{model:<14}" + "".join(f"{q:13.1f}" for q in cells))


if __name__ == "__main__":
    main()
