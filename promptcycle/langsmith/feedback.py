"""Production feedback from LangSmith, as production outcomes for the monitor.

    read = read_production_feedback(conn, store, "support", settings, {"xl": "3f2a…"}, now, first_window)
    read.recorded   # new production outcomes in the store; the monitor's production path does the rest

Teams that trace their application in LangSmith and collect user feedback there need not report outcomes to
promptcycle a second way. Each pass reads the root runs of `settings.project` that started in the window
(cursor, now − settle_minutes] and were served by one of the serving prompt versions (a tag such as
`prompt:<version>`, or a metadata key), and records each as a `ProductionResult`:

- request id `langsmith:<run id>` (recording it again changes nothing), served by the version named on the run;
- score: the run's average feedback `settings.feedback_key` (none: not scored, left out of the quality series);
  an errored run is an error (0 points, like an unanswered probe call);
- model: the run's metadata `settings.model_metadata_key` when it names a serving model, else the one serving
  model of that version; spectrum and case id: the run's metadata `spectrum` / `case_id`, as for any outcome;
- time: when the monitor read it (just before `now`), so every outcome falls in exactly one monitor period's
  window.

**Never a run twice.** The cursor (the window's end) is stored per pipeline and project in DuckDB and the next
window starts after it, so consecutive passes read disjoint windows. Outcomes are written before the cursor
moves: a pass killed in between reads the window again and its outcomes, keyed by run id, are not counted
twice. Feedback given after a run was read is not seen: `settle_minutes` delays reading to allow for it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from promptcycle.store.records import ProductionResult

__all__ = ["FeedbackRead", "read_production_feedback", "run_filter", "REQUEST_PREFIX"]

REQUEST_PREFIX = "langsmith:"


@dataclass
class FeedbackRead:
    """What one pass read: runs in the window, outcomes recorded (new), runs without a usable score."""

    project: str
    since: str
    until: str
    runs: int = 0
    recorded: int = 0
    unscored: int = 0  # no feedback under the key (kept as an outcome without a score: not in the series)
    unattributed: int = 0  # no serving model could be told
    out_of_range: int = 0  # a feedback score outside [0, 1]: left out, counted here

    def note(self) -> str:
        extra = [f"{n} {what}" for n, what in ((self.unscored, "without feedback"),
                                              (self.unattributed, "without a serving model"),
                                              (self.out_of_range, "with a score outside [0, 1]")) if n]
        return (f"LangSmith project {self.project!r}: {self.runs} runs from {self.since} to {self.until}, "
                f"{self.recorded} new outcomes" + (f" ({', '.join(extra)})" if extra else ""))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:  # the SDK's times are UTC
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat()


def run_filter(settings: Any, versions: list[str], since: datetime, until: datetime) -> str:
    """The LangSmith filter of one pass: started in (since, until] and served by one of `versions`."""
    def served_by(version: str) -> str:
        if settings.version_tag is not None:
            return f"has(tags, {json.dumps(settings.version_tag.format(version=version))})"
        return (f"and(eq(metadata_key, {json.dumps(settings.version_metadata_key)}), "
                f"eq(metadata_value, {json.dumps(version)}))")

    served = [served_by(v) for v in dict.fromkeys(versions)]
    which = served[0] if len(served) == 1 else f"or({', '.join(served)})"
    return f'and(gt(start_time, "{_iso(since)}"), lte(start_time, "{_iso(until)}"), {which})'


def _version_of(run: Any, settings: Any, versions: set[str]) -> str | None:
    if settings.version_tag is not None:
        prefix, _, suffix = settings.version_tag.partition("{version}")
        for tag in run.tags or []:
            if tag.startswith(prefix) and tag.endswith(suffix):
                candidate = tag[len(prefix):len(tag) - len(suffix) if suffix else None]
                if candidate in versions:
                    return candidate
        return None
    value = ((run.extra or {}).get("metadata") or {}).get(settings.version_metadata_key)
    return str(value) if value is not None and str(value) in versions else None


def read_production_feedback(conn: Any, store: Any, pipeline: str, settings: Any, serving: dict[str, str],
                             now: datetime, first_window: timedelta) -> FeedbackRead:
    """Read the pipeline's new production runs and feedback from LangSmith and record them as production outcomes
    (see the module docstring). `serving`: serving model -> its production prompt version; `first_window`: how
    far back the very first pass reads. Raises `LangSmithUnavailableError` / `LangSmithError` (nothing recorded,
    the cursor unmoved)."""
    source = f"project:{settings.project}"
    cursor, _ = store.langsmith_cursor(pipeline, source)
    until = now - timedelta(minutes=settings.settle_minutes)
    since = cursor or (until - first_window)
    read = FeedbackRead(project=settings.project, since=_iso(since), until=_iso(until))
    if until <= since or not serving:
        return read
    if cursor is None:  # where reading starts is kept before the first request: a failed first pass loses nothing
        store.advance_langsmith_cursor(pipeline, source, since, 0)
    versions = set(serving.values())
    with conn.session(f"reading production runs of the LangSmith project {settings.project!r}") as client:
        with warnings.catch_warnings():
            # langsmith 0.15 marks list_runs deprecated in favour of `client.runs.query` (the v2 API), which
            # servers older than LangSmith's cloud (and the fake) do not offer; list_runs is the one both answer.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=r"list_runs\(\) is deprecated")
            runs = list(client.list_runs(project_name=settings.project, is_root=True,
                                         filter=run_filter(settings, sorted(versions), since, until)))
    models_of: dict[str, list[str]] = {}
    for model, version in serving.items():
        models_of.setdefault(version, []).append(model)
    # Recorded as received an instant before `now`: inside this period's window (now − interval, now] and out of
    # the next one's, which includes its own start.
    received = now - timedelta(microseconds=1)
    outcomes: list[ProductionResult] = []
    for run in runs:
        version = _version_of(run, settings, versions)
        if version is None:
            continue
        read.runs += 1
        metadata = dict((run.extra or {}).get("metadata") or {})
        named = metadata.get(settings.model_metadata_key)
        model = named if named in serving else (models_of[version][0] if len(models_of[version]) == 1 else None)
        if model is None:
            read.unattributed += 1
            continue
        stats = (run.feedback_stats or {}).get(settings.feedback_key) or {}
        score = stats.get("avg")
        if score is not None and not 0.0 <= float(score) <= 1.0:
            read.out_of_range += 1
            continue
        if score is None and not run.error:
            read.unscored += 1
        latency = (run.end_time - run.start_time).total_seconds() * 1000.0 if run.end_time and run.start_time \
            else None
        outcomes.append(ProductionResult(
            pipeline=pipeline, request_id=f"{REQUEST_PREFIX}{run.id}", prompt_hash=version, error=bool(run.error),
            score=None if score is None else float(score), latency_ms=latency, model=model,
            metadata={k: metadata[k] for k in ("spectrum", "case_id") if k in metadata}
            | {"langsmith_run_id": str(run.id), "langsmith_start_time": _iso(run.start_time)
               if run.start_time else None},
            created_at=received))
    read.recorded = store.write_production_results(outcomes)
    store.advance_langsmith_cursor(pipeline, source, until, read.runs)
    return read
