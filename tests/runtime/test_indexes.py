"""``spec.resources[].indexes`` on real PostgreSQL: built concurrently (writes go on meanwhile),
dropped when no longer declared, and used by the list queries they are declared for (EXPLAIN)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from cachedapi import listquery, model
from cachedapi.runtime.api import listing

from .conftest import runtime_config, serve

BOOKS = f"r_books{listing.INDEX_INFIX}"


def _with_indexes(api: model.CachedApi, *indexes: list[str]) -> model.CachedApi:
    resources = [
        res.model_copy(update={"indexes": [model.IndexDef(keys=k) for k in indexes]}) if res.name == "books" else res
        for res in api.spec.resources
    ]
    return api.model_copy(update={"spec": api.spec.model_copy(update={"resources": resources})})


def _indexes(url: str) -> dict[str, bool]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(listing.LIST_INDEXES, ["r_books", BOOKS]).fetchall()
    return {name: valid for name, valid in rows}


async def _until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _names(*indexes: list[str]) -> set[str]:
    return {listing.index_name("books", keys) for keys in indexes}


async def test_declared_indexes_are_built_and_undeclared_ones_dropped_on_a_spec_change(
    bookstore: model.CachedApi, database_url: str, redis_url: str
) -> None:
    first = (["author"], ["-year", "title"])
    async with serve(runtime_config(_with_indexes(bookstore, *first)), database_url=database_url, redis_url=redis_url):
        await _until(lambda: set(_indexes(database_url)) == _names(*first), "the first indexes")
    second = (["author"], ["price"])
    async with serve(runtime_config(_with_indexes(bookstore, *second)), database_url=database_url, redis_url=redis_url):
        await _until(lambda: set(_indexes(database_url)) == _names(*second), "the second indexes")
        assert all(_indexes(database_url).values())
    with psycopg.connect(database_url, autocommit=True) as conn:  # the table's own indexes are left alone
        names = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'r_books'")}
    assert {"r_books_pkey", "r_books_seq"} <= names


async def test_an_index_builds_without_blocking_writes(
    bookstore: model.CachedApi, database_url: str, redis_url: str
) -> None:
    """A concurrent build waits for older transactions; a plain CREATE INDEX would not, and would hold
    writes off for its whole build. So while an old snapshot is open the build must still be waiting,
    and a write through the API must go through meanwhile."""
    plain = runtime_config(_with_indexes(bookstore))
    async with serve(plain, database_url=database_url, redis_url=redis_url) as (_, client):
        assert (await client.post("/v1/books", json={"title": "t", "author": "a"})).status_code == 201
    with psycopg.connect(database_url) as old:
        old.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        old.execute("SELECT count(*) FROM r_books").fetchone()  # holds a snapshot and a lock on the table
        indexed = _with_indexes(bookstore, ["author"])
        async with serve(runtime_config(indexed), database_url=database_url, redis_url=redis_url) as (_, client):
            await _until(lambda: bool(_indexes(database_url)), "the build to start")
            resp = await client.post("/v1/books", json={"title": "during", "author": "b"})
            assert resp.status_code == 201
            assert _indexes(database_url) == {listing.index_name("books", ["author"]): False}, "not waiting"
            old.rollback()
            await _until(lambda: all(_indexes(database_url).values()), "the build to finish")


@pytest.fixture(scope="module")
def big_books(postgres_server: Any) -> Iterator[str]:
    """A database whose books table holds 50,000 rows (made in SQL), with the bookstore's indexes."""
    name = "t_explain_books"
    admin = postgres_server.url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _prepare(bookstore: model.CachedApi, url: str, redis_url: str) -> None:
    indexes = [ix.keys for ix in bookstore.spec.resources[0].indexes]
    async with serve(runtime_config(bookstore), database_url=url, redis_url=redis_url):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO r_books (id, version, data) SELECT 'b' || g, nextval('cachedapi_version'), "
                "jsonb_build_object('title', 't' || (g % 977), 'author', 'a' || (g % 500), "
                "'year', 1900 + (g % 120), 'price', g % 50) FROM generate_series(1, 50000) g"
            )
        await _until(lambda: set(_indexes(url)) == _names(*indexes) and all(_indexes(url).values()), "indexes")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE r_books")


def _plan(url: str, bookstore: model.CachedApi, query: str) -> str:
    props = listquery.properties(bookstore.spec.resources[0].schema_)
    parsed = listquery.parse(query, props)
    statement, params = listing.page("books", parsed, props, limit=21)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("EXPLAIN (FORMAT JSON) " + statement, params).fetchone()
    assert rows is not None
    return json.dumps(rows[0])


@pytest.mark.parametrize(
    ("query", "index"),
    [
        ("author=a7", ["author"]),
        ("author[in]=a7,a9&sort=-year,title", None),  # served, whichever index the planner prefers
        ("sort=-year,title", ["-year", "title"]),
        ("year[gte]=2015&sort=-year,title", ["-year", "title"]),
        ("year=1950&sort=title", ["-year", "title"]),
        ("year[lt]=1910&sort=-year,title", ["-year", "title"]),
    ],
)
async def test_queries_use_the_declared_indexes(
    bookstore: model.CachedApi, big_books: str, redis_url: str, query: str, index: list[str] | None
) -> None:
    if not _indexes(big_books):
        await _prepare(bookstore, big_books, redis_url)
    plan = _plan(big_books, bookstore, query)
    assert '"Seq Scan"' not in plan, plan
    if index is not None:
        assert listing.index_name("books", index) in plan, plan
    if "sort=" in query and index is not None:
        assert '"Node Type": "Sort"' not in plan, "the index gives the order: no sort step"


async def test_a_cursor_page_starts_at_the_cursor_in_the_index(
    bookstore: model.CachedApi, big_books: str, redis_url: str
) -> None:
    if not _indexes(big_books):
        await _prepare(bookstore, big_books, redis_url)
    props = listquery.properties(bookstore.spec.resources[0].schema_)
    query = listquery.parse("sort=-year,title", props)
    cursor = query.cursor_after(listquery.Position(40000, (1950, "t500")))
    plan = _plan(big_books, bookstore, f"sort=-year,title&cursor={cursor}")
    assert listing.index_name("books", ["-year", "title"]) in plan
    assert '"Index Cond"' in plan, "the scan must start at the cursor, not at the index's beginning"


async def test_an_undeclared_property_is_still_filtered_on_a_scan_of_every_row(
    bookstore: model.CachedApi, big_books: str, redis_url: str
) -> None:
    if not _indexes(big_books):
        await _prepare(bookstore, big_books, redis_url)
    plan = _plan(big_books, bookstore, "price=7")
    assert BOOKS not in plan, "no declared index covers price"
    assert "'price'" in json.loads(plan)[0]["Plan"]["Plans"][0]["Filter"], "a filter over the rows in insertion order"
