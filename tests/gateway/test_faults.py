"""Degradation: Redis gone (fail open, then limit again), the api role gone (502, cached answers)."""

from __future__ import annotations

import os
import signal
import time

import httpx
import redis

from cachedapi import contract, model
from cachedapi.dev import embedded
from cachedapi.operator.children import config as x_config
from tests.gateway.conftest import API_KEY, running_stack, variant


def _metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_gateway_keeps_serving_without_redis_and_limits_again_when_it_is_back(
    bookstore: model.CachedApi, postgres_server: embedded.PostgresServer, fresh_redis: embedded.RedisServer
) -> None:
    api = variant(bookstore, gateway={"rateLimit": {"requestsPerSecond": 0.2, "burst": 8, "by": "apiKey"}})
    with (
        running_stack(api, postgres=postgres_server, redis=fresh_redis) as stack,
        httpx.Client(base_url=stack.url, headers={"X-API-Key": API_KEY}, timeout=10) as client,
    ):
        book = client.post("/v1/books", json={"title": "Dune", "author": "Herbert"}).json()["id"]
        statuses = [client.get(f"/v1/books/{book}").status_code for _ in range(9)]
        assert statuses[-1] == 429

        fresh_redis.stop()
        started = time.monotonic()
        during = [client.get(f"/v1/books/{book}") for _ in range(12)]
        assert [r.status_code for r in during] == [200] * 12, during[-1].text
        assert time.monotonic() - started < 30, "requests without Redis must not each wait for a timeout"
        assert all("ratelimit-limit" not in r.headers for r in during)
        assert _metric(client, "cachedapi_gateway_redis_failures_total") >= 1
        assert _metric(client, "cachedapi_gateway_redis_up") == 0

        fresh_redis.start()
        deadline = time.monotonic() + 20
        limited_again = False
        while time.monotonic() < deadline and not limited_again:
            limited_again = client.get(f"/v1/books/{book}").status_code == 429
            time.sleep(0.02)
        assert limited_again, "the limit did not resume after Redis came back"
        assert _metric(client, "cachedapi_gateway_redis_up") == 1
        log = (stack.workdir / "gateway-0.log").read_text()
        assert log.count("Redis unavailable") == 1, log


def _age_entry(redis_url: str, key: str, *, seconds: int) -> None:
    r = redis.Redis.from_url(redis_url)
    try:
        entry = contract.decode_entry(r.get(key) or b"")
        assert entry is not None
        aged = contract.encode_entry(
            stored_at_ms=entry.stored_at_ms - seconds * 1000,
            ttl_seconds=entry.ttl_seconds,
            status=entry.status,
            etag=entry.etag,
            content_type=entry.content_type,
            body=entry.body,
        )
        r.set(key, aged, keepttl=True)
    finally:
        r.close()


def test_upstream_down_gives_502_quickly_while_cached_items_are_still_served(
    bookstore: model.CachedApi, postgres_server: embedded.PostgresServer, redis_server: embedded.RedisServer
) -> None:
    with (
        running_stack(bookstore, postgres=postgres_server, redis=redis_server) as stack,
        httpx.Client(base_url=stack.url, headers={"X-API-Key": API_KEY}, timeout=10) as client,
    ):
        fresh, stale, never_read = (
            client.post("/v1/books", json={"title": t, "author": "Herbert"}).json()["id"] for t in ("A", "B", "C")
        )
        client.get(f"/v1/books/{fresh}")
        client.get(f"/v1/books/{stale}")
        ttl = bookstore.spec.resources[0].ttlSeconds or 0
        swr = bookstore.spec.cache.staleWhileRevalidateSeconds
        prefix = x_config.key_prefix(bookstore)
        _age_entry(redis_server.url, contract.item_key(prefix, "books", stale), seconds=ttl + swr + 10)

        stack.apis[0].kill()
        started = time.monotonic()
        down = client.get(f"/v1/books/{never_read}")
        assert time.monotonic() - started < 5
        assert down.status_code == 502
        assert down.headers["content-type"] == contract.PROBLEM_JSON
        assert "unreachable" in down.json()["detail"]
        assert client.post("/v1/books", json={"title": "D", "author": "H"}).status_code == 502

        hit = client.get(f"/v1/books/{fresh}")
        assert (hit.status_code, hit.headers["x-cache"]) == (200, "HIT")
        served_stale = client.get(f"/v1/books/{stale}")
        assert (served_stale.status_code, served_stale.headers["x-cache"]) == (200, "STALE")
        assert served_stale.json()["title"] == "B"


def test_a_hung_redis_costs_no_timeout_per_request_and_is_one_outage(
    bookstore: model.CachedApi, postgres_server: embedded.PostgresServer, fresh_redis: embedded.RedisServer
) -> None:
    """SIGSTOP: connections are still accepted but nothing answers; the circuit breaker answers for it."""
    with (
        running_stack(bookstore, postgres=postgres_server, redis=fresh_redis) as stack,
        httpx.Client(base_url=stack.url, headers={"X-API-Key": API_KEY}, timeout=30) as client,
    ):
        book = client.post("/v1/books", json={"title": "Dune", "author": "Herbert"}).json()["id"]
        client.get(f"/v1/books/{book}")
        assert fresh_redis.pid is not None
        os.kill(fresh_redis.pid, signal.SIGSTOP)
        waits = []
        try:
            # The api role waits on the hung Redis too, so read through a resource it never caches.
            statuses = []
            for _ in range(20):
                started = time.monotonic()
                statuses.append(client.get("/v1/orders").status_code)
                waits.append(time.monotonic() - started)
        finally:
            os.kill(fresh_redis.pid, signal.SIGCONT)
        assert statuses == [200] * 20
        # A request that waited for Redis took at least its reply timeout (0.5 s); the others, a few
        # milliseconds. Only the breaker's probes may wait (0.1 s, then 0.2 s ... between them), not
        # every request, as they did before the breaker: then all 20 would be here.
        waited = [round(w, 2) for w in waits if w >= 0.4]
        assert 1 <= len(waited) <= 6, waits
        # The api role serves hits too: wait for the gateway's own view of Redis, not for a HIT.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _metric(client, "cachedapi_gateway_redis_up") != 1:
            client.get(f"/v1/books/{book}")
            time.sleep(0.05)
        assert _metric(client, "cachedapi_gateway_redis_up") == 1
        assert client.get(f"/v1/books/{book}").headers["ratelimit-limit"] == "200"
        log = (stack.workdir / "gateway-0.log").read_text()
        assert log.count("Redis unavailable") == 1, log
        assert log.count("Redis is back") == 1, log[-3000:]
