"""The gateway's one Redis round trip: rate limit and cache lookup in one Lua script.

The rate limit is GCRA (the generic cell rate algorithm): Redis keeps one
number per client, the theoretical arrival time (TAT) of its next request, in
microseconds of Redis's own clock (``TIME``), so that every gateway replica
agrees on time. With emission interval ``T = 1/rate`` and tolerance
``tau = T * burst``, a request at ``now`` is allowed when
``max(TAT, now) + T - now <= tau``; it then moves TAT by ``T``. So a client can
send ``burst`` requests at once and then ``rate`` per second, and the state
expires when the client is idle. A limited request does not move TAT.

The lookup reads the item entry, or, for a list, the list generation token and
then the page keyed by it: the page key is the two halves ``contract`` gives,
joined around the token inside the script, which standalone Redis allows (a Redis Cluster would need the keys of
one resource under one hash tag; the api role's key scheme is shared, see
``contract``). The script writes nothing but the rate-limit key.

An empty rate key skips the limit. Commands are built as RESP bytes from
parts precomputed at start, since they are built once per request.

Reply: ``[allowed, remaining, reset_us, now_ms, entry?]``; ``reset_us`` is the
time until a full burst is available again when allowed, and the time until
the next request would be allowed when limited (the Retry-After).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cachedapi.runtime import redisconn

SOURCE = b"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local allowed, remaining, reset = 1, -1, 0
if KEYS[1] ~= '' then
  local interval = tonumber(ARGV[2])
  local tau = tonumber(ARGV[3])
  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local wait = new_tat - now - tau
  if wait > 0 then
    return {0, 0, wait, math.floor(now / 1000)}
  end
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
  remaining = math.floor((tau - (new_tat - now)) / interval)
  reset = new_tat - now
end
local mode = ARGV[1]
local entry = false
if mode == 'i' then
  entry = redis.call('GET', KEYS[2])
elseif mode == 'l' then
  local token = redis.call('GET', KEYS[2]) or ''
  entry = redis.call('GET', ARGV[4] .. token .. ARGV[5])
end
if entry then
  return {allowed, remaining, reset, math.floor(now / 1000), entry}
end
return {allowed, remaining, reset, math.floor(now / 1000)}
"""

SHA = hashlib.sha1(SOURCE, usedforsecurity=False).hexdigest().encode("ascii")

#: Read modes (ARGV[1]).
ONLY_LIMIT = b"n"
ITEM = b"i"
LIST = b"l"


bulk = redisconn.bulk

_HEAD = b"*10\r\n" + bulk(b"EVALSHA") + bulk(SHA) + bulk(b"2")


_EMPTY = bulk(b"")


@dataclass(frozen=True, slots=True)
class RateParams:
    """The limit, precomputed once: the script's arguments as RESP, and what the headers say."""

    limit_header: bytes
    #: The ends of the commands (mode, interval, tolerance, then the list arguments), in RESP.
    only_limit_tail: bytes
    item_tail: bytes
    list_head: bytes

    @classmethod
    def build(cls, *, rate_per_second: float, burst: int) -> RateParams:
        interval = max(1, round(1_000_000 / rate_per_second))
        params = bulk(str(interval).encode()) + bulk(str(interval * burst).encode())
        return cls(
            limit_header=str(burst).encode(),
            only_limit_tail=_EMPTY + bulk(ONLY_LIMIT) + params + _EMPTY + _EMPTY,
            item_tail=bulk(ITEM) + params + _EMPTY + _EMPTY,
            list_head=bulk(LIST) + params,
        )

    def list_tail(self, page_head: bytes, page_tail: bytes) -> bytes:
        """The list mode's arguments: the page's key around the token (``contract.list_page_key_parts``)."""
        return self.list_head + bulk(page_head) + bulk(page_tail)


def only_limit(rate_key: bytes, params: RateParams) -> bytes:
    """EVALSHA in RESP that counts a request against the limit and reads nothing.

    ``rate_key`` is already a RESP bulk string (``bulk(key)``, cached per client).
    """
    return _HEAD + rate_key + params.only_limit_tail


def limit_and_read(rate_key: bytes, read_key: bytes, *, tail: bytes) -> bytes:
    """EVALSHA in RESP that counts the request and reads ``read_key`` (``tail``: the mode's arguments)."""
    return b"%b%b$%d\r\n%b\r\n%b" % (_HEAD, rate_key, len(read_key), read_key, tail)


def seconds_up(microseconds: int) -> int:
    """Whole seconds, rounded up, for Retry-After and RateLimit-Reset."""
    return -(-microseconds // 1_000_000)
