"""Mirroring evaluation runs to LangSmith as experiments — in the background, from DuckDB, never in the way.

    mirror = RunMirror(conn, store, source)          # what to send, and where
    mirror.send_batch()                              # up to batch_size stored results not mirrored yet
    report = mirror.sync()                           # everything left (`promptcycle langsmith sync RUN_ID`)

    background = BackgroundMirror(mirror).start()    # beside a running evaluation
    ...
    report = background.stop(drain_seconds=10)       # what could not be sent is counted, never lost

**Shape in LangSmith.** One experiment (a LangSmith project linked to the pipeline's dataset, as
`langsmith.evaluate` makes them) per evaluation run × model: `<run id> · <model>`. An optimization's arms are
runs of their own (`<optimization id>/confirm/<prompt hash>`), so the current prompt and each candidate are
experiments over the same examples, side by side in LangSmith's comparison view. Each result (model × case ×
repeat) is one root run of type `llm`: the case's inputs, the answer and its token usage and cost, latency as
start/end time, the error if it failed, the example it answers (`reference_example_id`), and every score as
feedback (plus `overall`). Projects carry the run id, kind, prompt hash and model as metadata.

**Off the hot path.** Nothing here is called by a model call. The mirror reads results the run has already
stored (`MetricsStore.results_to_mirror`), sends them in batches of `batch_size` results (runs and feedback in one
multipart request), then records them as mirrored (`mark_mirrored`). DuckDB stays the source of truth: a LangSmith
outage delays the mirror, never the evaluation, and loses nothing — what was not sent is still "not mirrored" in
the store, and `sync` (or the next run of the mirror) sends it.

**Idempotent.** A result's LangSmith run id is `uuid5(run id / model / case / repeat)` and its feedback ids derive
from it, so sending a batch again (a crash between sending and recording) does not make a second run.
A result rewritten later (a terminal error retried when its run was resumed) is sent as an update of its run.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from promptcycle.errors import LangSmithError, LangSmithUnavailableError

__all__ = ["MIRROR_NAMESPACE", "mirror_run_id", "feedback_id", "experiment_name", "MirrorSource", "MirrorReport",
           "RunMirror", "BackgroundMirror", "mirror_source", "mirror_dataset_name", "multipart_body"]

logger = logging.getLogger(__name__)

_TRANSIENT = re.compile(r"\b(429|5\d\d) (Client|Server) Error|Connection|Timeout|timed out")
MIRROR_NAMESPACE = uuid.UUID("6a1f3c52-8e0b-4f5d-b0a7-3c9d2e71f4a8")  # promptcycle's mirrored run ids


def mirror_run_id(run_id: str, model: str, case_id: str, repeat: int) -> uuid.UUID:
    """The LangSmith run id of one result: the same result always has the same id."""
    return uuid.uuid5(MIRROR_NAMESPACE, f"{run_id}/{model}/{case_id}/{int(repeat)}")


def feedback_id(ls_run_id: uuid.UUID, key: str, version: str = "") -> uuid.UUID:
    """The id of a result's feedback `key` (`version`: the result's stored time, so a rewritten result's new
    scores are new feedback rather than a refused duplicate)."""
    return uuid.uuid5(ls_run_id, f"{key}/{version}")


def experiment_name(run_id: str, model: str) -> str:
    """The LangSmith experiment (project) of one evaluation run's results from one model."""
    return f"{run_id} · {model}"


@dataclass(frozen=True)
class MirrorSource:
    """What promptcycle knows about the runs to mirror (built by the caller from the pipeline's context).

    `scope`: a run id — the run and every run whose id starts with `scope/` (an optimization's arms).
    `dataset`: the LangSmith dataset the experiments reference; `case_field`: where an example keeps its case id
    (a dotted path into the example, as `dataset.mapping.id`). `publish`, when given, is called once when the
    dataset is missing or lacks examples for some cases (it publishes them: `datasets push`)."""

    pipeline: str
    scope: str
    dataset: str
    inputs: dict[str, dict[str, Any]]  # case id -> the case's inputs
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # run id -> {kind, prompt_hash, simulated}
    # (runs not given here are read from the store when their first result is sent: an optimization's arms
    # are recorded after its mirror starts)
    case_field: str = "metadata.case_id"
    publish: Callable[[], Any] | None = None


def mirror_dataset_name(ctx: Any) -> str:
    """The LangSmith dataset a pipeline's experiments reference: its `langsmith:` source, else the dataset
    `datasets push` publishes (`langsmith.dataset_name`)."""
    from promptcycle.config import effective_langsmith

    own = ctx.pipeline.dataset.langsmith_dataset
    if own is not None:
        return own
    return effective_langsmith(ctx.config, ctx.name).dataset_name.format(pipeline=ctx.name)


def mirror_source(ctx: Any, scope: str, conn: Any) -> MirrorSource:
    """What the mirror of the run `scope` of the pipeline `ctx` (a PipelineContext) needs: the dataset (published
    by the mirror when it lacks cases, unless it is the pipeline's own `langsmith:` source), and every case's
    inputs."""
    dataset = mirror_dataset_name(ctx)
    source_mapping = ctx.pipeline.dataset.mapping
    publish = None
    if ctx.pipeline.dataset.langsmith_dataset is None:
        def publish() -> Any:
            from promptcycle.langsmith.datasets import push_cases

            return push_cases(conn, dataset, ctx.configured_cases, ctx.splits, pipeline=ctx.name)

    return MirrorSource(pipeline=ctx.name, scope=scope, dataset=dataset,
                        inputs={c.id: dict(c.inputs) for c in ctx.configured_cases},
                        case_field=source_mapping.id if source_mapping is not None else "metadata.case_id",
                        publish=publish)


@dataclass
class MirrorReport:
    """Where the mirroring of a scope stands: results stored, mirrored, and not mirrored (`pending`)."""

    scope: str
    results: int = 0
    mirrored: int = 0
    pending: int = 0
    sent_now: int = 0
    failures: int = 0  # failed attempts (each retried with back-off)
    last_error: str | None = None
    status_known: bool = True  # False when the store could not be read at the end

    def summary(self) -> str:
        if not self.status_known:
            return (f"LangSmith mirror of {self.scope}: {self.sent_now} results sent; could not read what is left "
                    f"({self.last_error}); run `promptcycle langsmith sync {self.scope}`")
        if self.pending == 0:
            return f"LangSmith mirror of {self.scope}: all {self.results} results mirrored ({self.sent_now} sent now)"
        why = f" — last error: {self.last_error}" if self.last_error else ""
        return (f"LangSmith mirror of {self.scope}: {self.pending} of {self.results} results NOT mirrored yet "
                f"(kept in DuckDB){why}; finish with `promptcycle langsmith sync {self.scope}`")

    def to_dict(self) -> dict[str, Any]:
        return {"scope": self.scope, "results": self.results, "mirrored": self.mirrored, "pending": self.pending,
                "sent_now": self.sent_now, "failures": self.failures, "last_error": self.last_error,
                "status_known": self.status_known}


def _dotted_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


_BOUNDARY = "promptcycle-mirror-6a1f3c528e0b4f5d"


def multipart_body(ops: list[Any]) -> tuple[bytes, str]:
    """LangSmith's multipart ingestion body (`post.ID`, `post.ID.inputs` …, `patch.ID`, `feedback.ID` parts) of
    the SDK's serialised operations, and its content type.

    Written here rather than by the SDK's encoder (requests_toolbelt), which costs about a millisecond per
    result — the largest part of the mirror's CPU, and it runs beside the evaluation."""
    chunks: list[bytes] = []

    def part(name: str, data: bytes) -> None:
        chunks.append(f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n'
                      f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode())
        chunks.append(data)
        chunks.append(b"\r\n")

    for op in ops:
        if hasattr(op, "feedback"):
            part(f"feedback.{op.id}", op.feedback)
            continue
        part(f"{op.operation}.{op.id}", op._none)
        for key in ("inputs", "outputs", "events", "extra", "error", "serialized"):
            value = getattr(op, key)
            if value is not None:
                part(f"{op.operation}.{op.id}.{key}", value)
    chunks.append(f"--{_BOUNDARY}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={_BOUNDARY}"


class RunMirror:
    """Sends the stored results of one scope to LangSmith in batches (see the module docstring).

    `store` is a MetricsStore or its data-worker proxy; `conn` a `LangSmithConnection`. Not thread-safe: one
    thread drives one mirror."""

    def __init__(self, conn: Any, store: Any, source: MirrorSource, *, batch_size: int = 500):
        self.conn = conn
        self.store = store
        self.source = source
        self.batch_size = batch_size
        self._client: Any = None
        self._dataset_id: str | None = None
        self._examples: dict[str, str] = {}
        self._projects: dict[str, str] = {}
        self._prepared = False
        self._published = False
        self.sent = 0

    # -- connection ------------------------------------------------------------------------------------------

    def _connect(self) -> Any:
        if self._client is None:
            info = self.conn.probe()  # GET /info within the probe timeout: a dead endpoint fails fast here
            self._client = self.conn.client(info)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.session.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
            self._client = None
            self._prepared = False

    def _call(self, doing: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except LangSmithError:
            raise
        except Exception as exc:  # noqa: BLE001 - the SDK's and the transport's errors, as ours
            self.close()
            raise self.conn.translate(exc, doing) from None

    # -- the dataset and the experiments ---------------------------------------------------------------------

    def _prepare(self) -> None:
        """Find the dataset and the example of each case (publishing the dataset once if cases are missing)."""
        if self._prepared:
            return
        from langsmith import utils as ls_utils

        from promptcycle.langsmith.datasets import value_at

        client = self._connect()
        src = self.source

        def read() -> None:
            try:
                found = client.read_dataset(dataset_name=src.dataset)
            except ls_utils.LangSmithNotFoundError:
                self._dataset_id, self._examples = None, {}
                return
            self._dataset_id = str(found.id)
            self._examples = {}
            for example in client.list_examples(dataset_id=found.id):
                case_id = value_at(example, src.case_field)
                self._examples[str(case_id if case_id is not None else example.id)] = str(example.id)

        self._call(f"reading the LangSmith dataset {src.dataset!r}", read)
        missing = [c for c in src.inputs if c not in self._examples]
        if missing and src.publish is not None and not self._published:
            src.publish()  # raises our errors itself
            self._published = True  # once per mirror: cases still missing after it are mirrored without an example
            self._call(f"reading the LangSmith dataset {src.dataset!r}", read)
        self._prepared = True

    def _project(self, run_id: str, model: str) -> str:
        name = experiment_name(run_id, model)
        if name not in self._projects:
            meta = self.source.runs.get(run_id)
            if meta is None:
                run = self.store.get_run(run_id)
                meta = self.source.runs[run_id] = ({"kind": run.kind, "prompt_hash": run.prompt_hash,
                                                    "simulated": run.simulated} if run else {})
            metadata = {"promptcycle_pipeline": self.source.pipeline, "promptcycle_run_id": run_id,
                        "promptcycle_scope": self.source.scope, "model": model,
                        "kind": meta.get("kind"), "prompt_hash": meta.get("prompt_hash"),
                        "simulated": meta.get("simulated")}
            client = self._connect()
            project = self._call(f"creating the LangSmith experiment {name!r}", lambda: client.create_project(
                name, upsert=True, reference_dataset_id=self._dataset_id,
                description=f"promptcycle {meta.get('kind') or 'evaluation'} run {run_id}, model {model}"
                            + (" (SIMULATED answers)" if meta.get("simulated") else ""),
                metadata={k: v for k, v in metadata.items() if v is not None}))
            self._projects[name] = str(project.id)
        return name

    # -- one batch -------------------------------------------------------------------------------------------

    def _operations(self, rows: list[dict[str, Any]]) -> list[Any]:
        """The SDK's serialised run and feedback operations of `rows` (each row gets its `ls_run_id`, `experiment`)."""
        from langsmith._internal._operations import serialize_feedback_dict, serialize_run_dict

        ops: list[Any] = []
        for row in rows:
            rid = mirror_run_id(row["run_id"], row["model"], row["case_id"], row["repeat"])
            row["ls_run_id"] = str(rid)
            row["experiment"] = self._project(row["run_id"], row["model"])
            end = row["created_at"] or datetime.now(timezone.utc)
            start = end - timedelta(milliseconds=float(row["latency_ms"] or 0.0))
            usage = {"input_tokens": row["input_tokens"] or 0, "output_tokens": row["output_tokens"] or 0,
                     "total_tokens": (row["input_tokens"] or 0) + (row["output_tokens"] or 0)}
            if row["cost_usd"] is not None:
                usage["total_cost"] = float(row["cost_usd"])
            metadata = {"promptcycle_run_id": row["run_id"], "model": row["model"], "ls_model_name": row["model"],
                        "case_id": row["case_id"], "repeat": int(row["repeat"]), "spectrum": row["spectrum"],
                        "split": row["split"], "prompt_hash": row["prompt_hash"], "attempts": row["attempts"],
                        "finish_reason": row["finish_reason"], "simulated": row["simulated"],
                        "latency_ms": row["latency_ms"], "cost_usd": row["cost_usd"]}
            payload: dict[str, Any] = {
                "id": str(rid), "trace_id": str(rid), "dotted_order": f"{_dotted_time(start)}{rid}",
                "name": row["model"], "run_type": "llm", "session_name": row["experiment"],
                "start_time": start.isoformat(), "end_time": end.isoformat(),
                "inputs": dict(self.source.inputs.get(row["case_id"], {})),
                "extra": {"metadata": {k: v for k, v in metadata.items() if v is not None}},
                "tags": ["promptcycle", f"model:{row['model']}"] + (["simulated"] if row["simulated"] else []),
            }
            example = self._examples.get(row["case_id"])
            if example is not None:
                payload["reference_example_id"] = example
            if row["error"]:
                payload["error"] = f"{row['error_kind'] or 'error'}: {row['error']}"
                payload["outputs"] = {"usage_metadata": usage}
            else:
                payload["outputs"] = {"output": row["output"], "usage_metadata": usage}
            # A result sent before and rewritten since (an error retried on resume) updates its run.
            ops.append(serialize_run_dict("patch" if row["mirrored"] else "post", payload))
            if not row["error"]:
                version = row["created_at"].isoformat() if row["created_at"] else ""
                for key, score in [*sorted(row["scores"].items()), ("overall", row["overall"])]:
                    if score is None:
                        continue
                    ops.append(serialize_feedback_dict({
                        "id": feedback_id(rid, key, version), "run_id": rid, "trace_id": rid, "key": key,
                        "score": float(score), "feedback_source": {"type": "model", "metadata":
                                                                   {"promptcycle": True}}}))
        return ops

    def send_batch(self) -> int:
        """Send up to `batch_size` results not mirrored yet and record them; returns how many were sent (0: none
        left). Raises `LangSmithUnavailableError` / `LangSmithError` (nothing recorded for the failed batch)."""
        rows = self.store.results_to_mirror(self.source.scope, self.batch_size)
        if not rows:
            return 0
        self._prepare()
        body, content_type = multipart_body(self._operations(rows))
        client = self._connect()

        def post() -> None:
            # The client's own retries (429 / 5xx, Retry-After honoured) apply; a failure raises, unlike the SDK's
            # tracing sender, which logs and drops a failed batch.
            client.request_with_retries("POST", f"{self.conn.api_url}/runs/multipart",
                                        request_kwargs={"data": body, "headers": {"Content-Type": content_type}})

        try:
            self._call(f"sending {len(rows)} results to LangSmith", post)
        except LangSmithError as exc:
            if not isinstance(exc, LangSmithUnavailableError) and _TRANSIENT.search(str(exc)):
                raise LangSmithUnavailableError(str(exc)) from None  # a 5xx the SDK words as a plain error
            raise
        self.store.mark_mirrored(rows)
        self.sent += len(rows)
        return len(rows)

    def status(self) -> MirrorReport:
        counts = self.store.mirror_status(self.source.scope)
        return MirrorReport(scope=self.source.scope, results=counts["results"], mirrored=counts["mirrored"],
                            pending=counts["pending"], sent_now=self.sent)

    def sync(self) -> MirrorReport:
        """Send everything not mirrored yet (stops at the first failure, which it raises)."""
        try:
            while self.send_batch():
                pass
        finally:
            self.close()
        return self.status()


class BackgroundMirror:
    """A thread that keeps a `RunMirror` up with an evaluation: every `interval_s` it sends what the run has
    stored since; on failure it backs off (doubling up to `max_backoff_s`) and tries again. Never raises into the
    evaluation; `stop()` makes a last bounded pass and reports what was not mirrored."""

    def __init__(self, mirror: RunMirror, *, interval_s: float = 5.0, initial_backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, drain_seconds: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.mirror = mirror
        self.drain_seconds = drain_seconds
        self.interval_s = interval_s
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.clock = clock
        self.failures = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by nudge() and stop(): a pass now, not at the next interval
        self._healthy = True
        self._lock = threading.Lock()  # one pass at a time: the thread's, or stop()'s last one
        self._thread = threading.Thread(target=self._loop, name=f"langsmith-mirror-{mirror.source.scope}",
                                        daemon=True)

    def start(self) -> "BackgroundMirror":
        self._thread.start()
        return self

    def nudge(self) -> None:
        """Send what the run has stored now rather than at the next interval: called when its cells are done,
        so the last batches go while the run's checks and summary run, not after them in `stop()`."""
        self._wake.set()

    def _pass(self, deadline: float | None = None) -> bool:
        """Send batches until none is left (or the deadline); False when a batch failed or, with a deadline,
        the thread's own pass still holds the mirror when it comes."""
        if not self._lock.acquire(timeout=-1 if deadline is None else max(0.0, deadline - self.clock())):
            return False
        try:
            while (deadline is None or self.clock() < deadline) and self.mirror.send_batch() \
                    and not (deadline is None and self._stop.is_set()):
                pass
            self._healthy = True
            return True
        except Exception as exc:  # noqa: BLE001 - an outage (or a busy store) waits for the next pass
            self.failures += 1
            self.last_error = self._describe(exc)
            self._healthy = False
            logger.warning("LangSmith mirror of %s: %s (will retry)", self.mirror.source.scope, self.last_error)
            return False
        finally:
            self._lock.release()

    def _describe(self, exc: BaseException) -> str:
        text = str(exc) if isinstance(exc, (LangSmithError, LangSmithUnavailableError)) \
            else f"{type(exc).__name__}: {exc}"
        return self.mirror.conn.scrub(text)[:500]

    def _loop(self) -> None:
        backoff = self.initial_backoff_s
        while not self._stop.is_set():
            if self._pass():
                backoff = self.initial_backoff_s
                self._wake.wait(self.interval_s)
                self._wake.clear()
            else:
                self._stop.wait(backoff)
                backoff = min(backoff * 2.0, self.max_backoff_s)

    def stop(self, drain_seconds: float | None = None) -> MirrorReport:
        """Stop the thread, make one last pass of at most `drain_seconds` (none when LangSmith was failing: an
        outage must not hold the evaluation up), and report what is left."""
        self._stop.set()
        self._wake.set()
        drain_seconds = self.drain_seconds if drain_seconds is None else drain_seconds
        deadline = self.clock() + drain_seconds
        self._thread.join(timeout=drain_seconds)  # a batch under way finishes (or the deadline passes)
        if self._healthy and not self._thread.is_alive() and self.clock() < deadline:
            self._pass(deadline=deadline)
        if not self._thread.is_alive():
            self.mirror.close()
        try:
            report = self.mirror.status()
        except Exception as exc:  # noqa: BLE001 - the store itself failing: say so, never raise here
            report = MirrorReport(scope=self.mirror.source.scope, sent_now=self.mirror.sent, status_known=False,
                                  last_error=self._describe(exc))
        report.failures = self.failures
        report.last_error = report.last_error or (self.last_error if report.pending or not report.status_known
                                                  else None)
        return report
