"""Test cases to and from LangSmith datasets.

    cases, copy = pull_cases(conn, "support-cases", mapping, base_dir)    # also saved as a local copy
    load_snapshot("support-cases", base_dir)                              # what `langsmith:` sources load
    report = push_cases(conn, "promptcycle-support", cases, splits, pipeline="support")

A `langsmith:NAME` dataset source is read from a local copy (`.promptcycle/langsmith/` beside
pipelines.yaml) that `pull_cases` writes: evaluations never wait on LangSmith, every task of a run sees
the same cases, and LangSmith being slow or down at the start of a run means the last copy is used,
saying so. Pulled cases go through the same loader checks and the same Great Expectations dataset
suite as any other source.

`push_cases` publishes cases idempotently: each case is one example with a stable id (derived from the
dataset's id and the case id), inputs = the case's inputs, outputs = {"facts", "reference"}, metadata =
{"case_id", "spectrum", "template", "promptcycle_pipeline"} and its split (train / dev / test). Examples
that already hold the same content are left alone, changed ones are updated, and examples of cases the
pipeline no longer has are deleted; pushing twice changes nothing the second time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from promptcycle.config import LangSmithMapping
from promptcycle.datasets.cases import Case
from promptcycle.errors import DatasetError, LangSmithError, LangSmithUnavailableError

__all__ = ["PushReport", "SnapshotInfo", "Refresh", "pull_cases", "push_cases", "refresh_local_copy",
           "load_snapshot", "snapshot_info", "snapshot_path", "example_of", "case_of", "value_at"]

SNAPSHOT_DIR = Path(".promptcycle") / "langsmith"
_NAMESPACE = uuid.UUID("0f0c7e4a-5d1b-4c1e-9a53-70c1ec7c1e12")  # promptcycle's example ids
_MAPPED = ("id", "spectrum", "inputs", "facts", "reference", "template")


# -- the local copy ---------------------------------------------------------------------------------------------

def snapshot_path(dataset: str, base_dir: Path) -> Path:
    """Where the local copy of the LangSmith dataset `dataset` lives (a JSONL of cases)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", dataset)[:80]
    digest = hashlib.sha256(dataset.encode()).hexdigest()[:8]
    return Path(base_dir) / SNAPSHOT_DIR / f"{safe}-{digest}.jsonl"


@dataclass(frozen=True)
class SnapshotInfo:
    """Where a local copy came from and when (kept beside it, as `<copy>.json`)."""

    dataset: str
    dataset_id: str
    api_url: str
    examples: int
    pulled_at: str


def snapshot_info(dataset: str, base_dir: Path) -> SnapshotInfo | None:
    meta = snapshot_path(dataset, base_dir).with_suffix(".json")
    try:
        return SnapshotInfo(**json.loads(meta.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def load_snapshot(dataset: str, base_dir: Path) -> list[Case]:
    """The cases of the local copy of `dataset`; `DatasetError` when there is none yet."""
    from promptcycle.datasets.loaders import parse_jsonl

    path = snapshot_path(dataset, base_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"langsmith:{dataset}: no local copy of this LangSmith dataset yet ({path}); run "
                           f"`promptcycle datasets pull --pipeline NAME` (baseline and optimize pull it "
                           "themselves when LangSmith is configured)") from None
    return parse_jsonl(text, f"langsmith:{dataset} (local copy {path})")


def _write_snapshot(dataset: str, base_dir: Path, cases: list[Case], info: SnapshotInfo) -> Path:
    path = snapshot_path(dataset, base_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(c.model_dump(mode="json", exclude_none=True), ensure_ascii=False, sort_keys=True)
                    + "\n" for c in cases)
    for target, text in ((path, lines), (path.with_suffix(".json"), json.dumps(asdict(info), indent=2) + "\n")):
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, target)  # never half-written: a reader sees the old copy or the new one
    return path


# -- pulling ----------------------------------------------------------------------------------------------------

def value_at(example: Any, path: str) -> Any:
    """The value at the dotted `path` of a LangSmith example (`id`, `inputs.x`, `metadata.case_id` …), or None."""
    root, *rest = path.split(".")
    value: Any = str(example.id) if root == "id" else getattr(example, root, None)
    for part in rest:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def case_of(example: Any, mapping: LangSmithMapping, where: str) -> Case:
    """The test case an example holds, through `mapping`; `DatasetError` naming the example, the case field,
    the mapping path and what was expected."""
    from promptcycle.datasets.loaders import case_from_record

    record: dict[str, Any] = {}
    for name in _MAPPED:
        path = getattr(mapping, name)
        if path is None:
            continue
        value = value_at(example, path)
        if value is None and name == "id":
            value = str(example.id)
        if value is None:
            if name in ("spectrum", "inputs", "facts"):
                raise DatasetError(f"{where}: no value at {path!r} for the case's {name} "
                                   f"(dataset.mapping.{name}); expected "
                                   f"{'a string' if name == 'spectrum' else 'an object'} there")
            continue
        record[name] = value
    return case_from_record(record, where)


def pull_cases(conn: Any, dataset: str, mapping: LangSmithMapping | None, base_dir: Path) -> tuple[list[Case], Path]:
    """Read every example of the LangSmith dataset `dataset`, map them to cases, and save the local copy.

    Raises `DatasetError` for a missing dataset or an example that does not map to a case (the local copy
    is then left as it was), `LangSmithUnavailableError` when LangSmith is down or too slow.
    """
    from langsmith import utils as ls_utils

    mapping = mapping or LangSmithMapping()
    with conn.session(f"reading the LangSmith dataset {dataset!r}") as client:
        try:
            found = client.read_dataset(dataset_name=dataset)
        except ls_utils.LangSmithNotFoundError:
            raise DatasetError(f"langsmith:{dataset}: no dataset named {dataset!r} at {conn.api_url}") from None
        examples = list(client.list_examples(dataset_id=found.id))
    examples.sort(key=lambda e: (e.created_at, str(e.id)))  # a stable order: the dataset's own
    cases = [case_of(e, mapping, f"langsmith:{dataset}: example {e.id}") for e in examples]
    info = SnapshotInfo(dataset=dataset, dataset_id=str(found.id), api_url=conn.api_url, examples=len(examples),
                        pulled_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return cases, _write_snapshot(dataset, base_dir, cases, info)


@dataclass(frozen=True)
class Refresh:
    """What `refresh_local_copy` did: 'pulled' a fresh copy, or 'kept' the last one (and why)."""

    dataset: str
    status: str
    cases: int
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def refresh_local_copy(config: Any, pipeline: str, api_key: Any = None) -> Refresh | None:
    """Pull the pipeline's `langsmith:` dataset into its local copy before a run; None for other sources.

    LangSmith being slow, down or unconfigured never stops a run that has a local copy: the copy is kept
    and the note says why. Without a copy it is a `DatasetError` saying what to do. A dataset that no
    longer maps to valid cases, or a refused key, raises as it is (bad input to fix, not an outage).
    """
    from promptcycle.langsmith.connection import connection

    pipe = config.pipeline(pipeline)
    name = pipe.dataset.langsmith_dataset
    if name is None:
        return None
    base_dir = config.source_path.parent if config.source_path else Path.cwd()
    previous = snapshot_info(name, base_dir)
    have_copy = snapshot_path(name, base_dir).exists()
    since = f" pulled {previous.pulled_at}" if previous else ""
    conn = connection(config, pipeline, api_key)
    if conn is None:
        if have_copy:
            return Refresh(name, "kept", len(load_snapshot(name, base_dir)),
                           f"no LangSmith API key: using the local copy of langsmith:{name}{since}")
        raise DatasetError(f"langsmith:{name}: the first pull of this LangSmith dataset needs an API key (set "
                           "LANGSMITH_API_KEY, or `langsmith.api_key_env` / `langsmith.api_key_block` in "
                           "pipelines.yaml); there is no local copy yet")
    if have_copy:  # with a copy to fall back on, a run does not wait on LangSmith's retries
        conn = replace(conn, max_retries=0)
    try:
        cases, _ = pull_cases(conn, name, pipe.dataset.mapping, base_dir)
    except LangSmithUnavailableError as exc:
        if have_copy:
            return Refresh(name, "kept", len(load_snapshot(name, base_dir)),
                           f"{exc}; using the local copy of langsmith:{name}{since}")
        raise DatasetError(f"langsmith:{name}: cannot pull the dataset and there is no local copy yet: {exc}") \
            from None
    return Refresh(name, "pulled", len(cases), f"pulled {len(cases)} cases of langsmith:{name} from {conn.api_url}")


# -- pushing ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PushReport:
    """What one push did to the LangSmith dataset."""

    dataset: str
    dataset_id: str
    api_url: str
    created_dataset: bool
    created: int
    updated: int
    deleted: int
    unchanged: int
    splits: dict[str, int]

    @property
    def changed(self) -> bool:
        return self.created_dataset or bool(self.created or self.updated or self.deleted)

    def summary(self) -> str:
        if not self.changed:
            return f"LangSmith dataset {self.dataset!r} already holds these {self.unchanged} cases: nothing changed"
        made = " (dataset created)" if self.created_dataset else ""
        return (f"LangSmith dataset {self.dataset!r}{made}: {self.created} created, {self.updated} updated, "
                f"{self.deleted} deleted, {self.unchanged} unchanged")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed}


def example_of(case: Case, split: str, dataset_id: str, pipeline: str) -> dict[str, Any]:
    """The example `push_cases` writes for `case` (the default mapping reads it back as the same case)."""
    metadata: dict[str, Any] = {"case_id": case.id, "spectrum": case.spectrum, "promptcycle_pipeline": pipeline}
    if case.template is not None:
        metadata["template"] = case.template
    return {"id": str(uuid.uuid5(_NAMESPACE, f"{dataset_id}/{case.id}")), "inputs": case.inputs,
            "outputs": {"facts": case.facts, "reference": case.reference}, "metadata": metadata, "split": split}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _same(existing: Any, wanted: dict[str, Any]) -> bool:
    meta = existing.metadata or {}
    return (_canonical(existing.inputs or {}) == _canonical(wanted["inputs"])
            and _canonical(existing.outputs or {}) == _canonical(wanted["outputs"])
            and all(_canonical(meta.get(k)) == _canonical(v) for k, v in wanted["metadata"].items())
            and list(meta.get("dataset_split") or []) == [wanted["split"]])


def push_cases(conn: Any, dataset: str, cases: list[Case], splits: dict[str, str], *, pipeline: str,
               description: str = "") -> PushReport:
    """Publish `cases` (with their `splits`: case id -> split) as the LangSmith dataset `dataset`; see the
    module docstring. Raises `LangSmithError` / `LangSmithUnavailableError`."""
    from langsmith import utils as ls_utils

    missing = [c.id for c in cases if c.id not in splits]
    if missing:
        raise LangSmithError(f"{len(missing)} cases have no split (first: {missing[0]!r}); nothing was pushed")
    with conn.session(f"publishing {len(cases)} cases to the LangSmith dataset {dataset!r}") as client:
        try:
            found = client.read_dataset(dataset_name=dataset)
            created_dataset = False
        except ls_utils.LangSmithNotFoundError:
            found = client.create_dataset(dataset, description=description or f"promptcycle pipeline {pipeline}",
                                          metadata={"promptcycle_pipeline": pipeline})
            created_dataset = True
        dataset_id = str(found.id)
        existing = {str(e.id): e for e in client.list_examples(dataset_id=found.id)} if not created_dataset else {}
        wanted = [example_of(c, splits[c.id], dataset_id, pipeline) for c in cases]
        wanted_ids = {w["id"] for w in wanted}
        create = [w for w in wanted if w["id"] not in existing]
        update = [w for w in wanted if w["id"] in existing and not _same(existing[w["id"]], w)]
        stale = [i for i, e in existing.items() if i not in wanted_ids
                 and (e.metadata or {}).get("promptcycle_pipeline") == pipeline and "case_id" in (e.metadata or {})]
        if create:
            client.create_examples(dataset_id=found.id, examples=[
                {"id": w["id"], "inputs": w["inputs"], "reference_outputs": w["outputs"], "metadata": w["metadata"],
                 "split": w["split"]} for w in create])
        if update:
            client.update_examples(dataset_id=found.id, updates=[
                {"id": w["id"], "inputs": w["inputs"], "outputs": w["outputs"],
                 "metadata": {**(existing[w["id"]].metadata or {}), **w["metadata"], "dataset_split": [w["split"]]},
                 "split": w["split"]} for w in update])
        if stale:
            client.delete_examples(stale)
    counts: dict[str, int] = {}
    for c in cases:
        counts[splits[c.id]] = counts.get(splits[c.id], 0) + 1
    return PushReport(dataset=dataset, dataset_id=dataset_id, api_url=conn.api_url, created_dataset=created_dataset,
                      created=len(create), updated=len(update), deleted=len(stale),
                      unchanged=len(wanted) - len(create) - len(update), splits=dict(sorted(counts.items())))
