"""The peer: FastAPI + fastapi-cache2, serving the same item from the same Redis and PostgreSQL.

What a FastAPI user would write to cache a read: the ``@cache`` decorator over
an endpoint that reads the row from PostgreSQL. It has no authentication and
no rate limit, which favours it: the gateway does both on every request.
A PUT replaces the row and then deletes the item's cache key (fastapi-cache2
has no invalidation of its own), for the read/write mix.
Run as ``python -m bench.peers.fastapi_cache2_peer PORT DATABASE_URL REDIS_URL``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi_cache import FastAPICache
from fastapi_cache.backends.redis import RedisBackend
from fastapi_cache.decorator import cache
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from redis import asyncio as aioredis

PREFIX = "bench-fastapi-cache"
NAMESPACE = "books"


def item_key(
    func: Any,
    namespace: str = "",
    *,
    request: Request | None = None,
    response: Response | None = None,
    args: Any = (),
    kwargs: dict[str, Any] | None = None,
) -> str:
    """One key per item (instead of a hash of the call), so that a PUT can delete it."""
    return f"{namespace}:{(kwargs or {})['item_id']}"


def build(database_url: str, redis_url: str) -> FastAPI:
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=10, open=False, kwargs={"autocommit": True})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.open()
        FastAPICache.init(RedisBackend(aioredis.from_url(redis_url)), prefix=PREFIX)
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/v1/books/{item_id}")
    @cache(expire=86_400, namespace=NAMESPACE, key_builder=item_key)
    async def get_book(item_id: str) -> dict[str, Any]:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT id, data FROM r_books WHERE id = %s", [item_id])
            row = await cur.fetchone()
        if row is None:
            raise HTTPException(404, f"no books item with id {item_id!r}")
        return {"id": row[0], **row[1]}

    @app.put("/v1/books/{item_id}")
    async def put_book(item_id: str, body: dict[str, Any]) -> dict[str, Any]:
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE r_books SET data = %s, version = nextval('cachedapi_version') WHERE id = %s",
                [Jsonb(body), item_id],
            )
        await FastAPICache.get_backend().clear(key=f"{PREFIX}:{NAMESPACE}:{item_id}")
        return {"id": item_id, **body}

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app


if __name__ == "__main__":
    port, database_url, redis_url = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    uvicorn.run(
        build(database_url, redis_url),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
