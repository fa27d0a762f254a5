"""Loading cases from every format, the errors a person sees, hashing, limiting and splits."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from promptcycle.config import SplitConfig
from promptcycle.datasets import (
    SPLITS,
    Case,
    assign_splits,
    bundled_datasets,
    dataset_hash,
    limit_cases,
    load_cases,
    split_counts,
)
from promptcycle.errors import DatasetError

CONTRACT_SPECTRUMS = {"customer_profile", "credit_analysis", "transaction_history", "call_center_operations",
                      "entity_relationship", "geographic_analysis", "temporal_analysis"}


def make_records() -> list[dict]:
    records = []
    for spectrum, n in (("credit_analysis", 3), ("customer_profile", 2)):
        for i in range(1, n + 1):
            records.append({
                "id": f"{spectrum}-{i:03d}",
                "spectrum": spectrum,
                "inputs": {"customer": {"name": f"Customer {i}", "credit_score": 600 + i,
                                        "address": {"city": "Leeds", "postcode": f"LS{i}"}},
                           "question": f"What is customer {i}'s credit score?"},
                "facts": {"credit_score": 600 + i, "utilization_pct": 20.5 + i, "active": i % 2 == 0,
                          "opened": f"2020-0{i}-01"},
                "reference": f"Credit score: {600 + i}, utilization 20.5%,\nopened \"2020\".",
            })
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path: Path, records: list[dict], columns=("id", "spectrum", "inputs", "facts", "reference")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for r in records:
            writer.writerow([json.dumps(r[c]) if c in ("inputs", "facts") else r.get(c, "") for c in columns])
    return path


def dumps(cases: list[Case]) -> list[dict]:
    return [c.model_dump(exclude_none=True) for c in cases]  # `template` is optional


# ---------------------------------------------------------------------------------------------
# Round trips

def test_jsonl_round_trip(tmp_path):
    records = make_records()
    path = write_jsonl(tmp_path / "cases.jsonl", records)
    assert dumps(load_cases(str(path))) == records


def test_jsonl_skips_blank_lines(tmp_path):
    records = make_records()[:2]
    path = tmp_path / "cases.jsonl"
    path.write_text("\n" + json.dumps(records[0]) + "\n\n   \n" + json.dumps(records[1]) + "\n")
    assert [c.id for c in load_cases(str(path))] == [r["id"] for r in records]


def test_csv_round_trip_keeps_quotes_commas_and_newlines(tmp_path):
    records = make_records()
    path = write_csv(tmp_path / "cases.csv", records)
    assert dumps(load_cases(str(path))) == records


def test_csv_without_reference_column_defaults_to_empty(tmp_path):
    records = make_records()
    path = write_csv(tmp_path / "cases.csv", records, columns=("id", "spectrum", "inputs", "facts"))
    assert [c.reference for c in load_cases(str(path))] == [""] * len(records)


def test_parquet_round_trip_with_json_string_columns(tmp_path):
    records = make_records()
    rows = [{**r, "inputs": json.dumps(r["inputs"]), "facts": json.dumps(r["facts"])} for r in records]
    path = tmp_path / "cases.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert dumps(load_cases(str(path))) == records


def test_parquet_written_by_a_dataframe_with_an_index(tmp_path):
    import pandas as pd

    records = make_records()
    frame = pd.DataFrame([{**r, "inputs": json.dumps(r["inputs"]), "facts": json.dumps(r["facts"])}
                          for r in records]).set_index("id", drop=False)
    path = tmp_path / "cases.parquet"
    frame.to_parquet(path)  # stores the index as an extra column, which the loader ignores
    assert dumps(load_cases(str(path))) == records


def test_parquet_round_trip_with_struct_columns(tmp_path):
    # Structs share one schema across rows: each row's facts hold the other rows' keys as nulls.
    records = make_records()
    records[0]["facts"] = {"credit_score": 601}
    path = tmp_path / "cases.parquet"
    table = pa.Table.from_pylist(records)
    assert pa.types.is_struct(table.schema.field("facts").type)
    pq.write_table(table, path)
    assert dumps(load_cases(str(path))) == records


def test_parquet_round_trip_with_map_columns(tmp_path):
    records = [{**r, "facts": {"credit_score": float(r["facts"]["credit_score"])}} for r in make_records()]
    schema = pa.schema([("id", pa.string()), ("spectrum", pa.string()), ("inputs", pa.string()),
                        ("facts", pa.map_(pa.string(), pa.float64())), ("reference", pa.string())])
    rows = [{**r, "inputs": json.dumps(r["inputs"]), "facts": list(r["facts"].items())} for r in records]
    path = tmp_path / "cases.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    assert dumps(load_cases(str(path))) == records


def test_relative_path_resolves_against_base_dir(tmp_path):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "cases.jsonl", make_records())
    assert len(load_cases("data/cases.jsonl", base_dir=tmp_path)) == 5


def test_bundled_dataset_loads_with_the_contract_spectrums():
    assert "customer_insights" in bundled_datasets()
    cases = load_cases("bundled:customer_insights")
    assert {c.spectrum for c in cases} == CONTRACT_SPECTRUMS
    assert all(c.facts and "question" in c.inputs and "customer" in c.inputs for c in cases)


def test_parsable_but_bad_data_loads_for_the_suite_to_judge(tmp_path):
    records = make_records()
    records[1]["id"] = records[0]["id"]          # duplicate id
    records[2]["facts"] = {}                      # no facts
    records[3]["spectrum"] = "credits"            # unknown spectrum
    records[4]["inputs"]["question"] = None       # null question
    cases = load_cases(str(write_jsonl(tmp_path / "bad.jsonl", records)))
    assert dumps(cases) == records


# ---------------------------------------------------------------------------------------------
# Errors: file, line or row, field, expectation

def error_of(source: str, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        load_cases(source, **kwargs)
    return str(info.value)


def test_missing_file_names_the_file(tmp_path):
    message = error_of(str(tmp_path / "nope.jsonl"))
    assert str(tmp_path / "nope.jsonl") in message and "not found" in message


def test_unknown_extension_lists_the_supported_ones(tmp_path):
    path = tmp_path / "cases.xlsx"
    path.write_text("x")
    message = error_of(str(path))
    assert str(path) in message and ".xlsx" in message
    assert all(ext in message for ext in (".jsonl", ".csv", ".parquet"))


def test_unknown_bundled_dataset_lists_the_known_ones():
    message = error_of("bundled:nope")
    assert "bundled:nope" in message and "bundled:customer_insights" in message


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "cases.jsonl"
    lines = [json.dumps(r) for r in make_records()[:2]] + ['{"id": "x", "spectrum": ']
    path.write_text("\n".join(lines) + "\n")
    message = error_of(str(path))
    assert f"{path}: line 3: invalid JSON" in message


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps(make_records()[0]) + "\n[1, 2]\n")
    message = error_of(str(path))
    assert f"{path}: line 2:" in message and "expected a JSON object" in message and "array" in message


def test_jsonl_missing_id_names_line_and_field(tmp_path):
    records = make_records()
    del records[1]["id"]
    message = error_of(str(write_jsonl(tmp_path / "cases.jsonl", records)))
    assert "line 2: missing field 'id'" in message and str(tmp_path) in message


def test_jsonl_facts_not_an_object(tmp_path):
    records = make_records()
    records[2]["facts"] = ["credit_score", 712]
    message = error_of(str(write_jsonl(tmp_path / "cases.jsonl", records)))
    assert "line 3: field 'facts': expected a JSON object, found an array" in message


def test_jsonl_misspelt_field_is_named(tmp_path):
    records = make_records()
    records[0]["spectrun"] = records[0].pop("spectrum")
    message = error_of(str(write_jsonl(tmp_path / "cases.jsonl", records)))
    assert "line 1:" in message and "'spectrum'" in message


def test_jsonl_non_string_id(tmp_path):
    records = make_records()
    records[0]["id"] = 7
    message = error_of(str(write_jsonl(tmp_path / "cases.jsonl", records)))
    assert "line 1: field 'id': expected a string, found a number (7)" in message


def test_csv_row_missing_id_names_row_line_and_field(tmp_path):
    records = make_records()
    records[1]["id"] = ""
    path = write_csv(tmp_path / "cases.csv", records)
    message = error_of(str(path))
    # Row 2 starts on line 4: row 1's reference spans lines 2 and 3.
    assert f"{path}: row 2 (line 4): missing field 'id'" in message


def test_csv_facts_with_invalid_json(tmp_path):
    path = write_csv(tmp_path / "cases.csv", make_records()[:1])
    text = path.read_text().replace('""utilization_pct"": 21.5', '""utilization_pct"" 21.5')
    path.write_text(text)
    message = error_of(str(path))
    assert "row 1" in message and "field 'facts': invalid JSON" in message


def test_csv_facts_not_an_object(tmp_path):
    path = tmp_path / "cases.csv"
    path.write_text('id,spectrum,inputs,facts\nc-1,credit_analysis,"{""question"": ""q""}",712\n')
    message = error_of(str(path))
    assert "row 1 (line 2): field 'facts': expected a JSON object, found a number (712)" in message


def test_csv_missing_and_unknown_columns(tmp_path):
    path = tmp_path / "cases.csv"
    path.write_text("id,spectrum,inputs\nc-1,credit_analysis,{}\n")
    message = error_of(str(path))
    assert f"{path}: header: missing column facts" in message
    path.write_text("id,spectrum,inputs,facts,notes\n")
    assert "unknown column notes" in error_of(str(path))


def test_csv_row_with_too_many_cells(tmp_path):
    path = tmp_path / "cases.csv"
    path.write_text('id,spectrum,inputs,facts\nc-1,credit_analysis,{},{},extra\n')
    assert "row 1 (line 2): 5 cells, expected 4" in error_of(str(path))


def test_parquet_facts_not_an_object(tmp_path):
    rows = [{"id": "c-1", "spectrum": "credit_analysis", "inputs": "{}", "facts": '{"a": 1}', "reference": ""},
            {"id": "c-2", "spectrum": "credit_analysis", "inputs": "{}", "facts": "7", "reference": ""}]
    path = tmp_path / "cases.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert f"{path}: row 2: field 'facts': expected a JSON object, found a number (7)" in error_of(str(path))


def test_parquet_missing_column_and_corrupt_file(tmp_path):
    path = tmp_path / "cases.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "c-1", "spectrum": "s", "inputs": "{}"}]), path)
    assert "missing column facts" in error_of(str(path))
    path.write_bytes(b"not parquet at all")
    assert f"{path}: cannot read as Parquet" in error_of(str(path))


# ---------------------------------------------------------------------------------------------
# Hashing and limiting

def cases_from(records) -> list[Case]:
    return [Case.model_validate(r) for r in records]


def test_dataset_hash_is_stable_order_free_and_content_sensitive(tmp_path):
    records = make_records()
    cases = cases_from(records)
    h = dataset_hash(cases)
    assert len(h) == 64 and h == dataset_hash(cases_from(make_records()))
    assert dataset_hash(list(reversed(cases))) == h
    from_csv = load_cases(str(write_csv(tmp_path / "c.csv", records)))
    assert dataset_hash(from_csv) == h
    records[0]["facts"]["credit_score"] = 602
    assert dataset_hash(cases_from(records)) != h
    assert dataset_hash(cases[:-1]) != h


def test_limit_cases_takes_the_first_n_per_spectrum_in_order():
    cases = cases_from(make_records())
    limited = limit_cases(cases, 2)
    assert [c.id for c in limited] == ["credit_analysis-001", "credit_analysis-002",
                                       "customer_profile-001", "customer_profile-002"]
    assert limit_cases(cases, None) == cases
    assert limit_cases(cases, 0) == []
    with pytest.raises(ValueError):
        limit_cases(cases, -1)


# ---------------------------------------------------------------------------------------------
# Splits

def synthetic_cases(sizes: dict[str, int], start: int = 0) -> list[Case]:
    return [Case(id=f"{s}-{i:03d}", spectrum=s, inputs={"question": "q"}, facts={"x": 1})
            for s, n in sizes.items() for i in range(start, start + n)]


SIZES = {"a": 10, "b": 17, "c": 23, "d": 1}


def shares_within_one_case(assignment: dict[str, str], cases: list[Case], config: SplitConfig) -> None:
    by_spectrum: dict[str, Counter] = {}
    for c in cases:
        by_spectrum.setdefault(c.spectrum, Counter())[assignment[c.id]] += 1
    for spectrum, counts in by_spectrum.items():
        n = sum(counts.values())
        for name in SPLITS:
            assert abs(counts[name] - n * getattr(config, name)) <= 1, (spectrum, dict(counts))


def test_split_counts_use_largest_remainder():
    assert split_counts(10, [0.4, 0.3, 0.3]) == [4, 3, 3]
    assert split_counts(11, [0.4, 0.3, 0.3]) == [5, 3, 3]
    assert split_counts(2, [0.4, 0.3, 0.3]) == [1, 1, 0]
    assert split_counts(7, [0.7, 0.2, 0.1]) == [5, 1, 1]  # 4.9, 1.4, 0.7 -> floors 4,1,0; remainders .9, .7
    assert all(sum(split_counts(n, [0.5, 0.25, 0.25])) == n for n in range(50))


def test_assign_splits_is_deterministic_stratified_and_order_free():
    config = SplitConfig()
    cases = synthetic_cases(SIZES)
    first = assign_splits(cases, config)
    assert set(first) == {c.id for c in cases} and set(first.values()) == set(SPLITS)
    shuffled = cases[:]
    random.Random(3).shuffle(shuffled)
    assert assign_splits(shuffled, config) == first
    shares_within_one_case(first, cases, config)
    assert [sum(1 for c in cases if c.spectrum == "c" and first[c.id] == s) for s in SPLITS] == \
        split_counts(23, [0.4, 0.3, 0.3])
    other_seed = assign_splits(cases, SplitConfig(seed=8))
    assert other_seed != first


def test_growing_dataset_keeps_every_recorded_case_in_its_split():
    config = SplitConfig(train=0.5, dev=0.25, test=0.25, seed=11)
    old = synthetic_cases(SIZES)
    recorded = assign_splits(old, config)
    grown = old + synthetic_cases({"a": 7, "b": 5, "c": 1, "e": 4}, start=100)
    after = assign_splits(grown, config, recorded=recorded)
    assert {k: after[k] for k in recorded} == recorded
    shares_within_one_case(after, grown, config)
    # Growing again from the new record is just as stable.
    more = grown + synthetic_cases({"a": 3}, start=200)
    assert {k: v for k, v in assign_splits(more, config, recorded=after).items() if k in after} == after


def test_recorded_split_wins_and_new_cases_top_up_the_others():
    config = SplitConfig()
    cases = synthetic_cases({"a": 10})
    recorded = {f"a-{i:03d}": "train" for i in range(6)}  # more train than the 4 it would get
    after = assign_splits(cases, config, recorded=recorded)
    assert all(after[k] == "train" for k in recorded)
    new_splits = Counter(after[c.id] for c in cases if c.id not in recorded)
    assert new_splits == Counter({"dev": 2, "test": 2})
    # A recorded case stays even where a fresh assignment would put it elsewhere.
    fresh = assign_splits(cases, config)
    moved = next(c.id for c in cases if fresh[c.id] != "test")
    assert assign_splits(cases, config, recorded={moved: "test"})[moved] == "test"
