"""The collector around an evaluation's start (promptcycle/evaluation/heap.py), each case in a fresh
interpreter so the suite's own collector is left alone."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import gc, json, sys, weakref
from promptcycle.evaluation.heap import freeze_startup_objects, startup_without_collections

class Node:
    pass

if sys.argv[1] == "off":
    startup_without_collections()
off_during_startup = not gc.isenabled()
garbage = Node(); garbage.self = garbage  # a cycle: only the collector can free it
alive = weakref.ref(garbage)
del garbage
freeze_startup_objects()
print(json.dumps({"off_during_startup": off_during_startup, "enabled_after": gc.isenabled(),
                  "frozen": gc.get_freeze_count(), "garbage_kept": alive() is not None}))
"""


def _probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_startup_without_collections_is_frozen_as_it_is_and_the_collector_turned_back_on():
    seen = _probe("off")
    assert seen["off_during_startup"] and seen["enabled_after"]
    assert seen["frozen"] > 1000 and seen["garbage_kept"]  # frozen with the rest, not scanned for


def test_with_the_collector_on_startup_garbage_is_collected_before_the_freeze():
    seen = _probe("on")
    assert not seen["off_during_startup"] and seen["enabled_after"]
    assert seen["frozen"] > 1000 and not seen["garbage_kept"]
