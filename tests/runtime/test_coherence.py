"""After a write is acknowledged, no read returns the older value: the stale-fill race included.

The race is forced step by step on the real cache store, PostgreSQL and Redis:
a reader misses (learning the generation token), reads the old row, a writer
commits and invalidates, then the reader tries to fill. Then many writers and
readers run at once on two api instances sharing the servers.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from cachedapi import contract, listquery, model
from cachedapi.runtime.api import cache, documents, reads
from cachedapi.runtime.api import db as db_mod

from .conftest import runtime_config, serve

OLD = {"title": "old", "author": "A"}
NEW = {"title": "new", "author": "A"}


def _entry(body: bytes, etag: str) -> bytes:
    return contract.encode_entry(
        stored_at_ms=reads.now_ms(), ttl_seconds=300, status=200, etag=etag, content_type="application/json", body=body
    )


async def test_a_fill_that_read_before_a_write_is_rejected(
    bookstore: model.CachedApi, database_url: str, redis_url: str
) -> None:
    async with serve(runtime_config(bookstore), database_url=database_url, redis_url=redis_url) as (app, client):
        store: cache.CacheStore = app.state.store
        database: db_mod.Database = app.state.database
        await client.put("/v1/books/dune", json=OLD)

        lookup = await store.lookup(store.item_target("books", "dune"), now_ms=reads.now_ms(), force=False)
        assert lookup.entry is None and lookup.leased
        old = await database.get("books", "dune")
        assert old is not None and old.data == OLD

        written = await client.put("/v1/books/dune", json=NEW)
        assert written.status_code == 200

        stale = _entry(documents.encode_item("dune", old.data), documents.etag(old.version))
        assert await store.fill(lookup, entry=stale, expiry_seconds=600) is False
        read = await client.get("/v1/books/dune")
        assert read.json()["title"] == "new"
        assert read.headers["etag"] == written.headers["etag"]


async def test_a_fill_with_no_write_in_between_is_stored(
    bookstore: model.CachedApi, database_url: str, redis_url: str
) -> None:
    async with serve(runtime_config(bookstore), database_url=database_url, redis_url=redis_url) as (app, client):
        store: cache.CacheStore = app.state.store
        database: db_mod.Database = app.state.database
        await client.put("/v1/books/dune", json=OLD)
        lookup = await store.lookup(store.item_target("books", "dune"), now_ms=reads.now_ms(), force=False)
        row = await database.get("books", "dune")
        assert row is not None
        entry = _entry(documents.encode_item("dune", row.data), documents.etag(row.version))
        assert await store.fill(lookup, entry=entry, expiry_seconds=600) is True
        assert (await client.get("/v1/books/dune")).headers["x-cache"] == "HIT"


async def test_a_write_stores_its_answer_over_an_older_entry_and_the_next_read_is_a_hit(
    bookstore: model.CachedApi, database_url: str, redis_url: str
) -> None:
    async with serve(runtime_config(bookstore), database_url=database_url, redis_url=redis_url) as (_, client):
        await client.put("/v1/books/dune", json=OLD)
        assert (await client.get("/v1/books/dune")).headers["x-cache"] == "MISS"  # created: nothing stored
        for write in (client.put("/v1/books/dune", json=NEW), client.patch("/v1/books/dune", json={"year": 1965})):
            written = await write
            read = await client.get("/v1/books/dune")
            assert read.headers["x-cache"] == "HIT"
            assert read.content == written.content and read.headers["etag"] == written.headers["etag"]
        assert read.json() == {"id": "dune", **NEW, "year": 1965}


@pytest.mark.parametrize("meanwhile", ["a later write", "a Redis restart"])
async def test_a_late_invalidation_stores_nothing_over_a_newer_entry_or_none(
    bookstore: model.CachedApi, database_url: str, redis_url: str, meanwhile: str
) -> None:
    """A write commits, but its invalidation runs late: after a later write's own (which stored the
    newer answer), or after Redis lost everything. It must store nothing, and leave no entry."""
    async with serve(runtime_config(bookstore), database_url=database_url, redis_url=redis_url) as (app, client):
        store: cache.CacheStore = app.state.store
        await client.put("/v1/books/dune", json={"title": "older", "author": "A"})
        await client.get("/v1/books/dune")  # cached
        late = await client.put("/v1/books/dune", json=OLD)  # its invalidation is replayed below, late
        if meanwhile == "a later write":
            await client.put("/v1/books/dune", json=NEW)
            assert (await client.get("/v1/books/dune")).headers["x-cache"] == "HIT"
        else:
            r = aioredis.Redis.from_url(redis_url)
            await r.flushall()  # what a restart of a Redis without persistence looks like
            await r.aclose()
        written = cache.Written(_version(late), _entry(late.content, late.headers["etag"]), 600)
        assert await store.invalidate("books", "dune", written=written) is True
        read = await client.get("/v1/books/dune")
        assert read.headers["x-cache"] == "MISS"
        assert read.json()["title"] == ("new" if meanwhile == "a later write" else "old")


@pytest.mark.parametrize("spelled", ["", "author=A&sort=-year,title&fields=title"])
async def test_a_list_page_fill_that_read_before_a_write_is_rejected(
    bookstore: model.CachedApi, database_url: str, redis_url: str, spelled: str
) -> None:
    async with serve(runtime_config(bookstore), database_url=database_url, redis_url=redis_url) as (app, client):
        store: cache.CacheStore = app.state.store
        database: db_mod.Database = app.state.database
        await client.put("/v1/books/a", json=OLD)
        query = listquery.parse(spelled, listquery.properties(bookstore.spec.resources[0].schema_))
        lookup = await store.lookup(store.list_target("books", query.key_text()), now_ms=reads.now_ms(), force=False)
        rows = await database.page("books", query, limit=contract.DEFAULT_PAGE_LIMIT)
        created = (await client.post("/v1/books", json=NEW)).json()["id"]

        body = orjson.dumps({"items": [{"id": r.id, **r.data} for r in rows], "nextCursor": None})
        assert await store.fill(lookup, entry=_entry(body, '"lold"'), expiry_seconds=600) is False
        ids = [item["id"] for item in (await client.get(f"/v1/books?{spelled}")).json()["items"]]
        assert ids == [created, "a"] if spelled else ["a", created]


def _version(resp: httpx.Response) -> int:
    return int(resp.headers["etag"].strip('"')[1:])


async def test_no_read_returns_a_version_older_than_an_acknowledged_write(
    bookstore: model.CachedApi, database_url: str, redis_url: str
) -> None:
    """One writer per key on one instance, readers on both; each read is checked against the writes acked
    before it began (items by ETag version, list pages by the value written)."""
    config = runtime_config(bookstore)
    keys = ["k0", "k1", "k2"]
    acked: dict[str, int] = {}
    acked_year = dict.fromkeys(keys, 0)
    violations: list[str] = []
    reads_done = 0
    async with (
        serve(config, database_url=database_url, redis_url=redis_url) as (_, writer_client),
        serve(config, database_url=database_url, redis_url=redis_url) as (_, other_client),
    ):
        for key in keys:
            acked[key] = _version(await writer_client.put(f"/v1/books/{key}", json=OLD))
        deadline = time.monotonic() + 2.0

        async def writer(key: str) -> None:
            year = 0
            while time.monotonic() < deadline:
                year += 1
                resp = await writer_client.patch(f"/v1/books/{key}", json={"year": year})
                assert resp.status_code == 200, resp.text
                acked[key] = _version(resp)
                acked_year[key] = year

        async def reader(client: httpx.AsyncClient, key: str) -> None:
            nonlocal reads_done
            while time.monotonic() < deadline:
                floor = acked[key]
                resp = await client.get(f"/v1/books/{key}")
                if _version(resp) < floor:
                    violations.append(f"{key}: read v{_version(resp)} after v{floor} was acknowledged")
                reads_done += 1

        async def list_reader(client: httpx.AsyncClient) -> None:
            nonlocal reads_done
            while time.monotonic() < deadline:
                floors = dict(acked_year)
                resp = await client.get("/v1/books")
                seen = {item["id"]: item.get("year", 0) for item in resp.json()["items"]}
                violations.extend(
                    f"list: {key} year {seen[key]} after year {floors[key]} was acknowledged"
                    for key in keys
                    if seen[key] < floors[key]
                )
                reads_done += 1

        tasks = [writer(key) for key in keys]
        tasks += [reader(c, key) for c in (writer_client, other_client) for key in keys for _ in range(3)]
        tasks += [list_reader(c) for c in (writer_client, other_client)]
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    assert violations == []
    assert reads_done > 20


async def test_a_fill_is_refused_when_redis_lost_the_token_meanwhile(
    bookstore: model.CachedApi, database_url: str, redis_url: str
) -> None:
    """Redis restarting empty while a reader is in PostgreSQL: the writes of the outage must win."""
    async with serve(runtime_config(bookstore), database_url=database_url, redis_url=redis_url) as (app, client):
        store: cache.CacheStore = app.state.store
        database: db_mod.Database = app.state.database
        await client.put("/v1/books/dune", json=OLD)
        lookup = await store.lookup(store.item_target("books", "dune"), now_ms=reads.now_ms(), force=False)
        old = await database.get("books", "dune")
        assert old is not None
        r = aioredis.Redis.from_url(redis_url)
        await r.flushall()  # what a restart of a Redis without persistence looks like
        await r.aclose()
        stale = _entry(documents.encode_item("dune", old.data), documents.etag(old.version))
        assert await store.fill(lookup, entry=stale, expiry_seconds=600) is False
