"""Generate the bundled customer-insights dataset: synthetic bank customers and questions about them.

Every record is invented from small built-in lists (no real people). The output is deterministic:
the same seed and size give a byte-identical JSONL file.

    python -m promptcycle.datasets.generate --out promptcycle/data/customer_insights.jsonl --per-spectrum 30
"""

from __future__ import annotations

import argparse
import json
import random
from datetime import date, timedelta
from pathlib import Path
from typing import Any

__all__ = [
    "SPECTRUM_DOMAINS",
    "QUESTION_TEMPLATES",
    "MONEY_FIELDS",
    "AS_OF",
    "generate_cases",
    "generate_record",
    "write_cases",
    "format_fact",
    "write_reference",
    "main",
]

AS_OF = date(2026, 11, 1)  # the "today" every record's dates are relative to

# spectrum -> the record section (domain) its questions are about
SPECTRUM_DOMAINS: dict[str, str] = {
    "customer_profile": "profile",
    "credit_analysis": "credit",
    "transaction_history": "transactions",
    "call_center_operations": "call_center",
    "entity_relationship": "relationships",
    "geographic_analysis": "geography",
    "temporal_analysis": "temporal",
}

MONEY_FIELDS = frozenset({"credit_limit", "monthly_spend", "largest_transaction"})

# Per spectrum: (question, required fields). Questions speak naturally and never name a field;
# "{first_name}" is filled from the record.
QUESTION_TEMPLATES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "customer_profile": [
        ("Who is this customer and how long have they banked with us?",
         ("full_name", "age", "segment", "tenure_years")),
        ("Give me a quick profile of {first_name}: what they do for a living, how old they are and which "
         "client tier they belong to.", ("full_name", "occupation", "age", "segment")),
        ("Summarize this customer's background for a relationship manager meeting.",
         ("full_name", "age", "segment", "tenure_years", "occupation")),
        ("How loyal has {first_name} been to the bank, and what kind of work do they do?",
         ("tenure_years", "occupation", "segment", "full_name")),
    ],
    "credit_analysis": [
        ("How creditworthy is this customer, and have they missed any payments recently?",
         ("credit_score", "delinquencies_12m", "debt_to_income_pct", "credit_utilization_pct")),
        ("How much of the borrowing capacity we extend to {first_name} is in use, and how large is it?",
         ("credit_limit", "credit_utilization_pct", "credit_score", "debt_to_income_pct")),
        ("Should we consider this customer for a higher card line? Give the numbers that matter.",
         ("credit_score", "credit_limit", "credit_utilization_pct", "delinquencies_12m", "debt_to_income_pct")),
        ("Summarize {first_name}'s repayment risk and overall debt burden.",
         ("delinquencies_12m", "debt_to_income_pct", "credit_utilization_pct", "credit_score")),
    ],
    "transaction_history": [
        ("How actively has this customer been using their card lately, and where do they shop most?",
         ("transactions_30d", "monthly_spend", "top_merchant_category", "largest_transaction")),
        ("What does {first_name}'s spending look like, including any unusually big purchases?",
         ("monthly_spend", "largest_transaction", "top_merchant_category", "transactions_30d")),
        ("Is there anything in this customer's purchases that suggests travel or foreign activity?",
         ("international_share_pct", "largest_transaction", "top_merchant_category", "monthly_spend")),
        ("Describe the size and frequency of {first_name}'s card payments.",
         ("monthly_spend", "transactions_30d", "largest_transaction", "international_share_pct",
          "top_merchant_category")),
    ],
    "call_center_operations": [
        ("How often has this customer contacted support recently, and why did they last get in touch?",
         ("calls_90d", "last_call_reason", "avg_handle_time_min", "complaint_open")),
        ("Is {first_name} unhappy with our service? Back it up with their support history.",
         ("satisfaction_score", "complaint_open", "calls_90d", "last_call_reason")),
        ("How costly is this customer to serve through the contact center?",
         ("calls_90d", "avg_handle_time_min", "satisfaction_score", "complaint_open", "last_call_reason")),
    ],
    "entity_relationship": [
        ("Who else is connected to this customer's finances?",
         ("joint_account_holder", "guarantor_of", "household_members", "linked_accounts")),
        ("Map {first_name}'s household and their ties to other accounts.",
         ("household_members", "linked_accounts", "joint_account_holder", "guarantor_of", "employer")),
        ("Where does this customer work, and do they vouch for anyone else's borrowing?",
         ("employer", "guarantor_of", "linked_accounts", "joint_account_holder")),
        ("Which people and organisations is {first_name} financially tied to?",
         ("employer", "joint_account_holder", "guarantor_of", "household_members")),
    ],
    "geographic_analysis": [
        ("Where does this customer live, and how convenient is it for them to visit us in person?",
         ("city", "region", "nearest_branch", "distance_to_branch_km")),
        ("Has {first_name} moved recently, and which of our locations serves them?",
         ("relocated_12m", "nearest_branch", "city", "distance_to_branch_km")),
        ("Which part of the country is this customer in, and how far are they from our closest office?",
         ("region", "city", "distance_to_branch_km", "nearest_branch", "relocated_12m")),
    ],
    "temporal_analysis": [
        ("Is this customer becoming less engaged over time? Look at recent activity and trends.",
         ("last_login", "days_since_last_txn", "spend_trend_pct_3m", "account_opened")),
        ("Give me the timeline of {first_name}'s relationship with us.",
         ("account_opened", "last_address_change", "last_login", "days_since_last_txn")),
        ("When was this customer last active, and is their spending growing or shrinking?",
         ("last_login", "days_since_last_txn", "spend_trend_pct_3m", "account_opened", "last_address_change")),
    ],
}

_FIRST = ["Maria", "Jonah", "Aiko", "Tomas", "Leila", "Owen", "Priya", "Felix", "Nadia", "Caleb", "Ines",
          "Rafael", "Greta", "Samir", "Hana", "Lucas", "Mireille", "Dario", "Elif", "Quentin", "Zora", "Bram"]
_LAST = ["Lopez", "Okafor", "Tanaka", "Novak", "Haddad", "Brennan", "Raman", "Vogel", "Petrov", "Whitlock",
         "Marchetti", "Sandoval", "Lindqvist", "Osei", "Kowalczyk", "Duarte", "Fairbanks", "Nakamura"]
_SEGMENTS = ["mass market", "mass affluent", "affluent", "private banking", "small business"]
_OCCUPATIONS = ["nurse", "software developer", "teacher", "electrician", "accountant", "chef", "pharmacist",
                "graphic designer", "logistics planner", "civil engineer", "retail manager", "dentist",
                "bus driver", "architect", "paralegal", "farmer", "journalist", "physiotherapist"]
_MERCHANTS = ["groceries", "travel", "dining", "electronics", "fuel", "home improvement", "clothing",
              "healthcare", "entertainment", "utilities"]
_CALL_REASONS = ["card replacement", "disputed charge", "fee inquiry", "password reset", "loan question",
                 "fraud alert", "address update", "payment arrangement", "statement request"]
_EMPLOYERS = ["Northwind Logistics", "Bluefield Health", "Harbor & Pine Foods", "Quillstone Software",
              "Redcliff Builders", "Summit Valley Schools", "Larkspur Retail Group", "Ironbridge Energy",
              "self-employed"]
# (city, region, branch names); all invented
_PLACES = [("Ashford", "North", ["Ashford Central", "Ashford Mill Road"]),
           ("Brookvale", "North", ["Brookvale Market Square"]),
           ("Cedar Falls", "West", ["Cedar Falls Main Street", "Cedar Falls Riverside"]),
           ("Dunmore", "West", ["Dunmore High Street"]),
           ("Eastwick", "South East", ["Eastwick Harbour", "Eastwick Station"]),
           ("Fernhill", "South East", ["Fernhill Green"]),
           ("Glenrock", "South West", ["Glenrock Plaza"]),
           ("Holloway Bay", "South West", ["Holloway Bay Quay", "Holloway Bay North"]),
           ("Ironvale", "Midlands", ["Ironvale Central"]),
           ("Kingsmere", "Midlands", ["Kingsmere Park", "Kingsmere Old Town"])]


def _name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def generate_record(rng: random.Random) -> dict[str, Any]:
    """One synthetic customer, nested by domain; values loosely correlated to look plausible."""
    full_name = _name(rng)
    age = rng.randint(21, 78)
    tenure_years = rng.randint(1, min(age - 18, 35))
    segment = rng.choices(_SEGMENTS, weights=[5, 4, 2, 1, 2])[0]

    credit_score = int(min(850, max(420, rng.gauss(690, 70))))
    risk = (850 - credit_score) / 430  # 0 best .. 1 worst
    delinquencies_12m = rng.choices([0, 1, 2, 3, 4], weights=[10 * (1 - risk) + 1, 3 * risk + 0.5,
                                                              2 * risk, risk, risk / 2])[0]
    credit_limit = int(500 * round(rng.uniform(2, 60) * (1.2 - risk)))
    credit_limit = max(credit_limit, 1000)
    utilization = round(min(98.0, max(0.5, rng.gauss(25 + 45 * risk, 12))), 1)
    dti = round(min(65.0, max(4.0, rng.gauss(22 + 25 * risk, 8))), 1)

    monthly_spend = round(rng.uniform(180, 7800), 2)
    largest = round(monthly_spend * rng.uniform(0.12, 0.85), 2)
    txns_30d = rng.randint(4, 140)
    intl_share = round(rng.choice([0.0, rng.uniform(0.5, 8), rng.uniform(8, 45)]), 1)

    calls_90d = rng.choices(range(0, 11), weights=[6, 6, 5, 4, 3, 2, 2, 1, 1, 1, 1])[0]
    complaint_open = rng.random() < 0.08 + 0.05 * calls_90d
    satisfaction = max(1, min(5, round(rng.gauss(4.2 - 0.25 * calls_90d - (1.2 if complaint_open else 0), 0.8))))

    household = rng.randint(1, 6)
    joint = _name(rng) if household > 1 and rng.random() < 0.6 else "none"
    guarantor = _name(rng) if rng.random() < 0.3 else "none"

    city, region, branches = rng.choice(_PLACES)
    relocated = rng.random() < 0.18

    opened = AS_OF - timedelta(days=365 * tenure_years + rng.randint(0, 364))
    last_login = AS_OF - timedelta(days=rng.choice([rng.randint(0, 6), rng.randint(7, 40), rng.randint(41, 150)]))
    address_change = (AS_OF - timedelta(days=rng.randint(20, 360)) if relocated
                      else AS_OF - timedelta(days=rng.randint(400, 5000)))

    return {
        "customer_id": f"CUST-{rng.randint(100000, 999999)}",
        "profile": {"full_name": full_name, "age": age, "segment": segment, "tenure_years": tenure_years,
                    "occupation": rng.choice(_OCCUPATIONS)},
        "credit": {"credit_score": credit_score, "credit_limit": credit_limit,
                   "credit_utilization_pct": utilization, "delinquencies_12m": delinquencies_12m,
                   "debt_to_income_pct": dti},
        "transactions": {"monthly_spend": monthly_spend, "largest_transaction": largest,
                         "top_merchant_category": rng.choice(_MERCHANTS), "transactions_30d": txns_30d,
                         "international_share_pct": intl_share},
        "call_center": {"calls_90d": calls_90d, "last_call_reason": rng.choice(_CALL_REASONS),
                        "avg_handle_time_min": round(rng.uniform(2.5, 24.0), 1), "complaint_open": complaint_open,
                        "satisfaction_score": satisfaction},
        "relationships": {"household_members": household, "linked_accounts": rng.randint(0, 7),
                          "employer": rng.choice(_EMPLOYERS), "guarantor_of": guarantor,
                          "joint_account_holder": joint},
        "geography": {"city": city, "region": region, "distance_to_branch_km": round(rng.uniform(0.3, 85.0), 1),
                      "nearest_branch": rng.choice(branches), "relocated_12m": relocated},
        "temporal": {"account_opened": opened.isoformat(), "last_login": last_login.isoformat(),
                     "days_since_last_txn": rng.choice([rng.randint(0, 5), rng.randint(6, 75)]),
                     "spend_trend_pct_3m": round(rng.uniform(-45.0, 40.0), 1),
                     "last_address_change": address_change.isoformat()},
    }


def format_fact(field: str, value: Any) -> str:
    """A value as the reference answer writes it: $ for money, % for percentages, yes/no for booleans."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if field in MONEY_FIELDS:
        return f"${value:,.2f}" if isinstance(value, float) else f"${value:,}"
    if field.endswith("_pct") or "_pct_" in field:
        return f"{value}%"
    return str(value)


def write_reference(facts: dict[str, Any]) -> str:
    """The reference answer: one "Label: value." sentence per fact, label = field name with spaces."""
    return "\n".join(f"{field.replace('_', ' ').capitalize()}: {format_fact(field, value)}."
                     for field, value in facts.items())


def generate_cases(per_spectrum: int = 30, seed: int = 20261121) -> list[dict]:
    """`per_spectrum` cases for each of the 7 spectrums, as dicts in the bundled JSONL format."""
    rng = random.Random(seed)
    cases = []
    for spectrum, domain in SPECTRUM_DOMAINS.items():
        templates = QUESTION_TEMPLATES[spectrum]
        for i in range(per_spectrum):
            record = generate_record(rng)
            question, fields = templates[i % len(templates)]
            template = f"{spectrum}/q{i % len(templates) + 1}"
            first_name = record["profile"]["full_name"].split()[0]
            facts = {f: record[domain][f] for f in fields}
            cases.append({
                "id": f"{spectrum}-{i + 1:03d}",
                "spectrum": spectrum,
                "inputs": {"customer": record, "question": question.format(first_name=first_name)},
                "facts": facts,
                "reference": write_reference(facts),
                "template": template,  # the question template: the gate's cluster (optimization.cluster_field)
            })
    return cases


def write_cases(cases: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="\n") as fh:
        for case in cases:
            fh.write(json.dumps(case, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic customer-insights dataset (JSONL).")
    parser.add_argument("--out", type=Path, default=Path("promptcycle/data/customer_insights.jsonl"))
    parser.add_argument("--per-spectrum", type=int, default=30)
    parser.add_argument("--seed", type=int, default=20261121)
    args = parser.parse_args(argv)
    cases = generate_cases(args.per_spectrum, args.seed)
    write_cases(cases, args.out)
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
