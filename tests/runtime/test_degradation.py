"""Redis or PostgreSQL gone: what still works, what fails fast, and that service comes back.

Each test has servers of its own (``fresh_redis`` / ``fresh_postgres``) that it
kills and restarts; waits are bounded loops against hangs, never timed assertions.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable

import httpx
import psycopg
from fastapi import FastAPI

from cachedapi import model
from cachedapi.dev import embedded

from .conftest import app_metric, runtime_config, serve

BOOK = {"title": "Dune", "author": "Frank Herbert"}


async def _eventually(check: Callable[[], Awaitable[bool]], *, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


async def test_redis_down_requests_go_to_the_database_and_caching_resumes(
    bookstore: model.CachedApi, database_url: str, fresh_redis: embedded.RedisServer
) -> None:
    async with serve(runtime_config(bookstore), database_url=database_url, redis_url=fresh_redis.url) as (
        app,
        client,
    ):
        await client.put("/v1/books/dune", json=BOOK)
        await client.get("/v1/books/dune")
        assert (await client.get("/v1/books/dune")).headers["x-cache"] == "HIT"

        fresh_redis.kill()
        read = await client.get("/v1/books/dune")
        assert read.status_code == 200 and read.headers["x-cache"] == "BYPASS"
        assert (await client.patch("/v1/books/dune", json={"year": 1965})).status_code == 200
        assert (await client.get("/v1/books/dune")).json()["year"] == 1965
        assert (await client.post("/v1/books", json=BOOK)).status_code == 201
        assert len((await client.get("/v1/books")).json()["items"]) == 2
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["redis"].startswith("unreachable")
        assert app_metric(app, "cachedapi_api_redis_errors_total") >= 1

        fresh_redis.start()

        async def hit() -> bool:
            resp = await client.get("/v1/books/dune")
            return resp.headers["x-cache"] == "HIT" and resp.json()["year"] == 1965

        await _eventually(hit)
        assert app_metric(app, "cachedapi_api_invalidations_pending") == 0


async def test_a_write_while_redis_is_unreachable_is_not_hidden_by_the_entry_it_still_holds(
    bookstore: model.CachedApi, database_url: str, fresh_redis: embedded.RedisServer
) -> None:
    """Redis frozen (SIGSTOP), not restarted: its old entry survives, and the queued invalidation must win."""
    async with serve(runtime_config(bookstore), database_url=database_url, redis_url=fresh_redis.url) as (
        app,
        client,
    ):
        await client.put("/v1/books/dune", json=BOOK)
        await client.get("/v1/books/dune")
        assert fresh_redis.pid is not None
        os.kill(fresh_redis.pid, signal.SIGSTOP)
        try:
            written = await client.patch("/v1/books/dune", json={"year": 1965})
            assert written.status_code == 200
            assert app_metric(app, "cachedapi_api_invalidations_pending") == 1
        finally:
            os.kill(fresh_redis.pid, signal.SIGCONT)
        for _ in range(5):
            assert (await client.get("/v1/books/dune")).json()["year"] == 1965

        async def flushed() -> bool:
            return app_metric(app, "cachedapi_api_invalidations_pending") == 0

        await _eventually(flushed)


async def test_postgres_down_serves_stale_reads_and_fails_writes_fast(
    bookstore: model.CachedApi, fresh_postgres: embedded.PostgresServer, redis_url: str
) -> None:
    config = runtime_config(bookstore, ttl=1, stale_if_error=3)
    async with serve(config, database_url=fresh_postgres.url, redis_url=redis_url) as (_, client):
        await client.put("/v1/books/dune", json=BOOK)
        await client.put("/v1/books/uncached", json=BOOK)
        cached = await client.get("/v1/books/dune")
        cached_list = await client.get("/v1/books")

        fresh_postgres.kill()

        async def stale() -> bool:
            return (await client.get("/v1/books/dune")).headers["x-cache"] == "STALE"

        await _eventually(stale)
        resp = await client.get("/v1/books/dune")
        assert resp.status_code == 200 and resp.content == cached.content
        assert resp.headers["etag"] == cached.headers["etag"]
        assert int(resp.headers["age"]) >= 1
        listed = await client.get("/v1/books")
        assert listed.headers["x-cache"] == "STALE" and listed.content == cached_list.content

        started = time.monotonic()
        write = await client.put("/v1/books/dune", json={**BOOK, "year": 1})
        assert time.monotonic() - started < 10  # a bound against hangs: the pool waits ~1.5 s
        assert write.status_code == 503
        assert write.headers["content-type"] == "application/problem+json"
        assert "retry-after" in write.headers
        assert (await client.get("/v1/books/uncached")).status_code == 503
        assert (await client.get("/readyz")).status_code == 503

        async def too_old() -> bool:
            return (await client.get("/v1/books/dune")).status_code == 503

        await _eventually(too_old)  # past ttl + staleIfErrorSeconds: no more stale answers

        fresh_postgres.start()

        async def writable() -> bool:
            return (await client.put("/v1/books/dune", json={**BOOK, "year": 2})).status_code == 200

        await _eventually(writable)
        resp = await client.get("/v1/books/dune")
        # HIT when the write's answer replaced the older entry (kept for the stale windows), MISS if
        # that entry had expired meanwhile
        assert resp.json()["year"] == 2 and resp.headers["x-cache"] in ("HIT", "MISS")
        assert (await client.get("/readyz")).status_code == 200


async def test_the_app_starts_with_both_servers_down_and_recovers(
    bookstore: model.CachedApi, fresh_postgres: embedded.PostgresServer, fresh_redis: embedded.RedisServer
) -> None:
    fresh_postgres.stop()
    fresh_redis.stop()
    async with serve(runtime_config(bookstore), database_url=fresh_postgres.url, redis_url=fresh_redis.url) as (
        _,
        client,
    ):
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["database"] == "unreachable" and ready.json()["redis"].startswith("unreachable")
        assert (await client.post("/v1/books", json=BOOK)).status_code == 503

        fresh_postgres.start()
        fresh_redis.start()

        async def ready_now() -> bool:
            resp = await client.get("/readyz")
            return resp.status_code == 200 and resp.json()["redis"] == "ok"

        await _eventually(ready_now)
        location = (await client.post("/v1/books", json=BOOK)).headers["location"]
        await client.get(location)
        assert (await client.get(location)).headers["x-cache"] == "HIT"


async def test_the_first_requests_after_a_postgres_restart_succeed(
    bookstore: model.CachedApi, fresh_postgres: embedded.PostgresServer, redis_url: str
) -> None:
    """Pooled connections die with the server; reads and writes must not fail on them once it is back."""
    async with serve(runtime_config(bookstore), database_url=fresh_postgres.url, redis_url=redis_url) as (_, client):
        await client.put("/v1/orders/o", json={"bookId": "b", "quantity": 1})
        await asyncio.gather(*(client.get("/v1/orders/o") for _ in range(20)))  # several pooled connections
        fresh_postgres.stop()
        fresh_postgres.start()
        assert (await client.get("/v1/orders/o")).status_code == 200
        await asyncio.gather(*(client.get("/v1/orders/o") for _ in range(20)))
        fresh_postgres.stop()
        fresh_postgres.start()
        resp = await client.put("/v1/orders/o", json={"bookId": "b", "quantity": 2})
        assert resp.status_code == 200, resp.text
        assert (await client.get("/v1/orders/o")).json()["quantity"] == 2


async def test_a_write_whose_commit_outcome_is_unknown_still_invalidates(
    api: tuple[FastAPI, httpx.AsyncClient], database_url: str
) -> None:
    """The connection dies while COMMIT is in flight: 503, and no cache entry may hide what PostgreSQL holds."""
    _, client = api
    await client.put("/v1/books/dune", json=BOOK)
    await client.get("/v1/books/dune")
    assert (await client.get("/v1/books/dune")).headers["x-cache"] == "HIT"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE CONSTRAINT TRIGGER die_at_commit AFTER UPDATE ON r_books "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION die()"
        )
    resp = await client.patch("/v1/books/dune", json={"year": 1965})
    assert resp.status_code == 503
    assert resp.headers["content-type"] == "application/problem+json"
    read = await client.get("/v1/books/dune")
    assert read.status_code == 200 and read.headers["x-cache"] == "MISS"  # the entry was invalidated
