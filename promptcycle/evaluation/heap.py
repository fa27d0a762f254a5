"""Keep the garbage collector's full passes from stalling a long evaluation's event loop.

By the time cells start, the process holds everything start-up built (Prefect, pydantic models,
the config and dataset, imported modules): a million-odd objects that live for the whole run. A
full collection rescans all of them; on the throughput bench such passes took 100–225 ms each,
time in which no response is read and every call in flight looks that much slower.
`gc.freeze()` moves those objects out of the collector's view, so full passes scan only what the
evaluation itself allocates.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_objects"]


def freeze_startup_objects() -> None:
    """Collect start-up garbage once, then exempt the survivors from later collections."""
    gc.collect()
    gc.freeze()
