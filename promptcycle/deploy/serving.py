"""What the serving application calls: which prompt answers this request, and how did it go.

    from promptcycle.deploy.serving import resolve_prompt, log_production_result

    served = resolve_prompt("customer-insights", request_key=user_id)      # sticky per key
    messages = served.render({"customer": record, "question": question})
    ...                                                                     # call your model
    log_production_result("customer-insights", request_id, served.version, score=0.93,
                          latency_ms=412.0, canary_id=served.canary_id, arm=served.arm)

This module needs only duckdb and the standard library (no Prefect, no pandas, no pyarrow) and
reads the metrics store directly: the `production` label of the pipeline and its running canary,
if any. The state is cached per process for `cache_seconds` (5 s by default), so a request costs a
hash and a dict lookup; a split the canary flow changes reaches the application within that time.
A server can keep the cache warm off its request path instead: `refresh_cache` from a background
thread, and a long `cache_seconds` on requests (promptcycle/api/prompts.py does).

Assignment is sticky: the request key (a user, an account, a session) is hashed with sha256, the
hash taken modulo 10,000 gives a bucket, and buckets below `split_pct * 100` get the canary's new
version (`arm="treatment"`), the others production (`arm="control"`). Raising the split from 10%
to 50% keeps every treatment key in treatment.

A canary in shadow mode serves production to every request; for buckets below `shadow_pct * 100`
`served.shadow` is the new version too, which the application answers *without serving it* and
reports with `arm="shadow"` and the served request's id (`log_shadow_result`), so both answers of
the same request are compared.

The store file is `store=` or the `PROMPTCYCLE_STORE` environment variable (default
`promptcycle.duckdb`). DuckDB lets one process open the file at a time: while a flow writes, a
read waits (up to `lock_timeout_s`) and, if the file stays busy, the last state read is served.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from promptcycle.errors import ServingError
from promptcycle.prompts import PromptTemplate
from promptcycle.store.offline import connect, foreign_format, process_lock

__all__ = [
    "STORE_ENV",
    "BUCKETS",
    "ServingError",
    "ResolvedPrompt",
    "IngestReport",
    "bucket_of",
    "resolve_prompt",
    "clear_cache",
    "refresh_cache",
    "log_production_result",
    "log_production_results",
    "log_shadow_result",
    "shadow_outcome",
    "ingest_production_results",
]

STORE_ENV = "PROMPTCYCLE_STORE"
BUCKETS = 10_000

logger = logging.getLogger("promptcycle.serving")




@dataclass(frozen=True)
class ResolvedPrompt:
    """The prompt version that answers one request.

    `arm` is "production" when no canary runs, else "control" (production) or "treatment" (the
    canary's new version); `canary_id` and `split_pct` describe the canary, `bucket` the key's bucket.
    """

    pipeline: str
    scope: str
    version: str
    system: str
    template: str
    arm: str
    bucket: int
    canary_id: str | None = None
    split_pct: float = 0.0
    shadow: "ResolvedPrompt | None" = None  # shadow mode: the new version, to answer unserved

    @property
    def prompt(self) -> PromptTemplate:
        return PromptTemplate(template=self.template, system=self.system)

    def render(self, inputs: Mapping[str, Any]) -> list[dict[str, str]]:
        """The chat messages for `inputs` (a missing variable raises KeyError naming it)."""
        return self.prompt.render(dict(inputs))


@dataclass(frozen=True)
class _Version:
    version: str
    system: str
    template: str


@dataclass(frozen=True)
class _State:
    scope: str
    production: _Version | None
    canary_id: str | None = None
    treatment: _Version | None = None
    split_pct: float = 0.0
    shadow_pct: float = 0.0


def bucket_of(request_key: str) -> int:
    """sha256(request_key) modulo 10,000: the key's fixed place in the traffic split."""
    return int(hashlib.sha256(str(request_key).encode("utf-8")).hexdigest(), 16) % BUCKETS


def _store_path(store: str | Path | None) -> Path:
    return _resolved(str(store or os.environ.get(STORE_ENV) or "promptcycle.duckdb"), os.getcwd())


@functools.lru_cache(maxsize=64)
def _resolved(path: str, cwd: str) -> Path:
    # Path.resolve() costs a system call per path component: a lookup otherwise spends a third of its time here.
    return (Path(cwd) / Path(path).expanduser()).resolve()


def _is_busy(exc: duckdb.Error) -> bool:
    """Another process holds the file, or another connection of this process conflicts with ours."""
    text = str(exc).lower()
    return "could not set lock" in text or "different configuration" in text or "conflict" in text


@contextlib.contextmanager
def _connect(path: Path, timeout_s: float) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection (the store's own configuration), waiting while another process holds the file;
    held under the process's lock on the file (store/offline.py), like the store's own connections."""
    if not path.is_file():
        raise ServingError(f"no metrics store at {path}: deploy a prompt first (`promptcycle deploy`), or point "
                           f"store= / {STORE_ENV} at the store the deployment flows write")
    deadline = time.monotonic() + timeout_s
    lock = process_lock(path)
    if not lock.acquire(timeout=max(timeout_s, 0.0)):
        raise ServingError(f"the metrics store {path} stayed busy in this process for {timeout_s:g} s")
    try:
        wait = 0.005
        while True:
            try:
                con = connect(path)
                break
            except duckdb.Error as exc:
                kind = foreign_format(path)
                if kind is not None:
                    raise ServingError(f"the metrics store {path} exists but is not a DuckDB database (it is "
                                       f"{kind})") from exc
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(wait * random.uniform(0.5, 1.0))
                wait = min(wait * 2, 0.1)
        with con:
            yield con
    finally:
        lock.release()


def _read_states(path: Path, keys: Iterable[tuple[str, str]], timeout_s: float) -> dict[tuple[str, str], _State]:
    """The state of each (pipeline, scope) in `keys`, read through one connection."""
    keys = sorted(set(keys))
    pipelines = sorted({pipeline for pipeline, _ in keys})
    marks = ", ".join("?" for _ in pipelines)
    with _connect(path, timeout_s) as con:
        try:
            production = con.execute(
                "SELECT l.pipeline, l.scope, l.prompt_hash, v.system, v.template FROM prompt_labels l "
                "JOIN prompt_versions v ON v.prompt_hash = l.prompt_hash "
                f"WHERE l.label = 'production' AND l.pipeline IN ({marks})", pipelines).fetchall()
            canaries = con.execute(
                "SELECT c.pipeline, c.scope, c.canary_id, c.treatment_hash, v.system, v.template, c.split_pct, "
                "c.settings_json FROM canaries c JOIN prompt_versions v ON v.prompt_hash = c.treatment_hash "
                f"WHERE c.pipeline IN ({marks}) AND c.status = 'running' ORDER BY c.started_at", pipelines).fetchall()
        except duckdb.CatalogException as exc:
            raise ServingError(f"{path} has no deployment tables ({exc}); it is not a promptcycle store, or "
                               "predates deployments: open it once with promptcycle to upgrade it") from None
    labelled = {(row[0], row[1]): _Version(*row[2:5]) for row in production}
    running: dict[tuple[str, str], tuple] = {}
    for row in canaries:
        running.setdefault((row[0], row[1]), row[2:])  # the earliest started, as one canary per scope runs
    states = {}
    for pipeline, scope in keys:
        canary = running.get((pipeline, scope))
        if canary is None:
            states[pipeline, scope] = _State(scope, labelled.get((pipeline, scope)))
            continue
        settings = json.loads(canary[5]) if canary[5] else {}
        shadow_pct = float(settings.get("shadow_pct", 0.0)) if settings.get("mode") == "shadow" else 0.0
        states[pipeline, scope] = _State(scope, labelled.get((pipeline, scope)), canary[0], _Version(*canary[1:4]),
                                         float(canary[4]), shadow_pct)
    return states


def _read_state(path: Path, pipeline: str, scope: str, timeout_s: float) -> _State:
    return _read_states(path, [(pipeline, scope)], timeout_s)[pipeline, scope]


_cache: dict[tuple[str, str, str], tuple[float, _State]] = {}
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every cached state: the next `resolve_prompt` reads the store."""
    with _cache_lock:
        _cache.clear()


def refresh_cache(store: str | Path | None = None, *, also: Iterable[tuple[str, str]] = (),
                  lock_timeout_s: float = 2.0) -> int:
    """Re-read now every state this process has cached for `store`, and the (pipeline, scope) pairs in
    `also` (scope "" is the pipeline's own label, a model name its model-scoped one), through one
    connection; return how many states were read.

    For a server that keeps its cache warm from a background thread: its requests call `resolve_prompt`
    with a long `cache_seconds` and are answered from memory, never waiting on the store, while this
    keeps what they see at most one refresh period old. If the file stays busy, the cached states are
    kept (and `duckdb.Error` or `ServingError` is raised for the caller to report).
    """
    path = _store_path(store)
    with _cache_lock:
        keys = {(pipeline, scope) for (where, pipeline, scope) in _cache if where == str(path)}
    keys |= set(also)
    if not keys:
        return 0
    states = _read_states(path, keys, lock_timeout_s)
    now = time.monotonic()
    with _cache_lock:
        for (pipeline, scope), state in states.items():
            _cache[str(path), pipeline, scope] = (now, state)
    return len(states)


def _state(path: Path, pipeline: str, scope: str, cache_seconds: float, timeout_s: float) -> _State:
    key = (str(path), pipeline, scope)
    now = time.monotonic()
    with _cache_lock:
        cached = _cache.get(key)  # (when it was read, the state)
    if cached is not None and now - cached[0] < cache_seconds:
        return cached[1]
    try:
        state = _read_state(path, pipeline, scope, timeout_s)
    except duckdb.Error as exc:
        if cached is None:
            raise ServingError(f"cannot read the metrics store {path}: {exc}") from exc
        logger.warning("metrics store %s busy (%s); serving the state read %.0f s ago", path, exc, now - cached[0])
        return cached[1]
    with _cache_lock:
        _cache[key] = (time.monotonic(), state)
    return state


def resolve_prompt(pipeline: str, request_key: str, *, model: str | None = None, store: str | Path | None = None,
                   cache_seconds: float = 5.0, lock_timeout_s: float = 2.0) -> ResolvedPrompt:
    """The prompt version and text that answer the request identified by `request_key`.

    With `model`, a prompt deployed for that model alone (a model-scoped label) wins over the
    pipeline's. During a canary the key's bucket picks the arm (sticky: the same key gets the same
    arm while the split holds, and keeps treatment when the split grows). Raises `ServingError` when
    the pipeline has nothing in production.
    """
    path = _store_path(store)
    state = None
    if model:
        state = _state(path, pipeline, model, cache_seconds, lock_timeout_s)
        if state.production is None and state.canary_id is None:
            state = None
        elif state.production is None:  # the model's first own prompt, on canary: its control is the pipeline's
            shared = _state(path, pipeline, "", cache_seconds, lock_timeout_s)
            state = replace(state, production=shared.production)
    if state is None:
        state = _state(path, pipeline, "", cache_seconds, lock_timeout_s)
    if state.production is None:
        raise ServingError(f"pipeline {pipeline!r} has no production prompt in {path}; deploy one with "
                           f"`promptcycle deploy --pipeline {pipeline}`")
    bucket = bucket_of(request_key)
    chosen, arm, shadow = state.production, "production", None
    if state.canary_id is not None and state.treatment is not None:
        arm = "control"
        if bucket < state.split_pct * (BUCKETS / 100.0):
            chosen, arm = state.treatment, "treatment"
        elif bucket < state.shadow_pct * (BUCKETS / 100.0):
            t = state.treatment
            shadow = ResolvedPrompt(pipeline=pipeline, scope=state.scope, version=t.version, system=t.system,
                                    template=t.template, arm="shadow", bucket=bucket, canary_id=state.canary_id,
                                    split_pct=state.split_pct)
    return ResolvedPrompt(pipeline=pipeline, scope=state.scope, version=chosen.version, system=chosen.system,
                          template=chosen.template, arm=arm, bucket=bucket, canary_id=state.canary_id,
                          split_pct=state.split_pct, shadow=shadow)


# -- outcomes ---------------------------------------------------------------------------------------------------

_COLUMNS = ("pipeline", "request_id", "prompt_hash", "scope", "canary_id", "arm", "model", "score", "error",
            "latency_ms", "metadata_json", "created_at")
_CHUNK = 500  # rows per multi-row INSERT


def _utc_naive(value: Any) -> datetime:
    if value is None:
        return datetime.now(timezone.utc).replace(tzinfo=None)
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        raise ValueError(f"time must be a datetime or an ISO-8601 string, not {value!r}")
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def _row(outcome: Mapping[str, Any]) -> tuple:
    """Validate one outcome and return it as a row of `production_results`."""
    for name in ("pipeline", "request_id", "version"):
        value = outcome.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty string, not {value!r}")
    score = outcome.get("score")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"score must be a number in [0, 1] or null, not {score!r}")
        if not 0.0 <= float(score) <= 1.0:
            raise ValueError(f"score {score!r} is outside [0, 1]")
        score = float(score)
    error = outcome.get("error", False)
    if not isinstance(error, bool):
        raise ValueError(f"error must be true or false, not {error!r}")
    latency = outcome.get("latency_ms")
    if latency is not None:
        if isinstance(latency, bool) or not isinstance(latency, (int, float)) or not latency >= 0:
            raise ValueError(f"latency_ms must be a number >= 0 or null, not {latency!r}")
        latency = float(latency)
    arm = outcome.get("arm")
    if arm is not None and arm not in ("production", "control", "treatment", "shadow"):
        raise ValueError(f"arm must be 'production', 'control', 'treatment' or 'shadow', not {arm!r}")
    metadata = outcome.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"metadata must be an object, not {type(metadata).__name__}")
    unknown = set(outcome) - {"pipeline", "request_id", "version", "score", "error", "latency_ms", "model", "scope",
                              "canary_id", "arm", "metadata", "at"}
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
    return (outcome["pipeline"], outcome["request_id"], outcome["version"], outcome.get("scope") or "",
            outcome.get("canary_id"), arm, outcome.get("model"), score, error, latency,
            json.dumps(metadata, separators=(",", ":"), default=str) if metadata is not None else None,
            _utc_naive(outcome.get("at")))


def _insert(rows: list[tuple], store: str | Path | None, lock_timeout_s: float) -> int:
    path = _store_path(store)
    deadline = time.monotonic() + lock_timeout_s
    wait = 0.01
    while True:
        try:
            with _connect(path, max(0.0, deadline - time.monotonic())) as con:
                con.begin()
                try:
                    before = con.execute("SELECT count(*) FROM production_results").fetchone()[0]
                    for start in range(0, len(rows), _CHUNK):
                        chunk = rows[start:start + _CHUNK]
                        values = ", ".join(["(" + ", ".join("?" * len(_COLUMNS)) + ")"] * len(chunk))
                        con.execute(f"INSERT INTO production_results ({', '.join(_COLUMNS)}) VALUES {values} "
                                    "ON CONFLICT DO NOTHING", [v for row in chunk for v in row])
                    after = con.execute("SELECT count(*) FROM production_results").fetchone()[0]
                    con.commit()
                except BaseException:
                    con.rollback()
                    raise
            return int(after - before)
        except duckdb.CatalogException as exc:
            raise ServingError(f"{path} has no production_results table ({exc}); open it once with promptcycle "
                               "to upgrade it") from None
        except duckdb.Error as exc:
            # Another writer in this process (a transaction conflict) or another process (the file lock).
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise ServingError(f"cannot record production results in {path}: {exc}") from exc
            time.sleep(wait * random.uniform(0.5, 1.0))
            wait = min(wait * 2, 0.2)


def log_production_result(pipeline: str, request_id: str, version: str, *, score: float | None = None,
                          error: bool = False, latency_ms: float | None = None, model: str | None = None,
                          scope: str = "", canary_id: str | None = None, arm: str | None = None,
                          metadata: Mapping[str, Any] | None = None, at: datetime | str | None = None,
                          store: str | Path | None = None, lock_timeout_s: float = 30.0) -> bool:
    """Record the outcome of one production request; True if new (a request id is recorded once).

    `version` is the prompt version that served it (`ResolvedPrompt.version`); `score` its quality
    in [0, 1] if the application measures one; `error` whether it failed. Pass the resolved
    `canary_id` and `arm` when you have them. Raises ValueError on a malformed outcome.
    """
    outcome = {"pipeline": pipeline, "request_id": request_id, "version": version, "score": score, "error": error,
               "latency_ms": latency_ms, "model": model, "scope": scope, "canary_id": canary_id, "arm": arm,
               "metadata": dict(metadata) if metadata is not None else None, "at": at}
    return _insert([_row(outcome)], store, lock_timeout_s) == 1


def shadow_outcome(pipeline: str, request_id: str, version: str, **fields: Any) -> dict[str, Any]:
    """The outcome dict of a shadow answer to request `request_id` (for `log_production_results`): its own id
    `<request_id>#shadow`, `arm="shadow"`, and `metadata.shadow_of` naming the served request."""
    metadata = dict(fields.pop("metadata", None) or {})
    metadata["shadow_of"] = request_id
    return {"pipeline": pipeline, "request_id": f"{request_id}#shadow", "version": version, "arm": "shadow",
            "metadata": metadata, **fields}


def log_shadow_result(pipeline: str, request_id: str, version: str, *, score: float | None = None,
                      error: bool = False, latency_ms: float | None = None, model: str | None = None,
                      scope: str = "", canary_id: str | None = None, store: str | Path | None = None,
                      lock_timeout_s: float = 30.0) -> bool:
    """Record the shadow answer (`served.shadow.version`, not served to the user) to request `request_id`,
    scored like a served one; True if new."""
    outcome = shadow_outcome(pipeline, request_id, version, score=score, error=error, latency_ms=latency_ms,
                             model=model, scope=scope, canary_id=canary_id)
    return _insert([_row(outcome)], store, lock_timeout_s) == 1


def log_production_results(outcomes: Iterable[Mapping[str, Any]], *, store: str | Path | None = None,
                           lock_timeout_s: float = 30.0) -> int:
    """Record many outcomes (dicts with the keys of `log_production_result`) in one transaction; return
    how many were new. Every outcome is checked first: one malformed outcome records nothing."""
    rows = []
    for i, outcome in enumerate(outcomes):
        try:
            rows.append(_row(outcome))
        except ValueError as exc:
            raise ValueError(f"outcome {i}: {exc}") from None
    return _insert(rows, store, lock_timeout_s) if rows else 0


@dataclass(frozen=True)
class IngestReport:
    path: str
    lines: int  # outcomes read
    new: int  # recorded now
    duplicates: int  # request ids already recorded


def ingest_production_results(path: str | Path, *, pipeline: str | None = None, store: str | Path | None = None,
                              lock_timeout_s: float = 30.0) -> IngestReport:
    """Record the outcomes of a JSONL file, one JSON object per line (keys of `log_production_result`;
    `pipeline` may be omitted when given here, `at` is an ISO-8601 time). All or nothing: a bad line
    records nothing and the ValueError names up to five bad lines."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ServingError(f"cannot read {file}: {exc.strerror or exc}") from None
    rows, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, found {type(data).__name__}")
            if pipeline is not None:
                data.setdefault("pipeline", pipeline)
            rows.append(_row(data))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            problems.append(f"line {number}: {exc}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"{file}: {len(problems)} bad line(s), nothing recorded: " + "; ".join(problems[:5]) + more)
    new = _insert(rows, store, lock_timeout_s) if rows else 0
    return IngestReport(path=str(file), lines=len(rows), new=new, duplicates=len(rows) - new)
