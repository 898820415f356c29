"""The cache as a client sees it: hits, misses, invalidation by writes, bypass, forced refresh."""

from __future__ import annotations

import asyncio

import httpx
import psycopg
import redis.asyncio as aioredis
from fastapi import FastAPI

from cachedapi import contract, model

from .conftest import metric, runtime_config, serve

BOOK = {"title": "Dune", "author": "Frank Herbert"}


async def test_second_read_is_a_hit_counted_in_metrics(api: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = api
    location = (await client.post("/v1/books", json=BOOK)).headers["location"]
    first = await client.get(location)
    second = await client.get(location)
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert second.content == first.content
    assert second.headers["etag"] == first.headers["etag"]
    assert second.headers["cache-control"].startswith("private, max-age=")
    assert int(second.headers["age"]) >= 0
    text = (await client.get("/metrics")).text
    assert metric(text, "cachedapi_api_cache_total", result="hit") == 1
    assert metric(text, "cachedapi_api_cache_total", result="miss") == 1


async def test_the_entry_in_redis_is_the_response_bytes_in_the_contract_format(
    bookstore: model.CachedApi, database_url: str, redis_url: str
) -> None:
    config = runtime_config(bookstore)
    async with serve(config, database_url=database_url, redis_url=redis_url) as (_, client):
        await client.put("/v1/books/dune", json=BOOK)
        resp = await client.get("/v1/books/dune")
    r = aioredis.Redis.from_url(redis_url)
    raw = await r.get(contract.item_key(config.key_prefix, "books", "dune"))
    await r.aclose()
    entry = contract.decode_entry(raw)
    assert entry is not None
    assert entry.body == resp.content
    assert (entry.status, entry.etag, entry.content_type) == (200, resp.headers["etag"], "application/json")
    assert entry.ttl_seconds == config.resources["books"].ttl_seconds


async def test_a_write_is_visible_on_the_very_next_read(client: httpx.AsyncClient) -> None:
    await client.put("/v1/books/dune", json=BOOK)
    for year in range(1960, 1970):
        assert (await client.get("/v1/books/dune")).json().get("year") == (year - 1 if year > 1960 else None)
        await client.get("/v1/books/dune")  # a hit, so the next write must evict it
        await client.patch("/v1/books/dune", json={"year": year})
    assert (await client.get("/v1/books/dune")).json()["year"] == 1969
    await client.delete("/v1/books/dune")
    assert (await client.get("/v1/books/dune")).status_code == 404


async def test_writes_invalidate_cached_list_pages(client: httpx.AsyncClient) -> None:
    await client.put("/v1/books/a", json=BOOK)
    assert [i["id"] for i in (await client.get("/v1/books")).json()["items"]] == ["a"]
    assert (await client.get("/v1/books")).headers["x-cache"] == "HIT"

    created = (await client.post("/v1/books", json=BOOK)).json()["id"]
    page = await client.get("/v1/books")
    assert page.headers["x-cache"] == "MISS"
    assert [i["id"] for i in page.json()["items"]] == ["a", created]

    await client.patch("/v1/books/a", json={"title": "changed"})
    assert (await client.get("/v1/books")).json()["items"][0]["title"] == "changed"

    await client.delete(f"/v1/books/{created}")
    assert [i["id"] for i in (await client.get("/v1/books")).json()["items"]] == ["a"]


async def test_list_queries_share_an_entry_whatever_the_parameter_order(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await client.put(f"/v1/books/b{i}", json=BOOK)
    cursor = (await client.get("/v1/books?limit=1")).json()["nextCursor"]
    assert (await client.get(f"/v1/books?limit=1&cursor={cursor}")).headers["x-cache"] == "MISS"
    assert (await client.get(f"/v1/books?cursor={cursor}&limit=1")).headers["x-cache"] == "HIT"


async def test_a_resource_with_ttl_zero_is_never_cached(api: tuple[FastAPI, httpx.AsyncClient], redis_url: str) -> None:
    _, client = api
    location = (await client.post("/v1/orders", json={"bookId": "x", "quantity": 1})).headers["location"]
    for _ in range(2):
        resp = await client.get(location)
        assert resp.headers["x-cache"] == "BYPASS"
        assert resp.headers["cache-control"] == "no-store"
    assert (await client.get("/v1/orders")).headers["x-cache"] == "BYPASS"
    r = aioredis.Redis.from_url(redis_url)
    keys = [k async for k in r.scan_iter(match="*:orders:[il]:*")]
    await r.aclose()
    assert keys == []


async def test_not_found_is_not_cached(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/books/later")).status_code == 404
    await client.put("/v1/books/later", json=BOOK)
    assert (await client.get("/v1/books/later")).status_code == 200


async def test_revalidate_header_and_no_cache_read_the_database_and_refill(
    client: httpx.AsyncClient, database_url: str
) -> None:
    await client.put("/v1/books/dune", json=BOOK)
    await client.get("/v1/books/dune")
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("""UPDATE r_books SET data = data || '{"year": 1}' WHERE id = 'dune'""")
    assert "year" not in (await client.get("/v1/books/dune")).json()  # behind the cache's back: still cached
    forced = await client.get("/v1/books/dune", headers={contract.REVALIDATE_HEADER: "1"})
    assert forced.json()["year"] == 1 and forced.headers["x-cache"] == "MISS"
    assert (await client.get("/v1/books/dune")).json()["year"] == 1  # refilled
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("""UPDATE r_books SET data = data || '{"year": 2}' WHERE id = 'dune'""")
    forced = await client.get("/v1/books/dune", headers={"cache-control": "no-cache"})
    assert forced.json()["year"] == 2


async def test_an_entry_older_than_its_ttl_is_read_again(
    bookstore: model.CachedApi, database_url: str, redis_url: str
) -> None:
    config = runtime_config(bookstore, ttl=2)
    async with serve(config, database_url=database_url, redis_url=redis_url) as (_, client):
        await client.put("/v1/books/dune", json=BOOK)
        assert (await client.get("/v1/books/dune")).headers["x-cache"] == "MISS"
        assert (await client.get("/v1/books/dune")).headers["x-cache"] == "HIT"
        for _ in range(200):  # until the entry is stale (two seconds): a bound, not a timing assertion
            await asyncio.sleep(0.1)
            resp = await client.get("/v1/books/dune")
            if resp.headers["x-cache"] == "MISS":
                break
        assert resp.headers["x-cache"] == "MISS"
        assert (await client.get("/v1/books/dune")).headers["x-cache"] == "HIT"


async def test_a_list_page_answers_304_to_its_etag(client: httpx.AsyncClient) -> None:
    await client.put("/v1/books/a", json=BOOK)
    etag = (await client.get("/v1/books")).headers["etag"]
    resp = await client.get("/v1/books", headers={"if-none-match": etag})
    assert resp.status_code == 304 and resp.headers["x-cache"] == "HIT"
    await client.put("/v1/books/b", json=BOOK)
    assert (await client.get("/v1/books", headers={"if-none-match": etag})).status_code == 200


async def test_metrics_count_requests_database_queries_and_cache_outcomes(
    api: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = api
    await client.put("/v1/books/a", json=BOOK)
    await client.get("/v1/books/a")
    await client.get("/v1/books/a")
    await client.get("/v1/orders/none")
    text = (await client.get("/metrics")).text
    requests = "cachedapi_api_requests_total"
    assert metric(text, requests, route="/v1/{resource}/{id}", method="GET", status="200") == 2
    assert metric(text, requests, route="/v1/{resource}/{id}", method="PUT", status="201") == 1
    assert metric(text, requests, route="/v1/{resource}/{id}", method="GET", status="404") == 1
    assert metric(text, "cachedapi_api_request_duration_seconds_count", route="/v1/{resource}/{id}") == 4
    assert metric(text, "cachedapi_api_db_queries_total", op="get") == 2  # the miss and the ttl-0 read
    assert metric(text, "cachedapi_api_db_query_duration_seconds_count", op="get") == 2
    assert metric(text, "cachedapi_api_cache_total", result="bypass") == 1
    assert metric(text, "cachedapi_api_cache_fills_total", result="stored") == 1
    assert metric(text, "cachedapi_api_redis_errors_total") == 0
