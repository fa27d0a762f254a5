"""Alerts in the metrics store: alerts, their event history, and one delivery per event × channel.

`AlertsTables` is a mixin of `MetricsStore`: its methods use the store's short-lived connections
(`_connect`, `_transaction`). Findings are applied in one transaction that reads the keys' state,
runs the pure policy (promptcycle/alerts/policy.py) and writes alerts, events and pending
deliveries together — so an alert is stored before anything is sent, and two monitor processes
cannot open two alerts for one key (the transaction holds the file).

Deliveries move pending → sending (claimed by one delivery pass for a lease) → sent, or → failed
(retried by a later pass once `next_attempt_at` is reached). A claim whose lease ran out (its
process died mid-send) is claimed again: the receiver dedups on the delivery id.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from promptcycle.alerts.policy import (
    AlertKey,
    Decision,
    Finding,
    KeyState,
    PolicySettings,
    decide,
    escalate,
    escalation_due,
    severity_rank,
)
from promptcycle.errors import StoreError
from promptcycle.store.records import dump_json, from_db_time, to_db_time

__all__ = ["AlertsTables", "AlertRecord", "AlertEventRecord", "DeliveryRecord", "ChannelRoute", "DELIVERY_STATES"]


@dataclass(frozen=True)
class ChannelRoute:
    """Which events a channel receives: pages at or above `min_severity`; an `escalation_only`
    channel receives escalations (and the recovery of an escalated alert) only."""

    name: str
    min_severity: str = "info"
    escalation_only: bool = False

    def wants(self, kind: str, severity: str, escalated: bool) -> bool:
        if severity_rank(severity) < severity_rank(self.min_severity):
            return False
        if self.escalation_only:
            return kind == "escalated" or (kind == "recovered" and escalated)
        return True


@dataclass(frozen=True)
class AlertRecord:
    alert_id: int
    pipeline: str
    model: str
    spectrum: str
    detector: str
    severity: str
    status: str
    first_seen: datetime
    last_seen: datetime
    occurrences: int
    pages: int
    escalations: int
    message: str
    evidence: dict[str, Any] | None = None
    first_paged_at: datetime | None = None
    last_paged_at: datetime | None = None
    last_paged_severity: str | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    snoozed_until: datetime | None = None
    escalated_at: datetime | None = None
    resolved_at: datetime | None = None

    @property
    def key(self) -> AlertKey:
        return AlertKey(self.pipeline, self.model, self.spectrum, self.detector)

    def status_at(self, now: datetime) -> str:
        """The status as of `now`: a snooze that has ended reads as open (or acknowledged)."""
        if self.status == "snoozed" and (self.snoozed_until is None or now >= self.snoozed_until):
            return "acknowledged" if self.acknowledged_at else "open"
        return self.status

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class AlertEventRecord:
    """One event in an alert's history; `notify` says whether it paged (then it has deliveries)."""

    event_id: str
    seq: int
    alert_id: int
    kind: str
    severity: str
    notify: bool
    reason: str
    created_at: datetime
    actor: str | None = None
    message: str = ""
    evidence: dict[str, Any] | None = None
    deliveries: tuple[str, ...] = field(default=())  # channel names the event goes to

    def to_dict(self) -> dict[str, Any]:
        d = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in self.__dict__.items()}
        d["deliveries"] = list(self.deliveries)
        return d


@dataclass(frozen=True)
class DeliveryRecord:
    """One event sent (or to be sent) to one channel. `delivery_id` is the idempotency key."""

    delivery_id: str
    event_id: str
    channel: str
    state: str
    attempts: int
    created_at: datetime
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in self.__dict__.items()}


DELIVERY_STATES = ("pending", "sending", "sent", "failed")

def _rows(cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _load(text: str | None) -> Any:
    import json

    return json.loads(text) if text else None


_ALERT_TIMES = ("first_seen", "last_seen", "first_paged_at", "last_paged_at", "acknowledged_at", "snoozed_until",
                "escalated_at", "resolved_at")


def _alert(row: dict[str, Any]) -> AlertRecord:
    row = dict(row)
    row["evidence"] = _load(row.pop("evidence_json"))
    for name in _ALERT_TIMES:
        row[name] = from_db_time(row[name])
    return AlertRecord(**row)


def _event(row: dict[str, Any], deliveries: Sequence[str] = ()) -> AlertEventRecord:
    row = dict(row)
    row["evidence"] = _load(row.pop("evidence_json"))
    row["created_at"] = from_db_time(row["created_at"])
    return AlertEventRecord(**row, deliveries=tuple(deliveries))


def _delivery(row: dict[str, Any]) -> DeliveryRecord:
    row = dict(row)
    row.pop("claimed_until", None)
    for name in ("created_at", "next_attempt_at", "sent_at"):
        row[name] = from_db_time(row[name])
    return DeliveryRecord(**row)


def _key_state(alert: AlertRecord | None, last_page: tuple[datetime | None, str | None],
               snoozed_until: datetime | None) -> KeyState:
    page_at, page_severity = last_page
    if alert is None:
        return KeyState(last_page_at=page_at, last_page_severity=page_severity, snoozed_until=snoozed_until)
    return KeyState(alert_id=str(alert.alert_id), severity=alert.severity, status=alert.status,
                    first_seen=alert.first_seen, first_paged_at=alert.first_paged_at,
                    last_paged_severity=alert.last_paged_severity, acknowledged=alert.acknowledged_at is not None,
                    escalated_at=alert.escalated_at, last_page_at=page_at, last_page_severity=page_severity,
                    snoozed_until=snoozed_until)


class AlertsTables:
    """Alerts, alert events and deliveries. Mixed into `MetricsStore`."""

    # -- reading state -----------------------------------------------------------------------------

    def _open_alerts(self, con, pipeline: str | None) -> dict[AlertKey, AlertRecord]:
        where, params = "status <> 'resolved'", []
        if pipeline is not None:
            where, params = where + " AND pipeline = ?", [pipeline]
        return {a.key: a for a in map(_alert, _rows(con.execute(
            f"SELECT * FROM alerts WHERE {where} ORDER BY alert_id", params)))}

    def _key_pages(self, con, pipeline: str) -> dict[AlertKey, tuple[datetime | None, str | None, datetime | None]]:
        """Per key: the last page of any of its alerts (time, severity) and its latest snooze end."""
        out = {}
        for row in _rows(con.execute(
                "SELECT pipeline, model, spectrum, detector, arg_max(last_paged_severity, last_paged_at) AS sev, "
                "max(last_paged_at) AS at, max(snoozed_until) AS snoozed FROM alerts WHERE pipeline = ? "
                "GROUP BY ALL", [pipeline])):
            key = AlertKey(row["pipeline"], row["model"], row["spectrum"], row["detector"])
            out[key] = (from_db_time(row["at"]), row["sev"], from_db_time(row["snoozed"]))
        return out

    def _next(self, con, table: str, column: str) -> int:
        return int(con.execute(f"SELECT coalesce(max({column}), 0) + 1 FROM {table}").fetchone()[0])

    # -- writing events --------------------------------------------------------------------------

    def _write_event(self, con, alert: AlertRecord, decision: Decision, now: datetime, routes: Sequence[ChannelRoute],
                     *, actor: str | None = None, message: str | None = None,
                     evidence: dict[str, Any] | None = None) -> AlertEventRecord:
        event_id = uuid.uuid4().hex
        seq = self._next(con, "alert_events", "seq")
        text = message if message is not None else alert.message
        con.execute("INSERT INTO alert_events (event_id, seq, alert_id, kind, severity, notify, reason, actor, "
                    "message, evidence_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [event_id, seq, alert.alert_id, decision.kind, decision.severity, decision.notify,
                     decision.reason, actor, text, dump_json(evidence), to_db_time(now)])
        channels: list[str] = []
        if decision.notify:
            escalated = alert.escalations > 0 or decision.kind == "escalated"
            for route in routes:
                if route.wants(decision.kind, decision.severity, escalated):
                    channels.append(route.name)
                    con.execute("INSERT INTO alert_deliveries (delivery_id, event_id, channel, state, attempts, "
                                "created_at) VALUES (?, ?, ?, 'pending', 0, ?)",
                                [f"{event_id}.{route.name}", event_id, route.name, to_db_time(now)])
        return AlertEventRecord(event_id=event_id, seq=seq, alert_id=alert.alert_id, kind=decision.kind,
                                severity=decision.severity, notify=decision.notify, reason=decision.reason,
                                created_at=now, actor=actor, message=text, evidence=evidence,
                                deliveries=tuple(channels))

    def _apply(self, con, alert: AlertRecord | None, finding: Finding | None, decision: Decision, now: datetime,
               routes: Sequence[ChannelRoute], actor: str | None = None) -> AlertEventRecord:
        t = to_db_time(now)
        if decision.opens:
            assert finding is not None
            alert = AlertRecord(alert_id=self._next(con, "alerts", "alert_id"), pipeline=finding.pipeline,
                                model=finding.model, spectrum=finding.spectrum, detector=finding.detector,
                                severity=decision.severity, status="open", first_seen=now, last_seen=now,
                                occurrences=0, pages=0, escalations=0, message=finding.message or finding.detector,
                                evidence=finding.evidence)
            con.execute("INSERT INTO alerts (alert_id, pipeline, model, spectrum, detector, severity, status, "
                        "first_seen, last_seen, occurrences, pages, escalations, message, evidence_json) "
                        "VALUES (?, ?, ?, ?, ?, ?, 'open', ?, ?, 0, 0, 0, ?, ?)",
                        [alert.alert_id, alert.pipeline, alert.model, alert.spectrum, alert.detector, alert.severity,
                         t, t, alert.message, dump_json(finding.evidence)])
        assert alert is not None
        sets, params = [], []
        if finding is not None and not decision.resolves:
            sets += ["last_seen = ?", "occurrences = occurrences + 1", "message = ?", "evidence_json = ?"]
            params += [t, finding.message or alert.message, dump_json(finding.evidence)]
        if decision.kind in ("raised", "repeated", "suppressed", "escalated"):
            sets.append("severity = ?")
            params.append(decision.severity)
        if decision.kind == "escalated":
            sets += ["escalations = escalations + 1", "escalated_at = ?"]
            params.append(t)
        if decision.notify and decision.kind != "recovered":
            sets += ["pages = pages + 1", "first_paged_at = coalesce(first_paged_at, ?)", "last_paged_at = ?",
                     "last_paged_severity = ?"]
            params += [t, t, decision.severity]
        if decision.resolves:
            sets += ["status = 'resolved'", "resolved_at = ?", "last_seen = ?"]
            params += [t, t]
        if sets:
            con.execute(f"UPDATE alerts SET {', '.join(sets)} WHERE alert_id = ?", [*params, alert.alert_id])
        evidence = finding.evidence if finding is not None else None
        message = finding.message if finding is not None and finding.message else None
        return self._write_event(con, alert, decision, now, routes, actor=actor, message=message, evidence=evidence)

    # -- the operations ------------------------------------------------------------------------

    def record_findings(self, pipeline: str, findings: Sequence[Finding], settings: PolicySettings,
                        routes: Sequence[ChannelRoute], now: datetime) -> list[AlertEventRecord]:
        """Apply the policy to `findings` of `pipeline` and to its open alerts' escalation deadlines;
        store the alerts, their events and pending deliveries in one transaction; return the events."""
        for f in findings:
            if f.pipeline != pipeline:
                raise ValueError(f"finding of pipeline {f.pipeline!r} passed for pipeline {pipeline!r}")
        events = []
        with self._transaction(f"record the alert findings of {pipeline}") as con:
            # Snoozes that have ended: the alert is back to open (or acknowledged).
            con.execute("UPDATE alerts SET status = CASE WHEN acknowledged_at IS NULL THEN 'open' ELSE 'acknowledged' "
                        "END WHERE pipeline = ? AND status = 'snoozed' AND snoozed_until <= ?",
                        [pipeline, to_db_time(now)])
            open_alerts = self._open_alerts(con, pipeline)
            pages = self._key_pages(con, pipeline)
            # One decision per key and pass: a monitor run may report a key twice (two windows); the
            # worst finding speaks for it.
            worst: dict[AlertKey, Finding] = {}
            for f in findings:
                held = worst.get(f.key)
                if held is None or (held.in_control and not f.in_control) or (
                        held.in_control == f.in_control and severity_rank(f.severity) > severity_rank(held.severity)):
                    worst[f.key] = f
            for key, finding in sorted(worst.items()):
                alert = open_alerts.get(key)
                at, sev, snoozed = pages.get(key, (None, None, None))
                decision = decide(finding, _key_state(alert, (at, sev), snoozed), settings, now)
                if decision is None:
                    continue
                events.append(self._apply(con, alert, finding, decision, now, routes))
            pages = self._key_pages(con, pipeline)  # with the pages just written
            for key, alert in sorted(self._open_alerts(con, pipeline).items()):
                at, sev, snoozed = pages.get(key, (None, None, None))
                decision = escalation_due(_key_state(alert, (at, sev), snoozed), settings, now)
                if decision is not None:
                    events.append(self._apply(con, alert, None, decision, now, routes, actor="policy"))
        return events

    def _one_alert(self, con, alert_id: int | str) -> AlertRecord:
        try:
            number = int(alert_id)
        except (TypeError, ValueError):
            raise StoreError(f"alert ids are numbers (see `promptcycle alerts list`), not {alert_id!r}") from None
        rows = _rows(con.execute("SELECT * FROM alerts WHERE alert_id = ?", [number]))
        if not rows:
            raise StoreError(f"no alert {number} in {self.path} (see `promptcycle alerts list`)")
        return _alert(rows[0])

    def acknowledge_alert(self, alert_id: int | str, actor: str, now: datetime) -> AlertEventRecord:
        """Mark an open alert acknowledged: it stops escalating and pages again only if it gets worse."""
        with self._transaction(f"acknowledge alert {alert_id}") as con:
            alert = self._one_alert(con, alert_id)
            if alert.status == "resolved":
                raise StoreError(f"alert {alert.alert_id} is already resolved ({alert.resolved_at:%Y-%m-%d %H:%M} UTC)")
            status = "snoozed" if alert.status_at(now) == "snoozed" else "acknowledged"
            con.execute("UPDATE alerts SET status = ?, acknowledged_at = coalesce(acknowledged_at, ?), "
                        "acknowledged_by = coalesce(acknowledged_by, ?) WHERE alert_id = ?",
                        [status, to_db_time(now), actor, alert.alert_id])
            return self._write_event(con, alert, Decision("acknowledged", alert.severity, False,
                                                          f"acknowledged by {actor}"), now, (), actor=actor)

    def snooze_alert(self, alert_id: int | str, until: datetime, actor: str, now: datetime) -> AlertEventRecord:
        """Snooze an alert's key until `until`: recorded as usual, but nothing pages until then."""
        if until <= now:
            raise ValueError("a snooze must end in the future")
        with self._transaction(f"snooze alert {alert_id}") as con:
            alert = self._one_alert(con, alert_id)
            con.execute("UPDATE alerts SET status = CASE WHEN status = 'resolved' THEN status ELSE 'snoozed' END, "
                        "snoozed_until = ? WHERE alert_id = ?", [to_db_time(until), alert.alert_id])
            return self._write_event(con, alert, Decision("snoozed", alert.severity, False,
                                                          f"snoozed by {actor} until {until:%Y-%m-%d %H:%M} UTC"),
                                     now, (), actor=actor)

    def escalate_alert(self, alert_id: int | str, reason: str, actor: str, settings: PolicySettings,
                       routes: Sequence[ChannelRoute], now: datetime) -> AlertEventRecord:
        """Escalate an open alert on request (e.g. healing found nothing to deploy): one severity up,
        paged to every channel that wants it, the escalation channels included."""
        with self._transaction(f"escalate alert {alert_id}") as con:
            alert = self._one_alert(con, alert_id)
            if alert.status == "resolved":
                raise StoreError(f"alert {alert.alert_id} is resolved; there is nothing to escalate")
            state = _key_state(alert, (alert.last_paged_at, alert.last_paged_severity), alert.snoozed_until)
            return self._apply(con, alert, None, escalate(state, settings, reason), now, routes, actor=actor)

    # -- reading ---------------------------------------------------------------------------------

    def get_alert(self, alert_id: int | str) -> AlertRecord:
        with self._connect(f"read alert {alert_id}") as con:
            return self._one_alert(con, alert_id)

    def alerts(self, pipeline: str | None = None, *, open_only: bool = False, limit: int | None = 200) -> list[AlertRecord]:
        """Alerts, newest first (open ones only with `open_only`)."""
        where, params = ["1 = 1"], []
        if pipeline is not None:
            where.append("pipeline = ?")
            params.append(pipeline)
        if open_only:
            where.append("status <> 'resolved'")
        sql = f"SELECT * FROM alerts WHERE {' AND '.join(where)} ORDER BY alert_id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._connect("list alerts") as con:
            return [_alert(r) for r in _rows(con.execute(sql, params))]

    def alert_events(self, alert_id: int | str | None = None, pipeline: str | None = None,
                     limit: int | None = 200) -> list[AlertEventRecord]:
        """Alert events, newest first, with the channels each went to."""
        where, params = ["1 = 1"], []
        if alert_id is not None:
            where.append("e.alert_id = ?")
            params.append(int(alert_id))
        if pipeline is not None:
            where.append("a.pipeline = ?")
            params.append(pipeline)
        sql = (f"SELECT e.* FROM alert_events e JOIN alerts a USING (alert_id) WHERE {' AND '.join(where)} "
               "ORDER BY e.seq DESC")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._connect("list alert events") as con:
            rows = _rows(con.execute(sql, params))
            channels: dict[str, list[str]] = {}
            if rows:
                ids = [r["event_id"] for r in rows]
                for event_id, channel in con.execute(
                        "SELECT event_id, channel FROM alert_deliveries WHERE list_contains(?, event_id) "
                        "ORDER BY channel", [ids]).fetchall():
                    channels.setdefault(event_id, []).append(channel)
        return [_event(r, channels.get(r["event_id"], ())) for r in rows]

    def alert_deliveries(self, event_id: str | None = None, state: str | None = None) -> list[DeliveryRecord]:
        where, params = ["1 = 1"], []
        if event_id is not None:
            where.append("event_id = ?")
            params.append(event_id)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        with self._connect("list alert deliveries") as con:
            return [_delivery(r) for r in _rows(con.execute(
                f"SELECT * FROM alert_deliveries WHERE {' AND '.join(where)} ORDER BY created_at, delivery_id",
                params))]

    # -- delivery --------------------------------------------------------------------------------

    def claim_deliveries(self, channels: Sequence[str], now: datetime, lease_seconds: float = 300.0,
                         limit: int = 500, pipeline: str | None = None) -> list[dict[str, Any]]:
        """Claim the deliveries due on `channels` (pending, failed and due, or claimed by a pass whose
        lease ran out) for this pass; return each with its event and alert, oldest first."""
        if not channels:
            return []
        t = to_db_time(now)
        with self._transaction("claim alert deliveries") as con:
            rows = _rows(con.execute(
                "SELECT d.delivery_id, d.channel, d.attempts, e.event_id, e.kind, e.severity, e.reason, "
                "e.message, e.evidence_json, e.created_at, a.alert_id, a.pipeline, a.model, a.spectrum, a.detector, "
                "a.first_seen, a.occurrences, a.status "
                "FROM alert_deliveries d JOIN alert_events e USING (event_id) JOIN alerts a ON a.alert_id = e.alert_id "
                "WHERE list_contains(?, d.channel) AND (? IS NULL OR a.pipeline = ?) AND ("
                "  d.state = 'pending' OR (d.state = 'failed' AND coalesce(d.next_attempt_at, ?) <= ?) "
                "  OR (d.state = 'sending' AND d.claimed_until < ?)) "
                f"ORDER BY e.seq, d.channel LIMIT {int(limit)}", [list(channels), pipeline, pipeline, t, t, t]))
            if rows:
                con.execute("UPDATE alert_deliveries SET state = 'sending', claimed_until = ? "
                            "WHERE list_contains(?, delivery_id)",
                            [to_db_time(now + timedelta(seconds=lease_seconds)), [r["delivery_id"] for r in rows]])
        for r in rows:
            r["evidence"] = _load(r.pop("evidence_json"))
            r["created_at"] = from_db_time(r["created_at"])
            r["first_seen"] = from_db_time(r["first_seen"])
        return rows

    def mark_delivery_sent(self, delivery_id: str, attempts: int, now: datetime, detail: str) -> None:
        """Record a successful send; a delivery is sent at most once (a second mark changes nothing)."""
        with self._transaction(f"mark delivery {delivery_id} sent") as con:
            con.execute("UPDATE alert_deliveries SET state = 'sent', attempts = attempts + ?, sent_at = ?, "
                        "detail = ?, last_error = NULL, claimed_until = NULL, next_attempt_at = NULL "
                        "WHERE delivery_id = ? AND state <> 'sent'",
                        [attempts, to_db_time(now), detail, delivery_id])

    def mark_delivery_failed(self, delivery_id: str, attempts: int, now: datetime, error: str,
                             next_attempt_at: datetime) -> None:
        """Record a failed pass: the delivery is retried by a pass at or after `next_attempt_at`."""
        with self._transaction(f"mark delivery {delivery_id} failed") as con:
            con.execute("UPDATE alert_deliveries SET state = 'failed', attempts = attempts + ?, last_error = ?, "
                        "next_attempt_at = ?, claimed_until = NULL WHERE delivery_id = ? AND state <> 'sent'",
                        [attempts, error[:2000], to_db_time(next_attempt_at), delivery_id])

