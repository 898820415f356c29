"""The cached read path of the api role: hit, miss, single flight, lease, stale-if-error.

A read looks the key up (``cache.CacheStore.lookup``: one round trip). A fresh
entry is answered as stored (HIT). Otherwise the database is read by one task
per (entry key, generation token) in this process, which concurrent misses
await together; across processes the Redis fill lease elects one reader, and
the others poll the entry every few milliseconds until it appears, the token
changes, or the lease goes, then read the database themselves. The lease holder
re-arms its lease for as long as its database read runs (``cache.CacheStore.holding``),
so a read slower than the lease time sends nobody else to the database; the
waiters have no deadline of their own, since the lease lapses within one lease
time of its holder dying or stalling. The flight is
keyed by the token a reader saw *after* its own lookup, so a reader never joins
a database read that began before a write it must observe.

The fill is sent after the answer (a token-checked fill is as safe late as
early); a later read of the same key in this process waits for it first.

Forced refreshes (``contract.REVALIDATE_HEADER`` or ``Cache-Control: no-cache``)
read the database themselves and refill. If the database fails and the entry is
no older than ttl + ``staleIfErrorSeconds``, the entry is answered as STALE.
Resources with ttl 0, and every read while Redis is unusable (down, or this
process holds queued invalidations), are BYPASS: straight to the database,
nothing stored, and not coalesced either, since without a token a reader
cannot tell whether a flight in progress began before a write it must see.
404s are never stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from cachedapi import contract
from cachedapi.runtime.api import cache
from cachedapi.runtime.api import db as db_mod
from cachedapi.runtime.api import metrics as metrics_mod


@dataclass(frozen=True, slots=True)
class Loaded:
    """What the database gave: the encoded answer (404 has an empty body and no ETag)."""

    status: int
    body: bytes = b""
    etag: str = ""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    etag: str
    content_type: str
    x_cache: str  # HIT | MISS | STALE | BYPASS
    age: int
    max_age: int  # seconds of freshness left; 0 = do not cache


Load = Callable[[], Awaitable[Loaded]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _fresh(entry: contract.Entry, now: int) -> bool:
    return entry.stored_at_ms + entry.ttl_seconds * 1000 >= now


def _from_entry(entry: contract.Entry, now: int, *, x_cache: str) -> Answer:
    age = max(0, (now - entry.stored_at_ms) // 1000)
    left = max(0, entry.ttl_seconds - age)
    return Answer(entry.status, entry.body, entry.etag, entry.content_type, x_cache, age, left)


class Reader:
    """Answers cacheable GETs; one per app, holding the in-process flights."""

    def __init__(
        self,
        *,
        store: cache.CacheStore | None,
        config: contract.RuntimeConfig,
        metrics: metrics_mod.Metrics,
        poll_interval: float = 0.005,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._poll_interval = poll_interval
        self._ttl = {name: res.ttl_seconds for name, res in config.resources.items()}
        self._expiry = {name: contract.entry_expiry_seconds(ttl, config) for name, ttl in self._ttl.items()}
        self._stale_if_error_ms = config.stale_if_error_seconds * 1000
        self._flights: dict[tuple[str, str], asyncio.Task[tuple[Loaded, int, bool]]] = {}
        self._filling: dict[cache.Target, asyncio.Task[bool]] = {}
        self._hit = metrics.cache.labels("hit")
        self._miss = metrics.cache.labels("miss")
        self._stale = metrics.cache.labels("stale")
        self._bypass = metrics.cache.labels("bypass")

    async def read(self, *, target: cache.Target, load: Load, force: bool) -> Answer:
        ttl = self._ttl[target.resource]
        store = self._store
        if ttl == 0 or store is None or not store.usable:
            return await self._bypassed(load)
        filling = self._filling.get(target)
        if filling is not None:  # this process is storing that entry right now: look it up once stored
            await asyncio.shield(filling)
        now = now_ms()
        try:
            found = await store.lookup(target, now_ms=now, force=force)
        except cache.CacheUnavailable:
            return await self._bypassed(load)
        entry = found.entry
        if entry is not None and not force and _fresh(entry, now):
            self._hit.inc()
            return _from_entry(entry, now, x_cache="HIT")
        try:
            loaded, stored_at, coalesced = await self._flight(store, found, load=load, force=force)
        except db_mod.DatabaseUnavailable:
            now = now_ms()
            if entry is not None and entry.stored_at_ms + entry.ttl_seconds * 1000 + self._stale_if_error_ms >= now:
                self._stale.inc()
                return _from_entry(entry, now, x_cache="STALE")
            raise
        self._miss.inc()
        if coalesced:
            self._metrics.coalesced.inc()
        if loaded.status != 200:
            return Answer(loaded.status, loaded.body, loaded.etag, contract.JSON, "MISS", 0, 0)
        age = max(0, (now_ms() - stored_at) // 1000)
        return Answer(200, loaded.body, loaded.etag, contract.JSON, "MISS", age, max(0, ttl - age))

    def written(self, resource: str, version: int, *, body: bytes, etag: str) -> cache.Written | None:
        """What a write (PUT, PATCH) of an item offers its invalidation to store: its answer, as a
        read of the item would store it; None for a resource that is not cached."""
        ttl = self._ttl[resource]
        if ttl == 0:
            return None
        entry = contract.encode_entry(
            stored_at_ms=now_ms(), ttl_seconds=ttl, status=200, etag=etag, content_type=contract.JSON, body=body
        )
        return cache.Written(version, entry, self._expiry[resource])

    async def _bypassed(self, load: Load) -> Answer:
        self._bypass.inc()
        loaded = await load()
        return Answer(loaded.status, loaded.body, loaded.etag, contract.JSON, "BYPASS", 0, 0)

    async def _flight(
        self, store: cache.CacheStore, found: cache.Found, *, load: Load, force: bool
    ) -> tuple[Loaded, int, bool]:
        """(answer, stored_at_ms, coalesced): one database read per key and token in this process."""
        if force:
            return await asyncio.shield(asyncio.ensure_future(self._refill(store, found, load=load, read_now=True)))
        key = (found.entry_key, found.token)
        task = self._flights.get(key)
        if task is not None:
            loaded, stored_at, _ = await asyncio.shield(task)
            return loaded, stored_at, True
        task = asyncio.ensure_future(self._refill(store, found, load=load, read_now=found.leased))
        self._flights[key] = task
        task.add_done_callback(lambda _: self._flights.pop(key, None))
        return await asyncio.shield(task)

    def _fill_later(self, fill: Coroutine[Any, Any, bool], target: cache.Target) -> None:
        """Store after answering (one Redis round trip off the miss path); reads of the same key
        in this process wait for it, so that the next read here is a hit."""
        key = target
        task = asyncio.ensure_future(fill)
        self._filling[key] = task

        def done(_: asyncio.Task[bool]) -> None:
            if self._filling.get(key) is task:
                del self._filling[key]

        task.add_done_callback(done)

    async def close(self) -> None:
        """Let the fills in flight finish."""
        await asyncio.gather(*self._filling.values(), return_exceptions=True)

    async def _refill(
        self, store: cache.CacheStore, found: cache.Found, *, load: Load, read_now: bool
    ) -> tuple[Loaded, int, bool]:
        if not read_now:
            while True:  # as long as the holder keeps its lease (it re-arms it while it reads)
                await asyncio.sleep(self._poll_interval)
                try:
                    entry, same_token, leased = await store.poll(found)
                except cache.CacheUnavailable:
                    break
                if entry is not None and _fresh(entry, now_ms()):
                    return Loaded(entry.status, entry.body, entry.etag), entry.stored_at_ms, True
                if not same_token or not leased:
                    break
        try:
            async with store.holding(found):
                loaded = await load()
        except BaseException:
            await store.release(found)
            raise
        stored_at = now_ms()
        if loaded.status == 200:
            ttl = self._ttl[found.target.resource]
            entry_bytes = contract.encode_entry(
                stored_at_ms=stored_at,
                ttl_seconds=ttl,
                status=200,
                etag=loaded.etag,
                content_type=contract.JSON,
                body=loaded.body,
            )
            expiry = self._expiry[found.target.resource]
            self._fill_later(store.fill(found, entry=entry_bytes, expiry_seconds=expiry), found.target)
        else:
            await store.release(found)
        return loaded, stored_at, False
