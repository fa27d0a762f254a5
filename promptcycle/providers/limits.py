"""Per-provider request limits: how many requests are in flight, and how fast they start.

`RequestLimits` holds both for one provider: `async with limits:` waits for a concurrency slot, then
for the rate limiter, and releases the slot on exit. `RateLimiter` paces requests with the generic
cell rate algorithm (GCRA): each caller reserves the next free send time and sleeps until it, so
callers are served in arrival order and the limit holds over any window, not only on average.

These limits belong to one event loop in one process. Limits shared across processes and flows are
the orchestration layer's job (global concurrency limits); these do the fine-grained pacing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time

__all__ = ["RateLimiter", "RequestLimits"]


class RateLimiter:
    """At most `requests_per_minute` sends per minute, with bursts of up to `burst` back-to-back sends.

    `burst=1` spaces every send by exactly 60/requests_per_minute seconds, the safest choice for
    providers that count requests in short windows.
    """

    def __init__(self, requests_per_minute: float, *, burst: int = 1):
        if requests_per_minute <= 0:
            raise ValueError(f"requests_per_minute must be > 0, found {requests_per_minute!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, found {burst!r}")
        self.requests_per_minute = float(requests_per_minute)
        self.burst = burst
        self._interval = 60.0 / self.requests_per_minute
        self._tolerance = (burst - 1) * self._interval
        self._tat = 0.0  # theoretical arrival time of the next send (monotonic clock)

    def reserve(self) -> float:
        """Reserve the next send slot; return how long to wait before sending (0 when free now)."""
        now = time.monotonic()
        tat = self._tat if self._tat > now else now
        wait = tat - self._tolerance - now
        self._tat = tat + self._interval
        return wait if wait > 0 else 0.0

    async def acquire(self) -> float:
        """Wait until a send is allowed; return the seconds waited."""
        wait = self.reserve()
        if wait:
            await asyncio.sleep(wait)
        return wait

    def __repr__(self) -> str:
        return f"RateLimiter(requests_per_minute={self.requests_per_minute:g}, burst={self.burst})"


class _Slots:
    """A counting semaphore whose waiters are served priority first, then longest `expected` call first,
    then in arrival order — one heap of (not priority, -expected, arrival).

    A freed slot is handed straight to the next waiter, so a late arrival cannot overtake it.
    """

    def __init__(self, n: int):
        self._free = n
        self._waiters: list[tuple[bool, float, int, asyncio.Future]] = []
        self._arrivals = itertools.count()

    async def acquire(self, priority: bool, expected: float = 0.0) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (not priority, -expected, next(self._arrivals), waiter)
        heapq.heappush(self._waiters, entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, then cancelled before using it: pass it on
            else:
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = heapq.heappop(self._waiters)[-1]
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class RequestLimits:
    """A provider's concurrency cap and optional rate limit, used as `async with limits: <one request>`.

    The slot is taken before the rate token, so a request starts as soon as its token is due; taking
    the token first would let requests that waited for a slot start in a burst.

    `acquire(priority=True)` (a retry) is served before every request that has not been sent yet: a
    call that already waited out a Retry-After does not wait again behind the calls queued after it.
    Among requests not sent yet, the longest `expected` (e.g. the model's latency target) goes first: a
    matrix of fast and slow models then ends with short calls, not waiting on a slow model's last ones
    (longest-processing-time-first scheduling).
    """

    def __init__(self, max_concurrency: int, requests_per_minute: float | None = None, *, burst: int = 1):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, found {max_concurrency!r}")
        self.max_concurrency = max_concurrency
        self.rate = RateLimiter(requests_per_minute, burst=burst) if requests_per_minute else None
        self.in_flight = 0  # requests holding a slot
        self._slots = _Slots(max_concurrency)

    async def acquire(self, *, priority: bool = False, expected: float = 0.0) -> None:
        """Wait for a concurrency slot (priority waiters first, then the longest `expected`), then for the
        rate limiter."""
        await self._slots.acquire(priority, expected)
        if self.rate is not None:
            try:
                await self.rate.acquire()
            except BaseException:
                self._slots.release()
                raise
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._slots.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RequestLimits(max_concurrency={self.max_concurrency}, rate={self.rate!r})"
