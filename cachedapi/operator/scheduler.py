"""Runs reconciles: at most one at a time per CachedApi, bursts coalesced, failures retried slowly.

A new CachedApi's children each send a watch event as they appear; each
event asks for a reconcile of the owner. While one runs, further requests
only mark the owner dirty, so a burst of any size costs one more pass, not
one per event. A pass that fails (the API server unreachable, say) is retried
after ``retry_seconds``: a slow timer, never a tight loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, work: Callable[[Hashable], Awaitable[None]], *, retry_seconds: float) -> None:
        self._work = work
        self._retry_seconds = retry_seconds
        self._running: dict[Hashable, asyncio.Task[None]] = {}
        self._dirty: set[Hashable] = set()
        self._retries: dict[Hashable, asyncio.TimerHandle] = {}
        self.passes = 0

    def request(self, key: Hashable) -> None:
        if key in self._running:
            self._dirty.add(key)
            return
        retry = self._retries.pop(key, None)
        if retry is not None:
            retry.cancel()
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
                    if getattr(exc, "expected", False):  # the API server said no: its answer is the story
                        logger.warning("reconcile of %s failed: %s; retrying in %.0f s", key, exc, self._retry_seconds)
                    else:
                        logger.exception("reconcile of %s failed; retrying in %.0f s", key, self._retry_seconds)
                    loop = asyncio.get_running_loop()
                    self._retries[key] = loop.call_later(self._retry_seconds, self._retry, key)
                    return
                if key not in self._dirty:
                    return
        finally:
            self._running.pop(key, None)

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
