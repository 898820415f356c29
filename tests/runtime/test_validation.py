"""Bodies are checked against the resource's JSON Schema; a 422 names every bad field."""

from __future__ import annotations

import httpx


async def test_missing_required_field_is_named(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/books", json={"author": "Herbert"})
    assert resp.status_code == 422
    problem = resp.json()
    assert resp.headers["content-type"] == "application/problem+json"
    assert "/title: 'title' is a required property" in problem["detail"]
    assert {"pointer": "/title", "detail": "'title' is a required property"} in problem["errors"]


async def test_out_of_range_value_is_named_by_its_path(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/books", json={"title": "T", "author": "A", "year": 5000})
    assert resp.status_code == 422
    assert "/year: 5000 is greater than the maximum of 3000" in resp.json()["detail"]


async def test_nested_errors_name_the_array_index(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/books", json={"title": "T", "author": "A", "tags": ["ok", 7]})
    assert resp.status_code == 422
    assert resp.json()["errors"][0]["pointer"] == "/tags/1"


async def test_unknown_field_is_rejected_when_the_schema_forbids_it(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/books", json={"title": "T", "author": "A", "isbn": "x"})
    assert resp.status_code == 422
    assert "isbn" in resp.json()["detail"]


async def test_every_error_is_listed(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/books", json={"title": "", "year": -1})
    pointers = sorted(e["pointer"] for e in resp.json()["errors"])
    assert pointers == ["/author", "/title", "/year"]


async def test_a_body_that_is_not_an_object_is_422(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/books", json=[1, 2])
    assert resp.status_code == 422
    assert "object" in resp.json()["detail"]


async def test_put_is_validated_like_post(client: httpx.AsyncClient) -> None:
    resp = await client.put("/v1/books/x", json={"title": 3, "author": "A"})
    assert resp.status_code == 422
    assert resp.json()["errors"][0]["pointer"] == "/title"
    assert (await client.get("/v1/books/x")).status_code == 404


async def test_a_schema_less_resource_accepts_any_object(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/authors", json={"name": "Herbert", "extra": {"nested": [1, None]}})
    assert resp.status_code == 201
    assert resp.json()["extra"] == {"nested": [1, None]}


async def test_a_string_postgresql_cannot_store_is_422_not_500(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/authors", json={"name": "nul\u0000byte"})
    assert resp.status_code == 422
    assert "\\u0000" in resp.json()["detail"]
