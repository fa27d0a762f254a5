"""Loading test cases from the bundled dataset, a JSONL, CSV or Parquet file, or a LangSmith dataset.

Loading checks shape only — every row must become a `Case` — and any problem raises one
`DatasetError` naming the file, the line or row, the field and what was expected. Data-quality
rules (unique ids, known spectrums, minimum counts) belong to the dataset suite in
`promptcycle.quality`, so a parsable but bad dataset loads and is then rejected with a report.

File formats, one case per line or row, fields `id, spectrum, inputs, facts, reference, template`
(`reference` and `template` optional):
- `.jsonl`: one JSON object per line; blank lines are skipped.
- `.csv`: a header row; `inputs` and `facts` cells hold JSON objects; `reference` may be omitted.
- `.parquet`: the same columns; `inputs` and `facts` hold JSON strings, structs or maps. Struct
  columns share one schema across rows, so null struct fields are dropped when read back.
- `langsmith:NAME`: the local copy of a LangSmith dataset, written by `promptcycle datasets pull`
  (and by baseline and optimize); see `promptcycle.langsmith.datasets`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from promptcycle.datasets.cases import Case
from promptcycle.errors import DatasetError

__all__ = ["load_cases", "dataset_hash", "limit_cases", "BUNDLED_PREFIX", "LANGSMITH_PREFIX",
           "SUPPORTED_EXTENSIONS", "bundled_datasets", "parse_jsonl", "case_from_record"]

BUNDLED_PREFIX = "bundled:"
LANGSMITH_PREFIX = "langsmith:"
SUPPORTED_EXTENSIONS = (".jsonl", ".csv", ".parquet")
_FIELDS = tuple(Case.model_fields)  # id, spectrum, inputs, facts, reference, template
_REQUIRED = tuple(name for name, f in Case.model_fields.items() if f.is_required())
_OBJECT_FIELDS = ("inputs", "facts")


def load_cases(source: str, *, base_dir: Path | None = None) -> list[Case]:
    """Load the cases of `source`: `bundled:<name>` or a path to a .jsonl, .csv or .parquet file.

    A relative path resolves against `base_dir` (the directory of pipelines.yaml) when given.
    Raises `DatasetError` naming the file, line or row, field and what was expected.
    """
    if source.startswith(BUNDLED_PREFIX):
        return _load_bundled(source.removeprefix(BUNDLED_PREFIX))
    if source.startswith(LANGSMITH_PREFIX):
        from promptcycle.langsmith.datasets import load_snapshot

        return load_snapshot(source.removeprefix(LANGSMITH_PREFIX).strip(), Path(base_dir or "."))
    path = Path(source).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, expected a JSONL, CSV or Parquet file "
                           f"({', '.join(SUPPORTED_EXTENSIONS)}) or '{BUNDLED_PREFIX}<name>'")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise DatasetError(f"{path}: unsupported dataset file type {path.suffix or '(no extension)'!r}; "
                           f"expected one of {', '.join(SUPPORTED_EXTENSIONS)} or '{BUNDLED_PREFIX}<name>'")
    if not path.is_file():
        raise DatasetError(f"{path}: dataset file not found")
    if suffix == ".jsonl":
        return _parse_jsonl(_read_text(path), str(path))
    if suffix == ".csv":
        return _parse_csv(_read_text(path), str(path))
    return _parse_parquet(path)


def bundled_datasets() -> list[str]:
    """Names usable as `bundled:<name>`."""
    data = _data_dir()
    if not data.is_dir():
        return []
    return sorted(p.name.removesuffix(".jsonl") for p in data.iterdir() if p.name.endswith(".jsonl"))


def dataset_hash(cases: Iterable[Case]) -> str:
    """A stable sha256 of the cases' content, independent of their order."""
    digests = sorted(
        # exclude_none: a dataset without the optional `template` keeps the hash it had before the field existed
        json.dumps(c.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":"),
                   ensure_ascii=False)
        for c in cases)
    h = hashlib.sha256()
    for d in digests:
        h.update(d.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def limit_cases(cases: Iterable[Case], per_spectrum: int | None) -> list[Case]:
    """The first `per_spectrum` cases of each spectrum, in dataset order; all cases when None."""
    if per_spectrum is None:
        return list(cases)
    if per_spectrum < 0:
        raise ValueError(f"per_spectrum must be >= 0, found {per_spectrum}")
    taken: dict[str, int] = {}
    kept = []
    for case in cases:
        n = taken.get(case.spectrum, 0)
        if n < per_spectrum:
            kept.append(case)
            taken[case.spectrum] = n + 1
    return kept


# ---------------------------------------------------------------------------------------------

def _load_bundled(name: str) -> list[Case]:
    resource = _data_dir() / f"{name}.jsonl"
    label = f"{BUNDLED_PREFIX}{name}"
    if not resource.is_file():
        known = bundled_datasets()
        raise DatasetError(f"{label}: no bundled dataset named {name!r}; "
                           f"known: {', '.join(BUNDLED_PREFIX + k for k in known) or '(none installed)'}")
    return _parse_jsonl(resource.read_text(encoding="utf-8"), f"{label} (promptcycle/data/{name}.jsonl)")


def _data_dir() -> Traversable:
    try:
        return resources.files("promptcycle") / "data"
    except NotADirectoryError:
        # An editable install made while the package had no __init__.py maps it as a namespace
        # whose path holds a non-directory hook entry; importlib.resources rejects that.
        import promptcycle

        return Path(next(p for p in promptcycle.__path__ if Path(p).is_dir())) / "data"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start}); expected a UTF-8 encoded file") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read file: {exc.strerror}") from None


def parse_jsonl(text: str, file: str) -> list[Case]:
    """The cases of JSONL `text`; errors name `file` and the line."""
    return _parse_jsonl(text, file)


def case_from_record(record: dict[str, Any], where: str) -> Case:
    """`record` (the fields of a case) as a `Case`; `DatasetError` naming `where`, the field and what was expected."""
    return _to_case(record, where)


def _parse_jsonl(text: str, file: str) -> list[Case]:
    cases = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}: line {line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: invalid JSON at column {exc.colno}: {exc.msg}; "
                               f"expected one JSON object per line") from None
        if not isinstance(record, dict):
            raise DatasetError(f"{where}: expected a JSON object with fields {', '.join(_FIELDS)}, "
                               f"found {_json_type(record)}")
        cases.append(_to_case(record, where))
    return cases


def _parse_csv(text: str, file: str) -> list[Case]:
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    _check_columns(header, f"{file}: header")
    cases = []
    end_of_previous = reader.line_num
    for row_no, row in enumerate(reader, start=1):
        # A quoted cell may span lines: name the line where the row starts.
        where = f"{file}: row {row_no} (line {end_of_previous + 1})"
        end_of_previous = reader.line_num
        if None in row:  # more cells than header columns
            raise DatasetError(f"{where}: {len(header) + len(row[None])} cells, expected {len(header)} "
                               f"(one per header column)")
        record: dict[str, Any] = {}
        for name in _FIELDS:
            value = row.get(name)
            if value is None or value == "":
                continue  # an empty cell is a missing value
            if name in _OBJECT_FIELDS:
                value = _parse_json_cell(value, where, name)
            record[name] = value
        cases.append(_to_case(record, where))
    return cases


def _parse_parquet(path: Path) -> list[Case]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = str(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{file}: cannot read as Parquet: {exc}") from None
    columns = [c for c in table.column_names if not c.startswith("__index_level_")]
    _check_columns(columns, f"{file}: columns")
    object_kinds = {name: _arrow_kind(table.schema.field(name).type) for name in _OBJECT_FIELDS}
    cases = []
    for row_no, row in enumerate(table.select(columns).to_pylist(), start=1):
        where = f"{file}: row {row_no}"
        record: dict[str, Any] = {}
        for name in _FIELDS:
            value = row.get(name)
            if value is None:
                continue
            if name in _OBJECT_FIELDS:
                value = _object_value(value, object_kinds[name], where, name)
            record[name] = value
        cases.append(_to_case(record, where))
    return cases


def _check_columns(columns: list[str], where: str) -> None:
    missing = [c for c in _REQUIRED if c not in columns]
    if missing:
        raise DatasetError(f"{where}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                           f"expected columns {', '.join(_FIELDS)} (found {', '.join(columns) or 'none'})")
    unknown = [c for c in columns if c not in _FIELDS]
    if unknown:
        raise DatasetError(f"{where}: unknown column{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                           f"expected columns {', '.join(_FIELDS)}")


def _parse_json_cell(text: str, where: str, field: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: field {field!r}: invalid JSON at column {exc.colno}: {exc.msg}; "
                           f"expected a JSON object") from None
    if not isinstance(value, dict):
        raise DatasetError(f"{where}: field {field!r}: expected a JSON object, found {_json_type(value)}")
    return value


def _arrow_kind(arrow_type: Any) -> str:
    import pyarrow as pa

    if pa.types.is_struct(arrow_type):
        return "struct"
    if pa.types.is_map(arrow_type):
        return "map"
    return "other"


def _object_value(value: Any, kind: str, where: str, field: str) -> Any:
    if isinstance(value, str):
        return _parse_json_cell(value, where, field)
    if kind == "struct":
        return _drop_null_fields(value)
    if kind == "map":
        return _map_to_dict(value)
    return value  # left for the Case model to reject with the expected type


def _drop_null_fields(value: Any) -> Any:
    # Every row of a struct column has every field of the union schema; absent ones read as None.
    if isinstance(value, dict):
        return {k: _drop_null_fields(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_null_fields(v) for v in value]
    return value


def _map_to_dict(value: Any) -> Any:
    # pyarrow returns a map cell as a list of (key, value) pairs.
    if isinstance(value, list) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        return {str(k): _map_to_dict(v) for k, v in value}
    return value


def _to_case(record: dict[str, Any], where: str) -> Case:
    try:
        return Case.model_validate(record)
    except ValidationError as exc:
        raise DatasetError(f"{where}: {_describe_error(exc, record)}") from None


def _describe_error(exc: ValidationError, record: dict[str, Any]) -> str:
    err = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in err["loc"]) or "(row)"
    kind = err["type"]
    if kind == "missing":
        return f"missing field {field!r}; expected fields {', '.join(_FIELDS)}"
    if kind == "extra_forbidden":
        return f"unknown field {field!r}; expected fields {', '.join(_FIELDS)}"
    top = str(err["loc"][0]) if err["loc"] else ""
    found = _json_type(record.get(top)) if top in record else "nothing"
    if top in _OBJECT_FIELDS and len(err["loc"]) == 1:
        return f"field {field!r}: expected a JSON object, found {found}"
    if kind == "string_too_short":
        return f"field {field!r}: expected a non-empty string, found an empty string"
    if kind == "string_type":
        return f"field {field!r}: expected a string, found {found}"
    return f"field {field!r}: {err['msg']} (found {found})"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        shown = value if len(value) <= 30 else value[:27] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
