"""Which prompt answers a request: `resolve_prompt` itself, its cache kept warm off the request path.

The prompt endpoint calls `promptcycle.deploy.serving.resolve_prompt`, so its answer is the
library's, bucket for bucket. What differs is who reads the store: a background thread re-reads
every pipeline's labels and running canary every `refresh_s` (one connection for all of them),
and requests are answered from memory, so a lookup never waits for the DuckDB file. A label moved
or a split changed by a flow reaches the API within one refresh; while the file stays busy the
last state read keeps being served.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from promptcycle.deploy import serving

__all__ = ["PromptCache"]

logger = logging.getLogger("promptcycle.api")

# What requests pass as `cache_seconds`: the refresher, not the request, reads the store. Only a refresher
# that has failed for this long (the file locked all along) lets a request read it itself.
_REQUEST_MAX_AGE_S = 3600.0


class PromptCache:
    """Keeps `resolve_prompt`'s cache warm for `scopes`, (pipeline, scope) pairs ("" or a model name)."""

    def __init__(self, store: str | Path, scopes: Iterable[tuple[str, str]], *, refresh_s: float = 1.0,
                 lock_timeout_s: float = 2.0):
        self.store = Path(store)
        self.scopes = sorted(set(scopes))
        self.refresh_s = float(refresh_s)
        self.lock_timeout_s = float(lock_timeout_s)
        self.refreshes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="promptcycle-api-prompts", daemon=True)
        self._last_problem: str | None = None

    def start(self) -> None:
        """Read every scope once now (so the first requests are answered from memory), then keep refreshing."""
        self.refresh()
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.lock_timeout_s + 5)

    def refresh(self) -> bool:
        try:
            serving.refresh_cache(self.store, also=self.scopes, lock_timeout_s=self.lock_timeout_s)
        except Exception as exc:  # noqa: BLE001 - the last state read keeps being served; said once per problem
            problem = f"{type(exc).__name__}: {exc}"
            if problem != self._last_problem:
                logger.warning("could not refresh the served prompts from %s (%s); serving the last state read",
                               self.store, problem)
                self._last_problem = problem
            return False
        if self._last_problem is not None:
            logger.warning("served prompts refreshed from %s again", self.store)
            self._last_problem = None
        self.refreshes += 1
        return True

    def resolve(self, pipeline: str, key: str, model: str | None = None) -> Any:
        """`resolve_prompt(pipeline, key, model=model)` against this cache (raises `ServingError`)."""
        return serving.resolve_prompt(pipeline, key, model=model, store=self.store, cache_seconds=_REQUEST_MAX_AGE_S,
                                      lock_timeout_s=self.lock_timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()
