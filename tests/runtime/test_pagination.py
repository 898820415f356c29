"""Keyset pagination: walking every page sees each pre-existing item exactly once, inserts or not."""

from __future__ import annotations

import asyncio

import httpx


async def _walk(client: httpx.AsyncClient, *, limit: int, between: object = None) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        params = {"limit": str(limit)} | ({"cursor": cursor} if cursor else {})
        resp = await client.get("/v1/authors", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert len(page["items"]) <= limit
        ids += [item["id"] for item in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            return ids
        if callable(between):
            await between()


async def test_walking_all_pages_returns_every_item_once_in_creation_order(client: httpx.AsyncClient) -> None:
    created = [(await client.post("/v1/authors", json={"name": f"a{i}"})).json()["id"] for i in range(25)]
    assert await _walk(client, limit=7) == created
    assert await _walk(client, limit=100) == created
    assert (await client.get("/v1/authors")).json()["items"][-1]["id"] == created[19]  # default limit 20


async def test_concurrent_inserts_neither_duplicate_nor_skip_existing_items(client: httpx.AsyncClient) -> None:
    existing = [(await client.post("/v1/authors", json={"name": f"a{i}"})).json()["id"] for i in range(30)]
    inserted: list[str] = []

    async def insert_some() -> None:
        for resp in await asyncio.gather(*(client.post("/v1/authors", json={"name": "new"}) for _ in range(3))):
            inserted.append(resp.json()["id"])

    seen = await _walk(client, limit=4, between=insert_some)
    assert len(seen) == len(set(seen)), "an item was returned twice"
    assert [i for i in seen if i in set(existing)] == existing
    assert set(seen) <= set(existing) | set(inserted)


async def test_replacing_an_item_keeps_its_place_in_the_list(client: httpx.AsyncClient) -> None:
    ids = [(await client.post("/v1/authors", json={"name": f"a{i}"})).json()["id"] for i in range(3)]
    await client.put(f"/v1/authors/{ids[0]}", json={"name": "renamed"})
    items = (await client.get("/v1/authors")).json()["items"]
    assert [i["id"] for i in items] == ids
    assert items[0]["name"] == "renamed"


async def test_an_empty_collection_is_an_empty_page(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/authors")
    assert resp.json() == {"items": [], "nextCursor": None}
