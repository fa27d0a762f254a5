"""What the simulated models "know": which question words point at which record fields.

The lexicon is deliberately incomplete: each bundled question links to some of its required fields
and leaves others to inference, so a prompt that names the fields to cover (a checklist) has
something to add. It also holds plausible replacement values for wrong answers and the pool of
fields a model may hallucinate. Nothing here reads the dataset: it is the models' world knowledge.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = [
    "DOMAIN_SPECTRUMS",
    "FIELD_DOMAINS",
    "FIELD_CUES",
    "PLAUSIBLE_VALUES",
    "HALLUCINATION_POOL",
    "link_question",
]

# record section -> the spectrum whose skill a model uses for fields in that section
DOMAIN_SPECTRUMS: dict[str, str] = {
    "profile": "customer_profile",
    "credit": "credit_analysis",
    "transactions": "transaction_history",
    "call_center": "call_center_operations",
    "relationships": "entity_relationship",
    "geography": "geographic_analysis",
    "temporal": "temporal_analysis",
}

# Fields the models know, by domain; used when a record is flat (no domain sections).
FIELD_DOMAINS: dict[str, str] = {
    **dict.fromkeys(["full_name", "age", "segment", "tenure_years", "occupation"], "profile"),
    **dict.fromkeys(["credit_score", "credit_limit", "credit_utilization_pct", "delinquencies_12m",
                     "debt_to_income_pct"], "credit"),
    **dict.fromkeys(["monthly_spend", "largest_transaction", "top_merchant_category", "transactions_30d",
                     "international_share_pct"], "transactions"),
    **dict.fromkeys(["calls_90d", "last_call_reason", "avg_handle_time_min", "complaint_open",
                     "satisfaction_score"], "call_center"),
    **dict.fromkeys(["household_members", "linked_accounts", "employer", "guarantor_of",
                     "joint_account_holder"], "relationships"),
    **dict.fromkeys(["city", "region", "distance_to_branch_km", "nearest_branch", "relocated_12m"], "geography"),
    **dict.fromkeys(["account_opened", "last_login", "days_since_last_txn", "spend_trend_pct_3m",
                     "last_address_change"], "temporal"),
}

# Question word stems -> field. A stem matches a word that starts with it. Incomplete on purpose.
FIELD_CUES: dict[str, tuple[str, ...]] = {
    "full_name": ("who is", "name", "background"),
    "age": ("old", "young", "born"),
    "tenure_years": ("how long", "loyal"),
    "occupation": ("living", "job", "work", "profession", "background"),
    "segment": ("tier",),
    "credit_score": ("creditworth", "score", "risk"),
    "delinquencies_12m": ("missed", "late payment", "repayment"),
    "credit_utilization_pct": ("in use", "utili", "card line"),
    "credit_limit": ("how large", "card line", "credit line"),
    "debt_to_income_pct": ("debt",),
    "transactions_30d": ("actively", "frequen"),
    "top_merchant_category": ("shop", "merchant", "where do they spend"),
    "monthly_spend": ("spending look", "size"),
    "largest_transaction": ("big purchase", "biggest", "large purchase", "size"),
    "international_share_pct": ("travel", "foreign", "abroad"),
    "calls_90d": ("contacted", "contact center", "support history"),
    "last_call_reason": ("why", "get in touch"),
    "satisfaction_score": ("unhappy", "happy", "satisf"),
    "complaint_open": ("complain", "unhappy"),
    "avg_handle_time_min": ("costly", "handle"),
    "joint_account_holder": ("connected", "joint", "other accounts"),
    "guarantor_of": ("vouch", "guarant"),
    "household_members": ("household", "family", "people"),
    "linked_accounts": ("connected", "other accounts"),
    "employer": ("work", "employ", "organisation", "organization"),
    "city": ("live", "town"),
    "region": ("part of the country", "region"),
    "nearest_branch": ("locations", "visit us", "office"),
    "distance_to_branch_km": ("how far", "convenient"),
    "relocated_12m": ("moved", "relocat"),
    "last_login": ("last active", "engaged"),
    "days_since_last_txn": ("last active", "recent activity"),
    "spend_trend_pct_3m": ("trend", "growing", "shrinking"),
    "account_opened": ("timeline", "since when", "opened"),
}

_CUE_PATTERNS: dict[str, re.Pattern[str]] = {
    field: re.compile(r"\b(?:" + "|".join(re.escape(c) for c in cues) + ")")
    for field, cues in FIELD_CUES.items()
}

# Plausible alternatives a model may state instead of the true value (string fields).
_PLACES = ["Ashford", "Brookvale", "Cedar Falls", "Dunmore", "Eastwick", "Fernhill", "Glenrock", "Kingsmere"]
PLAUSIBLE_VALUES: dict[str, list[str]] = {
    "segment": ["mass market", "mass affluent", "affluent", "private banking", "small business"],
    "occupation": ["nurse", "teacher", "accountant", "engineer", "sales manager", "consultant", "chef"],
    "top_merchant_category": ["groceries", "travel", "dining", "electronics", "fuel", "clothing", "utilities"],
    "last_call_reason": ["card replacement", "disputed charge", "fee inquiry", "password reset", "fraud alert"],
    "employer": ["Northwind Logistics", "Bluefield Health", "Quillstone Software", "Ironbridge Energy",
                 "self-employed"],
    "city": _PLACES,
    "region": ["North", "West", "South East", "South West", "Midlands"],
    "nearest_branch": [f"{p} Central" for p in _PLACES],
    "person": ["Maria Lopez", "Jonah Okafor", "Aiko Tanaka", "Tomas Novak", "Owen Brennan", "Nadia Petrov",
               "none"],
}

# Fields a model may add that no record has: (field, kind) where kind picks the invented value.
HALLUCINATION_POOL: tuple[tuple[str, str], ...] = (
    ("churn_risk", "level"), ("lifetime_value", "money"), ("loyalty_points", "int"),
    ("preferred_language", "language"), ("risk_rating", "level"), ("net_worth_estimate", "money"),
    ("marketing_opt_in", "bool"), ("products_held", "int"),
)


@lru_cache(maxsize=4096)
def link_question(question: str) -> tuple[str, ...]:
    """The known fields a question's words point at, in lexicon order."""
    text = question.lower()
    return tuple(field for field, pattern in _CUE_PATTERNS.items() if pattern.search(text))
