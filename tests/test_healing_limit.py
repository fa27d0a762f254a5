"""Healing's limits hold across processes.

The concurrency limit: two separate Python processes share a real `prefect server start` on loopback and each take
a slot of `promptcycle-healing` through `healing_slot` (tasks/healing.py), the limit created by the product with
`healing.max_concurrent: 1`. With a long wait the second holds its slot only after the first released it; with a
short one it is refused with a message naming the limit and the setting; no slot is left behind. The control: two
more such processes with the limit raised to 2 (what `prefect gcl update promptcycle-healing --limit 2` does) hold
their slots at the same time — so the no-overlap check does see an overlap when the limit does not serialise them.

The store's guard: two processes deciding at once through `MetricsStore.decide_healing` with
`healing.max_concurrent: 1` and a two-hour cooldown — exactly one healing starts; the other is refused by the limit
(two pipelines) or by the cooldown (the same pipeline).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from promptcycle.monitor.healing import HEALING_LIMIT_NAME, HealingRequest, HealingSettings
from promptcycle.store import MetricsStore

REPO = Path(__file__).resolve().parent.parent
HOLDER = Path(__file__).resolve().parent / "healing_slot_holder.py"
START_S = 180  # importing Prefect in two processes on a busy 2-core machine
HOLD_S = 3.0


def _on_server(api: str, coro_fn):
    """Run `coro_fn(client)` against the test's Prefect server from this process."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def go():
        async with get_client() as client:
            return await coro_fn(client)

    with temporary_settings({PREFECT_API_URL: api}):
        return asyncio.run(go())


def _reset_limit(api: str, size: int | None = None) -> None:
    """No `promptcycle-healing` limit (the product creates it), or one of `size` slots made by an operator."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    async def reset(client):
        try:
            await client.delete_global_concurrency_limit_by_name(HEALING_LIMIT_NAME)
        except ObjectNotFound:
            pass
        if size is not None:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=HEALING_LIMIT_NAME,
                                                                                       limit=size))

    _on_server(api, reset)


def _limit(api: str):
    async def read(client):
        return await client.read_global_concurrency_limit_by_name(HEALING_LIMIT_NAME)

    return _on_server(api, read)


class Holder:
    """A `tests/healing_slot_holder.py` process with its own Prefect home, on the shared server."""

    def __init__(self, api: str, tmp_path: Path, name: str, timeout_s: float, hold_s: float = HOLD_S):
        self.name, self.events, self.go = name, tmp_path / f"{name}.jsonl", tmp_path / f"{name}.go"
        home = tmp_path / f"prefect-home-{name}"
        home.mkdir(parents=True)
        env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(home), "PREFECT_LOGGING_LEVEL": "ERROR",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.log = tmp_path / f"{name}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, str(HOLDER), str(self.events), str(self.go),
                                             str(timeout_s), str(hold_s)], env=env, stdout=log, stderr=log)

    def seen(self) -> dict[str, dict]:
        if not self.events.exists():
            return {}
        return {e["event"]: e for e in map(json.loads, self.events.read_text().splitlines())}

    def wait_for(self, event: str, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while event not in self.seen():
            assert self.process.poll() is None or event in self.seen(), \
                f"holder {self.name} exited ({self.process.returncode}): {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"holder {self.name}: no {event!r} within {timeout_s:.0f} s"
            time.sleep(0.05)
        return self.seen()[event]

    def finish(self) -> dict[str, dict]:
        try:
            self.process.wait(timeout=120)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        assert self.process.returncode == 0, f"holder {self.name}: {self.log.read_text()[-3000:]}"
        return self.seen()


def _start(api: str, tmp_path: Path, names: list[str], timeout_s: float) -> list[Holder]:
    holders = [Holder(api, tmp_path, name, timeout_s) for name in names]
    for h in holders:
        h.wait_for("ready", START_S)
    return holders


def _go_together(holders: list[Holder]) -> list[dict[str, dict]]:
    """Two ready holders asking for a slot at the same moment; their events, the one that entered first first."""
    for h in holders:
        h.go.touch()
    return sorted((h.finish() for h in holders), key=lambda r: r["entered"]["t"])


def _kill(holders: list[Holder]) -> None:
    for h in holders:
        if h.process.poll() is None:
            h.process.kill()
            h.process.wait()


@pytest.mark.slow
def test_one_slot_serialises_two_processes_and_two_slots_let_them_overlap(prefect_server, tmp_path):
    _reset_limit(prefect_server)
    # Four processes import Prefect at once (the slow part); two by two they then ask for a slot.
    holders = _start(prefect_server, tmp_path, ["a1", "b1", "a2", "b2"], timeout_s=120)
    try:
        first, second = _go_together(holders[:2])
        limit = _limit(prefect_server)
        assert limit.limit == 1, "healing_slot(1) created the limit with healing.max_concurrent slots"
        # Both asked while the first held its slot: the second was made to wait, not merely late.
        assert second["asked"]["t"] < first["left"]["t"]
        assert second["entered"]["t"] >= first["left"]["t"], (first, second)
        assert limit.active_slots == 0, "both slots were released"

        # The control: two more holders under a limit of 2 slots hold them at once, so the check above can fail.
        _reset_limit(prefect_server, size=2)
        first, second = _go_together(holders[2:])
        assert second["entered"]["t"] < first["left"]["t"], "with two slots the holders overlap"
        limit = _limit(prefect_server)
        assert limit.limit == 2, "an existing limit keeps the size an operator gave it"
        assert limit.active_slots == 0
    finally:
        _kill(holders)


@pytest.mark.slow
def test_a_short_wait_for_a_held_slot_is_refused_with_the_limit_named(prefect_server, tmp_path):
    _reset_limit(prefect_server)
    holder = Holder(prefect_server, tmp_path, "holder", timeout_s=120, hold_s=3 * HOLD_S)
    waiter = Holder(prefect_server, tmp_path, "waiter", timeout_s=1.0)
    try:
        holder.wait_for("ready", START_S)
        waiter.wait_for("ready", START_S)
        holder.go.touch()
        holder.wait_for("entered", 60)
        waiter.go.touch()
        held, refused = holder.finish(), waiter.finish()
    finally:
        _kill([holder, waiter])
    assert "entered" not in refused, refused
    refusal = refused["refused"]
    assert refusal["t"] < held["left"]["t"], "refused while the other process held the slot"
    # A TimeoutError, so flows/healing.py defers the healing ("the next monitor run decides again").
    assert refusal["is_timeout"], refusal
    assert HEALING_LIMIT_NAME in refusal["message"] and "healing.max_concurrent: 1" in refusal["message"], refusal
    assert _limit(prefect_server).active_slots == 0, "the refused wait left no slot taken"


T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _decide(store_path: str, index: int, pipeline: str, barrier, out) -> None:
    """Round 1: this process's own pipeline. Then the first process ends the healing that started. Round 2: both
    processes ask for the same pipeline."""
    store = MetricsStore(store_path)
    settings = HealingSettings(max_concurrent=1, cooldown=timedelta(hours=2))
    barrier.wait()
    d = store.decide_healing(HealingRequest(pipeline, "xl", "credit_analysis", "quality", "high"), settings, T0)
    out.put((1, pipeline, d["eligible"], d["reason"]))
    barrier.wait()
    if index == 0:
        running = store.healing_decisions(status="running")
        out.put(("running", len(running)))
        store.finish_healing(running[0]["decision_id"], "healed", T0 + timedelta(minutes=10))
    barrier.wait()
    d = store.decide_healing(HealingRequest("returns", "xl", "credit_analysis", "quality", "high"), settings,
                             T0 + timedelta(minutes=30))
    out.put((2, "returns", d["eligible"], d["reason"]))


def test_two_processes_deciding_at_once_start_one_healing_limit_then_cooldown(tmp_path):
    store_path = str(tmp_path / "metrics.duckdb")
    MetricsStore(store_path)
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_decide, args=(store_path, i, p, barrier, out))
             for i, p in enumerate(("orders", "invoices"))]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in range(5)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert ("running", 1) in results, results

    # Two pipelines at once: one healing starts, the other is refused by the limit.
    first = sorted((r for r in results if r[0] == 1), key=lambda r: not r[2])
    assert [r[2] for r in first] == [True, False], results
    assert first[1][3] == "1 healings are running (healing.max_concurrent: 1)"
    # The limit free again, the same pipeline at once: one healing starts, the other finds it in its cooldown.
    second = sorted((r for r in results if r[0] == 2), key=lambda r: not r[2])
    assert [r[2] for r in second] == [True, False], results
    assert second[1][3] == ("in cooldown: the last healing started at 2026-12-01 00:30 UTC; "
                            "the next may start after 2026-12-01 02:30 UTC"), results
    store = MetricsStore(store_path)
    assert [d["pipeline"] for d in store.healing_decisions(status="running")] == ["returns"]
