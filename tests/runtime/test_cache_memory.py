"""Redis memory per cached item, the README's figure: <= 1.5x its body bytes + 200 bytes.

Counted by Redis itself (``MEMORY USAGE``) over every key a cached item costs:
its entry and its generation token, for an item of the 280-byte size the benchmark
uses. The fixed cost (entry header, key names, the token key) is
about 210 bytes, so items much smaller than that miss the figure (a 102-byte
body costs 362 bytes); the README says so.
"""

from __future__ import annotations

import httpx
import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI

from cachedapi import contract, model
from cachedapi.operator.children import config as x_config


async def test_a_cached_item_costs_redis_at_most_one_and_a_half_its_body_plus_200_bytes(
    bookstore: model.CachedApi, api: tuple[FastAPI, httpx.AsyncClient], redis_url: str
) -> None:
    _, client = api
    book: dict[str, object] = {"title": "Dune", "author": "Frank Herbert", "year": 1965, "price": 9.99}
    book["author"] = "Frank Herbert" + "." * (280 - len(orjson.dumps({"id": "dune", **book})))
    assert (await client.put("/v1/books/dune", json=book)).status_code == 201
    first = await client.get("/v1/books/dune")
    assert (await client.get("/v1/books/dune")).headers["x-cache"] == "HIT"
    prefix = x_config.key_prefix(bookstore)
    r = aioredis.Redis.from_url(redis_url)
    try:
        keys = [contract.item_key(prefix, "books", "dune"), contract.item_gen_key(prefix, "books", "dune")]
        used = [await r.memory_usage(key, samples=0) for key in keys]
    finally:
        await r.aclose()
    assert all(u is not None for u in used), f"the cached item's keys are missing: {keys}"
    body = len(first.content)
    assert body == 280
    total = sum(u for u in used if u is not None)
    assert total <= 1.5 * body + 200, f"{total} bytes in Redis for a {body}-byte body"
