"""One process that takes a slot of `promptcycle-healing` the way a healing does, for tests/test_healing_limit.py.

    python tests/healing_slot_holder.py EVENTS GO TIMEOUT_S HOLD_S

Imports Prefect and `promptcycle_tasks.healing`, appends `{"event": "ready"}` to EVENTS (JSON lines), waits for the
file GO to appear, then enters `healing_slot(1, timeout_seconds=TIMEOUT_S)` and holds it for HOLD_S seconds. Every
event carries `time.monotonic()`, which on Linux is one clock for all processes, so the test can compare the
intervals of two holders: `asked`, then `entered` and `left` (taken inside the slot, before it is released), or
`refused` with the exception's type (and whether it is a TimeoutError) and message. PREFECT_API_URL must point at
the shared server.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path


def note(events: Path, event: str, **fields) -> None:
    with events.open("a") as f:
        f.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")


async def hold(events: Path, go: Path, timeout_s: float, hold_s: float) -> None:
    from promptcycle.errors import ConfigError
    from promptcycle_tasks.healing import healing_slot

    note(events, "ready")
    while not go.exists():
        await asyncio.sleep(0.02)
    note(events, "asked")
    try:
        async with healing_slot(1, timeout_seconds=timeout_s):
            note(events, "entered")
            await asyncio.sleep(hold_s)
            note(events, "left")
    except (ConfigError, TimeoutError) as exc:
        note(events, "refused", type=type(exc).__name__, is_timeout=isinstance(exc, TimeoutError), message=str(exc))


if __name__ == "__main__":
    events, go, timeout_s, hold_s = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    asyncio.run(hold(events, go, timeout_s, hold_s))
