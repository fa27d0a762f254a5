"""Candidate validation: a candidate prompt must render with the pipeline's variables and must not
carry anything of the held-out (dev/test) cases it will be judged on.

    report = validate_candidates(candidates, variables=["customer", "question"], held_out=dev + test, train=train)
    screening = screen_candidates(candidates, variables=..., held_out=..., train=...)  # kept / rejected, reasons

The suite is a real Great Expectations suite over a frame with one row per candidate. A candidate
fails when it

- drops a pipeline variable, or holds a placeholder the pipeline does not provide or a malformed
  one (named with its part and position: `{{foo}} in the template at position 57 (line 3, column 5)`);
- holds a held-out case's id (ids shorter than 4 characters, or all digits and shorter than 5, are
  too common to check);
- holds a sentence of a held-out case's reference answer (of at least 4 words or 24 characters,
  and found in that case's reference only — a sentence many references share says nothing of one case);
- holds a distinctive value of a held-out case's record: one identifying string (a name, holder,
  id, email, phone or address field, a proper name or an id-like token, found in that record
  only among the known records), or a combination of 3 or more values of one section of the
  record, found in one paragraph of the candidate (a copied example carries one section, in one
  place), that no other known record holds all of in the same fields and that is unlikely by
  chance: the sum over its values of log10(known records / records with that field=value) is at
  least 4. A value counts when the text states it after its field's name or label
  (`"calls_90d": 1`, `Credit score: 712`); strings and dates count alone too, numbers and
  booleans only next to their field's name ("none"-like values never);
- is the prompt it was derived from, or repeats an earlier candidate.

"Known records" are the held-out cases and the train cases passed as `train=`. Pass them whenever
strategies draw on train cases: a value, a combination or a reference sentence that a train case
also holds is then not taken as evidence of a leak. Without them, a train example whose values
happen to recur in one held-out record can be flagged. On the bundled dataset (with `train=`), a
worked example copied from a test case is caught for 58 of its 63 test cases (the misses are
relationship sections made of common values), and none of the 84 train cases' examples, alone or
in pairs, is flagged.

The report names the offending candidate ("#2 few_shot 3fa2c1d0") and the leaked case id.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from promptcycle.datasets.cases import Case
from promptcycle.optimize.candidates import CandidatePrompt
from promptcycle.prompts import PLACEHOLDER, PromptTemplate
from promptcycle.quality.report import QualityReport

__all__ = ["CandidateFindings", "CandidateScreening", "inspect_candidates", "validate_candidates",
           "screen_candidates", "MIN_COMBINED_VALUES"]

MIN_COMBINED_VALUES = 3
# Evidence of a combination: the sum of log10(known records / records holding that field=value) over its
# values — about -log10 of the chance that one record shares them all by coincidence.
MIN_EVIDENCE = 4.0
MIN_SENTENCE_WORDS = 4
MIN_SENTENCE_CHARS = 24

_IDENTIFYING_KEY = re.compile(r"name|holder|email|phone|address|(?:^|_)id$|iban|account_number|passport|ssn")
_PROPER_NAME = re.compile(r"^[A-Z][a-zA-Z'’-]+(?: [A-Z][a-zA-Z'’-]+)+$")
_ID_LIKE = re.compile(r"^(?=.*[A-Za-z])(?=.*\d)[A-Za-z0-9_.-]{5,}$")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])")
_NOT_A_VALUE = frozenset({"none", "null", "unknown", "n/a", "true", "false", "yes", "no"})
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_PARAGRAPH = re.compile(r"\n\s*\n")
_RAW_PLACEHOLDER = re.compile(r"\{\{[^{}\n]{0,80}\}\}")
_UNCLOSED = re.compile(r"\{\{(?![^{}\n]{0,80}\}\})")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _contains(haystack: str, needle: str) -> bool:
    """`needle` in `haystack` (both normalised) and not inside a longer word or number."""
    if needle not in haystack:
        return False
    return re.search(r"(?<![a-z0-9])" + re.escape(needle) + r"(?![a-z0-9])", haystack) is not None


def _leaves(value: Any, key: str = "", section: str = "") -> Iterable[tuple[str, str, Any]]:
    """(section, field, value) of every leaf; the section is the top-level key a leaf sits under."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, str(k), section or (str(k) if isinstance(v, (dict, list)) else ""))
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v, key, section)
    else:
        yield section, key, value


Value = float | str  # a number, or a normalised string, date or boolean ("true" / "false")


@dataclass
class _HeldOutCase:
    id: str
    check_id: bool
    sentences: list[str] = field(default_factory=list)  # normalised, distinctive
    identifying: list[tuple[str, str, str]] = field(default_factory=list)  # (field, normalised, as written)
    # (section, field, value, may match bare, weight)
    values: list[tuple[str, str, Value, bool, float]] = field(default_factory=list)


def _record_leaves(case: Case) -> list[tuple[str, str, Any]]:
    return [leaf for value in case.inputs.values() if isinstance(value, (dict, list)) for leaf in _leaves(value)]


def _sentences(case: Case) -> list[str]:
    return list(dict.fromkeys(s for s in (_norm(x).rstrip(".!?") for x in _SENTENCE.split(case.reference or ""))
                              if s))


def _canonical(value: Any) -> tuple[Value, bool] | None:
    """A record value as the candidate text is searched for it, and whether it may count when it
    stands alone (without its field name next to it). Numbers and booleans count only next to
    their field's name — alone, a number matches some other field's value too often; "none"-like
    values and very short strings never count."""
    if value is None:
        return None
    if isinstance(value, bool):
        return ("true" if value else "false"), False
    if isinstance(value, (int, float)):
        return float(value), False
    norm = _norm(str(value))
    if len(norm) < 3 or norm in _NOT_A_VALUE or not re.search(r"[a-z0-9]", norm):
        return None
    return norm, True


def _index(held_out: Sequence[Case], train: Sequence[Case]) -> tuple[list[_HeldOutCase], dict[tuple, set[int]]]:
    """What of each held-out case would give it away, and which known records (held-out cases
    numbered first, then train cases) hold each (field, value) — computed once for all candidates."""
    string_cases: Counter[str] = Counter()
    sentence_cases: Counter[str] = Counter()
    per_case: list[tuple[Case, list[tuple[str, str, Any]], list[str]]] = []
    holders: dict[tuple, set[int]] = {}
    for i, case in enumerate([*held_out, *train]):
        leaves = _record_leaves(case)
        string_cases.update({_norm(v) for _, _, v in leaves if isinstance(v, str) and v.strip()})
        for _, key, v in leaves:
            canonical = _canonical(v)
            if canonical is not None:
                holders.setdefault((key, canonical[0]), set()).add(i)
        sentences = _sentences(case)
        sentence_cases.update(set(sentences))  # a sentence shared with any other case is not distinctive
        if i < len(held_out):
            per_case.append((case, leaves, sentences))

    known = len(held_out) + len(train)
    index = []
    for case, leaves, sentences in per_case:
        entry = _HeldOutCase(case.id, check_id=len(case.id) >= 4 and not (case.id.isdigit() and len(case.id) < 5))
        entry.sentences = [s for s in sentences if sentence_cases[s] == 1
                           and (len(s.split()) >= MIN_SENTENCE_WORDS or len(s) >= MIN_SENTENCE_CHARS)]
        for section, key, value in leaves:
            canonical = _canonical(value)
            if canonical is None:
                continue
            weight = math.log10(known / max(1, len(holders.get((key, canonical[0]), ()))))
            entry.values.append((section, key, canonical[0], canonical[1], weight))
            text = str(value).strip()
            if isinstance(value, str) and not _ISO_DATE.fullmatch(text) and string_cases[canonical[0]] == 1 \
                    and (_IDENTIFYING_KEY.search(key.lower()) or _PROPER_NAME.match(text) or _ID_LIKE.match(text)):
                entry.identifying.append((key, canonical[0], text))
        index.append(entry)
    return index, holders


@dataclass(frozen=True)
class CandidateFindings:
    """What the checks found in one candidate (all empty / None when it is valid)."""

    candidate: CandidatePrompt
    key: str  # "#<n> <strategy> <hash prefix> (<scope>)", the name the report uses
    missing_variables: list[str]
    bad_placeholders: list[str]
    leaked_case_ids: list[str]
    leaked_references: list[str]
    leaked_record_values: list[str]
    unchanged: bool
    duplicate_of: str | None

    @property
    def problems(self) -> list[str]:
        """Readable reasons to drop the candidate."""
        out = []
        if self.missing_variables:
            out.append("drops the variable(s) " + ", ".join("{{" + v + "}}" for v in self.missing_variables))
        out += [f"placeholder problem: {p}" for p in self.bad_placeholders]
        out += [f"leaks held-out case id {c}" for c in self.leaked_case_ids]
        out += [f"leaks a reference sentence of {r}" for r in self.leaked_references]
        out += [f"leaks record values of {r}" for r in self.leaked_record_values]
        if self.unchanged:
            out.append("is the prompt it was derived from")
        if self.duplicate_of:
            out.append(f"repeats candidate {self.duplicate_of}")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems


def _where(prompt: PromptTemplate, part: str, position: int) -> str:
    text = prompt.system if part == "system" else prompt.template
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return f"in the {'system message' if part == 'system' else 'template'} at position {position} " \
           f"(line {line}, column {column})"


def _placeholder_problems(prompt: PromptTemplate, variables: Sequence[str]) -> list[str]:
    problems = []
    known = set(variables)
    for p in prompt.placeholders():
        if p.name not in known:
            problems.append(f"unknown placeholder {{{{{p.name}}}}} {_where(prompt, p.part, p.position)}")
    for part, text in (("system", prompt.system), ("template", prompt.template)):
        for m in _RAW_PLACEHOLDER.finditer(text):
            if not PLACEHOLDER.fullmatch(m.group(0)):
                problems.append(f"malformed placeholder {m.group(0)!r} {_where(prompt, part, m.start())}")
        for m in _UNCLOSED.finditer(text):
            problems.append(f"unclosed '{{{{' {_where(prompt, part, m.start())}")
    return problems


def _shared(pairs: list[tuple[str, Value]], holders: dict[tuple, set[int]], own: int) -> bool:
    """Whether another known record holds every one of these (field, value) pairs too: then the
    combination does not single out this case (and, for a train record, the candidate may have it
    from there)."""
    common: set[int] | None = None
    for pair in pairs:
        common = set(holders.get(pair, ())) if common is None else common & holders.get(pair, set())
        if not common - {own}:
            return False
    return bool(common and common - {own})


_STATED: dict[str, re.Pattern[str]] = {}  # field -> its "name: value" pattern, built on first use


def _stated_pairs(raw: str, fields: Iterable[str]) -> dict[str, set[Value]]:
    """Field -> values the text states right after the field's name or label ("calls_90d": 1,
    Calls 90d: 1, the calls 90d is 1)."""
    lowered = raw.lower()
    out: dict[str, set[Value]] = {}
    for name in fields:
        label = name.replace("_", " ")
        if name.lower() not in lowered and label.lower() not in lowered:
            continue
        pattern = _STATED.get(name)
        if pattern is None:
            names = "|".join(re.escape(n) for n in dict.fromkeys([name.lower(), label.lower()]))
            pattern = _STATED[name] = re.compile(
                rf"(?<![a-z0-9_])(?:{names})[\"']?\s*(?::|=|\bis\b|\bwas\b|\bof\b)\s*[\"'$]?"
                rf"(\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?|[^,\"'\n}}\]]+)")
        for m in pattern.finditer(lowered):
            stated = m.group(1).strip().rstrip(".;")
            number = _NUMBER.match(stated.replace("$", ""))
            if number is not None and number.end() >= len(stated.replace("$", "").rstrip("%").rstrip()):
                out.setdefault(name, set()).add(float(number.group(0).replace(",", "")))
            elif stated in ("true", "yes", "false", "no"):
                out.setdefault(name, set()).add("true" if stated in ("true", "yes") else "false")
            else:
                out.setdefault(name, set()).add(_norm(stated))
    return out


def _leaks(prompt: PromptTemplate, index: list[_HeldOutCase], holders: dict[tuple, set[int]],
           fields: list[str]) -> tuple[list[str], list[str], list[str]]:
    raw = prompt.system + "\n\n" + prompt.template
    text = _norm(raw)
    # a copied example sits in one paragraph: combinations are looked for within each paragraph
    blocks = [(_norm(block), _stated_pairs(block, fields)) for block in _PARAGRAPH.split(raw) if block.strip()]
    ids, references, values = [], [], []
    for own, case in enumerate(index):
        if case.check_id and _contains(text, case.id.lower()):
            ids.append(case.id)
        sentence = next((s for s in case.sentences if _contains(text, s)), None)
        if sentence is not None:
            references.append(f"{case.id} ({sentence!r})")
        identifying = [(k, written) for k, v, written in case.identifying if _contains(text, v)]
        if identifying:
            k, written = identifying[0]
            values.append(f"{case.id} ({k} {written!r})")
            continue
        combination = _combination(case, own, blocks, holders)
        if combination:
            values.append(f"{case.id} ({combination})")
    return ids, references, values


def _combination(case: _HeldOutCase, own: int, blocks: list[tuple[str, dict[str, set[Value]]]],
                 holders: dict[tuple, set[int]]) -> str | None:
    """The first distinctive combination of the case's values found in one paragraph, described."""
    for text, stated in blocks:
        # …and carries one section of a record: combinations are judged per section
        by_section: dict[str, dict[tuple[str, Value], float]] = {}
        for section, key, v, bare, weight in case.values:
            if v in stated.get(key, ()) or (bare and _contains(text, str(v))):
                by_section.setdefault(section, {})[(key, v)] = weight
        for found in by_section.values():
            if len(found) >= MIN_COMBINED_VALUES and sum(found.values()) >= MIN_EVIDENCE \
                    and not _shared(list(found), holders, own):
                shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in found)
                return f"{len(found)} of its values: {shown}"
    return None


def inspect_candidates(candidates: Sequence[CandidatePrompt], *, variables: Sequence[str],
                       held_out: Sequence[Case], train: Sequence[Case] = ()) -> list[CandidateFindings]:
    """Run every check on every candidate, in order (the facts the suite validates)."""
    index, holders = _index(held_out, train)
    fields = sorted({value[1] for case in index for value in case.values})
    seen: dict[tuple[str, str | None], str] = {}
    out = []
    for i, candidate in enumerate(candidates):
        key = f"#{i + 1} {candidate.label}"
        prompt = candidate.prompt
        ids, references, values = _leaks(prompt, index, holders, fields)
        identity = (prompt.hash, candidate.scope)
        out.append(CandidateFindings(
            candidate=candidate, key=key,
            missing_variables=[v for v in variables if v not in prompt.variables],
            bad_placeholders=_placeholder_problems(prompt, variables),
            leaked_case_ids=ids, leaked_references=references, leaked_record_values=values,
            unchanged=prompt.hash == candidate.parent_hash, duplicate_of=seen.get(identity)))
        seen.setdefault(identity, key)
    return out


def _joined(items: list[str]) -> str | None:
    return "; ".join(items) if items else None


def _describe(one: str, many: str):
    """How a failed check reads: "2 candidates copy held-out record values — #1 …: …; #3 …: …"."""
    def describe(n: int, values: list[Any], raw: dict[str, Any]) -> str:
        keys = [row.get("candidate") for row in raw.get("partial_unexpected_index_list") or []]
        shown = "; ".join(f"{k}: {v}" for k, v in list(zip(keys, values))[:3])
        head = f"1 candidate {one}" if n == 1 else f"{n} candidates {many}"
        return head + (f" — {shown}" if shown else "")
    return describe


def _report(findings: list[CandidateFindings]) -> QualityReport:
    import pandas as pd

    from promptcycle.quality.suites import Check, gx_expectations, run_checks

    gxe = gx_expectations()
    frame = pd.DataFrame({
        "candidate": [f.key for f in findings],
        "missing_variables": [_joined(["{{" + v + "}}" for v in f.missing_variables]) for f in findings],
        "bad_placeholders": [_joined(f.bad_placeholders) for f in findings],
        "leaked_case_ids": [_joined(f.leaked_case_ids) for f in findings],
        "leaked_references": [_joined(f.leaked_references) for f in findings],
        "leaked_record_values": [_joined(f.leaked_record_values) for f in findings],
        "unchanged": ["same hash as its parent" if f.unchanged else None for f in findings],
        "duplicate_of": [f.duplicate_of for f in findings],
    }, columns=["candidate", "missing_variables", "bad_placeholders", "leaked_case_ids", "leaked_references",
                "leaked_record_values", "unchanged", "duplicate_of"]).astype(object)
    rules = [
        ("uses every pipeline variable", "missing_variables", ("drops", "drop"), "a variable"),
        ("no unknown or malformed placeholder", "bad_placeholders", ("has", "have"), "a placeholder problem"),
        ("no held-out case id", "leaked_case_ids", ("holds", "hold"), "a held-out case id"),
        ("no held-out reference sentence", "leaked_references", ("copies", "copy"), "a held-out reference sentence"),
        ("no distinctive held-out record values", "leaked_record_values", ("copies", "copy"),
         "held-out record values"),
        ("changes the prompt", "unchanged", ("is", "are"), "the prompt it was derived from"),
        ("distinct from earlier candidates", "duplicate_of", ("repeats", "repeat"), "an earlier candidate"),
    ]
    checks = [Check(label, gxe.ExpectColumnValuesToBeNull(column=column), column,
                    _describe(f"{verbs[0]} {what}", f"{verbs[1]} {what}"))
              for label, column, verbs, what in rules]
    failures = run_checks(frame, checks, "candidate")
    return QualityReport(suite="candidates", success=not failures, n_rows=len(frame),
                         n_expectations=len(checks), failures=failures)


def validate_candidates(candidates: Sequence[CandidatePrompt], *, variables: Sequence[str],
                        held_out: Sequence[Case], train: Sequence[Case] = ()) -> QualityReport:
    """The candidates suite (see the module docstring) as a `QualityReport`."""
    return _report(inspect_candidates(candidates, variables=variables, held_out=held_out, train=train))


@dataclass(frozen=True)
class CandidateScreening:
    """The suite's report, the candidates that passed, and the others with their reasons."""

    report: QualityReport
    kept: list[CandidatePrompt]
    rejected: list[tuple[CandidatePrompt, list[str]]]


def screen_candidates(candidates: Sequence[CandidatePrompt], *, variables: Sequence[str],
                      held_out: Sequence[Case], train: Sequence[Case] = ()) -> CandidateScreening:
    """Validate the candidates and split them into kept and rejected (with every reason)."""
    findings = inspect_candidates(candidates, variables=variables, held_out=held_out, train=train)
    report = _report(findings)
    return CandidateScreening(report=report, kept=[f.candidate for f in findings if f.ok],
                              rejected=[(f.candidate, f.problems) for f in findings if not f.ok])
