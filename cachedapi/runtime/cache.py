"""The cache store: the api role's only door to Redis, one Lua script per step.

It implements the coherence protocol of ``contract`` (generation tokens):

- ``lookup``: one round trip returns the entry, the current generation token
  and, when the entry is absent or stale, whether this reader took the fill
  lease (``SET NX PX``). For a list, the list token is read first and the page
  is looked up under it. A token found absent is created (so a reader never
  holds "absent": if Redis restarts empty while a reader is in PostgreSQL, the
  token is lost and the reader's fill is refused, where "absent == absent"
  would have let in a value older than the writes made during the outage).
  The lease key is ``contract.lease_key`` with the entry key's tail after
  ``{prefix}:{resource}:`` as the cache key (``i:{id}`` or ``l:{token}:{query}``).
- ``fill``: stores the entry only if the token is still the one the reader saw
  before it read PostgreSQL, then releases its lease.
- ``invalidate``: after a committed write, replaces the item and list tokens
  with fresh random ones and deletes the item entry and its lease.

Entries are stamped with this process's wall clock (ms); freshness is judged
against the same wall clock, so clock skew between pods shifts ages by the skew.

The read path (lookup, poll, fill: each miss makes two of them) goes through
``redisconn.PipelinedRedis`` when one is given: one auto-pipelined hiredis
connection, measured at about a fifth of the api role's CPU per miss less than
``redis.asyncio`` (bench/README.md); writes (invalidate, release) and ``ping``
keep the ``redis.asyncio`` pool, whose retry semantics they rely on.

Redis failures open a circuit breaker for ``backoff`` seconds (reads bypass the
cache meanwhile, logged once per outage). An invalidation that cannot reach
Redis is retried briefly (through an open breaker: the first command on a stale
pooled connection after a restart fails, and a write must not give up on its
invalidation for that), then queued in-process and retried in the background
and before every lookup; while one is queued this process neither reads the
cache nor fills it.
Residual risk: other processes (gateways, other api pods) that can still reach
Redis may serve the entry the queued invalidation would have deleted, until it
is flushed or the entry expires (ttl + the stale window); if this process dies
with invalidations queued they are lost and the same bound applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import prometheus_client
import redis.asyncio as aioredis
import redis.exceptions

from cachedapi import contract
from cachedapi.runtime import breaker, redisconn

log = logging.getLogger(__name__)
T = TypeVar("T")

_LOOKUP = """
local token = redis.call('GET', KEYS[1])
if not token then
  token = ARGV[6]
  redis.call('SET', KEYS[1], token, 'EX', ARGV[8])
end
local suffix = ARGV[3]
if ARGV[2] == 'l' then suffix = 'l:' .. token .. ':' .. ARGV[3] end
local entry = redis.call('GET', ARGV[1] .. suffix)
local need = 1
if entry and ARGV[5] ~= '1' then
  local at, ttl = string.match(entry, '^CA1 (%d+) (%d+) ')
  if at and tonumber(at) + tonumber(ttl) * 1000 >= tonumber(ARGV[4]) then need = 0 end
end
local leased = 0
if need == 1 and redis.call('SET', ARGV[1] .. 'f:' .. suffix, ARGV[6], 'NX', 'PX', ARGV[7]) then leased = 1 end
return {entry or '', token, leased}
"""

_FILL = """
local stored = 0
if (redis.call('GET', KEYS[1]) or '') == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  stored = 1
end
if redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
return stored
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_INVALIDATE = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
if #KEYS > 1 then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  redis.call('DEL', KEYS[3], KEYS[4])
end
return 1
"""

_REDIS_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)


def _arg(value: str | bytes | int) -> bytes:
    if isinstance(value, bytes):
        return value
    return value.encode() if isinstance(value, str) else b"%d" % value


class _Script:
    """A Lua script run over a ``PipelinedRedis``: EVALSHA, and EVAL once when Redis lost it."""

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest().encode()

    async def __call__(self, conn: redisconn.PipelinedRedis, *, keys: list[str], args: list[Any]) -> Any:
        tail = [str(len(keys)).encode(), *(_arg(k) for k in keys), *(_arg(a) for a in args)]
        reply = await conn.call(b"EVALSHA", self.sha, *tail)
        if isinstance(reply, Exception) and str(reply).startswith("NOSCRIPT"):
            reply = await conn.call(b"EVAL", self.source, *tail)
        if isinstance(reply, Exception):
            raise redis.exceptions.ResponseError(str(reply))
        return reply


class StoreMetrics(Protocol):
    """The metrics the store counts into (the api role's ``Metrics`` has them)."""

    redis_errors: prometheus_client.Counter
    fills: prometheus_client.Counter
    invalidation_failures: prometheus_client.Counter
    invalidations_pending: prometheus_client.Gauge


class CacheUnavailable(Exception):
    """Redis cannot be used right now: the caller goes to PostgreSQL."""


@dataclass(frozen=True, slots=True)
class Target:
    """What a read looks up: one item, or one list page (``query`` is canonical)."""

    resource: str
    base: str  # "{prefix}:{resource}:"
    gen_key: str
    kind: str  # "i" or "l"
    tail: str  # "i:{id}" for an item; the canonical query for a list page


@dataclass(frozen=True, slots=True)
class Lookup:
    target: Target
    entry: contract.Entry | None
    token: str  # "" when absent
    entry_key: str
    lease_key: str
    lease_owner: str
    leased: bool


def item_target(prefix: str, resource: str, item_id: str) -> Target:
    base = f"{prefix}:{resource}:"
    return Target(resource, base, contract.item_gen_key(prefix, resource, item_id), "i", f"i:{item_id}")


def list_target(prefix: str, resource: str, query: str) -> Target:
    """``query`` is ``contract.canonical_list_query``'s spelling."""
    base = f"{prefix}:{resource}:"
    return Target(resource, base, contract.list_gen_key(prefix, resource), "l", query)


class CacheStore:
    """Lookup, poll, fill and invalidate, behind a circuit breaker."""

    def __init__(
        self,
        *,
        client: aioredis.Redis,
        config: contract.RuntimeConfig,
        metrics: StoreMetrics,
        backoff: float = 1.0,
        lease_ms: int = 2000,
        pipelined: redisconn.PipelinedRedis | None = None,
    ) -> None:
        self._client = client
        self._pipelined = pipelined
        self._fast_lookup = _Script(_LOOKUP)
        self._fast_fill = _Script(_FILL)
        self._prefix = config.key_prefix
        self._metrics = metrics
        self._breaker = breaker.Breaker(name="Redis", backoff=backoff, log=log)
        self.lease_ms = lease_ms
        self._lookup = client.register_script(_LOOKUP)
        self._fill = client.register_script(_FILL)
        self._release = client.register_script(_RELEASE)
        self._invalidate = client.register_script(_INVALIDATE)
        self._owner = os.urandom(6).hex()
        self._counter = itertools.count()
        self._pending: dict[tuple[str, str | None], None] = {}
        self._flusher: asyncio.Task[None] | None = None

    # --- targets ----------------------------------------------------------------------------

    def item_target(self, resource: str, item_id: str) -> Target:
        return item_target(self._prefix, resource, item_id)

    def list_target(self, resource: str, query: str) -> Target:
        return list_target(self._prefix, resource, query)

    # --- breaker ----------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return not self._pending and not self._breaker.open

    async def _call(self, fn: Callable[[], Awaitable[T]], *, force: bool = False) -> T:
        if not force and self._breaker.open:
            raise CacheUnavailable("circuit open")
        try:
            result = await fn()
        except _REDIS_ERRORS as exc:
            self._metrics.redis_errors.inc()
            self._breaker.failure(exc)
            raise CacheUnavailable(str(exc)) from exc
        self._breaker.success()
        return result

    # --- reads ------------------------------------------------------------------------------

    async def lookup(self, target: Target, *, now_ms: int, force: bool) -> Lookup:
        """The entry (fresh or stale), the token, and the lease when a refill is needed."""
        if self._pending and not await self.flush_pending():
            raise CacheUnavailable("invalidations pending")
        owner = f"{self._owner}{next(self._counter)}"
        args: list[str | int] = [
            target.base,
            target.kind,
            target.tail,
            now_ms,
            "1" if force else "0",
            owner,
            self.lease_ms,
            contract.GEN_TTL_SECONDS,
        ]
        fast = self._pipelined
        if fast is not None:
            raw, token_b, leased = await self._call(lambda: self._fast_lookup(fast, keys=[target.gen_key], args=args))
        else:
            raw, token_b, leased = await self._call(lambda: self._lookup(keys=[target.gen_key], args=args))
        token = token_b.decode()
        tail = f"l:{token}:{target.tail}" if target.kind == "l" else target.tail
        return Lookup(
            target=target,
            entry=contract.decode_entry(raw) if raw else None,
            token=token,
            entry_key=target.base + tail,
            lease_key=target.base + "f:" + tail,
            lease_owner=owner,
            leased=bool(leased),
        )

    async def poll(self, lookup: Lookup) -> tuple[contract.Entry | None, bool, bool]:
        """(entry, token unchanged, lease still held by someone) for a reader waiting on a lease."""
        keys = [lookup.entry_key, lookup.target.gen_key, lookup.lease_key]
        fast = self._pipelined
        if fast is not None:
            raw, token, lease = await self._call(lambda: fast.call(b"MGET", *(k.encode() for k in keys)))
        else:
            raw, token, lease = await self._call(lambda: self._client.mget(keys))
        entry = contract.decode_entry(raw) if isinstance(raw, bytes) else None
        return entry, (token.decode() if isinstance(token, bytes) else "") == lookup.token, lease is not None

    async def fill(self, lookup: Lookup, *, entry: bytes, expiry_seconds: int) -> bool:
        """Store ``entry`` if no write happened since ``lookup``; release the lease. Never raises."""
        keys = [lookup.target.gen_key, lookup.entry_key, lookup.lease_key]
        args: list[Any] = [lookup.token, entry, expiry_seconds, lookup.lease_owner]
        if self._pending:
            # A write of this process committed but could not replace its tokens yet: what
            # this reader loaded may predate it, and the token check cannot tell.
            self._metrics.fills.labels("skipped").inc()
            await self.release(lookup)
            return False
        fast = self._pipelined
        try:
            if fast is not None:
                stored = bool(await self._call(lambda: self._fast_fill(fast, keys=keys, args=args)))
            else:
                stored = bool(await self._call(lambda: self._fill(keys=keys, args=args)))
        except CacheUnavailable:
            self._metrics.fills.labels("skipped").inc()
            return False
        self._metrics.fills.labels("stored" if stored else "rejected").inc()
        return stored

    async def release(self, lookup: Lookup) -> None:
        if lookup.leased:
            with contextlib.suppress(CacheUnavailable):  # else the lease expires by itself
                await self._call(lambda: self._release(keys=[lookup.lease_key], args=[lookup.lease_owner]))

    # --- writes -----------------------------------------------------------------------------

    async def invalidate(self, resource: str, item_id: str | None) -> bool:
        """New tokens for the resource's list pages (and the item); False if queued for later."""
        # The retries ignore the circuit breaker on purpose: right after Redis restarts, the
        # first command on a pooled connection fails and opens the breaker, while readers on
        # fresh connections fill again; a write must not give up on its invalidation for that.
        # A timeout, though, means Redis is not answering at all: retrying would only add
        # another socket timeout to the write's latency.
        for delay in (0.0, 0.02, 0.08, None):
            try:
                await self._call(lambda: self._invalidate_now(resource, item_id), force=True)
                return True
            except CacheUnavailable as exc:
                timed_out = isinstance(exc.__cause__, redis.exceptions.TimeoutError | asyncio.TimeoutError)
            if delay is None or timed_out:
                break
            await asyncio.sleep(delay)
        self._pending[(resource, item_id)] = None
        self._metrics.invalidation_failures.inc()
        self._metrics.invalidations_pending.set(len(self._pending))
        log.warning("invalidation of %s/%s queued until Redis is reachable", resource, item_id or "*")
        return False

    async def _invalidate_now(self, resource: str, item_id: str | None) -> Any:
        keys = [contract.list_gen_key(self._prefix, resource)]
        if item_id is not None:
            base = f"{self._prefix}:{resource}:"
            keys += [
                contract.item_gen_key(self._prefix, resource, item_id),
                f"{base}i:{item_id}",
                f"{base}f:i:{item_id}",
            ]
        args: list[str | int] = [os.urandom(16).hex(), os.urandom(16).hex(), contract.GEN_TTL_SECONDS]
        return await self._invalidate(keys=keys, args=args)

    async def flush_pending(self) -> bool:
        """Send queued invalidations; True when none is left."""
        for key in list(self._pending):
            try:
                await self._call(lambda key=key: self._invalidate_now(*key))  # type: ignore[misc]
            except CacheUnavailable:
                break
            del self._pending[key]
            if not self._pending:
                log.warning("queued invalidations flushed")
        self._metrics.invalidations_pending.set(len(self._pending))
        return not self._pending

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            if self._pending:
                await self.flush_pending()

    async def ping(self) -> bool:
        try:
            await self._call(lambda: self._client.ping())
        except CacheUnavailable:
            return False
        return True

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._client.aclose()
        if self._pipelined is not None:
            await self._pipelined.close()


def client_from_url(url: str) -> aioredis.Redis:
    """A client that fails fast: short timeouts, no retries (the breaker decides when to retry).

    The pool is bounded and blocking: a burst of concurrent requests waits briefly for a
    connection instead of opening hundreds (or failing with "too many connections").
    """
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=32,
        timeout=1.0,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        health_check_interval=5,
        retry=Retry(NoBackoff(), 0),
    )
    return aioredis.Redis.from_pool(pool)
