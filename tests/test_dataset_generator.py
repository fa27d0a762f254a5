"""The bundled dataset generator: deterministic, well-formed, and the checked-in file is its output."""

from __future__ import annotations

import json
import re
from pathlib import Path

from promptcycle.datasets.cases import Case
from promptcycle.datasets.generate import QUESTION_TEMPLATES, SPECTRUM_DOMAINS, generate_cases, main, write_cases

BUNDLED = Path(__file__).resolve().parent.parent / "promptcycle" / "data" / "customer_insights.jsonl"
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def leaves(record: dict) -> dict:
    out = {}
    for key, value in record.items():
        out.update(leaves(value) if isinstance(value, dict) else {key: value})
    return out


def test_same_seed_gives_byte_identical_files(tmp_path: Path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_cases(generate_cases(), a)
    write_cases(generate_cases(), b)
    assert a.read_bytes() == b.read_bytes()
    write_cases(generate_cases(seed=7), b)
    assert a.read_bytes() != b.read_bytes()


def test_checked_in_dataset_is_the_generator_output(tmp_path: Path):
    out = tmp_path / "cases.jsonl"
    main(["--out", str(out), "--per-spectrum", "30"])
    assert out.read_bytes() == BUNDLED.read_bytes()


def test_cases_are_well_formed():
    rows = [json.loads(line) for line in BUNDLED.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 210
    assert len({r["id"] for r in rows}) == 210
    for spectrum in SPECTRUM_DOMAINS:
        ids = [r["id"] for r in rows if r["spectrum"] == spectrum]
        assert ids == [f"{spectrum}-{i:03d}" for i in range(1, 31)]
    for row in rows:
        case = Case(**row)
        record = case.inputs["customer"]
        fields = leaves(record)
        assert 25 <= len(fields) <= 40
        assert all(isinstance(v, (int, float, str, bool)) for v in fields.values())
        domain = SPECTRUM_DOMAINS[case.spectrum]
        assert 4 <= len(case.facts) <= 6
        for name, value in case.facts.items():
            assert record[domain][name] == value  # a fact is a leaf of the spectrum's section
            assert not isinstance(value, str) or not value[:4].isdigit() or DATE.match(value)
            label = name.replace("_", " ").capitalize() + ":"
            assert label in case.reference


def test_questions_do_not_name_the_fields():
    rows = [json.loads(line) for line in BUNDLED.read_text(encoding="utf-8").splitlines()]
    names = set(leaves(rows[0]["inputs"]["customer"]))
    labels = names | {name.replace("_", " ") for name in names}
    for row in rows:
        words = " " + " ".join(re.findall(r"[a-z0-9_]+", row["inputs"]["question"].lower())) + " "
        assert not [label for label in labels if f" {label} " in words], row["inputs"]["question"]


def test_each_spectrum_has_three_or_four_templates_over_its_own_fields():
    record = generate_cases(per_spectrum=1)[0]["inputs"]["customer"]
    for spectrum, templates in QUESTION_TEMPLATES.items():
        assert 3 <= len(templates) <= 4
        section = record[SPECTRUM_DOMAINS[spectrum]]
        for _, fields in templates:
            assert 4 <= len(fields) <= 6 and set(fields) <= set(section)
