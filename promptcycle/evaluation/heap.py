"""Keep the garbage collector's full passes from stalling a long evaluation's event loop.

By the time cells start, the process holds everything start-up built (Prefect, pydantic models,
the config and dataset, imported modules): a million-odd objects that live for the whole run. A
full collection rescans all of them; on the throughput bench such passes took 100–225 ms each,
time in which no response is read and every call in flight looks that much slower.
`gc.freeze()` moves those objects out of the collector's view, so full passes scan only what the
evaluation itself allocates. The commands that run evaluations keep the collector off until then
(`startup_without_collections`): start-up allocates those objects and little garbage, and collecting
meanwhile cost about a tenth of its time.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_objects", "startup_without_collections"]


def freeze_startup_objects() -> None:
    """Exempt what start-up built from later collections, and make sure the collector runs from here on.

    When the collector was off for start-up (`promptcycle baseline` and `optimize` turn it off while
    they import and load: a tenth of that time went to collections of objects that all survive), what
    start-up built is frozen as it is — its few thousand garbage objects included — and the collector
    is turned on. Otherwise start-up's garbage is collected once first."""
    if gc.isenabled():
        gc.collect()
        gc.freeze()
    else:
        gc.freeze()
        gc.enable()


def startup_without_collections() -> None:
    """Turn the collector off for a command's start-up; `freeze_startup_objects` turns it back on when the
    evaluation starts (a command that fails before then ends with it off: it exits right after)."""
    gc.disable()
