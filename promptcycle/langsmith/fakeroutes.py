"""The endpoints of the fake LangSmith (`promptcycle.langsmith.fake`, a test double): one method per route,
each run with the fake's state lock held, returning JSON-able data or raising `_Answer(status, detail)`.
What each route does, and does not, is listed in `promptcycle.langsmith.fake`'s docstring."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import asdict
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from promptcycle.langsmith.fakefilter import FilterError, matches, parse_filter

from promptcycle.langsmith.fake import FAKE_TENANT_ID

if TYPE_CHECKING:
    from promptcycle.langsmith.fake import FakeLangSmith

__all__ = ["Handlers"]

_BATCH_INGEST_CONFIG = {"use_multipart_endpoint": True, "scale_up_qsize_trigger": 1000,
                        "scale_up_nthreads_limit": 16, "scale_down_nempty_trigger": 4, "size_limit": 100,
                        "size_limit_bytes": 20_971_520}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class _Answer(Exception):
    """Stop handling and answer `status` with `detail` (the fake's HTTPException)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def _endpoint(fn: Any) -> Any:
    """Turn `_Answer` into a JSON error and return values into JSON responses; hold the state lock."""
    import functools

    @functools.wraps(fn)
    async def wrapper(self: Handlers, request: Any) -> Any:
        from starlette.responses import JSONResponse, Response

        try:
            raw = await request.body()
            with self.fake._lock:
                result = fn(self, request, raw)
        except _Answer as answer:
            return JSONResponse({"detail": answer.detail}, status_code=answer.status)
        except FilterError as exc:
            return JSONResponse({"detail": f"filter: {exc}"}, status_code=400)
        if isinstance(result, Response):
            return result
        status = 200
        if isinstance(result, tuple):
            result, status = result
        if status == 204:
            return Response(status_code=204)
        return Response(json.dumps(result, default=str), status_code=status, media_type="application/json")

    return wrapper


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise _Answer(422, "the body is not JSON") from None


def _uuid(value: Any, what: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise _Answer(422, f"{what} is not a UUID: {value!r}") from None


def _page(items: list[Any], params: Any, default_limit: int = 100) -> list[Any]:
    offset = int(params.get("offset") or 0)
    limit = int(params.get("limit") or default_limit)
    return items[offset:offset + limit]


def _subset(wanted: dict[str, Any], have: dict[str, Any] | None) -> bool:
    return all((have or {}).get(k) == v for k, v in wanted.items())


def _found(table: dict[str, dict[str, Any]], record_id: str, kind: str) -> dict[str, Any]:
    """The record `record_id` names in `table` (a UUID, else 422), or 404 "`kind` `record_id` not found"."""
    record = table.get(_uuid(record_id, f"{kind.lower()} id"))
    if record is None:
        raise _Answer(404, f"{kind} {record_id} not found")
    return record


def _named(records: list[dict[str, Any]], params: Any) -> list[dict[str, Any]]:
    """`records` kept by the `name` and `name_contains` query parameters, when given."""
    if params.get("name"):
        records = [r for r in records if r["name"] == params["name"]]
    if params.get("name_contains"):
        records = [r for r in records if params["name_contains"] in r["name"]]
    return records


def _update(record: dict[str, Any], raw: bytes, fields: tuple[str, ...]) -> None:
    """Apply a PATCH body to `record`: only `fields`, and a null leaves the field as it was."""
    body = _json(raw) or {}
    record.update({k: v for k, v in body.items() if k in fields and v is not None})


def _delete_where(table: dict[str, dict[str, Any]], field: str, value: str) -> None:
    """Delete the records of `table` whose `field` is `value` (what deleting their parent takes with it)."""
    for key in [k for k, r in table.items() if r[field] == value]:
        del table[key]


def _parse_multipart(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of each part of a multipart/form-data body."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise _Answer(422, "multipart body without a boundary")
    delimiter = b"--" + m.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if name is None:
            raise _Answer(422, "a multipart part without a name")
        parts.append((name.group(1).decode(), data[:-2] if data.endswith(b"\r\n") else data))
    return parts


class Handlers:
    """The endpoints; each runs with the fake's lock held and returns JSON-able data."""

    def __init__(self, fake: FakeLangSmith):
        self.fake = fake

    # -- service ---------------------------------------------------------------------------------------------

    @_endpoint
    def info(self, request: Any, raw: bytes) -> Any:
        return {"version": self.fake.version, "license_expiration_time": None,
                "batch_ingest_config": dict(_BATCH_INGEST_CONFIG), "instance_flags": self.fake.instance_flags,
                "tenant_handle": self.fake.tenant_handle}

    @_endpoint
    def settings(self, request: Any, raw: bytes) -> Any:
        return {"id": FAKE_TENANT_ID, "display_name": "promptcycle tests (fake LangSmith)",
                "created_at": "2026-01-01T00:00:00+00:00", "tenant_handle": self.fake.tenant_handle}

    @_endpoint
    def control_faults(self, request: Any, raw: bytes) -> Any:
        if request.method == "DELETE":
            self.fake.clear_faults()
            return {"faults": 0}
        body = _json(raw) or {}
        allowed = {"status", "path", "method", "times", "retry_after", "delay_s"}
        if set(body) - allowed:
            raise _Answer(422, f"unknown fault fields {sorted(set(body) - allowed)}; known: {sorted(allowed)}")
        try:
            return asdict(self.fake.fail(**body))
        except (TypeError, ValueError) as exc:
            raise _Answer(422, str(exc)) from None

    @_endpoint
    def control_state(self, request: Any, raw: bytes) -> Any:
        return self.fake.state()

    @_endpoint
    def control_reset(self, request: Any, raw: bytes) -> Any:
        self.fake.reset()
        return {"reset": True}

    # -- datasets --------------------------------------------------------------------------------------------

    def _dataset_out(self, d: dict[str, Any]) -> dict[str, Any]:
        examples = [e for e in self.fake.examples.values() if e["dataset_id"] == d["id"]]
        sessions = [s for s in self.fake.sessions.values() if s.get("reference_dataset_id") == d["id"]]
        return {**d, "example_count": len(examples), "session_count": len(sessions),
                "last_session_start_time": max((s["start_time"] for s in sessions), default=None)}

    def _dataset(self, dataset_id: str) -> dict[str, Any]:
        return _found(self.fake.datasets, dataset_id, "Dataset")

    @_endpoint
    def datasets(self, request: Any, raw: bytes) -> Any:
        if request.method == "POST":
            body = _json(raw) or {}
            name = body.get("name")
            if not name:
                raise _Answer(422, "a dataset needs a name")
            if self.fake.dataset_by_name(name):
                raise _Answer(409, f"Dataset with name {name!r} already exists")
            now = _now()
            d = {"id": _uuid(body.get("id") or uuid.uuid4(), "dataset id"), "name": name,
                 "description": body.get("description"), "data_type": body.get("data_type") or "kv",
                 "created_at": now, "modified_at": now, "tenant_id": FAKE_TENANT_ID,
                 "inputs_schema_definition": body.get("inputs_schema_definition"),
                 "outputs_schema_definition": body.get("outputs_schema_definition"),
                 "transformations": body.get("transformations"),
                 "metadata": ((body.get("extra") or {}).get("metadata"))}
            self.fake.datasets[d["id"]] = d
            return self._dataset_out(d)
        q = request.query_params
        found = list(self.fake.datasets.values())
        if q.getlist("id"):
            ids = {_uuid(i, "dataset id") for i in q.getlist("id")}
            found = [d for d in found if d["id"] in ids]
        found = _named(found, q)
        if q.get("data_type"):
            found = [d for d in found if d["data_type"] == q["data_type"]]
        if q.get("metadata"):
            found = [d for d in found if _subset(json.loads(q["metadata"]), d.get("metadata"))]
        return [self._dataset_out(d) for d in _page(found, q)]

    @_endpoint
    def dataset(self, request: Any, raw: bytes) -> Any:
        d = self._dataset(request.path_params["id"])
        if request.method == "DELETE":
            del self.fake.datasets[d["id"]]
            _delete_where(self.fake.examples, "dataset_id", d["id"])
            return {}
        if request.method == "PATCH":
            _update(d, raw, ("name", "description"))
            d["modified_at"] = _now()
        return self._dataset_out(d)

    @_endpoint
    def splits(self, request: Any, raw: bytes) -> Any:
        d = self._dataset(request.path_params["id"])
        mine = [e for e in self.fake.examples.values() if e["dataset_id"] == d["id"]]
        if request.method == "PUT":
            body = _json(raw) or {}
            split, ids = body.get("split_name"), {str(i) for i in body.get("examples") or []}
            for e in mine:
                if e["id"] in ids:
                    current = [s for s in e["metadata"]["dataset_split"] if s != "base"]
                    new = [s for s in current if s != split] if body.get("remove") else sorted({*current, split})
                    e["metadata"]["dataset_split"] = new or ["base"]
            return [e["id"] for e in mine if e["id"] in ids]
        return sorted({s for e in mine for s in e["metadata"].get("dataset_split", [])})

    # -- examples --------------------------------------------------------------------------------------------

    def _example_in(self, body: dict[str, Any], dataset_id: str | None = None) -> dict[str, Any]:
        dataset = self._dataset(dataset_id or body.get("dataset_id") or "")
        eid = _uuid(body.get("id") or uuid.uuid4(), "example id")
        if eid in self.fake.examples:
            raise _Answer(409, f"Example {eid} already exists")
        metadata = dict(body.get("metadata") or {})
        split = body.get("split")
        metadata["dataset_split"] = ([split] if isinstance(split, str) else list(split)) if split else \
            list(metadata.get("dataset_split") or ["base"])
        now = _now()
        return {"id": eid, "dataset_id": dataset["id"], "inputs": body.get("inputs") or {},
                "outputs": body.get("outputs"), "metadata": metadata, "created_at": body.get("created_at") or now,
                "modified_at": now, "source_run_id": body.get("source_run_id")}

    def _example_update(self, body: dict[str, Any], example_id: str | None = None) -> dict[str, Any]:
        e = self._example(example_id or body.get("id") or "")
        for key in ("inputs", "outputs"):
            if body.get(key) is not None:
                e[key] = body[key]
        split = e["metadata"].get("dataset_split", ["base"])
        if body.get("metadata") is not None:
            e["metadata"] = dict(body["metadata"])
        if body.get("split") is not None:
            split = [body["split"]] if isinstance(body["split"], str) else list(body["split"])
        e["metadata"]["dataset_split"] = split
        e["modified_at"] = _now()
        return e

    def _example(self, example_id: str) -> dict[str, Any]:
        return _found(self.fake.examples, example_id, "Example")

    @_endpoint
    def examples_root(self, request: Any, raw: bytes) -> Any:
        q = request.query_params
        if request.method == "POST":
            e = self._example_in(_json(raw) or {})
            self.fake.examples[e["id"]] = e
            return e
        if request.method == "DELETE":
            ids = {_uuid(i, "example id") for i in q.getlist("example_ids")}
            for i in ids:
                self.fake.examples.pop(i, None)
            return {"count": len(ids)}
        if q.get("filter"):
            raise _Answer(400, "the fake LangSmith does not filter examples with a filter expression")
        found = list(self.fake.examples.values())
        if q.get("dataset"):
            found = [e for e in found if e["dataset_id"] == _uuid(q["dataset"], "dataset id")]
        if q.getlist("id"):
            ids = {_uuid(i, "example id") for i in q.getlist("id")}
            found = [e for e in found if e["id"] in ids]
        if q.getlist("splits"):
            wanted = set(q.getlist("splits"))
            found = [e for e in found if wanted & set(e["metadata"].get("dataset_split", []))]
        if q.get("metadata"):
            found = [e for e in found if _subset(json.loads(q["metadata"]), e["metadata"])]
        return _page(found, q)

    @_endpoint
    def examples_bulk(self, request: Any, raw: bytes) -> Any:
        body = _json(raw)
        if not isinstance(body, list):
            raise _Answer(422, "/examples/bulk takes a JSON list")
        if request.method == "PATCH":
            updated = [self._example_update(item) for item in body]
            return {"message": f"{len(updated)} examples updated", "count": len(updated),
                    "example_ids": [e["id"] for e in updated]}
        created = [self._example_in(item) for item in body]
        if len({e["id"] for e in created}) != len(created):
            raise _Answer(409, "the same example id twice in one request")
        for e in created:
            self.fake.examples[e["id"]] = e
        return created

    @_endpoint
    def example(self, request: Any, raw: bytes) -> Any:
        eid = request.path_params["id"]
        if request.method == "PATCH":
            return self._example_update(_json(raw) or {}, eid)
        e = self._example(eid)
        if request.method == "DELETE":
            del self.fake.examples[e["id"]]
            return {}
        return e

    # -- sessions (projects, experiments) --------------------------------------------------------------------

    def _session_out(self, s: dict[str, Any]) -> dict[str, Any]:
        runs = [r for r in self.fake.runs.values() if r["session_id"] == s["id"]]
        return {**s, "run_count": len(runs),
                "total_tokens": sum(r.get("total_tokens") or 0 for r in runs),
                "last_run_start_time": max((r["start_time"] for r in runs), default=None),
                "feedback_stats": _feedback_stats([f for f in self.fake.feedback.values()
                                                   if f.get("session_id") == s["id"]]),
                "error_rate": (sum(1 for r in runs if r.get("error")) / len(runs)) if runs else None}

    def _new_session(self, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        body = body or {}
        sid = _uuid(body.get("id") or uuid.uuid4(), "session id")
        dataset = body.get("reference_dataset_id")
        s = {"id": sid, "name": name, "description": body.get("description"),
             "start_time": body.get("start_time") or _now(), "end_time": body.get("end_time"),
             "extra": body.get("extra"), "tenant_id": FAKE_TENANT_ID,
             "reference_dataset_id": _uuid(dataset, "reference_dataset_id") if dataset else None}
        self.fake.sessions[sid] = s
        return s

    def _session(self, session_id: str) -> dict[str, Any]:
        return _found(self.fake.sessions, session_id, "Session")

    @_endpoint
    def sessions_root(self, request: Any, raw: bytes) -> Any:
        q = request.query_params
        if request.method == "POST":
            body = _json(raw) or {}
            name = body.get("name") or ""
            existing = self.fake.session_by_name(name)
            if existing is not None:
                if q.get("upsert") in ("true", "True", "1"):
                    return self._session_out(existing)
                raise _Answer(409, f"Session with name {name!r} already exists")
            return self._session_out(self._new_session(name, body))
        found = _named(list(self.fake.sessions.values()), q)
        if q.getlist("reference_dataset"):
            ids = {_uuid(i, "dataset id") for i in q.getlist("reference_dataset")}
            found = [s for s in found if s.get("reference_dataset_id") in ids]
        return [self._session_out(s) for s in _page(found, q)]

    @_endpoint
    def session(self, request: Any, raw: bytes) -> Any:
        s = self._session(request.path_params["id"])
        if request.method == "DELETE":
            del self.fake.sessions[s["id"]]
            _delete_where(self.fake.runs, "session_id", s["id"])
            return {}
        if request.method == "PATCH":
            _update(s, raw, ("name", "description", "extra", "end_time"))
        return self._session_out(s)

    # -- runs ------------------------------------------------------------------------------------------------

    def _post_run(self, body: dict[str, Any]) -> bool:
        """Store a run; False when its id was already stored (counted, not overwritten)."""
        rid = _uuid(body.get("id") or uuid.uuid4(), "run id")
        if rid in self.fake.runs:
            self.fake.duplicate_run_posts.append(rid)
            return False
        if body.get("session_id"):
            session = self._session(body["session_id"])
        else:
            name = body.get("session_name") or "default"
            session = self.fake.session_by_name(name) or self._new_session(name)
        start = body.get("start_time") or _now()
        run = {"id": rid, "name": body.get("name"), "run_type": body.get("run_type"), "start_time": start, "end_time": body.get("end_time"),
               "inputs": body.get("inputs") or {}, "outputs": body.get("outputs"), "error": body.get("error"),
               "extra": body.get("extra") or {}, "events": body.get("events"), "tags": body.get("tags") or [],
               "serialized": body.get("serialized"), "session_id": session["id"],
               "trace_id": str(body.get("trace_id") or rid),
               "dotted_order": body.get("dotted_order") or f"{_parse_time(start).strftime('%Y%m%dT%H%M%S%fZ')}{rid}",
               "parent_run_id": str(body["parent_run_id"]) if body.get("parent_run_id") else None,
               "reference_example_id": (str(body["reference_example_id"]) if body.get("reference_example_id")
                                        else None), "attachments": []}
        self.fake.runs[rid] = run
        for patch in self.fake._pending_patches.pop(rid, []):
            self._apply_patch(run, patch)
        _derive(run)
        return True

    def _patch_run(self, body: dict[str, Any], run_id: str | None = None) -> None:
        rid = _uuid(run_id or body.get("id") or "", "run id")
        run = self.fake.runs.get(rid)
        if run is None:  # the patch arrived first: apply it when the post does
            self.fake._pending_patches.setdefault(rid, []).append(body)
            return
        self._apply_patch(run, body)
        _derive(run)

    @staticmethod
    def _apply_patch(run: dict[str, Any], body: dict[str, Any]) -> None:
        for key in ("end_time", "outputs", "error", "events", "tags", "reference_example_id", "dotted_order",
                    "trace_id", "parent_run_id"):
            if body.get(key) is not None:
                run[key] = body[key]
        if body.get("extra"):
            run["extra"] = {**(run.get("extra") or {}), **body["extra"]}

    @_endpoint
    def runs_create(self, request: Any, raw: bytes) -> Any:
        if not self._post_run(_json(raw) or {}):
            raise _Answer(409, "Run already exists")
        return {}, 202

    @_endpoint
    def runs_batch(self, request: Any, raw: bytes) -> Any:
        body = _json(raw) or {}
        for run in body.get("post") or []:
            self._post_run(run)
        for run in body.get("patch") or []:
            self._patch_run(run)
        return {}, 202

    @_endpoint
    def runs_multipart(self, request: Any, raw: bytes) -> Any:
        encoding = (request.headers.get("content-encoding") or "").lower()
        if encoding == "zstd":
            import zstandard

            try:
                raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
            except zstandard.ZstdError as exc:
                raise _Answer(422, f"the zstd body does not decompress: {exc}") from None
        elif encoding:
            raise _Answer(415, f"the fake LangSmith does not take Content-Encoding {encoding!r}")
        ops: dict[tuple[str, str], dict[str, Any]] = {}
        order: list[tuple[str, str]] = []
        attachments: list[tuple[str, str]] = []
        for name, data in _parse_multipart(raw, request.headers.get("content-type", "")):
            kind, _, rest = name.partition(".")
            if kind == "attachment":
                rid, _, attachment = rest.partition(".")
                attachments.append((rid, attachment))
                continue
            if kind not in ("post", "patch", "feedback"):
                raise _Answer(422, f"unknown multipart part {name!r}")
            oid, _, key = rest.partition(".")
            if (kind, oid) not in ops:
                ops[(kind, oid)] = {}
                order.append((kind, oid))
            value = _json(data)
            if key:
                ops[(kind, oid)][key] = value
            else:
                ops[(kind, oid)].update(value or {})
        for kind in ("post", "patch", "feedback"):
            for k, oid in order:
                if k != kind:
                    continue
                body = {"id": oid, **ops[(k, oid)]}
                if kind == "post":
                    self._post_run(body)
                elif kind == "patch":
                    self._patch_run(body)
                else:
                    self._add_feedback(body, duplicate_ok=True)
        for rid, attachment in attachments:
            run = self.fake.runs.get(rid)
            if run is not None:
                run["attachments"].append(attachment)
        return {}, 202

    @_endpoint
    def run(self, request: Any, raw: bytes) -> Any:
        rid = _uuid(request.path_params["id"], "run id")
        if request.method == "PATCH":
            self._patch_run(_json(raw) or {}, rid)
            return {}, 202
        run = self.fake.runs.get(rid)
        if run is None:
            raise _Answer(404, f"Run {rid} not found")
        return self._run_out(run)

    def _run_out(self, run: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in run.items() if k != "attachments"}
        out["feedback_stats"] = _feedback_stats(self.fake.feedback_for(run["id"]))
        return out

    @_endpoint
    def runs_query(self, request: Any, raw: bytes) -> Any:
        body = _json(raw) or {}
        unsupported = {"query", "trace_filter", "tree_filter"} & {k for k, v in body.items() if v}
        if unsupported:
            raise _Answer(400, f"the fake LangSmith does not implement {sorted(unsupported)} in /runs/query")
        runs = list(self.fake.runs.values())
        if body.get("session"):
            sessions = {_uuid(s, "session id") for s in body["session"]}
            runs = [r for r in runs if r["session_id"] in sessions]
        if body.get("id"):
            ids = {_uuid(i, "run id") for i in body["id"]}
            runs = [r for r in runs if r["id"] in ids]
        if body.get("trace"):
            runs = [r for r in runs if r["trace_id"] == str(body["trace"])]
        if body.get("parent_run"):
            runs = [r for r in runs if r["parent_run_id"] == str(body["parent_run"])]
        if body.get("run_type"):
            runs = [r for r in runs if r["run_type"] == body["run_type"]]
        if body.get("is_root") is not None:
            runs = [r for r in runs if (r["parent_run_id"] is None) == bool(body["is_root"])]
        if body.get("reference_example"):
            ids = {str(i) for i in body["reference_example"]}
            runs = [r for r in runs if r["reference_example_id"] in ids]
        if body.get("error") is not None:
            runs = [r for r in runs if bool(r.get("error")) == bool(body["error"])]
        if body.get("start_time"):
            since = _parse_time(body["start_time"])
            runs = [r for r in runs if _parse_time(r["start_time"]) >= since]
        if body.get("filter"):
            tree = parse_filter(body["filter"])
            runs = [r for r in runs if matches(tree, r, self.fake.feedback_for(r["id"]))]
        runs.sort(key=lambda r: (_parse_time(r["start_time"]), r["id"]), reverse=body.get("order") != "asc")
        offset = int(body.get("cursor") or 0)
        size = min(int(body.get("limit") or 100), 100)
        page = runs[offset:offset + size]
        following = str(offset + size) if offset + size < len(runs) else None
        return {"runs": [self._run_out(r) for r in page], "cursors": {"next": following}}

    # -- feedback --------------------------------------------------------------------------------------------

    def _add_feedback(self, body: dict[str, Any], *, duplicate_ok: bool = False) -> dict[str, Any] | None:
        fid = _uuid(body.get("id") or uuid.uuid4(), "feedback id")
        if fid in self.fake.feedback:
            if duplicate_ok:
                return None
            raise _Answer(409, f"Feedback {fid} already exists")
        if not body.get("key"):
            raise _Answer(422, "feedback needs a key")
        run_id = str(body["run_id"]) if body.get("run_id") else None
        run = self.fake.runs.get(run_id) if run_id else None
        now = _now()
        fb = {"id": fid, "run_id": run_id, "trace_id": str(body["trace_id"]) if body.get("trace_id") else None,
              "key": body["key"], "score": body.get("score"), "value": body.get("value"),
              "comment": body.get("comment"), "correction": body.get("correction"),
              "feedback_source": body.get("feedback_source"), "extra": body.get("extra"),
              "session_id": (run["session_id"] if run else (str(body["session_id"]) if body.get("session_id")
                                                           else None)),
              "comparative_experiment_id": body.get("comparative_experiment_id"),
              "feedback_group_id": body.get("feedback_group_id"),
              "created_at": body.get("created_at") or now, "modified_at": body.get("modified_at") or now}
        self.fake.feedback[fid] = fb
        return fb

    @_endpoint
    def feedback_root(self, request: Any, raw: bytes) -> Any:
        if request.method == "POST":
            return self._add_feedback(_json(raw) or {})
        q = request.query_params
        found = list(self.fake.feedback.values())
        if q.getlist("run"):
            ids = {_uuid(i, "run id") for i in q.getlist("run")}
            found = [f for f in found if f["run_id"] in ids]
        if q.getlist("key"):
            found = [f for f in found if f["key"] in set(q.getlist("key"))]
        if q.getlist("session"):
            ids = {_uuid(i, "session id") for i in q.getlist("session")}
            found = [f for f in found if f["session_id"] in ids]
        if q.getlist("source"):
            found = [f for f in found if ((f.get("feedback_source") or {}).get("type")) in set(q.getlist("source"))]
        return _page(found, q)

    @_endpoint
    def feedback_one(self, request: Any, raw: bytes) -> Any:
        fb = self.fake.feedback.get(_uuid(request.path_params["id"], "feedback id"))
        if fb is None:
            raise _Answer(404, "Feedback not found")
        if request.method == "DELETE":
            del self.fake.feedback[fb["id"]]
            return {}
        if request.method == "PATCH":
            body = _json(raw) or {}
            fb.update({k: v for k, v in body.items() if k in ("score", "value", "comment", "correction")})
            fb["modified_at"] = _now()
        return fb

    # -- prompt hub ------------------------------------------------------------------------------------------

    def _repo(self, owner: str, name: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
        repo = self.fake.repos.get(name) if owner in ("-", self.fake.tenant_handle) else None
        if repo is None and not missing_ok:
            raise _Answer(404, "Repo not found")
        return repo

    def _repo_out(self, repo: dict[str, Any]) -> dict[str, Any]:
        commits = repo["commits"]
        return {k: v for k, v in repo.items() if k not in ("commits", "commit_tags")} | {
            "tenant_id": FAKE_TENANT_ID, "owner": self.fake.tenant_handle,
            "full_name": f"{self.fake.tenant_handle}/{repo['repo_handle']}", "num_likes": 0, "num_downloads": 0,
            "num_views": 0, "liked_by_auth_user": False, "num_commits": len(commits),
            "last_commit_hash": commits[-1]["commit_hash"] if commits else None}

    @_endpoint
    def repos_root(self, request: Any, raw: bytes) -> Any:
        if request.method == "POST":
            body = _json(raw) or {}
            name = body.get("repo_handle")
            if not name:
                raise _Answer(422, "a prompt needs a repo_handle")
            if name in self.fake.repos:
                raise _Answer(409, "Repo already exists")
            now = _now()
            self.fake.repos[name] = {"id": str(uuid.uuid4()), "repo_handle": name,
                                     "description": body.get("description") or "", "readme": body.get("readme") or "",
                                     "tags": list(body.get("tags") or []), "is_public": bool(body.get("is_public")),
                                     "is_archived": False, "created_at": now, "updated_at": now, "commits": [],
                                     "commit_tags": {}}
            return {"repo": self._repo_out(self.fake.repos[name])}
        q = request.query_params
        repos = [r for r in self.fake.repos.values() if not q.get("query") or q["query"] in r["repo_handle"]]
        return {"repos": [self._repo_out(r) for r in _page(repos, q)], "total": len(repos)}

    @_endpoint
    def repo(self, request: Any, raw: bytes) -> Any:
        repo = self._repo(request.path_params["owner"], request.path_params["name"])
        if request.method == "DELETE":
            del self.fake.repos[repo["repo_handle"]]
            return None, 204
        if request.method == "PATCH":
            _update(repo, raw, ("description", "readme", "tags", "is_public", "is_archived"))
            repo["updated_at"] = _now()
        return {"repo": self._repo_out(repo)}

    @_endpoint
    def repo_tags(self, request: Any, raw: bytes) -> Any:
        repo = self._repo(request.path_params["owner"], request.path_params["name"])
        if request.method == "GET":
            return [{"tag_name": t, "commit_id": c} for t, c in repo["commit_tags"].items()]
        body = _json(raw) or {}
        tag, commit_id = body.get("tag_name"), str(body.get("commit_id") or "")
        if not tag or not any(c["id"] == commit_id for c in repo["commits"]):
            raise _Answer(404 if tag else 422, f"no commit {commit_id!r} in {repo['repo_handle']}" if tag
                          else "a tag needs a tag_name")
        repo["commit_tags"][tag] = commit_id
        return {"tag_name": tag, "commit_id": commit_id, "repo_id": repo["id"]}

    @_endpoint
    def commits(self, request: Any, raw: bytes) -> Any:
        repo = self._repo(request.path_params["owner"], request.path_params["name"])
        commits = repo["commits"]
        latest = commits[-1] if commits else None
        if request.method == "GET":
            listed = [{k: v for k, v in c.items() if k not in ("manifest", "examples")} for c in commits[::-1]]
            return {"commits": _page(listed, request.query_params), "total": len(listed)}
        body = _json(raw) or {}
        manifest = body.get("manifest")
        if not isinstance(manifest, dict):
            raise _Answer(422, "a commit needs a manifest object")
        if body.get("parent_commit") != (latest["commit_hash"] if latest else None):
            raise _Answer(409, "The parent commit is not the latest commit")
        if latest is not None and latest["manifest"] == manifest:
            raise _Answer(409, "Nothing to commit")
        now = _now()
        commit = {"id": str(uuid.uuid4()), "commit_hash": uuid.uuid4().hex, "repo_id": repo["id"],
                  "manifest_id": str(uuid.uuid4()), "parent_id": latest["id"] if latest else None,
                  "parent_commit_hash": latest["commit_hash"] if latest else None, "manifest": manifest,
                  "description": body.get("description"), "examples": [], "example_run_ids": [],
                  "num_downloads": 0, "num_views": 0, "created_at": now, "updated_at": now}
        commits.append(commit)
        repo["updated_at"] = now
        return {"commit": commit}

    @_endpoint
    def commit(self, request: Any, raw: bytes) -> Any:
        repo = self._repo(request.path_params["owner"], request.path_params["name"])
        ref, commits = request.path_params["ref"], repo["commits"]
        if ref == "latest":
            found = commits[-1] if commits else None
        elif ref in repo["commit_tags"]:
            found = next(c for c in commits if c["id"] == repo["commit_tags"][ref])
        else:
            found = next((c for c in commits if len(ref) >= 8 and c["commit_hash"].startswith(ref)), None)
        if found is None:
            raise _Answer(404, f"Commit {ref} not found")
        return {"commit_hash": found["commit_hash"], "manifest": found["manifest"], "examples": [],
                "description": found["description"]}


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    else:
        text = str(value).replace("Z", "+00:00")
        parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _derive(run: dict[str, Any]) -> None:
    """Status, tokens and costs, as LangSmith derives them from a run."""
    run["status"] = "error" if run.get("error") else ("success" if run.get("end_time") else "pending")
    usage = (run.get("outputs") or {}).get("usage_metadata") or {}
    run["prompt_tokens"] = usage.get("input_tokens")
    run["completion_tokens"] = usage.get("output_tokens")
    run["total_tokens"] = usage.get("total_tokens", (usage.get("input_tokens") or 0) + (usage.get("output_tokens")
                                                                                       or 0) if usage else None)
    run["prompt_cost"] = usage.get("input_cost")
    run["completion_cost"] = usage.get("output_cost")
    run["total_cost"] = usage.get("total_cost")


def _feedback_stats(feedback: list[dict[str, Any]]) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for key in dict.fromkeys(f["key"] for f in feedback):
        scores = [f["score"] for f in feedback if f["key"] == key and isinstance(f.get("score"), (int, float))]
        stats[key] = {"n": len([f for f in feedback if f["key"] == key]),
                      "avg": sum(scores) / len(scores) if scores else None, "values": {}}
    return stats
