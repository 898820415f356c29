"""The shared cache's Redis keys and Lua scripts: lookup, fill, hit-for-miss, invalidate, purge.

Keys (``{p}`` is the configuration's key prefix; ``{ph}`` a hash of the path as sent):

    {p}:h:g:{ph}                         the path's generation token
    {p}:h:e:{ph}:{token}:{qh}            entry of one query (and route vary values, caller)
    {entry}:v{variant}                   entry of a further Vary variant of that query
    {entry or variant}:lease             fill lease (SET NX PX, re-armed while the upstream runs)
    {p}:h:t:{tag}                        the purge sequence number at which the tag was purged
    {p}:h:seq                            the purge sequence (never expires)

Coherence is ``contract``'s generation-token protocol, per path: a lookup learns the path's
token (creating it when absent, so nobody holds "absent") in the round trip of the lookup, the
fill stores only if the token is still the same, and a write replaces the token before its
answer goes out. The token is per *path*: a write retires every query string of the path.

Tags cannot be tokens in the entry's key (an entry learns its tags only from the upstream's
answer), so they are checked at lookup instead: each entry remembers, per tag, the purge
sequence number the tag had when it was stored, and the lookup compares them with the tags'
current numbers, in the same script (still one round trip for a hit). A purge sets its tags
to a new, larger sequence number. A fill whose tags were purged after its lookup (the
sequence the lookup returned is smaller) is refused: the stale fill of a response computed
before the purge. The sequence starts from Redis's clock in microseconds when absent, so it
never goes back after a restart or an eviction.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from cachedapi import contract
from cachedapi.runtime import redisconn
from cachedapi.runtime.gateway.httpcache import entry

log = logging.getLogger("cachedapi.gateway")

#: How long a fill lease lasts without being re-armed: how soon a waiting replica takes over
#: from a holder that died.
LEASE_MS = 2000
#: Entries never outlive the tokens they are keyed by and checked against (those last
#: ``contract.GEN_TTL_SECONDS`` from their last change): past that they could not be found.
MAX_ENTRY_SECONDS = contract.GEN_TTL_SECONDS - 86_400
#: How long a write's answer waits for Redis to take its invalidation before it is queued.
INVALIDATE_SECONDS = 3.0
#: How long a hit-for-miss marker stays (seconds).
PASS_SECONDS = 30
#: Entries with a validator stay this long past their stale windows, for a conditional
#: request that turns a refetch into a 304 (seconds).
VALIDATOR_GRACE_SECONDS = 600

# KEYS: rate key ('' = no limit), path token, purge sequence. ARGV: emission interval and
# tolerance (us), the entry key's head and tail around the token, this reader's lease owner
# (also a new token), lease ms, token seconds, lease mode ('0' when missing or stale, '1'
# always, 'n' never), the tag key prefix, the entry pattern.
_LOOKUP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local allowed, remaining, reset = 1, -1, 0
if KEYS[1] ~= '' then
  local interval = tonumber(ARGV[1])
  local tau = tonumber(ARGV[2])
  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local wait = new_tat - now - tau
  if wait > 0 then return {0, 0, wait, now_ms} end
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
  remaining = math.floor((tau - (new_tat - now)) / interval)
  reset = new_tat - now
end
local token = redis.call('GET', KEYS[2])
if not token then
  token = ARGV[5]
  redis.call('SET', KEYS[2], token, 'EX', ARGV[7])
end
local key = ARGV[3] .. token .. ARGV[4]
local entry = redis.call('GET', key)
local need = 1
if entry then
  local nl = string.find(entry, '\\n', 1, true)
  local line = string.sub(entry, 1, nl or 0)
  local at, age, life = string.match(line, ARGV[10])
  if at then
    local tp = string.find(line, ' T', 1, true)
    if tp then
      for tag, seq in string.gmatch(string.sub(line, tp + 2), '(%S+) (%d+)') do
        if (redis.call('GET', ARGV[9] .. tag) or '0') ~= seq then entry = false break end
      end
    end
    if entry and now_ms - tonumber(at) + tonumber(age) < tonumber(life) then need = 0 end
  elseif entry == 'HC1 PASS' then
    need = 0
  else
    entry = false
  end
end
if ARGV[8] == '1' then need = 1 elseif ARGV[8] == 'n' then need = 0 end
local leased = 0
if need == 1 and redis.call('SET', key .. ':lease', ARGV[5], 'NX', 'PX', ARGV[6]) then leased = 1 end
local seq = redis.call('GET', KEYS[3]) or string.format('%d', now)
return {allowed, remaining, reset, now_ms, token, seq, leased, entry or ''}
"""

# KEYS: path token, the entry key, the key of this request's Vary variant ('' without Vary),
# the lease ('' without one). ARGV: the token the lookup saw, the lease owner, the purge
# sequence the lookup saw, the variant, the entry's fields, its header block and body, its
# seconds, the tag key prefix, then its tags.
_FILL = """
local stored = 0
if (redis.call('GET', KEYS[1]) or '') == ARGV[1] then
  local pairs_ = {}
  local ok = true
  for i = 9, #ARGV do
    local seq = redis.call('GET', ARGV[8] .. ARGV[i]) or '0'
    if tonumber(seq) > tonumber(ARGV[3]) then ok = false break end
    pairs_[#pairs_ + 1] = ' ' .. ARGV[i] .. ' ' .. seq
  end
  if ok then
    local key = KEYS[2]
    if KEYS[3] ~= '' then
      local old = redis.call('GET', KEYS[2])
      local other = old and string.match(old, '^HC1 (%S+) %d')
      if other and other ~= '-' and other ~= ARGV[4] then key = KEYS[3] end
    end
    local t = redis.call('TIME')
    local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local line = 'HC1 ' .. ARGV[4] .. ' ' .. string.format('%d', now_ms) .. ' ' .. ARGV[5]
    redis.call('SET', key, line .. ' T' .. table.concat(pairs_) .. '\\n' .. ARGV[6], 'EX', ARGV[7])
    stored = 1
  end
end
if KEYS[4] ~= '' and redis.call('GET', KEYS[4]) == ARGV[2] then redis.call('DEL', KEYS[4]) end
return stored
"""

# KEYS: path token, the key, the lease ('' without one). ARGV: token seen, lease owner, seconds.
_PASS = """
if (redis.call('GET', KEYS[1]) or '') == ARGV[1] then
  redis.call('SET', KEYS[2], 'HC1 PASS', 'EX', ARGV[3])
end
if KEYS[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[2] then redis.call('DEL', KEYS[3]) end
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: the purge sequence, then the path tokens. ARGV: token seconds, tag key prefix, the
# number of paths, a new token per path, then the tags.
_INVALIDATE = """
local n = tonumber(ARGV[3])
for i = 1, n do redis.call('SET', KEYS[i + 1], ARGV[3 + i], 'EX', ARGV[1]) end
if #ARGV > 3 + n then
  local t = redis.call('TIME')
  local seq = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local old = tonumber(redis.call('GET', KEYS[1]) or '0')
  if old >= seq then seq = old + 1 end
  local s = string.format('%d', seq)
  redis.call('SET', KEYS[1], s)
  for i = 4 + n, #ARGV do redis.call('SET', ARGV[2] .. ARGV[i], s, 'EX', ARGV[1]) end
end
return 1
"""

_SCRIPTS = {
    name: redisconn.Script(source)
    for name, source in {
        "lookup": _LOOKUP,
        "fill": _FILL,
        "pass": _PASS,
        "release": _RELEASE,
        "extend": _EXTEND,
        "invalidate": _INVALIDATE,
    }.items()
}

#: Lease modes of a lookup.
LEASE_IF_NEEDED, LEASE_ALWAYS, LEASE_NEVER = b"0", b"1", b"n"


class Unavailable(Exception):
    """Redis cannot be used now: serve without the cache."""


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Target:
    """The keys of one request: its path's token and its entry around that token."""

    gen_key: bytes
    head: bytes
    #: ``:{qh}``.
    tail: bytes
    #: ``b""``, or ``:v{variant}`` for a further Vary variant.
    var: bytes = b""

    def variant(self, variant: bytes) -> Target:
        return Target(self.gen_key, self.head, self.tail, b":v" + variant)


@dataclass(slots=True)
class Found:
    """A lookup's reply (the rate limit's verdict is the caller's)."""

    target: Target
    token: bytes
    #: The purge sequence at the lookup.
    seq: bytes
    leased: bool
    raw: bytes
    now_ms: int
    owner: bytes

    @property
    def key(self) -> bytes:
        return self.target.head + self.token + self.target.tail + self.target.var

    @property
    def primary_key(self) -> bytes:
        """The key of the query's first variant (``key`` without the variant)."""
        return self.target.head + self.token + self.target.tail

    def variant_key(self, variant: bytes) -> bytes:
        """The key of another Vary variant of the query; b'' for an answer without Vary."""
        return b"" if variant == entry.NO_VARIANT else self.primary_key + b":v" + variant

    @property
    def lease_key(self) -> bytes:
        return self.key + b":lease"


class Store:
    def __init__(self, *, redis: redisconn.PipelinedRedis, prefix: str, lease_ms: int = LEASE_MS) -> None:
        self.redis = redis
        self.prefix = prefix.encode()
        self.tag_prefix = self.prefix + b":h:t:"
        self.seq_key = self.prefix + b":h:seq"
        self.lease_ms = lease_ms
        self._owner = os.urandom(6).hex().encode()
        self._counter = itertools.count()
        #: Invalidations that could not be sent: (paths, tags). While any is queued this
        #: process reads and fills nothing (``usable``).
        self.pending: list[tuple[tuple[bytes, ...], tuple[bytes, ...]]] = []

    def target(self, path: bytes, key_parts: bytes) -> Target:
        ph = digest(path).encode()
        return Target(
            self.prefix + b":h:g:" + ph, self.prefix + b":h:e:" + ph + b":", b":" + digest(key_parts).encode()
        )

    def gen_key(self, path: bytes) -> bytes:
        return self.prefix + b":h:g:" + digest(path).encode()

    @property
    def usable(self) -> bool:
        return not self.pending and not self.redis.breaker.open

    async def _run(self, name: str, keys: Sequence[bytes], args: Sequence[bytes], *, force: bool = False) -> Any:
        if not force and self.redis.breaker.open:
            raise Unavailable("circuit open")
        try:
            return await _SCRIPTS[name](self.redis, keys=keys, args=args, force=force)
        except (redisconn.RedisUnavailable, redisconn.RedisReplyError) as exc:
            raise Unavailable(str(exc)) from exc

    # --- reads ------------------------------------------------------------------------------

    async def lookup(
        self, target: Target, *, rate_key: bytes, rate_args: tuple[bytes, bytes], lease: bytes
    ) -> tuple[list[Any], Found | None]:
        """The rate limit's verdict ``[allowed, remaining, reset_us, now_ms]`` and, when allowed,
        the entry (or b''), its token, and the lease if taken. Raises Unavailable."""
        owner = self._owner + b"%d" % next(self._counter)
        reply = await self._run(
            "lookup",
            [rate_key, target.gen_key, self.seq_key],
            [
                *rate_args,
                target.head,
                target.tail + target.var,
                owner,
                b"%d" % self.lease_ms,
                b"%d" % contract.GEN_TTL_SECONDS,
                lease,
                self.tag_prefix,
                entry.LUA_PATTERN.encode(),
            ],
        )
        if len(reply) < 8:
            return list(reply), None
        return list(reply[:4]), Found(
            target=target,
            token=reply[4],
            seq=reply[5],
            leased=bool(reply[6]),
            raw=reply[7],
            now_ms=int(reply[3]),
            owner=owner,
        )

    async def fill(
        self,
        found: Found,
        *,
        variant: bytes,
        fields: bytes,
        payload: bytes,
        seconds: int,
        tags: Sequence[bytes],
    ) -> bool:
        """Store if neither a write nor a purge of its tags happened since the lookup; release
        the lease. Never raises."""
        keys = [
            found.target.gen_key,
            found.primary_key,
            found.variant_key(variant),
            found.lease_key if found.leased else b"",
        ]
        args = [
            found.token,
            found.owner,
            found.seq,
            variant,
            fields,
            payload,
            b"%d" % max(1, seconds),
            self.tag_prefix,
            *tags,
        ]
        if self.pending:
            await self.release(found)
            return False
        try:
            return bool(await self._run("fill", keys, args))
        except Unavailable:
            return False

    async def mark_pass(self, found: Found) -> None:
        """Hit-for-miss: the key's answers are not storable now; nobody waits on a lease for it."""
        keys = [found.target.gen_key, found.key, found.lease_key if found.leased else b""]
        with contextlib.suppress(Unavailable):
            await self._run("pass", keys, [found.token, found.owner, b"%d" % PASS_SECONDS])

    async def release(self, found: Found) -> None:
        if found.leased:
            with contextlib.suppress(Unavailable):
                await self._run("release", [found.lease_key], [found.owner])

    @contextlib.asynccontextmanager
    async def holding(self, found: Found) -> AsyncIterator[None]:
        """Re-arm ``found``'s lease every third of its time while the body (the upstream request)
        runs, so that other replicas keep waiting however slow the upstream; stopped in every
        outcome, so a holder that dies lets its lease lapse within ``lease_ms``."""
        if not found.leased:
            yield
            return
        keeper = asyncio.get_running_loop().create_task(self._keep(found))
        try:
            yield
        finally:
            keeper.cancel()

    async def _keep(self, found: Found) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                if not await self._run("extend", [found.lease_key], [found.owner, b"%d" % self.lease_ms]):
                    return
            except Unavailable:
                continue

    # --- writes -----------------------------------------------------------------------------

    async def invalidate(self, paths: Sequence[bytes], tags: Sequence[bytes]) -> bool:
        """New tokens for ``paths``, new purge numbers for ``tags``; False when queued for later.

        Retried through an open breaker (a write must not give up on its invalidation because
        a stale connection failed) for up to about ``INVALIDATE_SECONDS``, timeouts included:
        here the write's answer waits, since once it is out another replica would go on serving
        what the write replaced. Then queued: while queued, this process bypasses the cache,
        and the queue is retried before every lookup (``flush``); other replicas may serve the
        older entries until it is sent or they expire (the api role's residual risk, the same)."""
        if not paths and not tags:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + INVALIDATE_SECONDS
        delay = 0.02
        while True:
            try:
                await self._invalidate_now(paths, tags, force=True)
                return True
            except Unavailable:
                pass
            if loop.time() + delay > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        self.pending.append((tuple(paths), tuple(tags)))
        log.warning("invalidation of %d paths and %d tags queued until Redis is reachable", len(paths), len(tags))
        return False

    async def _invalidate_now(self, paths: Sequence[bytes], tags: Sequence[bytes], *, force: bool = False) -> None:
        gen_keys = [self.gen_key(path) for path in dict.fromkeys(paths)]
        tokens = [os.urandom(16).hex().encode() for _ in gen_keys]
        args = [b"%d" % contract.GEN_TTL_SECONDS, self.tag_prefix, b"%d" % len(gen_keys), *tokens, *tags]
        await self._run("invalidate", [self.seq_key, *gen_keys], args, force=force)

    async def flush(self) -> bool:
        """Send queued invalidations; True when none is left."""
        while self.pending:
            paths, tags = self.pending[0]
            try:
                await self._invalidate_now(paths, tags)
            except Unavailable:
                return False
            self.pending.pop(0)
            if not self.pending:
                log.warning("queued invalidations flushed")
        return True
