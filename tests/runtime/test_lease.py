"""The fill lease is kept while its holder reads the database, and lapses when the holder dies.

A database read slower than the lease must not send the readers waiting on it (in other
processes, or other ``Reader``/``CacheStore`` instances, which share nothing but Redis) to
the database: the holder re-arms its lease while it reads. A holder that is cancelled
releases its lease at once; one that is killed stops re-arming it, and a waiting reader
takes over within one lease time. Real Redis and PostgreSQL throughout: the slow reads are
``pg_sleep`` in a loader, or a table locked so that the api role's own query waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson
import psycopg
import redis.asyncio as aioredis

from cachedapi import contract, model
from cachedapi.dev import devstack, embedded
from cachedapi.runtime.api import cache, reads
from cachedapi.runtime.api import db as db_mod
from cachedapi.runtime.api import metrics as metrics_mod

from .conftest import metric, runtime_config
from .test_stampede import _scans_after_backends_exit

BOOK = {"title": "Dune", "author": "Frank Herbert"}
#: The lease of the in-process instances: short, so that a read of a few leases is quick.
LEASE_MS = 300


@contextlib.asynccontextmanager
async def instance(config: contract.RuntimeConfig, redis_url: str) -> AsyncIterator[reads.Reader]:
    """What one api process has for reading: a Reader over a CacheStore on a connection of its own."""
    metrics = metrics_mod.Metrics()
    store = cache.CacheStore(redis=cache.connection(redis_url), config=config, metrics=metrics, lease_ms=LEASE_MS)
    reader = reads.Reader(store=store, config=config, metrics=metrics)
    try:
        yield reader
    finally:
        await reader.close()
        await store.close()


def _keepers() -> list[asyncio.Task[Any]]:
    """The lease keepers still running in this event loop."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "") == "CacheStore._keep"
    ]


async def _until(check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


class Leases:
    """A direct look at one entry's lease in Redis."""

    def __init__(self, redis_url: str, entry_key: str) -> None:
        self.redis = aioredis.Redis.from_url(redis_url)
        self.key = contract.lease_key(entry_key)

    async def held(self) -> bool:
        return bool(await self.redis.exists(self.key))

    async def free(self) -> bool:
        return not await self.held()


async def test_a_database_read_slower_than_the_lease_is_made_once_across_instances(
    bookstore: model.CachedApi, database_url: str, redis_url: str
) -> None:
    config = runtime_config(bookstore)
    target = cache.item_target(config.key_prefix, "books", "slow")
    leases = Leases(redis_url, target.key_head)
    reads_made: list[float] = []

    async def load() -> reads.Loaded:
        reads_made.append(time.monotonic())
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT pg_sleep(%s), %s::jsonb", [4 * LEASE_MS / 1000, orjson.dumps(BOOK).decode()]
            )
            row = await cur.fetchone()
        assert row is not None
        return reads.Loaded(200, orjson.dumps(row[1]), '"v1"')

    async with instance(config, redis_url) as a, instance(config, redis_url) as b, instance(config, redis_url) as c:
        holder = asyncio.ensure_future(a.read(target=target, load=load, force=False))
        await _until(leases.held)
        followers = [asyncio.ensure_future(r.read(target=target, load=load, force=False)) for r in (b, c) * 10]
        await asyncio.sleep(2 * LEASE_MS / 1000)
        assert await leases.held(), "the lease lapsed while its holder was still reading"
        assert not any(f.done() for f in followers)
        answers = await asyncio.wait_for(asyncio.gather(holder, *followers), timeout=30)
        assert _keepers() == []
    assert len(reads_made) == 1
    assert len({(x.status, x.body, x.x_cache) for x in answers}) == 1
    assert (answers[0].status, orjson.loads(answers[0].body), answers[0].x_cache) == (200, BOOK, "MISS")
    assert await leases.free()  # released by the fill
    await leases.redis.aclose()


async def test_a_cancelled_holder_releases_its_lease_and_a_waiting_reader_reads_at_once(
    bookstore: model.CachedApi, redis_url: str
) -> None:
    config = runtime_config(bookstore)
    target = cache.item_target(config.key_prefix, "books", "cancelled")
    leases = Leases(redis_url, target.key_head)
    never = asyncio.Event()
    follower_reads: list[float] = []

    async def stuck() -> reads.Loaded:
        await never.wait()
        raise AssertionError("unreachable")

    async def load() -> reads.Loaded:
        follower_reads.append(time.monotonic())
        return reads.Loaded(200, b'{"id":"cancelled"}', '"v1"')

    async with instance(config, redis_url) as a, instance(config, redis_url) as b:
        holder = asyncio.ensure_future(a.read(target=target, load=stuck, force=False))
        await _until(leases.held)
        follower = asyncio.ensure_future(b.read(target=target, load=load, force=False))
        await asyncio.sleep(3 * LEASE_MS / 1000)
        assert await leases.held() and not follower.done() and follower_reads == []
        assert len(_keepers()) == 1
        flights = list(a._flights.values())  # the holder's database read, as a shutdown would cancel it
        for flight in flights:
            flight.cancel()
        cancelled = time.monotonic()
        answer = await asyncio.wait_for(follower, timeout=LEASE_MS / 1000)
        assert follower_reads and follower_reads[0] - cancelled < LEASE_MS / 1000
        assert answer.status == 200 and answer.body == b'{"id":"cancelled"}'
        await asyncio.gather(holder, return_exceptions=True)
        assert holder.cancelled()
        assert _keepers() == []
    await leases.redis.aclose()


async def test_a_failed_read_stops_keeping_its_lease(bookstore: model.CachedApi, redis_url: str) -> None:
    config = runtime_config(bookstore)
    target = cache.item_target(config.key_prefix, "books", "failed")
    leases = Leases(redis_url, target.key_head)

    async def failing() -> reads.Loaded:
        await asyncio.sleep(2 * LEASE_MS / 1000)
        assert await leases.held()
        raise db_mod.DatabaseUnavailable("gone")

    async with instance(config, redis_url) as a:
        try:
            await a.read(target=target, load=failing, force=False)
        except db_mod.DatabaseUnavailable:
            pass
        else:
            raise AssertionError("the failure was not raised")
        assert _keepers() == []
        assert await leases.free()
        await asyncio.sleep(LEASE_MS / 1000)
        assert await leases.free()  # and nothing re-armed it
    await leases.redis.aclose()


def _api_stack(
    api: model.CachedApi, *, instances: int, database_url: str, redis: embedded.RedisServer, postgres: Any
) -> devstack.Stack:
    return devstack.Stack(
        api,
        api_instances=instances,
        gateway_instances=0,
        postgres=postgres,
        redis=redis,
        extra_env={contract.ENV_DATABASE_URL: database_url},
    )


@contextlib.asynccontextmanager
async def locked_books(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """``r_books`` locked against every read until the block ends: the api role's queries wait."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute("LOCK TABLE r_books IN ACCESS EXCLUSIVE MODE")
        try:
            yield conn
        finally:
            await conn.rollback()


async def test_a_read_slower_than_the_lease_is_one_query_across_two_api_processes(
    bookstore: model.CachedApi,
    database_url: str,
    redis_url: str,
    redis_server: embedded.RedisServer,
    postgres_server: embedded.PostgresServer,
) -> None:
    stack = _api_stack(bookstore, instances=2, database_url=database_url, redis=redis_server, postgres=postgres_server)
    lease_s = cache.LEASE_MS / 1000  # the api role's lease
    with stack:
        urls = [role.url for role in stack.apis]
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as client:
            path = (await client.post(f"{urls[0]}/v1/books", json=BOOK)).headers["location"]
            for role in stack.apis:  # end their database sessions, so that PostgreSQL's counts are flushed
                role.stop()
            before = _scans_after_backends_exit(database_url, "r_books")
            for role in stack.apis:
                role.start()
                assert (await client.get(f"{role.url}/readyz")).status_code == 200
            leases = Leases(
                redis_url, contract.item_key(runtime_config(bookstore).key_prefix, "books", path.split("/")[-1])
            )
            async with locked_books(database_url):
                pending = [asyncio.ensure_future(client.get(f"{urls[i % 2]}{path}")) for i in range(100)]
                await _until(leases.held)
                await asyncio.sleep(2.5 * lease_s)  # the holder's query waits on the lock well past its lease
                assert await leases.held() and not any(p.done() for p in pending), stack.logs()
            responses = await asyncio.gather(*pending)
            await leases.redis.aclose()
            assert {r.status_code for r in responses} == {200}, stack.logs()
            assert len({r.content for r in responses}) == 1
            texts = [(await client.get(f"{url}/metrics")).text for url in urls]
            queries = sum(metric(text, "cachedapi_api_db_queries_total", op="get") for text in texts)
            assert queries == 1, stack.logs()
        for role in stack.apis:
            role.stop()
        assert _scans_after_backends_exit(database_url, "r_books") - before == 1


async def test_a_killed_holder_lets_a_waiting_reader_take_over_within_one_lease(
    bookstore: model.CachedApi,
    database_url: str,
    redis_url: str,
    redis_server: embedded.RedisServer,
    postgres_server: embedded.PostgresServer,
) -> None:
    config = runtime_config(bookstore)
    lease_s = cache.LEASE_MS / 1000  # the api role's lease
    target = cache.item_target(config.key_prefix, "books", "dune")
    leases = Leases(redis_url, target.key_head)
    stack = _api_stack(bookstore, instances=1, database_url=database_url, redis=redis_server, postgres=postgres_server)
    follower_reads: list[float] = []

    async def load() -> reads.Loaded:
        follower_reads.append(time.monotonic())
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            row = await (await conn.execute("SELECT data FROM r_books WHERE id = 'dune'")).fetchone()
        assert row is not None
        return reads.Loaded(200, orjson.dumps({"id": "dune", **row[0]}), '"v1"')

    with stack:
        role = stack.apis[0]
        async with httpx.AsyncClient(base_url=role.url, timeout=60) as client, instance(config, redis_url) as reader:
            assert (await client.put("/v1/books/dune", json=BOOK)).status_code == 201
            async with locked_books(database_url):
                holder = asyncio.ensure_future(client.get("/v1/books/dune"))  # the api process takes the lease
                await _until(leases.held)
                follower = asyncio.ensure_future(reader.read(target=target, load=load, force=False))
                await asyncio.sleep(1.5 * lease_s)
                assert await leases.held() and not follower.done() and follower_reads == [], stack.logs()
                await asyncio.to_thread(role.kill)
                killed = time.monotonic()
            answer = await asyncio.wait_for(follower, timeout=lease_s + 5)
            took = time.monotonic() - killed
            assert len(follower_reads) == 1
            assert took <= lease_s + 1.0, f"took over {took:.2f} s after the holder died"
            assert answer.status == 200 and orjson.loads(answer.body)["title"] == "Dune"
            assert isinstance((await asyncio.gather(holder, return_exceptions=True))[0], httpx.HTTPError)
    await leases.redis.aclose()
