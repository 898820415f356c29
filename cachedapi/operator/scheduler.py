"""Runs reconciles: at most one at a time per CachedApi, bursts coalesced, failures retried slowly.

A new CachedApi's children each send a watch event as they appear; each
event asks for a reconcile of the owner. While one runs, further requests
only mark the owner dirty, so a burst of any size costs one more pass, not
one per event. A pass that fails (the API server unreachable, say) is retried
after ``retry_seconds``, then twice that, four times..., up to ``MAX_BACKOFF``
times it (and never sooner than the server's own ``Retry-After``), with some
jitter so that objects that failed together do not come back together. A
pass that failed after writing something (``progressed``) starts the backoff
over: the server is struggling, not down. While
a retry is pending, new requests for that object wait for it: the retry reads
the latest state anyway, and an event must not undo the backoff (an outage
makes no events, but the resync and kopf's re-listings do). A pass that
succeeds forgets the failures.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Hashable

logger = logging.getLogger(__name__)

#: The longest wait between two attempts, in multiples of ``retry_seconds``.
MAX_BACKOFF = 8
#: The share by which a delay is spread, either way.
JITTER = 0.2


class Scheduler:
    def __init__(self, work: Callable[[Hashable], Awaitable[None]], *, retry_seconds: float) -> None:
        self._work = work
        self._retry_seconds = retry_seconds
        self._running: dict[Hashable, asyncio.Task[None]] = {}
        self._dirty: set[Hashable] = set()
        self._retries: dict[Hashable, asyncio.TimerHandle] = {}
        self._failures: dict[Hashable, int] = {}
        self.passes = 0

    def request(self, key: Hashable) -> None:
        if key in self._running:
            self._dirty.add(key)
            return
        if key in self._retries:
            return  # backing off: the pending retry will see the latest state
        self._running[key] = asyncio.get_running_loop().create_task(self._run(key), name=f"reconcile {key}")

    @property
    def idle(self) -> bool:
        return not self._running

    async def _run(self, key: Hashable) -> None:
        try:
            while True:
                self._dirty.discard(key)
                self.passes += 1
                try:
                    await self._work(key)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if getattr(exc, "progressed", False):
                        self._failures.pop(key, None)  # partly through: a struggling server, not a dead one
                    delay = self.delay(key, retry_after=getattr(exc, "retry_after", None))
                    if getattr(exc, "expected", False):  # the API server said no: its answer is the story
                        logger.warning("reconcile of %s failed: %s; retrying in %.1f s", key, exc, delay)
                    else:
                        logger.exception("reconcile of %s failed; retrying in %.1f s", key, delay)
                    self._dirty.discard(key)
                    self._retries[key] = asyncio.get_running_loop().call_later(delay, self._retry, key)
                    return
                self._failures.pop(key, None)
                if key not in self._dirty:
                    return
        finally:
            self._running.pop(key, None)

    def delay(self, key: Hashable, *, retry_after: float | None = None) -> float:
        """Count one more failure of ``key``; how long to wait before trying it again."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        backoff = self._retry_seconds * min(1 << min(failures - 1, 16), MAX_BACKOFF)
        backoff *= 1 + random.uniform(-JITTER, JITTER)  # spreading timers, not a secret
        return max(backoff, retry_after or 0.0)

    def _retry(self, key: Hashable) -> None:
        self._retries.pop(key, None)
        self.request(key)

    async def close(self) -> None:
        for handle in self._retries.values():
            handle.cancel()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
