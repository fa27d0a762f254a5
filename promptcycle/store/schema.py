"""The metrics store's schema, as numbered migrations applied in order.

`MIGRATIONS` is append-only: a later change adds a step with the next version number, never edits
an applied one. Each step runs in its own transaction together with its row in `schema_migrations`,
so a step is either wholly applied and recorded or not at all. A file written by newer code (a
recorded version this code does not know) is refused rather than guessed at.

Time columns are `TIMESTAMP` holding UTC. JSON columns (`*_json`, `explanation`) hold compact JSON
text. Scores are a `MAP(VARCHAR, DOUBLE)`: small on disk (the keys compress to a dictionary) and
queried as `scores['accuracy']`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from promptcycle.errors import StoreError
from promptcycle.store.records import to_db_time, utc_now

__all__ = ["Migration", "MIGRATIONS", "SCHEMA_VERSION", "applied_migrations", "apply_migrations"]


@dataclass(frozen=True)
class Migration:
    """One schema step: `version` numbers run 1, 2, 3 … and each step's statements run in order."""

    version: int
    name: str
    statements: tuple[str, ...]


_V1 = Migration(1, "initial tables: runs, responses, results, prompt_versions, dq_results, splits", (
    """
    CREATE TABLE runs (
        run_id       VARCHAR PRIMARY KEY,
        pipeline     VARCHAR NOT NULL,
        kind         VARCHAR NOT NULL,
        fingerprint  VARCHAR NOT NULL,
        status       VARCHAR NOT NULL,
        prompt_hash  VARCHAR,
        dataset_hash VARCHAR,
        models       VARCHAR[],
        repeats      INTEGER,
        case_limit   INTEGER,
        simulated    BOOLEAN,
        config_json  VARCHAR,
        flow_run_id  VARCHAR,
        started_at   TIMESTAMP,
        finished_at  TIMESTAMP,
        summary_json VARCHAR
    )
    """,
    """
    CREATE TABLE responses (
        call_key      VARCHAR PRIMARY KEY,
        provider      VARCHAR NOT NULL,
        model         VARCHAR NOT NULL,
        prompt_hash   VARCHAR,
        case_id       VARCHAR,
        repeat        INTEGER CHECK (repeat >= 0),
        output        VARCHAR NOT NULL,
        input_tokens  INTEGER,
        output_tokens INTEGER,
        latency_ms    DOUBLE,
        cost_usd      DOUBLE,
        attempts      INTEGER,
        simulated     BOOLEAN,
        created_at    TIMESTAMP,
        run_id        VARCHAR
    )
    """,
    """
    CREATE TABLE results (
        run_id        VARCHAR NOT NULL,
        model         VARCHAR NOT NULL,
        case_id       VARCHAR NOT NULL,
        repeat        INTEGER NOT NULL CHECK (repeat >= 0),
        spectrum      VARCHAR,
        split         VARCHAR,
        prompt_hash   VARCHAR,
        call_key      VARCHAR,
        scores        MAP(VARCHAR, DOUBLE),
        overall       DOUBLE,
        explanation   VARCHAR,
        latency_ms    DOUBLE,
        input_tokens  INTEGER,
        output_tokens INTEGER,
        cost_usd      DOUBLE,
        attempts      INTEGER,
        error         VARCHAR,
        error_kind    VARCHAR,
        simulated     BOOLEAN,
        created_at    TIMESTAMP,
        PRIMARY KEY (run_id, model, case_id, repeat)
    )
    """,
    """
    CREATE TABLE prompt_versions (
        prompt_hash VARCHAR PRIMARY KEY,
        pipeline    VARCHAR NOT NULL,
        system      VARCHAR NOT NULL,
        template    VARCHAR NOT NULL,
        variables   VARCHAR[],
        parent_hash VARCHAR,
        strategy    VARCHAR,
        rationale   VARCHAR,
        scope       VARCHAR,
        created_at  TIMESTAMP
    )
    """,
    """
    CREATE TABLE dq_results (
        run_id      VARCHAR NOT NULL,
        suite       VARCHAR NOT NULL,
        success     BOOLEAN NOT NULL,
        report_json VARCHAR,
        created_at  TIMESTAMP,
        PRIMARY KEY (run_id, suite)
    )
    """,
    """
    CREATE TABLE splits (
        dataset_key VARCHAR NOT NULL,
        case_id     VARCHAR NOT NULL,
        split       VARCHAR NOT NULL,
        PRIMARY KEY (dataset_key, case_id)
    )
    """,
))

# Label moves are listed newest first per pipeline. They are ordered by `seq` (the store hands out
# max + 1 while it holds the file) because two moves can share a timestamp and clocks can step back.
# No index: DuckDB's ART indexes serve point lookups, not ORDER BY … LIMIT, and measured here a
# scan of 200k events for one pipeline's newest 500 took ~7 ms with or without one.
_V2 = Migration(2, "prompt labels, label events, decisions, diagnoses", (
    """
    CREATE TABLE prompt_labels (
        pipeline    VARCHAR NOT NULL,
        label       VARCHAR NOT NULL CHECK (label IN ('production', 'candidate', 'previous')),
        scope       VARCHAR NOT NULL DEFAULT '',
        prompt_hash VARCHAR NOT NULL,
        updated_at  TIMESTAMP NOT NULL,
        updated_by  VARCHAR NOT NULL,
        PRIMARY KEY (pipeline, label, scope)
    )
    """,
    """
    CREATE TABLE label_events (
        event_id      VARCHAR PRIMARY KEY,
        seq           BIGINT NOT NULL,
        pipeline      VARCHAR NOT NULL,
        label         VARCHAR NOT NULL,
        scope         VARCHAR NOT NULL,
        from_hash     VARCHAR,
        to_hash       VARCHAR NOT NULL,
        actor         VARCHAR NOT NULL,
        reason        VARCHAR NOT NULL,
        evidence_json VARCHAR,
        forced        BOOLEAN NOT NULL,
        created_at    TIMESTAMP NOT NULL
    )
    """,
    """
    CREATE TABLE decisions (
        decision_id   VARCHAR PRIMARY KEY,
        run_id        VARCHAR NOT NULL,
        pipeline      VARCHAR NOT NULL,
        kind          VARCHAR NOT NULL,
        prompt_hash   VARCHAR NOT NULL,
        baseline_hash VARCHAR,
        decision      VARCHAR NOT NULL,
        evidence_json VARCHAR,
        created_at    TIMESTAMP NOT NULL,
        UNIQUE (run_id, prompt_hash, kind)
    )
    """,
    """
    CREATE TABLE diagnoses (
        run_id          VARCHAR NOT NULL,
        baseline_run_id VARCHAR NOT NULL,
        diagnosis_json  VARCHAR NOT NULL,
        created_at      TIMESTAMP NOT NULL,
        PRIMARY KEY (run_id, baseline_run_id)
    )
    """,
))

# Deployments are listed newest first per pipeline by `seq` (max + 1 under the file lock), like label
# events. A pipeline has at most one running canary and one deployment lock: both are checked and
# written inside one transaction, which holds the file exclusively. Production results are keyed by
# (pipeline, request_id), so re-reporting or re-ingesting a request changes nothing.
_V3 = Migration(3, "deployments, stage reports, canaries and their looks, production results, deploy locks", (
    """
    CREATE TABLE deployments (
        deployment_id VARCHAR PRIMARY KEY,
        seq           BIGINT NOT NULL,
        pipeline      VARCHAR NOT NULL,
        scope         VARCHAR NOT NULL DEFAULT '',
        kind          VARCHAR NOT NULL,
        status        VARCHAR NOT NULL,
        from_hash     VARCHAR,
        to_hash       VARCHAR NOT NULL,
        forced        BOOLEAN NOT NULL,
        actor         VARCHAR NOT NULL,
        reason        VARCHAR,
        targets_json  VARCHAR,
        evidence_json VARCHAR,
        flow_run_id   VARCHAR,
        created_at    TIMESTAMP NOT NULL,
        finished_at   TIMESTAMP
    )
    """,
    """
    CREATE TABLE stage_reports (
        deployment_id VARCHAR NOT NULL,
        stage         VARCHAR NOT NULL,
        status        VARCHAR NOT NULL CHECK (status IN ('passed', 'failed', 'skipped')),
        reason        VARCHAR NOT NULL,
        report_json   VARCHAR,
        created_at    TIMESTAMP NOT NULL,
        PRIMARY KEY (deployment_id, stage)
    )
    """,
    """
    CREATE TABLE canaries (
        canary_id            VARCHAR PRIMARY KEY,
        pipeline             VARCHAR NOT NULL,
        scope                VARCHAR NOT NULL DEFAULT '',
        deployment_id        VARCHAR,
        control_hash         VARCHAR NOT NULL,
        treatment_hash       VARCHAR NOT NULL,
        status               VARCHAR NOT NULL,
        step                 INTEGER NOT NULL,
        split_pct            DOUBLE NOT NULL CHECK (split_pct >= 0 AND split_pct <= 100),
        step_start_treatment INTEGER NOT NULL DEFAULT 0,
        looks                INTEGER NOT NULL DEFAULT 0,
        settings_json        VARCHAR,
        decision_json        VARCHAR,
        reason               VARCHAR,
        actor                VARCHAR NOT NULL,
        started_at           TIMESTAMP NOT NULL,
        updated_at           TIMESTAMP NOT NULL,
        finished_at          TIMESTAMP
    )
    """,
    """
    CREATE TABLE canary_looks (
        canary_id     VARCHAR NOT NULL,
        look          INTEGER NOT NULL,
        split_pct     DOUBLE NOT NULL,
        n_control     INTEGER NOT NULL,
        n_treatment   INTEGER NOT NULL,
        action        VARCHAR NOT NULL,
        reason        VARCHAR NOT NULL,
        decision_json VARCHAR,
        created_at    TIMESTAMP NOT NULL,
        PRIMARY KEY (canary_id, look)
    )
    """,
    """
    CREATE TABLE production_results (
        pipeline      VARCHAR NOT NULL,
        request_id    VARCHAR NOT NULL,
        prompt_hash   VARCHAR NOT NULL,
        scope         VARCHAR NOT NULL DEFAULT '',
        canary_id     VARCHAR,
        arm           VARCHAR,
        model         VARCHAR,
        score         DOUBLE CHECK (score IS NULL OR (score >= 0 AND score <= 1)),
        error         BOOLEAN NOT NULL,
        latency_ms    DOUBLE,
        metadata_json VARCHAR,
        created_at    TIMESTAMP NOT NULL,
        PRIMARY KEY (pipeline, request_id)
    )
    """,
    """
    CREATE TABLE deploy_locks (
        pipeline    VARCHAR PRIMARY KEY,
        holder      VARCHAR NOT NULL,
        acquired_at TIMESTAMP NOT NULL,
        expires_at  TIMESTAMP NOT NULL
    )
    """,
))

# A call's `attempts` counts every HTTP request it took (in-client retries and task retries), and
# `wait_ms` the time it spent queueing for a slot and backing off between attempts, apart from the
# answering attempt's `latency_ms`. A pipeline lease lets one process at a time spend on a pipeline:
# taken before a run starts or resumes, renewed while it runs, and taken over once it expires (or at
# once when its holder, on this host, is no longer alive).
_V4 = Migration(4, "waiting time of calls; pipeline leases", (
    "ALTER TABLE responses ADD COLUMN wait_ms DOUBLE",
    "ALTER TABLE results ADD COLUMN wait_ms DOUBLE",
    """
    CREATE TABLE pipeline_leases (
        pipeline    VARCHAR PRIMARY KEY,
        holder      VARCHAR NOT NULL,
        purpose     VARCHAR NOT NULL,
        acquired_at TIMESTAMP NOT NULL,
        expires_at  TIMESTAMP NOT NULL
    )
    """,
))

_V5 = Migration(5, "what the provider said: reported model, finish reason, token source", (
    "ALTER TABLE responses ADD COLUMN provider_model VARCHAR",
    "ALTER TABLE responses ADD COLUMN finish_reason VARCHAR",
    "ALTER TABLE responses ADD COLUMN tokens_source VARCHAR",
    "ALTER TABLE results ADD COLUMN finish_reason VARCHAR",
    "ALTER TABLE results ADD COLUMN tokens_source VARCHAR",
))


# Alerts (promptcycle/store/alerts.py): one open alert per key (pipeline, model, spectrum, detector) at
# a time, every event of its history, and one delivery per paging event x channel. A delivery id is
# "<event_id>.<channel>", the idempotency key receivers dedup on.
_V6 = Migration(6, "alerts, alert events and their deliveries", (
    """
    CREATE TABLE alerts (
        alert_id            BIGINT PRIMARY KEY,
        pipeline            VARCHAR NOT NULL,
        model               VARCHAR NOT NULL,
        spectrum            VARCHAR NOT NULL,
        detector            VARCHAR NOT NULL,
        severity            VARCHAR NOT NULL CHECK (severity IN ('info', 'low', 'medium', 'high', 'critical')),
        status              VARCHAR NOT NULL CHECK (status IN ('open', 'acknowledged', 'snoozed', 'resolved')),
        first_seen          TIMESTAMP NOT NULL,
        last_seen           TIMESTAMP NOT NULL,
        occurrences         INTEGER NOT NULL,
        pages               INTEGER NOT NULL,
        escalations         INTEGER NOT NULL,
        message             VARCHAR NOT NULL,
        evidence_json       VARCHAR,
        first_paged_at      TIMESTAMP,
        last_paged_at       TIMESTAMP,
        last_paged_severity VARCHAR,
        acknowledged_at     TIMESTAMP,
        acknowledged_by     VARCHAR,
        snoozed_until       TIMESTAMP,
        escalated_at        TIMESTAMP,
        resolved_at         TIMESTAMP
    )
    """,
    """
    CREATE TABLE alert_events (
        event_id      VARCHAR PRIMARY KEY,
        seq           BIGINT NOT NULL,
        alert_id      BIGINT NOT NULL,
        kind          VARCHAR NOT NULL CHECK (kind IN ('raised', 'repeated', 'suppressed', 'escalated',
                                                       'acknowledged', 'snoozed', 'recovered')),
        severity      VARCHAR NOT NULL CHECK (severity IN ('info', 'low', 'medium', 'high', 'critical')),
        notify        BOOLEAN NOT NULL,
        reason        VARCHAR NOT NULL,
        actor         VARCHAR,
        message       VARCHAR NOT NULL,
        evidence_json VARCHAR,
        created_at    TIMESTAMP NOT NULL
    )
    """,
    """
    CREATE TABLE alert_deliveries (
        delivery_id     VARCHAR PRIMARY KEY,
        event_id        VARCHAR NOT NULL,
        channel         VARCHAR NOT NULL,
        state           VARCHAR NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'failed')),
        attempts        INTEGER NOT NULL,
        last_error      VARCHAR,
        next_attempt_at TIMESTAMP,
        claimed_until   TIMESTAMP,
        detail          VARCHAR,
        created_at      TIMESTAMP NOT NULL,
        sent_at         TIMESTAMP,
        UNIQUE (event_id, channel)
    )
    """,
))


_V7 = Migration(7, "strategy outcomes of optimization candidates", (
    """
    CREATE TABLE strategy_outcomes (
        run_id       VARCHAR NOT NULL,
        candidate    VARCHAR NOT NULL,
        scope        VARCHAR NOT NULL,
        pipeline     VARCHAR NOT NULL,
        strategy     VARCHAR NOT NULL,
        spectrum     VARCHAR NOT NULL,
        failure_kind VARCHAR NOT NULL,
        dev_effect   DOUBLE,
        test_effect  DOUBLE,
        min_effect   DOUBLE NOT NULL,
        success      BOOLEAN,
        calls        BIGINT NOT NULL,
        cost_usd     DOUBLE NOT NULL,
        simulated    BOOLEAN NOT NULL,
        recorded_at  TIMESTAMP NOT NULL,
        PRIMARY KEY (run_id, candidate, scope)
    )
    """,
    "CREATE INDEX strategy_outcomes_pipeline ON strategy_outcomes (pipeline, recorded_at)",
))

# Monitoring and incidents (promptcycle/store/monitoring.py, promptcycle/store/incidents.py): one observation per
# series (pipeline x model x spectrum), source and monitor period; the detectors' state per series, so a detector
# continues across runs and processes; every monitor run; every healing decision; incidents and their timeline.
_V8 = Migration(8, "monitor runs, observations, detector states, healing decisions, incidents", (
    """
    CREATE TABLE monitor_runs (
        monitor_run_id VARCHAR PRIMARY KEY,
        pipeline       VARCHAR NOT NULL,
        period         BIGINT NOT NULL,
        production_hash VARCHAR,
        status         VARCHAR NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
        started_at     TIMESTAMP NOT NULL,
        finished_at    TIMESTAMP,
        flow_run_id    VARCHAR,
        summary_json   VARCHAR
    )
    """,
    """
    CREATE TABLE monitor_observations (
        pipeline       VARCHAR NOT NULL,
        model          VARCHAR NOT NULL,
        spectrum       VARCHAR NOT NULL,
        source         VARCHAR NOT NULL CHECK (source IN ('production', 'probe')),
        period         BIGINT NOT NULL,
        observed_at    TIMESTAMP NOT NULL,
        value          DOUBLE NOT NULL,
        n              INTEGER NOT NULL,
        case_var       DOUBLE,
        errors         INTEGER NOT NULL,
        prompt_hash    VARCHAR,
        run_id         VARCHAR,
        monitor_run_id VARCHAR NOT NULL,
        PRIMARY KEY (pipeline, model, spectrum, source, period)
    )
    """,
    """
    CREATE TABLE detector_states (
        pipeline       VARCHAR NOT NULL,
        model          VARCHAR NOT NULL,
        spectrum       VARCHAR NOT NULL,
        state_json     VARCHAR NOT NULL,
        findings_json  VARCHAR,
        monitor_run_id VARCHAR NOT NULL,
        updated_at     TIMESTAMP NOT NULL,
        PRIMARY KEY (pipeline, model, spectrum)
    )
    """,
    """
    CREATE TABLE healing_decisions (
        decision_id   VARCHAR PRIMARY KEY,
        pipeline      VARCHAR NOT NULL,
        incident_id   VARCHAR,
        alert_id      BIGINT,
        model         VARCHAR NOT NULL,
        spectrum      VARCHAR NOT NULL,
        severity      VARCHAR NOT NULL,
        eligible      BOOLEAN NOT NULL,
        reason        VARCHAR NOT NULL,
        status        VARCHAR NOT NULL CHECK (status IN ('refused', 'running', 'finished')),
        outcome       VARCHAR,
        calls         BIGINT,
        cost_usd      DOUBLE,
        evidence_json VARCHAR,
        created_at    TIMESTAMP NOT NULL,
        finished_at   TIMESTAMP
    )
    """,
    """
    CREATE TABLE incidents (
        incident_id   VARCHAR PRIMARY KEY,
        pipeline      VARCHAR NOT NULL,
        alert_id      BIGINT,
        model         VARCHAR NOT NULL,
        spectrum      VARCHAR NOT NULL,
        detector      VARCHAR NOT NULL,
        severity      VARCHAR NOT NULL,
        status        VARCHAR NOT NULL CHECK (status IN ('open', 'healing', 'resolved', 'escalated')),
        summary       VARCHAR NOT NULL,
        opened_at     TIMESTAMP NOT NULL,
        closed_at     TIMESTAMP
    )
    """,
    """
    CREATE TABLE incident_events (
        incident_id   VARCHAR NOT NULL,
        seq           INTEGER NOT NULL,
        kind          VARCHAR NOT NULL CHECK (kind IN ('alert', 'healing_decision', 'optimization', 'deployment',
                                                       'canary', 'resolved', 'escalated', 'note')),
        occurred_at   TIMESTAMP NOT NULL,
        summary       VARCHAR NOT NULL,
        ref           VARCHAR,
        evidence_json VARCHAR,
        PRIMARY KEY (incident_id, seq)
    )
    """,
))

# What was mirrored to LangSmith (promptcycle/langsmith/mirror.py): one row per result sent, with the result's
# created_at, so a result rewritten later (a terminal error retried on resume) is sent again as an update.
# And where each LangSmith production-feedback source was read up to (promptcycle/langsmith/feedback.py).
_V9 = Migration(9, "LangSmith: mirrored results and production feedback cursors", (
    """
    CREATE TABLE langsmith_mirrored (
        run_id            VARCHAR NOT NULL,
        model             VARCHAR NOT NULL,
        case_id           VARCHAR NOT NULL,
        repeat            INTEGER NOT NULL,
        ls_run_id         VARCHAR NOT NULL,
        experiment        VARCHAR NOT NULL,
        result_created_at TIMESTAMP,
        mirrored_at       TIMESTAMP NOT NULL,
        PRIMARY KEY (run_id, model, case_id, repeat)
    )
    """,
    """
    CREATE TABLE langsmith_cursors (
        pipeline     VARCHAR NOT NULL,
        source       VARCHAR NOT NULL,
        cursor_time  TIMESTAMP,
        runs_read    BIGINT NOT NULL DEFAULT 0,
        updated_at   TIMESTAMP NOT NULL,
        PRIMARY KEY (pipeline, source)
    )
    """,
))

MIGRATIONS: tuple[Migration, ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8, _V9)
SCHEMA_VERSION = len(MIGRATIONS)

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       VARCHAR NOT NULL,
    applied_at TIMESTAMP NOT NULL
)
"""


def _check_sequence(migrations: Sequence[Migration]) -> None:
    for expected, step in enumerate(migrations, start=1):
        if step.version != expected:
            raise StoreError(f"schema migrations must be numbered 1, 2, 3 … in order; step {expected} "
                             f"is numbered {step.version} ({step.name!r})")


def applied_migrations(con: duckdb.DuckDBPyConnection) -> dict[int, str]:
    """version -> name of every step recorded in this database (empty for a new file)."""
    con.execute(_BOOKKEEPING)
    return dict(con.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall())


def apply_migrations(con: duckdb.DuckDBPyConnection, migrations: Sequence[Migration] = MIGRATIONS,
                     *, source: str = "the metrics store") -> int:
    """Apply the steps of `migrations` this database lacks, in order; return its schema version.

    Idempotent. Concurrency-safe as long as the caller holds the database file exclusively (one
    read-write DuckDB connection at a time, which `MetricsStore` guarantees).
    """
    _check_sequence(migrations)
    applied = applied_migrations(con)
    known = {m.version: m for m in migrations}
    # A renamed step means the histories diverged, so it is reported before "newer file": upgrading
    # would not help.
    for version, name in applied.items():
        if version in known and known[version].name != name:
            raise StoreError(f"{source}: schema step {version} was applied as {name!r} but this code calls it "
                             f"{known[version].name!r}; migrations are append-only, never edited")
    newer = sorted(v for v in applied if v not in known)
    if newer:
        raise StoreError(f"{source} has schema version {max(applied)}, but this version of promptcycle "
                         f"knows only up to {len(migrations)}; upgrade promptcycle to use it")
    for step in migrations:
        if step.version in applied:
            continue
        con.begin()
        try:
            for statement in step.statements:
                con.execute(statement)
            con.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                        [step.version, step.name, to_db_time(utc_now())])
            con.commit()
        except duckdb.Error as exc:
            con.rollback()
            raise StoreError(f"{source}: schema step {step.version} ({step.name}) failed: {exc}") from exc
    return len(migrations)
