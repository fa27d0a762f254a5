"""Prompt versions and their lineage, labels with their history, decisions with their evidence, diagnoses."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import duckdb

from promptcycle.errors import StoreError
from promptcycle.store.connection import (
    StoreConnection,
    _dump_evidence,
    _load_json,
    _require_text,
    _rows,
)
from promptcycle.store.records import (
    DECISION_KINDS,
    LABELS,
    DecisionRecord,
    LabelEvent,
    PromptVersionRecord,
    from_db_time,
    to_db_time,
    utc_now,
)

__all__ = ["PromptsTables"]

_PROMPT_COLUMNS = ("prompt_hash", "pipeline", "system", "template", "variables", "parent_hash", "strategy",
                   "rationale", "scope", "created_at")
_PROMPT_SELECT = f"SELECT {', '.join(_PROMPT_COLUMNS)} FROM prompt_versions"
_LABEL_COLUMNS = ("pipeline", "label", "scope", "prompt_hash", "updated_at", "updated_by")
_EVENT_COLUMNS = ("event_id", "pipeline", "label", "scope", "from_hash", "to_hash", "actor", "reason",
                  "evidence_json", "forced", "created_at")
_DECISION_COLUMNS = ("decision_id", "run_id", "pipeline", "kind", "prompt_hash", "baseline_hash", "decision",
                     "evidence_json", "created_at")


def _prompt_from_row(row: dict[str, Any]) -> PromptVersionRecord:
    row = dict(row)
    row["variables"] = list(row["variables"] or [])
    row["created_at"] = from_db_time(row["created_at"])
    return PromptVersionRecord(**row)


def _event_from_row(row: dict[str, Any]) -> LabelEvent:
    row = dict(row)
    row["evidence"] = _load_json(row.pop("evidence_json"))
    row["created_at"] = from_db_time(row["created_at"])
    return LabelEvent(**row)


def _decision_from_row(row: dict[str, Any]) -> DecisionRecord:
    row = dict(row)
    row["evidence"] = _load_json(row.pop("evidence_json")) or {}
    row["created_at"] = from_db_time(row["created_at"])
    return DecisionRecord(**row)


class PromptsTables(StoreConnection):
    """Prompt versions, labels (moved atomically, with an event each), decisions and diagnoses."""

    # -- prompt versions -----------------------------------------------------------------------

    def write_prompt_version(self, version: PromptVersionRecord) -> bool:
        """Record a prompt version once; True if new. Versions are immutable: writing a known hash
        again keeps the first record, and a known hash with different text is a `StoreError`."""
        values = [getattr(version, c) for c in _PROMPT_COLUMNS]
        values[_PROMPT_COLUMNS.index("variables")] = list(version.variables)
        values[_PROMPT_COLUMNS.index("created_at")] = to_db_time(version.created_at or utc_now())
        with self._transaction(f"write prompt version {version.prompt_hash}") as con:
            found = con.execute("SELECT system, template FROM prompt_versions WHERE prompt_hash = ?",
                                [version.prompt_hash]).fetchone()
            if found is not None:
                if tuple(found) != (version.system, version.template):
                    raise StoreError(f"prompt version {version.prompt_hash} is already recorded with different "
                                     f"text; prompt versions are immutable and keyed by their content hash")
                return False
            placeholders = ", ".join("?" for _ in _PROMPT_COLUMNS)
            con.execute(f"INSERT INTO prompt_versions ({', '.join(_PROMPT_COLUMNS)}) VALUES ({placeholders})",
                        values)
        return True

    def get_prompt_version(self, prompt_hash: str) -> PromptVersionRecord | None:
        with self._connect(f"read prompt version {prompt_hash}") as con:
            rows = _rows(con.execute(f"{_PROMPT_SELECT} WHERE prompt_hash = ?", [prompt_hash]))
        return _prompt_from_row(rows[0]) if rows else None

    def prompt_versions(self, pipeline: str) -> list[PromptVersionRecord]:
        """Every recorded version of the pipeline's prompt, oldest first."""
        with self._connect(f"read the prompt versions of {pipeline}") as con:
            rows = _rows(con.execute(f"{_PROMPT_SELECT} WHERE pipeline = ? ORDER BY created_at, prompt_hash",
                                     [pipeline]))
        return [_prompt_from_row(r) for r in rows]

    def lineage(self, prompt_hash: str) -> list[PromptVersionRecord]:
        """The version, its parent, its grandparent … up to the root (a version without a recorded
        parent). Empty when `prompt_hash` is unknown. A parent chain that loops back on itself stops
        before the repeat instead of walking forever."""
        chain: list[PromptVersionRecord] = []
        seen: set[str] = set()
        with self._connect(f"read the lineage of prompt version {prompt_hash}") as con:
            current: str | None = prompt_hash
            while current is not None and current not in seen:
                seen.add(current)
                rows = _rows(con.execute(f"{_PROMPT_SELECT} WHERE prompt_hash = ?", [current]))
                if not rows:
                    break
                chain.append(_prompt_from_row(rows[0]))
                current = chain[-1].parent_hash
        return chain

    def children(self, prompt_hash: str) -> list[PromptVersionRecord]:
        """The versions derived directly from `prompt_hash`, oldest first."""
        with self._connect(f"read the children of prompt version {prompt_hash}") as con:
            rows = _rows(con.execute(f"{_PROMPT_SELECT} WHERE parent_hash = ? ORDER BY created_at, prompt_hash",
                                     [prompt_hash]))
        return [_prompt_from_row(r) for r in rows]

    # -- labels --------------------------------------------------------------------------------

    def move_label(self, pipeline: str, label: str, to_hash: str, *, scope: str | None = "", actor: str,
                   reason: str, evidence: dict[str, Any] | None = None, forced: bool = False) -> LabelEvent | None:
        """Point `label` ('production', 'candidate' or 'previous') of `pipeline` at prompt version
        `to_hash` and append the move to the label history, in one transaction.

        `scope` is '' (or None) for every model, else the model the label applies to. `actor` says
        who or which flow run moved it, `reason` why; `evidence` (JSON-able) and `forced` are kept
        with the event. Returns the event, or None — writing nothing — when the label already points
        at `to_hash`. `to_hash` must be a recorded version of this pipeline, else `StoreError`.
        """
        if label not in LABELS:
            raise ValueError(f"a prompt label is one of {', '.join(LABELS)}, not {label!r}")
        _require_text(to_hash, "the prompt version to move a label to")
        _require_text(actor, "the actor of a label move (who or which flow run moved it)")
        _require_text(reason, "the reason for a label move")
        scope = scope or ""
        where = f"{label!r} of pipeline {pipeline!r}" + (f" for model {scope!r}" if scope else "")
        evidence_json = _dump_evidence(evidence, f"the evidence for moving {where}")
        with self._transaction(f"move label {where} to {to_hash}") as con:
            return self._move_label_in(con, pipeline, label, to_hash, scope=scope, actor=actor, reason=reason,
                                       evidence=evidence, evidence_json=evidence_json, forced=forced)

    def _move_label_in(self, con: duckdb.DuckDBPyConnection, pipeline: str, label: str, to_hash: str, *, scope: str,
                       actor: str, reason: str, evidence: dict[str, Any] | None, evidence_json: str | None,
                       forced: bool) -> LabelEvent | None:
        """`move_label`'s work inside the caller's transaction."""
        where = f"{label!r} of pipeline {pipeline!r}" + (f" for model {scope!r}" if scope else "")
        now = utc_now()
        found = con.execute("SELECT pipeline FROM prompt_versions WHERE prompt_hash = ?", [to_hash]).fetchone()
        if found is None:
            raise StoreError(f"cannot move label {where} to prompt version {to_hash!r}: no such version in "
                             f"{self.path}; record it with write_prompt_version first")
        if found[0] != pipeline:
            raise StoreError(f"cannot move label {where} to prompt version {to_hash!r}: that version "
                             f"belongs to pipeline {found[0]!r}")
        current = con.execute("SELECT prompt_hash FROM prompt_labels WHERE pipeline = ? AND label = ? "
                              "AND scope = ?", [pipeline, label, scope]).fetchone()
        from_hash = current[0] if current else None
        if from_hash == to_hash:
            return None
        con.execute(f"INSERT INTO prompt_labels ({', '.join(_LABEL_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (pipeline, label, scope) DO UPDATE SET prompt_hash = excluded.prompt_hash, "
                    "updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                    [pipeline, label, scope, to_hash, to_db_time(now), actor])
        event = LabelEvent(event_id=uuid.uuid4().hex, pipeline=pipeline, label=label, scope=scope,
                           from_hash=from_hash, to_hash=to_hash, actor=actor, reason=reason, evidence=evidence,
                           forced=bool(forced), created_at=now)
        # The file is held exclusively for the transaction, so max + 1 cannot be taken twice.
        con.execute(f"INSERT INTO label_events (seq, {', '.join(_EVENT_COLUMNS)}) "
                    "SELECT coalesce(max(seq), 0) + 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM label_events",
                    [event.event_id, pipeline, label, scope, from_hash, to_hash, actor, reason, evidence_json,
                     event.forced, to_db_time(now)])
        return event

    def move_labels(self, pipeline: str, moves: Sequence[tuple[str, str]], *, scope: str | None = "", actor: str,
                    reason: str, evidence: dict[str, Any] | None = None,
                    forced: bool = False) -> list[LabelEvent]:
        """Several `move_label`s of one pipeline — (label, to_hash) pairs, applied in order — in ONE
        transaction: all move or none does. Returns the events of the labels that moved."""
        for label, to_hash in moves:
            if label not in LABELS:
                raise ValueError(f"a prompt label is one of {', '.join(LABELS)}, not {label!r}")
            _require_text(to_hash, "the prompt version to move a label to")
        _require_text(actor, "the actor of a label move (who or which flow run moved it)")
        _require_text(reason, "the reason for a label move")
        evidence_json = _dump_evidence(evidence, f"the evidence for moving labels of {pipeline!r}")
        events = []
        with self._transaction(f"move {len(moves)} labels of {pipeline}") as con:
            for label, to_hash in moves:
                event = self._move_label_in(con, pipeline, label, to_hash, scope=scope or "", actor=actor,
                                            reason=reason, evidence=evidence, evidence_json=evidence_json,
                                            forced=forced)
                if event is not None:
                    events.append(event)
        return events

    def get_label(self, pipeline: str, label: str, scope: str | None = "") -> str | None:
        """The prompt hash `label` points at for exactly this scope ('' = every model), or None.
        A model's scope does not fall back to the every-model label; ask for '' for that."""
        with self._connect(f"read label {label} of {pipeline}") as con:
            found = con.execute("SELECT prompt_hash FROM prompt_labels WHERE pipeline = ? AND label = ? "
                                "AND scope = ?", [pipeline, label, scope or ""]).fetchone()
        return found[0] if found else None

    def labels(self, pipeline: str | None = None) -> list[dict[str, Any]]:
        """Where every label points (of one pipeline, or all): dicts with pipeline, label, scope,
        prompt_hash, updated_at and updated_by, ordered by pipeline, label, scope."""
        where, params = ("WHERE pipeline = ?", [pipeline]) if pipeline is not None else ("", [])
        with self._connect("read the prompt labels") as con:
            rows = _rows(con.execute(f"SELECT {', '.join(_LABEL_COLUMNS)} FROM prompt_labels {where} "
                                     "ORDER BY pipeline, label, scope", params))
        for row in rows:
            row["updated_at"] = from_db_time(row["updated_at"])
        return rows

    def label_history(self, pipeline: str, label: str | None = None, limit: int | None = 500, *,
                      scope: str | None = None) -> list[LabelEvent]:
        """The pipeline's label moves, newest first: of one `label` (None: all) and one `scope`
        (None: all; '' the every-model labels), at most `limit` of them (None: all)."""
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative integer or None, not {limit!r}")
        where, params = "pipeline = ?", [pipeline]
        if label is not None:
            where, params = where + " AND label = ?", [*params, label]
        if scope is not None:
            where, params = where + " AND scope = ?", [*params, scope]
        limit_sql = "" if limit is None else f" LIMIT {int(limit)}"
        with self._connect(f"read the label history of {pipeline}") as con:
            rows = _rows(con.execute(f"SELECT {', '.join(_EVENT_COLUMNS)} FROM label_events WHERE {where} "
                                     f"ORDER BY seq DESC{limit_sql}", params))
        return [_event_from_row(r) for r in rows]

    # -- decisions and diagnoses ---------------------------------------------------------------

    def write_decision(self, decision: DecisionRecord) -> DecisionRecord:
        """Record a decision with its evidence; return it as stored (with its id and time).

        Keyed by (run_id, prompt_hash, kind): a resumed run deciding again replaces the earlier
        decision and keeps its `decision_id`, so there is one decision per candidate and step.
        """
        if decision.kind not in DECISION_KINDS:
            raise ValueError(f"a decision kind is one of {', '.join(DECISION_KINDS)}, not {decision.kind!r}")
        for name in ("run_id", "pipeline", "prompt_hash", "decision"):
            _require_text(getattr(decision, name), f"a decision's {name}")
        what = f"the {decision.kind} decision on {decision.prompt_hash} in run {decision.run_id}"
        evidence_json = _dump_evidence(decision.evidence or {}, f"the evidence of {what}")
        created_at = to_db_time(decision.created_at or utc_now())
        with self._transaction(f"write {what}") as con:
            found = con.execute("SELECT decision_id FROM decisions WHERE run_id = ? AND prompt_hash = ? AND kind = ?",
                                [decision.run_id, decision.prompt_hash, decision.kind]).fetchone()
            if found is not None:
                decision_id = found[0]
                con.execute("UPDATE decisions SET pipeline = ?, baseline_hash = ?, decision = ?, evidence_json = ?, "
                            "created_at = ? WHERE decision_id = ?",
                            [decision.pipeline, decision.baseline_hash, decision.decision, evidence_json,
                             created_at, decision_id])
            else:
                decision_id = decision.decision_id or uuid.uuid4().hex
                con.execute(f"INSERT INTO decisions ({', '.join(_DECISION_COLUMNS)}) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [decision_id, decision.run_id, decision.pipeline, decision.kind, decision.prompt_hash,
                             decision.baseline_hash, decision.decision, evidence_json, created_at])
        return replace(decision, decision_id=decision_id, created_at=from_db_time(created_at))

    def decisions(self, run_id: str | None = None, pipeline: str | None = None,
                  kind: str | None = None) -> list[DecisionRecord]:
        """Recorded decisions matching every filter given, oldest first."""
        filters = [(c, v) for c, v in (("run_id", run_id), ("pipeline", pipeline), ("kind", kind)) if v is not None]
        where = ("WHERE " + " AND ".join(f"{c} = ?" for c, _ in filters)) if filters else ""
        with self._connect("read decisions") as con:
            rows = _rows(con.execute(f"SELECT {', '.join(_DECISION_COLUMNS)} FROM decisions {where} "
                                     "ORDER BY created_at, decision_id", [v for _, v in filters]))
        return [_decision_from_row(r) for r in rows]

    def write_diagnosis(self, run_id: str, baseline_run_id: str, diagnosis: dict[str, Any]) -> None:
        """Record what optimization run `run_id` found diagnosing baseline run `baseline_run_id`
        (where and how the prompt fails). Writing it again replaces it."""
        diagnosis_json = _dump_evidence(diagnosis, f"the diagnosis of run {baseline_run_id}")
        with self._transaction(f"write the diagnosis of run {baseline_run_id} for run {run_id}") as con:
            con.execute("INSERT OR REPLACE INTO diagnoses (run_id, baseline_run_id, diagnosis_json, created_at) "
                        "VALUES (?, ?, ?, ?)", [run_id, baseline_run_id, diagnosis_json, to_db_time(utc_now())])

    def get_diagnosis(self, run_id: str, baseline_run_id: str | None = None) -> dict[str, Any] | None:
        """The diagnosis recorded by optimization run `run_id` (of `baseline_run_id`, or the newest
        when None), parsed; None when there is none."""
        where, params = "run_id = ?", [run_id]
        if baseline_run_id is not None:
            where, params = where + " AND baseline_run_id = ?", [*params, baseline_run_id]
        with self._connect(f"read the diagnosis of run {run_id}") as con:
            found = con.execute(f"SELECT diagnosis_json FROM diagnoses WHERE {where} "
                                "ORDER BY created_at DESC, baseline_run_id DESC LIMIT 1", params).fetchone()
        return _load_json(found[0]) if found else None
