"""The miss-path peer: plain FastAPI + psycopg, no cache, reading the same row from the same PostgreSQL.

What the gateway's miss path (gateway -> api role -> PostgreSQL -> cache fill)
is compared with (the target: its p50 at most 2x this one's): the
read a FastAPI user writes without any cache, with a pool as large as the api
role's. A PUT replaces the item, so that it serves the read/write mix too.

``GET /v1/books?author=A&sort=-year,title&limit=20`` is the filtered list of the
list scenarios, written by hand as a FastAPI user would (nothing of cachedapi's is
imported): the same SQL shape on the same table as the api role's, each property
read as ``COALESCE(data -> 'p', 'null'::jsonb)``, so that PostgreSQL uses the same
declared index (an index on an expression serves only a query that spells the same
expression); a page of ``limit`` items and a keyset cursor to the next.
Run as ``python -m bench.peers.plain_peer PORT DATABASE_URL``.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import FastAPI, HTTPException, Query
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

#: One page of books by an author, newest first, then by title, then in insertion order.
LIST_SQL = (
    "SELECT id, seq, data FROM r_books"
    " WHERE COALESCE(data -> 'author', 'null'::jsonb) = %s::jsonb"
    " ORDER BY COALESCE(data -> 'year', 'null'::jsonb) DESC, COALESCE(data -> 'title', 'null'::jsonb), seq"
    " LIMIT %s"
)


def build(database_url: str) -> FastAPI:
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=10, open=False, kwargs={"autocommit": True})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.open()
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/v1/books/{item_id}")
    async def get_book(item_id: str) -> dict[str, Any]:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT id, data FROM r_books WHERE id = %s", [item_id])
            row = await cur.fetchone()
        if row is None:
            raise HTTPException(404, f"no books item with id {item_id!r}")
        return {"id": row[0], **row[1]}

    @app.get("/v1/books")
    async def list_books(
        author: str,
        sort: Literal["-year,title"] = "-year,title",
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> dict[str, Any]:
        async with pool.connection() as conn:
            cur = await conn.execute(LIST_SQL, [json.dumps(author), limit + 1])
            rows = await cur.fetchall()
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            _, seq, last = rows[-1]
            position = json.dumps([last.get("year"), last.get("title"), seq]).encode()
            next_cursor = base64.urlsafe_b64encode(position).decode()
        return {"items": [{"id": item_id, **data} for item_id, _, data in rows], "nextCursor": next_cursor}

    @app.put("/v1/books/{item_id}")
    async def put_book(item_id: str, body: dict[str, Any]) -> dict[str, Any]:
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE r_books SET data = %s, version = nextval('cachedapi_version') WHERE id = %s",
                [Jsonb(body), item_id],
            )
        return {"id": item_id, **body}

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app


if __name__ == "__main__":
    port, database_url = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(
        build(database_url),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
