"""ETag, If-Match, If-None-Match: lost updates are refused, unchanged reads cost no body."""

from __future__ import annotations

import httpx

BOOK = {"title": "Dune", "author": "Frank Herbert"}


async def _put(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await client.put("/v1/books/dune", json=BOOK, headers=headers)


async def test_every_write_changes_the_etag(client: httpx.AsyncClient) -> None:
    first = (await _put(client)).headers["etag"]
    second = (await _put(client)).headers["etag"]
    third = (await client.patch("/v1/books/dune", json={"year": 1})).headers["etag"]
    assert len({first, second, third}) == 3


async def test_put_with_a_stale_if_match_is_412_and_changes_nothing(client: httpx.AsyncClient) -> None:
    old = (await _put(client)).headers["etag"]
    current = (await client.patch("/v1/books/dune", json={"year": 1965})).headers["etag"]
    resp = await client.put("/v1/books/dune", json={**BOOK, "title": "lost update"}, headers={"if-match": old})
    assert resp.status_code == 412
    assert resp.headers["content-type"] == "application/problem+json"
    assert (await client.get("/v1/books/dune")).json()["title"] == "Dune"
    resp = await client.put("/v1/books/dune", json={**BOOK, "title": "ok"}, headers={"if-match": current})
    assert resp.status_code == 200


async def test_if_match_on_a_missing_item_is_412(client: httpx.AsyncClient) -> None:
    assert (await _put(client, **{"if-match": '"v1"'})).status_code == 412
    assert (await _put(client, **{"if-match": "*"})).status_code == 412
    assert (await client.delete("/v1/books/dune", headers={"if-match": "*"})).status_code == 412
    assert (await client.get("/v1/books/dune")).status_code == 404


async def test_if_match_star_requires_an_existing_item(client: httpx.AsyncClient) -> None:
    await _put(client)
    assert (await _put(client, **{"if-match": "*"})).status_code == 200


async def test_if_none_match_star_creates_only(client: httpx.AsyncClient) -> None:
    assert (await _put(client, **{"if-none-match": "*"})).status_code == 201
    assert (await _put(client, **{"if-none-match": "*"})).status_code == 412


async def test_patch_and_delete_honour_if_match(client: httpx.AsyncClient) -> None:
    etag = (await _put(client)).headers["etag"]
    assert (await client.patch("/v1/books/dune", json={"year": 2}, headers={"if-match": '"v0"'})).status_code == 412
    resp = await client.patch("/v1/books/dune", json={"year": 2}, headers={"if-match": etag})
    assert resp.status_code == 200
    assert (await client.delete("/v1/books/dune", headers={"if-match": etag})).status_code == 412
    assert (await client.delete("/v1/books/dune", headers={"if-match": resp.headers["etag"]})).status_code == 204


async def test_if_none_match_on_get_answers_304_from_cache_and_database(client: httpx.AsyncClient) -> None:
    etag = (await _put(client)).headers["etag"]
    miss = await client.get("/v1/books/dune", headers={"if-none-match": etag})
    assert miss.status_code == 304 and miss.headers["x-cache"] == "MISS" and miss.content == b""
    hit = await client.get("/v1/books/dune", headers={"if-none-match": etag})
    assert hit.status_code == 304 and hit.headers["x-cache"] == "HIT"
    assert hit.headers["etag"] == etag
    other = await client.get("/v1/books/dune", headers={"if-none-match": '"v0"'})
    assert other.status_code == 200
