"""The cache store: the api role's only door to Redis, one Lua script per step.

It implements the coherence protocol of ``contract`` (generation tokens):

- ``lookup``: one round trip returns the entry, the current generation token
  and, when the entry is absent or stale, whether this reader took the fill
  lease (``SET NX PX``). For a list, the list token is read first and the page
  is looked up under it. A token found absent is created (so a reader never
  holds "absent": if Redis restarts empty while a reader is in PostgreSQL, the
  token is lost and the reader's fill is refused, where "absent == absent"
  would have let in a value older than the writes made during the outage).
  The lease key is ``contract.lease_key`` of the entry key. The scripts spell no
  key: they get the keys from ``contract`` (a list page's as the halves around the
  token they read), and the entry header's pattern from it too.
- ``holding``: while the lease holder reads PostgreSQL, its lease is re-armed
  (token-checked ``PEXPIRE``) every third of the lease time, so that readers
  waiting on it in other processes keep waiting however slow the read, and
  none of them goes to the database meanwhile. Re-arming is a task of the
  holder's event loop, cancelled when the read ends in any outcome: a holder
  that dies, or whose loop stalls, stops re-arming, and the lease lapses
  within one lease time, when a waiting reader reads the database itself.
- ``fill``: stores the entry only if the token is still the one the reader saw
  before it read PostgreSQL, then releases its lease.
- ``invalidate``: after a committed write, replaces the item and list tokens
  with fresh random ones and deletes the item entry and its lease.
- The writer's fill: the invalidation of a PUT or PATCH (``Written``) stores the
  write's own answer in place of the entry when the entry it replaces is of an
  older version of the item (the version is its ETag, and an item's versions grow
  in commit order); an absent entry, or one as new or newer, is deleted as before.
  So entries only ever move forward: a fill is token-checked, and a write stores
  only over an older entry, hence a write that an older one's invalidation
  overtakes is never hidden by it, and one that Redis has forgotten meanwhile
  (restart, eviction) leaves no entry to compare with. The read that follows a write
  to a cached item is then a hit rather than a miss (in the bench's mix: half of
  what reached the api role), with no round trip added to the write.

Entries are stamped with this process's wall clock (ms); freshness is judged
against the same wall clock, so clock skew between pods shifts ages by the skew.

Everything goes through one ``redisconn.PipelinedRedis``, the same client as the
gateway's: one auto-pipelined hiredis connection, measured at about a fifth of the
api role's CPU per miss less than ``redis.asyncio`` (bench/README.md).

Redis failures open the connection's circuit breaker (``breaker``: reads bypass the
cache meanwhile, logged once per outage). An invalidation that cannot reach
Redis is retried briefly (forcing a new connection through an open breaker: the
first command after a restart fails on the old connection, and a write must not
give up on its invalidation for that), then queued in-process and retried in the
background and before every lookup; while one is queued this process neither
reads the cache nor fills it.
Residual risk: other processes (gateways, other api pods) that can still reach
Redis may serve the entry the queued invalidation would have deleted, until it
is flushed or the entry expires (ttl + the stale window); if this process dies
with invalidations queued they are lost and the same bound applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import prometheus_client

from cachedapi import contract
from cachedapi.runtime import breaker, redisconn

log = logging.getLogger(__name__)
T = TypeVar("T")

# KEYS[1]: the generation token. ARGV: the entry key (or, for a list page, the head of its key),
# the tail of a list page's key ('' for an item), the lease suffix, now (ms), '1' to need a
# refill whatever the entry's age, this reader's lease owner (also a fresh token), the lease's
# ms, the token's seconds, the entry header's pattern.
_LOOKUP = """
local token = redis.call('GET', KEYS[1])
if not token then
  token = ARGV[6]
  redis.call('SET', KEYS[1], token, 'EX', ARGV[8])
end
local key = ARGV[1]
if ARGV[2] ~= '' then key = ARGV[1] .. token .. ARGV[2] end
local entry = redis.call('GET', key)
local need = 1
if entry and ARGV[5] ~= '1' then
  local at, ttl = string.match(entry, ARGV[9])
  if at and tonumber(at) + tonumber(ttl) * 1000 >= tonumber(ARGV[4]) then need = 0 end
end
local leased = 0
if need == 1 and redis.call('SET', key .. ARGV[3], ARGV[6], 'NX', 'PX', ARGV[7]) then leased = 1 end
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

# KEYS[1]: the lease. ARGV: its owner, the lease's ms. 0 when the lease is no longer this owner's.
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
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


# ``_INVALIDATE`` of an item that also stores the write's answer (ARGV[6], for ARGV[7] seconds) in
# place of an entry of an older version: ARGV[4] finds an entry's version (its ETag's digits), ARGV[5]
# is the write's (compared as digit strings: no rounding). 1 when stored.
_WRITTEN = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('DEL', KEYS[4])
local entry = redis.call('GET', KEYS[3])
if entry then
  local version, mine = string.match(entry, ARGV[4]), ARGV[5]
  if version and (#version < #mine or (#version == #mine and version < mine)) then
    redis.call('SET', KEYS[3], ARGV[6], 'EX', ARGV[7])
    return 1
  end
end
redis.call('DEL', KEYS[3])
return 0
"""

#: An item entry's version, in the header ``contract.encode_entry`` writes: its ETag is
#: ``"v<version>"`` (``documents.etag``).
_ENTRY_VERSION_LUA_PATTERN = '^CA1 %d+ %d+ %d+ "v(%d+)" '


def _arg(value: str | bytes | int) -> bytes:
    if isinstance(value, bytes):
        return value
    return value.encode() if isinstance(value, str) else b"%d" % value


def _args(values: list[Any]) -> list[bytes]:
    return [_arg(v) for v in values]


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
    gen_key: str
    #: The item's key; for a list page, the head of its key (``contract.list_page_key_parts``).
    key_head: str
    #: "" for an item; for a list page, the tail of its key after the list generation token.
    key_tail: str = ""


@dataclass(frozen=True, slots=True)
class Written:
    """A write's answer, which its invalidation stores in place of an entry of an older version."""

    #: The item's version after the write (its ETag's number).
    version: int
    #: The entry (``contract.encode_entry``) and how long Redis keeps it.
    entry: bytes
    expiry_seconds: int


@dataclass(frozen=True, slots=True)
class Found:
    target: Target
    entry: contract.Entry | None
    token: str
    entry_key: str
    lease_key: str
    lease_owner: str
    leased: bool


def item_target(prefix: str, resource: str, item_id: str) -> Target:
    return Target(
        resource, contract.item_gen_key(prefix, resource, item_id), contract.item_key(prefix, resource, item_id)
    )


def list_target(prefix: str, resource: str, query: str) -> Target:
    """``query`` is ``contract.canonical_list_query``'s spelling."""
    head, tail = contract.list_page_key_parts(prefix, resource, query)
    return Target(resource, contract.list_gen_key(prefix, resource), head, tail)


#: How long a fill lease lasts without its holder re-arming it: how soon a waiting reader takes
#: over from a holder that died.
LEASE_MS = 2000

_SCRIPT_LOOKUP = redisconn.Script(_LOOKUP)
_SCRIPT_FILL = redisconn.Script(_FILL)
_SCRIPT_RELEASE = redisconn.Script(_RELEASE)
_SCRIPT_EXTEND = redisconn.Script(_EXTEND)
_SCRIPT_INVALIDATE = redisconn.Script(_INVALIDATE)
_SCRIPT_WRITTEN = redisconn.Script(_WRITTEN)


class CacheStore:
    """Lookup, poll, fill and invalidate, over the one Redis connection and its circuit breaker."""

    def __init__(
        self,
        *,
        redis: redisconn.PipelinedRedis,
        config: contract.RuntimeConfig,
        metrics: StoreMetrics,
        lease_ms: int = LEASE_MS,
    ) -> None:
        self._redis = redis
        self._prefix = config.key_prefix
        self._metrics = metrics
        self.lease_ms = lease_ms
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
        return not self._pending and not self._redis.breaker.open

    async def _call(self, fn: Callable[[], Awaitable[T]], *, force: bool = False) -> T:
        if not force and self._redis.breaker.open:
            raise CacheUnavailable("circuit open")
        try:
            return await fn()
        except (redisconn.RedisUnavailable, redisconn.RedisReplyError) as exc:
            self._metrics.redis_errors.inc()
            raise CacheUnavailable(str(exc)) from exc

    # --- reads ------------------------------------------------------------------------------

    async def lookup(self, target: Target, *, now_ms: int, force: bool) -> Found:
        """The entry (fresh or stale), the token, and the lease when a refill is needed."""
        if self._pending and not await self.flush_pending():
            raise CacheUnavailable("invalidations pending")
        owner = f"{self._owner}{next(self._counter)}"
        args = _args(
            [
                target.key_head,
                target.key_tail,
                contract.LEASE_SUFFIX,
                now_ms,
                "1" if force else "0",
                owner,
                self.lease_ms,
                contract.GEN_TTL_SECONDS,
                contract.ENTRY_HEADER_LUA_PATTERN,
            ]
        )
        keys = [target.gen_key.encode()]
        raw, token_b, leased = await self._call(lambda: _SCRIPT_LOOKUP(self._redis, keys=keys, args=args))
        token = token_b.decode()
        entry_key = target.key_head + token + target.key_tail if target.key_tail else target.key_head
        return Found(
            target=target,
            entry=contract.decode_entry(raw) if raw else None,
            token=token,
            entry_key=entry_key,
            lease_key=contract.lease_key(entry_key),
            lease_owner=owner,
            leased=bool(leased),
        )

    async def poll(self, found: Found) -> tuple[contract.Entry | None, bool, bool]:
        """(entry, token unchanged, lease still held by someone) for a reader waiting on a lease."""
        keys = [found.entry_key, found.target.gen_key, found.lease_key]
        raw, token, lease = await self._call(lambda: self._redis.call(b"MGET", *(k.encode() for k in keys)))
        entry = contract.decode_entry(raw) if isinstance(raw, bytes) else None
        return entry, (token.decode() if isinstance(token, bytes) else "") == found.token, lease is not None

    async def fill(self, found: Found, *, entry: bytes, expiry_seconds: int) -> bool:
        """Store ``entry`` if no write happened since ``lookup``; release the lease. Never raises."""
        keys = _args([found.target.gen_key, found.entry_key, found.lease_key])
        args = _args([found.token, entry, expiry_seconds, found.lease_owner])
        if self._pending:
            # A write of this process committed but could not replace its tokens yet: what
            # this reader loaded may predate it, and the token check cannot tell.
            self._metrics.fills.labels("skipped").inc()
            await self.release(found)
            return False
        try:
            stored = bool(await self._call(lambda: _SCRIPT_FILL(self._redis, keys=keys, args=args)))
        except CacheUnavailable:
            self._metrics.fills.labels("skipped").inc()
            return False
        self._metrics.fills.labels("stored" if stored else "rejected").inc()
        return stored

    async def extend(self, found: Found) -> bool:
        """Re-arm this reader's lease for ``lease_ms``; False when it is no longer its own (a write
        deleted it, or it lapsed). Raises CacheUnavailable."""
        keys, args = [found.lease_key.encode()], _args([found.lease_owner, self.lease_ms])
        return bool(await self._call(lambda: _SCRIPT_EXTEND(self._redis, keys=keys, args=args)))

    @contextlib.asynccontextmanager
    async def holding(self, found: Found) -> AsyncIterator[None]:
        """Keep ``found``'s lease while the body (the database read) runs, if this reader holds it."""
        if not found.leased:
            yield
            return
        keeper = asyncio.get_running_loop().create_task(self._keep(found))
        try:
            yield
        finally:
            # Not awaited: a re-arm already sent is harmless (it checks the owner; fill and
            # release delete the lease after it on the same connection), and awaiting would put
            # an event-loop turn on every miss.
            keeper.cancel()

    async def _keep(self, found: Found) -> None:
        interval = self.lease_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.extend(found):
                    return
            except CacheUnavailable:
                continue  # the lease may lapse meanwhile: waiting readers then read themselves

    async def release(self, found: Found) -> None:
        if found.leased:
            keys, args = [found.lease_key.encode()], [found.lease_owner.encode()]
            with contextlib.suppress(CacheUnavailable):  # else the lease expires by itself
                await self._call(lambda: _SCRIPT_RELEASE(self._redis, keys=keys, args=args))

    # --- writes -----------------------------------------------------------------------------

    async def invalidate(self, resource: str, item_id: str | None, *, written: Written | None = None) -> bool:
        """New tokens for the resource's list pages (and the item); False if queued for later.
        ``written``: the write's answer, stored in place of an entry of an older version of the
        item (else the entry is deleted, as without it)."""
        # The retries force a connection through an open breaker on purpose: right after Redis
        # restarts, the first command on the old connection fails and opens the breaker, while
        # readers on a new one fill again; a write must not give up on its invalidation for that.
        # A timeout, though, means Redis is not answering at all: retrying would only add
        # another timeout to the write's latency.
        for delay in (0.0, 0.02, 0.08, None):
            try:
                await self._call(
                    lambda: self._invalidate_now(resource, item_id, force=True, written=written), force=True
                )
                return True
            except CacheUnavailable as exc:
                timed_out = isinstance(exc.__cause__, redisconn.RedisTimeout)
            if delay is None or timed_out:
                break
            await asyncio.sleep(delay)
        self._pending[(resource, item_id)] = None
        self._metrics.invalidation_failures.inc()
        self._metrics.invalidations_pending.set(len(self._pending))
        log.warning("invalidation of %s/%s queued until Redis is reachable", resource, item_id or "*")
        return False

    async def _invalidate_now(
        self, resource: str, item_id: str | None, *, force: bool = False, written: Written | None = None
    ) -> Any:
        keys = [contract.list_gen_key(self._prefix, resource)]
        if item_id is not None:
            entry_key = contract.item_key(self._prefix, resource, item_id)
            keys += [contract.item_gen_key(self._prefix, resource, item_id), entry_key, contract.lease_key(entry_key)]
            if written is not None and not self._pending:  # as ``fill``: not while writes wait to invalidate
                tokens = [os.urandom(16).hex(), os.urandom(16).hex(), contract.GEN_TTL_SECONDS]
                mine = [_ENTRY_VERSION_LUA_PATTERN, written.version, written.entry, written.expiry_seconds]
                args = _args([*tokens, *mine])
                return await _SCRIPT_WRITTEN(self._redis, keys=_args(keys), args=args, force=force)
        args = _args([os.urandom(16).hex(), os.urandom(16).hex(), contract.GEN_TTL_SECONDS])
        return await _SCRIPT_INVALIDATE(self._redis, keys=_args(keys), args=args, force=force)

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
            await self._call(lambda: self._redis.call(b"PING"))
        except CacheUnavailable:
            return False
        return True

    @property
    def misconfigured(self) -> str | None:
        """Why Redis refuses this process, while it never accepted it (``redisconn``): not ready."""
        return self._redis.misconfigured

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._redis.close()


def connection(url: str, *, ca_file: str | None = None) -> redisconn.PipelinedRedis:
    """The api role's Redis connection: outages logged once each; ``ca_file`` for ``rediss://``."""
    on_down, on_up = breaker.log_outages(log, name="Redis")
    return redisconn.PipelinedRedis(url, ca_file=ca_file, on_down=on_down, on_up=on_up)
