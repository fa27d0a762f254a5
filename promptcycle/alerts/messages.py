"""What a channel sends: one `AlertMessage` per delivery, with a subject, a text body and JSON.

Every message carries its `delivery_id` — the idempotency key a receiver dedups on (webhook header
`Idempotency-Key`, email `Message-ID`) — so a message sent again after a crash is recognisable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["MESSAGE_FORMAT", "AlertMessage"]

MESSAGE_FORMAT = "promptcycle.alert/1"

_HEADLINES = {
    "raised": "{sev}",
    "repeated": "{sev}",
    "escalated": "ESCALATED {sev}",
    "recovered": "RECOVERED",
}


@dataclass(frozen=True)
class AlertMessage:
    delivery_id: str
    event_id: str
    alert_id: int
    kind: str
    severity: str
    pipeline: str
    model: str
    spectrum: str
    detector: str
    message: str
    reason: str
    occurred_at: datetime
    first_seen: datetime
    occurrences: int
    evidence: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_claim(cls, row: dict[str, Any]) -> AlertMessage:
        """From a row of `MetricsStore.claim_deliveries`."""
        return cls(delivery_id=row["delivery_id"], event_id=row["event_id"], alert_id=int(row["alert_id"]),
                   kind=row["kind"], severity=row["severity"], pipeline=row["pipeline"], model=row["model"],
                   spectrum=row["spectrum"], detector=row["detector"], message=row["message"] or "",
                   reason=row["reason"] or "", occurred_at=row["created_at"], first_seen=row["first_seen"],
                   occurrences=int(row["occurrences"] or 0), evidence=row.get("evidence") or {})

    @property
    def where(self) -> str:
        return f"{self.model}/{self.spectrum}"

    def subject(self) -> str:
        """e.g. `[HIGH] customer-insights: xl/credit_analysis (cusum) — quality fell 6.1 points`."""
        head = _HEADLINES.get(self.kind, "{sev}").format(sev=self.severity.upper())
        text = f"[{head}] {self.pipeline}: {self.where} ({self.detector})"
        return f"{text} — {self.message}" if self.message else text

    def body(self) -> str:
        lines = [self.subject(), "",
                 f"alert {self.alert_id} {self.kind} at {self.occurred_at:%Y-%m-%d %H:%M:%S} UTC "
                 f"(severity {self.severity}; first seen {self.first_seen:%Y-%m-%d %H:%M} UTC, "
                 f"{self.occurrences} observation(s))",
                 f"why: {self.reason}"]
        if self.evidence:
            lines += ["", "evidence:"] + [f"  {k}: {v}" for k, v in sorted(self.evidence.items())]
        lines += ["", f"acknowledge: promptcycle alerts ack {self.alert_id}    "
                      f"snooze: promptcycle alerts snooze {self.alert_id} --for 2h",
                  f"delivery {self.delivery_id}"]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"format": MESSAGE_FORMAT, "delivery_id": self.delivery_id, "event_id": self.event_id,
                "alert_id": self.alert_id, "kind": self.kind, "severity": self.severity, "pipeline": self.pipeline,
                "model": self.model, "spectrum": self.spectrum, "detector": self.detector, "message": self.message,
                "reason": self.reason, "occurred_at": self.occurred_at.isoformat(),
                "first_seen": self.first_seen.isoformat(), "occurrences": self.occurrences,
                "evidence": self.evidence, "subject": self.subject()}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, default=str, ensure_ascii=False).encode("utf-8")
