"""Rate limit, cache check and forwarding of one authenticated ``/v1/`` request.

One Redis round trip (``script``) gives the rate-limit verdict and, for a
cacheable GET, the stored entry. Then, by the entry's age against its TTL:

- fresh: the stored bytes, ``X-Cache: HIT`` (or 304 when If-None-Match matches);
- stale within stale-while-revalidate: the stored bytes, ``X-Cache: STALE``,
  and one background refresh per key in this process (the api role's fill
  lease dedupes across replicas);
- stale within stale-if-error: forwarded, and the stored bytes answer only
  if the api role cannot (connection error, timeout, 5xx);
- absent or older: forwarded; the api role fills the cache, never the gateway.

When Redis cannot answer the request is forwarded with no limit and no
cache (fail open) and no RateLimit fields, since no limit is known; the
``redis`` client's circuit breaker keeps that from costing a timeout each.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import urllib.parse

import hiredis
from multidict import CIMultiDict

from cachedapi import contract
from cachedapi.runtime.gateway import answers, metrics, redisconn, routes, script, upstream
from cachedapi.runtime.gateway.answers import Headers, Receive, Scope, Send

log = logging.getLogger("cachedapi.gateway")

HIT, STALE = b"HIT", b"STALE"


class Cache:
    def __init__(
        self,
        config: contract.RuntimeConfig,
        *,
        redis: redisconn.PipelinedRedis | None,
        upstream: upstream.Upstream,
        counts: metrics.Counts,
        rate_by_ip: bool,
    ) -> None:
        self.redis = redis
        self.upstream = upstream
        self.counts = counts
        self.rate_by_ip = rate_by_ip
        self.resources = routes.build(config)
        self.rate = script.RateParams.build(rate_per_second=config.rate_per_second, burst=config.rate_burst)
        self.rate_prefix = contract.rate_key(config.key_prefix, "")
        self.swr_ms = config.stale_while_revalidate_seconds * 1000
        self.sie_ms = config.stale_if_error_seconds * 1000
        self.max_body = config.max_body_bytes
        #: client label -> its rate key as a RESP bulk string.
        self._rate_keys: dict[str, bytes] = {}
        self._refreshing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._rid_prefix = secrets.token_hex(4).encode() + b"-"
        self._rid_counter = itertools.count(1)
        self._script_error_logged = False

    def new_request_id(self) -> bytes:
        return self._rid_prefix + b"%d" % next(self._rid_counter)

    async def start(self) -> None:
        if self.redis is not None:
            # A failure is logged once by the client; EVALSHA falls back to EVAL when it is back.
            with contextlib.suppress(redisconn.RedisUnavailable):
                await self.redis.call(b"SCRIPT", b"LOAD", script.SOURCE)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1)

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
        lookup = None
        if method == "GET" or method == "HEAD":
            if cache_control is None or not answers.wants_no_cache(cache_control):
                lookup = routes.lookup(self.resources, scope["path"][4:], scope["query_string"])
            if lookup is None:
                self.counts.bypass += 1
        rate_key = self._rate_key(client, scope)
        if lookup is None:
            command = script.only_limit(rate_key, self.rate)
        elif lookup.is_list:
            command = script.lookup(rate_key, lookup.key, self.rate.list_tail(lookup.page_prefix, lookup.query))
        else:
            command = script.lookup(rate_key, lookup.key, self.rate.item_tail)
        reply = await self._eval(command)
        if reply is None:
            await self.forward(scope, receive, send, request_id=request_id, headers=[])
            return
        allowed, headers = self._verdict(reply)
        headers.append((b"x-request-id", request_id))
        if not allowed:
            await self.too_many(send, headers)
            return
        stale = None
        if len(reply) == 5:
            raw = reply[4]
            entry = contract.decode_entry(raw) if isinstance(raw, bytes) else None
            if entry is not None:
                now_ms = reply[3]
                assert isinstance(now_ms, int)
                age_ms = max(0, now_ms - entry.stored_at_ms)
                ttl_ms = entry.ttl_seconds * 1000
                if age_ms <= ttl_ms:
                    self.counts.hit += 1
                    await self._serve(
                        send,
                        entry,
                        result=HIT,
                        age_ms=age_ms,
                        max_age=(ttl_ms - age_ms) // 1000,
                        headers=headers,
                        if_none_match=if_none_match,
                        method=method,
                    )
                    return
                if age_ms <= ttl_ms + self.swr_ms:
                    self.counts.stale += 1
                    self._refresh(scope, request_id)
                    await self._serve(
                        send,
                        entry,
                        result=STALE,
                        age_ms=age_ms,
                        max_age=0,
                        headers=headers,
                        if_none_match=if_none_match,
                        method=method,
                    )
                    return
                if age_ms <= ttl_ms + self.sie_ms:
                    stale = (entry, age_ms)
        await self.forward(scope, receive, send, request_id=request_id, headers=headers, stale=stale)

    async def _serve(
        self,
        send: Send,
        entry: contract.Entry,
        *,
        result: bytes,
        age_ms: int,
        max_age: int,
        headers: Headers,
        if_none_match: bytes | None,
        method: str,
    ) -> None:
        etag = entry.etag.encode()
        headers[0:0] = [
            (b"etag", etag),
            (b"x-cache", result),
            (b"age", b"%d" % (age_ms // 1000)),
            (b"cache-control", b"max-age=%d" % max_age),
        ]
        if if_none_match is not None and answers.etag_matches(if_none_match, etag):
            self.counts.not_modified += 1
            await answers.send_answer(send, 304, headers=headers)
            return
        body = entry.body
        headers.append((b"content-type", entry.content_type.encode()))
        headers.append((b"content-length", b"%d" % len(body)))
        await answers.send_answer(send, entry.status, headers=headers, body=b"" if method == "HEAD" else body)

    def _refresh(self, scope: Scope, request_id: bytes) -> None:
        """One background GET per stale key in this process, asking the api role to refill."""
        target = _target(scope)
        if target in self._refreshing:
            return
        self._refreshing.add(target)
        self.counts.refreshes += 1
        task = asyncio.get_running_loop().create_task(self._do_refresh(target, request_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _do_refresh(self, target: str, request_id: bytes) -> None:
        headers = CIMultiDict({contract.REVALIDATE_HEADER: "1", "X-Request-Id": request_id.decode("latin-1")})
        try:
            await self.upstream.forward("GET", target, headers=headers, body=b"")
        finally:
            self._refreshing.discard(target)

    # --- forwarding -------------------------------------------------------------------------

    async def forward_plain(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward with no limit and no cache (documentation routes)."""
        rid = next((v[:128] for n, v in scope["headers"] if n == b"x-request-id"), None) or self.new_request_id()
        await self.forward(scope, receive, send, request_id=rid, headers=[(b"x-request-id", rid)])

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        request_id: bytes,
        headers: Headers,
        stale: tuple[contract.Entry, int] | None = None,
    ) -> None:
        if not any(name == b"x-request-id" for name, _ in headers):
            headers.append((b"x-request-id", request_id))
        body = await _read_body(scope, receive, limit=self.max_body)
        if body is None:
            detail = f"request body larger than {self.max_body} bytes"
            await answers.send_problem(send, 413, detail=detail, headers=headers)
            return
        peer = scope.get("client")
        out_headers = upstream.request_headers(
            scope["headers"],
            client_ip=peer[0] if peer else "unknown",
            scheme=scope.get("scheme", "http"),
            request_id=request_id,
        )
        result = await self.upstream.forward(scope["method"], _target(scope), headers=out_headers, body=body)
        failed = isinstance(result, upstream.Failure) or result.status >= 500
        if stale is not None and failed:
            self.counts.stale += 1
            entry, age_ms = stale
            await self._serve(
                send,
                entry,
                result=STALE,
                age_ms=age_ms,
                max_age=0,
                headers=headers,
                if_none_match=None,
                method=scope["method"],
            )
            return
        if isinstance(result, upstream.Failure):
            await answers.send_problem(send, result.status, detail=result.detail, headers=headers)
            return
        out = [(n, v) for n, v in result.headers if n != b"x-request-id"]
        for name, value in out:
            if name == b"x-cache":
                if value == b"MISS":
                    self.counts.miss += 1
                break
        out.extend(headers)
        out.append((b"content-length", b"%d" % len(result.body)))
        await answers.send_answer(send, result.status, headers=out, body=result.body)


def _target(scope: Scope) -> str:
    """The path and query as the client sent them."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else urllib.parse.quote(scope["path"])
    query: bytes = scope["query_string"]
    return f"{path}?{query.decode('latin-1')}" if query else path


async def _read_body(scope: Scope, receive: Receive, *, limit: int) -> bytes | None:
    """The whole request body, or None when it is larger than ``limit``."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                if int(value) > limit:
                    return None
            except ValueError:
                return None
    if scope["method"] in ("GET", "HEAD"):
        return b""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
