"""Many concurrent misses of one key make one database query, counted at PostgreSQL itself.

PostgreSQL's per-table statistics (``pg_stat_user_tables``: sequential plus index
scans) are flushed by each backend when it exits, so the count is read after
the app's pool is closed and its backends are gone: then it is exact. Inserts
do not count as scans, so the only scans of the table are the item reads.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import psycopg
import pytest

from cachedapi import model
from cachedapi.dev import devstack, embedded

from .conftest import app_metric, runtime_config, serve

BOOK = {"title": "Dune", "author": "Frank Herbert"}


@pytest.fixture
def bookstore(bookstore: model.CachedApi) -> model.CachedApi:
    """The bookstore without its declared indexes: building one scans the table, which is what
    these tests count (tests/runtime/test_indexes.py is about the indexes)."""
    resources = [res.model_copy(update={"indexes": []}) for res in bookstore.spec.resources]
    return bookstore.model_copy(update={"spec": bookstore.spec.model_copy(update={"resources": resources})})


def _scans_after_backends_exit(url: str, table: str) -> int:
    """Scans of ``table`` counted by PostgreSQL, once every other session on the database has ended."""
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
            if row is not None and row[0] == 0:
                break
            time.sleep(0.05)
        else:
            raise TimeoutError("the app's database sessions did not end")
        row = conn.execute(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = %s",
            [table],
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_200_concurrent_misses_make_one_database_query(
    bookstore: model.CachedApi, database_url: str, redis_url: str
) -> None:
    config = runtime_config(bookstore)
    async with serve(config, database_url=database_url, redis_url=redis_url) as (_, client):
        location = (await client.post("/v1/books", json=BOOK)).headers["location"]
    before = _scans_after_backends_exit(database_url, "r_books")
    async with serve(config, database_url=database_url, redis_url=redis_url) as (app, client):
        # Connected to Redis first: on a loaded machine the connection, made by the first of 200
        # requests sharing the event loop, could miss its 0.5 s timeout, and then all would bypass.
        for _ in range(100):
            if (await client.get("/readyz")).json()["redis"] == "ok":
                break
            await asyncio.sleep(0.1)
        responses = await asyncio.gather(*(client.get(location) for _ in range(200)))
        assert {r.status_code for r in responses} == {200}
        assert len({r.content for r in responses}) == 1
        assert app_metric(app, "cachedapi_api_db_queries_total", op="get") == 1
        coalesced = app_metric(app, "cachedapi_api_stampede_coalesced_total")
        hits = app_metric(app, "cachedapi_api_cache_total", result="hit")  # lookups after the fill
        assert coalesced + hits == 199
    assert _scans_after_backends_exit(database_url, "r_books") - before == 1


async def test_concurrent_misses_across_two_api_processes_make_one_database_query(
    bookstore: model.CachedApi, fresh_postgres: embedded.PostgresServer, fresh_redis: embedded.RedisServer
) -> None:
    stack = devstack.Stack(bookstore, api_instances=2, gateway_instances=0, postgres=fresh_postgres, redis=fresh_redis)
    with stack:
        urls = [role.url for role in stack.apis]
        limits = httpx.Limits(max_connections=400)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            created = await client.post(f"{urls[0]}/v1/books", json=BOOK)
            path = created.headers["location"]
            for role in stack.apis:  # end their database sessions, so that PostgreSQL's counts are flushed
                role.stop()
            before = _scans_after_backends_exit(fresh_postgres.url, "r_books")
            for role in stack.apis:
                role.start()
            responses = await asyncio.gather(*(client.get(f"{urls[i % 2]}{path}") for i in range(200)))
            assert {r.status_code for r in responses} == {200}, stack.logs()
    assert _scans_after_backends_exit(fresh_postgres.url, "r_books") - before == 1
