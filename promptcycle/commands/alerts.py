"""`promptcycle alerts`: open alerts and their history; acknowledge or snooze one.

    promptcycle alerts [list] [--pipeline NAME] [--history N]
    promptcycle alerts ack ID
    promptcycle alerts snooze ID --for 2h

Works on the store directly, without Prefect: acknowledging a page must not wait for a server.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from promptcycle.errors import ConfigError

__all__ = ["add_commands", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$")


def parse_duration(text: str) -> timedelta:
    """'90m', '2h', '1.5d', '30s', '1w' → a timedelta; ConfigError otherwise."""
    match = _DURATION.match(text or "")
    if not match or float(match.group(1)) <= 0:
        expected = "a positive number and a unit: s, m, h, d or w (e.g. 30m, 2h, 1d)"
        raise ConfigError(f"cannot read {text!r} as a duration; expected {expected}", path="--for", found=text,
                          expected=expected)
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown user"


def _emit(args: argparse.Namespace, payload: dict[str, Any], human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(payload, default=str))
    else:
        human()


def _store(args: argparse.Namespace):
    from promptcycle.config import load_config
    from promptcycle.evaluation.context import resolve_store_path
    from promptcycle.store.remote import open_store

    config = load_config(args.config)
    if getattr(args, "pipeline", None):
        config.pipeline(args.pipeline)
    return open_store(resolve_store_path(config, args.store))


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M}" if value else "—"


def cmd_alerts(args: argparse.Namespace) -> int:
    action = args.action or "list"
    if action != "list" and args.id is None:
        raise ConfigError(f"`alerts {action}` needs the alert's id (see `promptcycle alerts list`)", path="ID",
                          expected="an alert id")
    if action == "list" and args.id is not None:
        raise ConfigError(f"`alerts list` takes no id (found {args.id!r})", path="ID", expected="no id")
    if action != "snooze" and args.duration is not None:
        raise ConfigError("--for goes with `alerts snooze`", path="--for", found=args.duration,
                          expected="`promptcycle alerts snooze ID --for 2h`")
    store = _store(args)
    now = datetime.now(timezone.utc)
    if action == "ack":
        event = store.acknowledge_alert(args.id, _user(), now)
        alert = store.get_alert(args.id)
        _emit(args, {"success": True, "alert": alert.to_dict(), "event": event.to_dict()},
              lambda: print(f"alert {alert.alert_id} acknowledged by {alert.acknowledged_by}: it will not escalate, "
                            f"and pages again only if it gets worse"))
        return 0
    if action == "snooze":
        if args.duration is None:
            raise ConfigError("`alerts snooze` needs --for, e.g. --for 2h", path="--for",
                              expected="a duration such as 30m, 2h or 1d")
        until = now + parse_duration(args.duration)
        event = store.snooze_alert(args.id, until, _user(), now)
        alert = store.get_alert(args.id)
        _emit(args, {"success": True, "alert": alert.to_dict(), "event": event.to_dict()},
              lambda: print(f"alert {alert.alert_id} ({alert.key}) snoozed until {until:%Y-%m-%d %H:%M} UTC: "
                            "still recorded, no pages until then"))
        return 0
    if args.history < 0:
        raise ConfigError("--history must be 0 or more", path="--history", found=args.history,
                          expected="a number of events")
    open_alerts = store.alerts(args.pipeline, open_only=True, limit=None)
    events = store.alert_events(pipeline=args.pipeline, limit=args.history) if args.history else []
    payload = {"success": True, "open": [a.to_dict() | {"status": a.status_at(now)} for a in open_alerts],
               "history": [e.to_dict() for e in events]}

    def human() -> None:
        if not open_alerts:
            print("no open alerts")
        else:
            print(f"{len(open_alerts)} open alert(s):")
            for a in open_alerts:
                status = a.status_at(now)
                shown = f"snoozed until {_when(a.snoozed_until)}" if status == "snoozed" else status
                print(f"  {a.alert_id:>4}  {a.severity.upper():<8} {shown:<30} {a.key}  "
                      f"since {_when(a.first_seen)}, {a.occurrences} obs, {a.pages} page(s) — {a.message}")
        if events:
            print(f"history (newest first, {len(events)}):")
            for e in events:
                sent = f" → {', '.join(e.deliveries)}" if e.deliveries else ""
                print(f"  {_when(e.created_at)}  alert {e.alert_id:<4} {e.kind:<12} {e.severity:<8} "
                      f"{'paged' if e.notify else 'quiet'}{sent} — {e.reason}")

    _emit(args, payload, human)
    return 0


def add_commands(subparsers: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser("alerts", help="open alerts and their history; acknowledge or snooze one",
                              description="promptcycle alerts [list | ack ID | snooze ID --for 2h]")
    common(p)
    p.add_argument("action", nargs="?", choices=["list", "ack", "snooze"], help="list (default), ack or snooze")
    p.add_argument("id", nargs="?", default=None, help="the alert id (ack, snooze)")
    p.add_argument("--for", dest="duration", default=None, metavar="DURATION",
                   help="how long to snooze: 30m, 2h, 1d …")
    p.add_argument("--pipeline", default=None, help="only this pipeline's alerts (list)")
    p.add_argument("--history", type=int, default=20, help="recent events listed (default 20)")
    p.set_defaults(func=cmd_alerts)
