"""The shared cache's request flow: every authenticated request to the user's API.

- GET and HEAD (a HEAD is answered from the stored GET; a HEAD miss is asked as a GET, whose
  answer is stored, as Varnish does: ``lean`` cannot send HEAD anyway): one Redis round trip
  (``store``'s lookup: rate limit, path token, entry, its tags' purge numbers, and the fill
  lease when the entry is missing or stale). Then, by the entry and the request's own
  Cache-Control: HIT (or 304 for a matching If-None-Match / If-Modified-Since), STALE
  (max-stale, or stale-while-revalidate with one background revalidation, by whoever got the
  lease), or to the upstream: conditionally when the entry has a validator (a 304 refreshes
  it: REVALIDATED), else MISS; a failed upstream answer is replaced by an entry within
  stale-if-error (STALE). A ``Vary`` entry whose variant is not the request's costs a second
  lookup, of the variant's own key.
- Coalescing: requests of one process for one key await one flight; across processes, the
  lease holder asks the upstream (re-arming its lease meanwhile) and the others poll the
  entry (with the lookup script, which takes the lease when it goes, so a waiter takes over
  from a holder that died). An answer that may not be stored leaves a hit-for-miss marker,
  so requests for that key stop waiting on each other.
- Other safe methods (OPTIONS, TRACE), ranged GETs and routes with ttl 0: forwarded (BYPASS).
- Writes (any other method): forwarded; a 2xx/3xx answer retires the target path and the
  same-origin Location / Content-Location paths, and purges the tags its ``Cache-Tag-Purge``
  names, before the client gets the answer (a 5xx or no answer retires the target path: the
  write may have happened).

Redis unavailable: forwarded with no cache and no limit (fail open), as in bundled mode.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from cachedapi import contract
from cachedapi.runtime import redisconn
from cachedapi.runtime.gateway import answers, checkpoint, clients, forwarding, lean, metrics, upstream
from cachedapi.runtime.gateway.answers import Headers, Receive, Scope, Send
from cachedapi.runtime.gateway.httpcache import capture, entry, fields, policy, store

log = logging.getLogger("cachedapi.gateway")

HIT, MISS, STALE, REVALIDATED, BYPASS = b"HIT", b"MISS", b"STALE", b"REVALIDATED", b"BYPASS"
#: Statuses answered with no body and no Content-Length.
_NO_BODY = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class Shared:
    """What an in-process flight hands the requests that waited on it."""

    stored: entry.Stored
    label: bytes
    age_ms: int


def _now_ms() -> int:
    return int(time.time() * 1000)


class HttpCache:
    def __init__(
        self,
        config: contract.RuntimeConfig,
        *,
        redis: redisconn.PipelinedRedis | None,
        api: upstream.Upstream,
        counts: metrics.Counts,
        limiter: checkpoint.Checkpoint,
        read_timeout: float,
    ) -> None:
        self.config = config
        self.store = store.Store(redis=redis, prefix=config.key_prefix) if redis is not None else None
        self.upstream = api
        api.name = "the upstream"
        self.counts = counts
        self.limiter = limiter
        self.routes = config.cache_routes
        self.private = config.auth_mode != "none"
        self.auth_mode = config.auth_mode
        self.forward_credentials = config.forward_credentials
        self.max_body = config.max_body_bytes
        self.body_seconds = float(config.request_body_seconds)
        interval = max(1, round(1_000_000 / config.rate_per_second))
        self.rate_args = (b"%d" % interval, b"%d" % (interval * config.rate_burst))
        self.rate_limit_header = str(config.rate_burst).encode()
        self.rate_prefix = contract.rate_key(config.key_prefix, "")
        self.rate_by_ip = config.rate_by == "clientIP" or config.auth_mode == "none"
        self.upstream_host = api.base_url.split("://", 1)[1].split("/", 1)[0].lower().encode()
        #: How long a request waits on another's fill before asking the upstream itself.
        self.wait_seconds = read_timeout + store.LEASE_MS / 1000 + 1
        self._flights: dict[bytes, asyncio.Future[Shared | None]] = {}
        self._tasks: set[asyncio.Task[object]] = set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1)

    # --- dispatch ---------------------------------------------------------------------------

    def route(self, path: str) -> contract.CacheRoute | None:
        for rule in self.routes:
            if rule.matches(path):
                return rule
        return None

    async def handle(self, scope: Scope, receive: Receive, send: Send, *, client: str, request_id: bytes) -> None:
        req = fields.parse_request(scope, client=client, request_id=request_id)
        method = req.method
        if method == "GET" or method == "HEAD":
            route = self.route(scope["path"])
            cache = self.store
            if (
                (route is None or route.ttl_seconds != 0)
                and not req.ranged
                and cache is not None
                and (not cache.pending or await cache.flush())
            ):
                await self._read(req, scope, send, route, cache)
                return
            self.counts.bypass += 1
            await self._forward(req, scope, receive, send, label=BYPASS)
        elif method in policy.SAFE_METHODS:
            await self._forward(req, scope, receive, send, label=None)
        else:
            await self._write(req, scope, receive, send)

    # --- reads ------------------------------------------------------------------------------

    def _rate_key(self, client: str, scope: Scope) -> bytes:
        if not client or self.rate_by_ip:
            peer = scope.get("client")
            client = ("ip:" if client or self.rate_by_ip else "unauth:") + (peer[0] if peer else "unknown")
        return (self.rate_prefix + client).encode()

    def _verdict(self, verdict: list[object]) -> tuple[bool, Headers]:
        allowed, remaining, reset_us = verdict[0], verdict[1], verdict[2]
        assert isinstance(remaining, int) and isinstance(reset_us, int)
        headers = answers.rate_headers(self.rate_limit_header, remaining=remaining, reset_us=reset_us)
        if not allowed:
            headers.append((b"retry-after", b"%d" % -(-reset_us // 1_000_000)))
        return bool(allowed), headers

    async def _read(
        self, req: fields.Request, scope: Scope, send: Send, route: contract.CacheRoute | None, cache: store.Store
    ) -> None:
        target = cache.target(req.path, fields.key_parts(req, route))
        rules = req.rules
        lease = (
            store.LEASE_ALWAYS
            if rules.must_validate
            else store.LEASE_NEVER
            if rules.only_if_cached or rules.no_store
            else store.LEASE_IF_NEEDED
        )
        try:
            verdict, found = await cache.lookup(
                target, rate_key=self._rate_key(req.client, scope), rate_args=self.rate_args, lease=lease
            )
        except store.Unavailable:
            self.counts.redis_failures += 1
            self.counts.bypass += 1
            await self._forward(req, scope, None, send, label=BYPASS)
            return
        allowed, headers = self._verdict(verdict)
        headers.append((b"x-request-id", req.request_id))
        if found is None or not allowed:
            await self.limiter.too_many(send, headers)
            return
        await self._serve(req, scope, send, found, route, headers, lease, cache)

    async def _serve(
        self,
        req: fields.Request,
        scope: Scope,
        send: Send,
        found: store.Found,
        route: contract.CacheRoute | None,
        headers: Headers,
        lease: bytes,
        cache: store.Store,
    ) -> None:
        varied = False
        #: The entry now held was filled after this request began (by another's fetch).
        validated = False
        flight_key: bytes | None = None
        shared: Shared | None = None
        try:
            while True:
                stored = entry.decode(found.raw) if found.raw else None
                if stored is not None and stored.vary and not varied:
                    mine = fields.variant(req, stored.vary)
                    if mine != stored.variant:
                        varied, validated = True, False
                        await cache.release(found)
                        again = await self._lookup_again(cache, found.target.variant(mine), lease)
                        if again is None:
                            await self._forward(req, scope, None, send, label=BYPASS, headers=headers)
                            return
                        found = again
                        continue
                #: The lookup script wanted the lease (so whoever holds it is asking the upstream).
                wanted = lease == store.LEASE_ALWAYS
                if stored is None:
                    wanted = wanted or found.raw != entry.PASS
                else:
                    age = stored.age_ms(found.now_ms)
                    wanted = wanted or age >= stored.lifetime_ms
                    if validated or (
                        not stored.no_cache
                        and not req.rules.no_cache
                        and policy.fresh_for(req.rules, age_ms=age, lifetime_ms=stored.lifetime_ms)
                    ):
                        await cache.release(found)
                        shared = Shared(stored, HIT, age)
                        self.counts.hit += 1
                        await self._answer(req, send, stored, age, HIT, headers)
                        return
                    if (
                        not stored.no_stale
                        and age >= stored.lifetime_ms
                        and (
                            policy.stale_allowed_by_request(req.rules, age_ms=age, lifetime_ms=stored.lifetime_ms)
                            or (not req.rules.must_validate and age - stored.lifetime_ms <= stored.swr_ms)
                        )
                    ):
                        self.counts.stale += 1
                        shared = Shared(stored, STALE, age)
                        if found.leased:
                            self._revalidate_later(req, scope, found, stored, route)
                        await self._answer(req, send, stored, age, STALE, headers)
                        return
                if req.rules.only_if_cached:
                    await cache.release(found)
                    detail = "only-if-cached: the cache holds no answer this request accepts"
                    await answers.send_problem(send, 504, detail=detail, headers=headers)
                    return
                # To the upstream, or wait for whoever is asking it.
                joinable = wanted and lease != store.LEASE_NEVER
                if joinable and flight_key is None:
                    # Keyed by the purge sequence too: a request whose lookup saw a purge must not
                    # take the answer of a fetch whose lookup predates it (the key's token covers
                    # writes to the path; tags are not in the key).
                    flight = self._flights.get(found.key + b" " + found.seq)
                    if flight is not None:
                        await cache.release(found)
                        result = await asyncio.shield(flight)
                        if result is not None and (
                            not result.stored.vary or fields.variant(req, result.stored.vary) == result.stored.variant
                        ):
                            self.counts.hit += 1
                            await self._answer(req, send, result.stored, result.age_ms, result.label, headers)
                            return
                        found.leased = False
                        await self._fetch(req, scope, send, found, stored, route, headers, cache)
                        return
                    flight_key = found.key + b" " + found.seq
                    self._flights[flight_key] = asyncio.get_running_loop().create_future()
                if found.leased or not joinable:
                    shared = await self._fetch(req, scope, send, found, stored, route, headers, cache)
                    return
                waited = await self._wait(cache, found)
                if waited is None:
                    shared = await self._fetch(req, scope, send, found, stored, route, headers, cache)
                    return
                validated = waited.raw != found.raw and waited.token == found.token and bool(waited.raw)
                found = waited
        finally:
            if flight_key is not None:
                done = self._flights.pop(flight_key, None)
                if done is not None and not done.done():
                    done.set_result(shared)

    async def _lookup_again(self, cache: store.Store, target: store.Target, lease: bytes) -> store.Found | None:
        """A lookup with no rate limit (the request was counted); None when Redis cannot answer."""
        try:
            _, found = await cache.lookup(target, rate_key=b"", rate_args=self.rate_args, lease=lease)
        except store.Unavailable:
            self.counts.redis_failures += 1
            return None
        return found

    async def _wait(self, cache: store.Store, found: store.Found) -> store.Found | None:
        """Poll while another replica holds the lease: until the entry changes, the token changes,
        the lease is this request's (its holder finished without storing, or died), or the wait
        is over (None: ask the upstream without a lease)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds
        delay = 0.005
        while loop.time() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.05)
            again = await self._lookup_again(cache, found.target, store.LEASE_IF_NEEDED)
            if again is None:
                return None
            if again.leased or again.token != found.token or again.raw != found.raw:
                return again
        return None

    # --- the upstream -----------------------------------------------------------------------

    def _upstream_headers(
        self, req: fields.Request, scope: Scope, *, fill: bool, validators: Headers | None = None
    ) -> list[tuple[str, str]]:
        peer = scope.get("client")
        return fields.to_upstream(
            req,
            client_ip=peer[0] if peer else "unknown",
            scheme=scope.get("scheme", "http"),
            auth_mode=self.auth_mode,
            forward_credentials=self.forward_credentials,
            fill=fill,
            validators=validators,
        )

    async def _fetch(
        self,
        req: fields.Request,
        scope: Scope,
        send: Send | None,
        found: store.Found,
        stored: entry.Stored | None,
        route: contract.CacheRoute | None,
        headers: Headers,
        cache: store.Store,
    ) -> Shared | None:
        """Ask the upstream for the entry's key (conditionally when ``stored`` has a validator),
        store what may be stored, answer (``send`` None: a background revalidation). Returns
        what requests waiting on this one may be answered with."""
        validators: Headers = []
        if stored is not None:
            etag, modified = stored.header(b"etag"), stored.header(b"last-modified")
            if etag is not None:
                validators.append((b"if-none-match", etag))
            if modified is not None:
                validators.append((b"if-modified-since", modified))
        out = self._upstream_headers(req, scope, fill=True, validators=validators)
        request_ms = _now_ms()
        async with cache.holding(found):
            result = await self.upstream.exchange("GET", req.target, headers=out, body=b"")
        response_ms = _now_ms()
        redis_now = found.now_ms + max(0, response_ms - request_ms)
        if isinstance(result, upstream.Failure) or result.status in policy.ERROR_STATUSES:
            await cache.release(found)
            if stored is not None and not stored.no_stale:
                age = stored.age_ms(redis_now)
                if age - stored.lifetime_ms <= stored.sie_ms:
                    self.counts.stale += 1
                    if send is not None:
                        await self._answer(req, send, stored, age, STALE, headers)
                    return Shared(stored, STALE, age)
            if send is not None:
                if isinstance(result, upstream.Failure):
                    await answers.send_problem(send, result.status, detail=result.detail, headers=headers)
                else:
                    await self._pass_through(req, send, result, MISS, headers)
            return None
        answer_headers = fields.lower(result.headers)
        label = MISS
        if result.status == 304 and stored is not None and validators:
            label = REVALIDATED
            got = capture.capture(
                status=stored.status,
                headers=capture.merge(stored.headers, answer_headers),
                body=stored.body,
                req=req,
                route=route,
                config=self.config,
                request_ms=request_ms,
                response_ms=response_ms,
                stored_at_ms=redis_now,
                tags_fallback=stored.tags,
            )
        else:
            got = capture.capture(
                status=result.status,
                headers=answer_headers,
                body=result.body,
                req=req,
                route=route,
                config=self.config,
                request_ms=request_ms,
                response_ms=response_ms,
                stored_at_ms=redis_now,
            )
        if got.reason is None:
            await cache.fill(
                found,
                variant=got.stored.variant,
                fields=got.fields,
                payload=got.payload,
                seconds=got.seconds,
                tags=got.tags,
            )
        elif got.pass_marker:
            await cache.mark_pass(found)
        else:
            await cache.release(found)
        if label == MISS:
            self.counts.miss += 1
        if send is not None:
            if got.reason is None or label == REVALIDATED:
                # The entry, plus what it does not keep but this exchange's client is owed.
                own = [(n, v) for n, v in answer_headers if n == b"set-cookie"]
                await self._answer(req, send, got.stored, got.stored.initial_age_ms, label, [*own, *headers])
            else:
                await self._pass_through(req, send, result, label, headers)
        return Shared(got.stored, HIT, got.stored.initial_age_ms) if got.reason is None else None

    def _revalidate_later(
        self,
        req: fields.Request,
        scope: Scope,
        found: store.Found,
        stored: entry.Stored,
        route: contract.CacheRoute | None,
    ) -> None:
        """stale-while-revalidate: this request holds the lease, so it revalidates, after answering."""
        assert self.store is not None
        self.counts.refreshes += 1
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(
            self._fetch(req, scope, None, found, stored, route, [], self.store)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- answers ----------------------------------------------------------------------------

    def _not_modified(self, req: fields.Request, stored: entry.Stored) -> bool:
        """The client's own condition holds against the entry (RFC 9110 section 13.2.2)."""
        if stored.status != 200:
            return False
        if req.if_none_match is not None:
            etag = stored.header(b"etag")
            return etag is not None and answers.etag_matches(req.if_none_match, etag)
        if req.if_modified_since is not None:
            modified = policy.http_date_ms(stored.header(b"last-modified"))
            since = policy.http_date_ms(req.if_modified_since)
            return modified is not None and since is not None and modified <= since
        return False

    async def _answer(
        self, req: fields.Request, send: Send, stored: entry.Stored, age_ms: int, label: bytes, headers: Headers
    ) -> None:
        """Answer from an entry: its fields and body as stored, Age and X-Cache, or a 304."""
        tail = [(b"age", b"%d" % (age_ms // 1000)), (b"x-cache", label), *headers]
        if self._not_modified(req, stored):
            self.counts.not_modified += 1
            out = [(n, v) for n, v in stored.headers if n in fields.NOT_MODIFIED_FIELDS]
            if self.private:
                answers.make_private(out)
            await answers.send_answer(send, 304, headers=out + tail)
            return
        out = list(stored.headers)
        if self.private:
            answers.make_private(out)
        out.extend(tail)
        body = stored.body
        if stored.status not in _NO_BODY:
            out.append((b"content-length", b"%d" % len(body)))
        await answers.send_answer(send, stored.status, headers=out, body=b"" if req.method == "HEAD" else body)

    async def _pass_through(
        self, req: fields.Request, send: Send, result: lean.Response, label: bytes | None, headers: Headers
    ) -> None:
        """The upstream's answer as it came (less hop-by-hop fields and the tag fields)."""
        out = fields.passed(fields.lower(result.headers))
        if self.private:
            answers.make_private(out)
        if label is not None:
            out.append((b"x-cache", label))
        out.extend(headers)
        if result.status not in _NO_BODY:
            out.append((b"content-length", b"%d" % len(result.body)))
        await answers.send_answer(send, result.status, headers=out, body=b"" if req.method == "HEAD" else result.body)

    async def _body(self, scope: Scope, receive: Receive | None, send: Send, headers: Headers) -> bytes | None:
        """The request body (bounded in size and time), or None once a 413 or 408 is sent."""
        if receive is None or scope["method"] in ("GET", "HEAD"):
            return b""
        try:
            body = await forwarding.read_body(scope, clients.bounded(receive, self.body_seconds), limit=self.max_body)
        except clients.BodyTimeout:
            self.counts.body_timeouts += 1
            detail = f"the request body did not arrive within {self.body_seconds:g} s"
            await answers.send_problem(send, 408, detail=detail, headers=[*headers, (b"connection", b"close")])
            return None
        if body is None:
            await answers.send_problem(
                send, 413, detail=f"request body larger than {self.max_body} bytes", headers=headers
            )
        return body

    async def _forward(
        self,
        req: fields.Request,
        scope: Scope,
        receive: Receive | None,
        send: Send,
        *,
        label: bytes | None,
        headers: Headers | None = None,
    ) -> None:
        """Forward with no cache: rate-limited here unless ``headers`` (already limited) or no
        ``receive`` (Redis is down: fail open)."""
        if headers is None:
            headers = [(b"x-request-id", req.request_id)]
            if receive is not None and await self.limiter.limit_only(scope, client=req.client, headers=headers):
                await self.limiter.too_many(send, headers)
                return
        body = await self._body(scope, receive, send, headers)
        if body is None:
            return
        method = "GET" if req.method == "HEAD" else req.method
        out = self._upstream_headers(req, scope, fill=False)
        result = await self.upstream.exchange(method, req.target, headers=out, body=body)
        if isinstance(result, upstream.Failure):
            await answers.send_problem(send, result.status, detail=result.detail, headers=headers)
            return
        await self._pass_through(req, send, result, label, headers)

    # --- writes -----------------------------------------------------------------------------

    async def _write(self, req: fields.Request, scope: Scope, receive: Receive, send: Send) -> None:
        headers: Headers = [(b"x-request-id", req.request_id)]
        if await self.limiter.limit_only(scope, client=req.client, headers=headers):
            await self.limiter.too_many(send, headers)
            return
        body = await self._body(scope, receive, send, headers)
        if body is None:
            return
        out = self._upstream_headers(req, scope, fill=False)
        result = await self.upstream.exchange(req.method, req.target, headers=out, body=body)
        paths: list[bytes] = []
        tags: list[bytes] = []
        if isinstance(result, upstream.Failure) or result.status >= 500:
            paths = [req.path]  # the write may have happened
        elif 200 <= result.status < 400:
            answer_headers = fields.lower(result.headers)
            hosts = frozenset(h for h in (self.upstream_host, (req.host or b"").lower()) if h)
            paths = [req.path, *fields.same_origin_paths(answer_headers, hosts=hosts)]
            tags = fields.purge_tags(answer_headers)
        if self.store is not None and (paths or tags):
            await self.store.invalidate(paths, tags)
        if isinstance(result, upstream.Failure):
            await answers.send_problem(send, result.status, detail=result.detail, headers=headers)
            return
        await self._pass_through(req, send, result, None, headers)
