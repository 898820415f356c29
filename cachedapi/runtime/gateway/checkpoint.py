"""Rate limit and cache check of one authenticated ``/v1/`` request.

One Redis round trip (``script``) gives the rate-limit verdict and, for a
cacheable GET, the stored entry. Then, by the entry's age against its TTL:

- fresh: the stored bytes, ``X-Cache: HIT`` (or 304 when If-None-Match matches);
- stale within stale-while-revalidate: the stored bytes, ``X-Cache: STALE``,
  and one background refresh per key in this process (the api role's fill
  lease dedupes across replicas);
- stale within stale-if-error: forwarded, and the stored bytes answer only
  if the api role cannot (connection error, timeout, 5xx);
- absent or older: forwarded (``forwarding``); the api role fills the cache,
  never the gateway.

An entry's age is Redis's clock (``TIME``, in the same script) minus the
``stored_at_ms`` the api role wrote from its own clock: the two must agree
to within a second or so, as NTP keeps them; a negative age counts as 0.

When Redis cannot answer the request is forwarded with no limit and no
cache (fail open) and no RateLimit fields, since no limit is known; the
``redis`` client's circuit breaker keeps that from costing a timeout each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

import hiredis

from cachedapi import contract
from cachedapi.runtime import redisconn
from cachedapi.runtime.gateway import answers, forwarding, metrics, routes, script
from cachedapi.runtime.gateway.answers import Headers, Message, Receive, Scope, Send

log = logging.getLogger("cachedapi.gateway")

HIT, STALE = b"HIT", forwarding.STALE


class Checkpoint:
    """The one Redis round trip of every /v1/ request: the rate limit and the cache check."""

    def __init__(
        self,
        config: contract.RuntimeConfig,
        *,
        redis: redisconn.PipelinedRedis | None,
        forwarder: forwarding.Forwarder,
        counts: metrics.Counts,
        rate_by_ip: bool,
    ) -> None:
        self.redis = redis
        self.forwarder = forwarder
        self.counts = counts
        self.rate_by_ip = rate_by_ip
        self.resources = routes.build(config)
        self.rate = script.RateParams.build(rate_per_second=config.rate_per_second, burst=config.rate_burst)
        self.rate_prefix = contract.rate_key(config.key_prefix, "")
        self.swr_ms = config.stale_while_revalidate_seconds * 1000
        #: Forwarded answers are made ``private`` when callers authenticate (``answers.make_private``).
        self.private = config.auth_mode != "none"
        self.sie_ms = config.stale_if_error_seconds * 1000
        #: client label -> its rate key as a RESP bulk string.
        self._rate_keys: dict[str, bytes] = {}
        self._script_error_logged = False

    async def start(self) -> None:
        if self.redis is not None:
            # A failure is logged once by the client; EVALSHA falls back to EVAL when it is back.
            with contextlib.suppress(redisconn.RedisUnavailable):
                await self.redis.call(b"SCRIPT", b"LOAD", script.SOURCE)

    # --- Redis ------------------------------------------------------------------------------

    def _rate_key(self, client: str, scope: Scope) -> bytes:
        if not client or self.rate_by_ip:
            peer = scope.get("client")
            client = ("ip:" if client or self.rate_by_ip else "unauth:") + (peer[0] if peer else "unknown")
        key = self._rate_keys.get(client)
        if key is None:
            if len(self._rate_keys) > 10_000:
                self._rate_keys.clear()
            key = self._rate_keys[client] = script.bulk((self.rate_prefix + client).encode())
        return key

    async def _eval(self, command: bytes) -> list[object] | None:
        """The script's reply, or None when Redis cannot answer (fail open)."""
        redis = self.redis
        if redis is None:
            return None
        try:
            reply = await redis.call_encoded(command)
            if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
                # Redis restarted or was flushed of scripts: load it again and retry once.
                await redis.call(b"SCRIPT", b"LOAD", script.SOURCE)
                reply = await redis.call_encoded(command)
        except redisconn.RedisUnavailable:
            self.counts.redis_failures += 1
            return None
        if isinstance(reply, list):
            return reply
        if not self._script_error_logged:
            self._script_error_logged = True
            log.error("the gateway's Redis script failed: %s (serving without cache and limit)", reply)
        self.counts.redis_failures += 1
        return None

    def _verdict(self, reply: list[object]) -> tuple[bool, Headers]:
        allowed, remaining, reset_us = reply[0], reply[1], reply[2]
        assert isinstance(remaining, int) and isinstance(reset_us, int)
        headers = answers.rate_headers(self.rate.limit_header, remaining=remaining, reset_us=reset_us)
        if not allowed:
            headers.append((b"retry-after", b"%d" % script.seconds_up(reset_us)))
        return bool(allowed), headers

    async def limit_only(self, scope: Scope, *, client: str, headers: Headers) -> bool:
        """Count a request against the limit without a lookup; True when it is over the limit."""
        reply = await self._eval(script.only_limit(self._rate_key(client, scope), self.rate))
        if reply is None:
            return False
        allowed, rate_headers = self._verdict(reply)
        headers.extend(rate_headers)
        return not allowed

    async def too_many(self, send: Send, headers: Headers) -> None:
        self.counts.rate_limited += 1
        await answers.send_problem(
            send, 429, detail="rate limit exceeded: retry after the Retry-After seconds", headers=headers
        )

    # --- one /v1/ request -------------------------------------------------------------------

    async def handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        client: str,
        request_id: bytes,
        if_none_match: bytes | None,
        cache_control: bytes | None,
    ) -> None:
        method = scope["method"]
        if method != "GET" and method != "HEAD" and not isinstance(receive, _EarlyBody):
            early = _EarlyBody.start(scope, receive, limit=self.forwarder.max_body)
            if early is not None:  # a write: its body is read during the Redis round trip
                try:
                    return await self.handle(
                        scope,
                        early,
                        send,
                        client=client,
                        request_id=request_id,
                        if_none_match=if_none_match,
                        cache_control=cache_control,
                    )
                finally:
                    early.drop()
        read = None
        if method == "GET" or method == "HEAD":
            if cache_control is None or not answers.wants_no_cache(cache_control):
                read = routes.read(self.resources, scope["path"][4:], scope["query_string"])
            if read is None:
                self.counts.bypass += 1
        rate_key = self._rate_key(client, scope)
        if read is None:
            command = script.only_limit(rate_key, self.rate)
        elif read.is_list:
            tail = self.rate.list_tail(read.page_head, read.page_tail)
            command = script.limit_and_read(rate_key, read.key, tail=tail)
        else:
            command = script.limit_and_read(rate_key, read.key, tail=self.rate.item_tail)
        reply = await self._eval(command)
        if reply is None:
            await self.forwarder.forward(scope, receive, send, request_id=request_id, headers=[], private=self.private)
            return
        allowed, headers = self._verdict(reply)
        headers.append((b"x-request-id", request_id))
        if not allowed:
            await self.too_many(send, headers)
            return
        stale = None
        if read is not None and len(reply) == 5:  # the entry's reply comes only with a read
            raw = reply[4]
            entry = contract.decode_entry(raw) if isinstance(raw, bytes) else None
            if entry is not None:
                now_ms = reply[3]
                assert isinstance(now_ms, int)
                age_ms = max(0, now_ms - entry.stored_at_ms)
                ttl_ms = entry.ttl_seconds * 1000
                if age_ms <= ttl_ms:
                    self.counts.hit += 1
                    if await answers.send_entry(
                        send,
                        entry,
                        result=HIT,
                        age_ms=age_ms,
                        max_age=(ttl_ms - age_ms) // 1000,
                        cache_control=read.resource.cache_control,
                        headers=headers,
                        if_none_match=if_none_match,
                        head=method == "HEAD",
                    ):
                        self.counts.not_modified += 1
                    return
                if age_ms <= ttl_ms + self.swr_ms:
                    self.counts.stale += 1
                    self.forwarder.refresh(scope, request_id)
                    if await answers.send_entry(
                        send,
                        entry,
                        result=STALE,
                        age_ms=age_ms,
                        max_age=0,
                        cache_control=read.resource.cache_control,
                        headers=headers,
                        if_none_match=if_none_match,
                        head=method == "HEAD",
                    ):
                        self.counts.not_modified += 1
                    return
                if age_ms <= ttl_ms + self.sie_ms:
                    stale = (entry, age_ms, read.resource.cache_control)
        await self.forwarder.forward(
            scope, receive, send, request_id=request_id, headers=headers, stale=stale, private=self.private
        )


class _EarlyBody:
    """A write's body, read while its rate limit is checked rather than after.

    The body comes from granian's threads, and each ``receive`` costs the request an event-loop
    round: two for a small body, whose first message says more may come and whose second is empty
    (measured, 2 Dec: 3.3 ms at the median of a PUT of the bench's mix, 12.4 ms in all, at 50
    connections). Here the body is read from the start of the request, concurrently with the
    Redis round trip, and ends as soon as it holds the bytes its Content-Length declares; the
    forwarder then gets it in one message, without a wait when it is complete. Only for a body
    that declares a length the forwarder accepts (413 and chunked bodies go as before); dropped
    when the request is answered without forwarding (429, 503).
    """

    def __init__(self, receive: Receive, length: int) -> None:
        self._receive = receive
        # Called now: granian starts reading when ``receive()`` is called, not when awaited.
        first = receive()
        self._body: asyncio.Task[Message] | None = asyncio.ensure_future(self._read(first, length))

    @classmethod
    def start(cls, scope: Scope, receive: Receive, *, limit: int) -> _EarlyBody | None:
        for name, value in scope["headers"]:
            if name == b"content-length":
                return cls(receive, int(value)) if value.isdigit() and 0 < int(value) <= limit else None
        return None

    async def _read(self, first: Awaitable[Message], length: int) -> Message:
        chunks: list[bytes] = []
        size = 0
        message = await first
        while message["type"] == "http.request":
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size >= length or not message.get("more_body", False):
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            message = await self._receive()
        return message

    async def __call__(self) -> Message:
        body, self._body = self._body, None
        if body is None:
            return await self._receive()
        return body.result() if body.done() else await body

    def drop(self) -> None:
        """Not used (the request was answered without its body): stop reading it."""
        body, self._body = self._body, None
        if body is not None:
            body.cancel()
            if body.done() and not body.cancelled():
                body.exception()  # retrieved: a client gone meanwhile is no error to log
