"""The resource API of the README's HTTP table, row by row, against real PostgreSQL and Redis."""

from __future__ import annotations

import uuid

import httpx
import psycopg
import pytest

from cachedapi import model
from cachedapi.dev import embedded

from .conftest import runtime_config, serve

BOOK = {"title": "Dune", "author": "Frank Herbert", "year": 1965}


async def _create(client: httpx.AsyncClient, body: dict[str, object] | None = None) -> httpx.Response:
    resp = await client.post("/v1/books", json=body or BOOK)
    assert resp.status_code == 201, resp.text
    return resp


async def test_post_creates_an_item_with_location_etag_and_server_id(client: httpx.AsyncClient) -> None:
    resp = await _create(client)
    item = resp.json()
    assert resp.headers["location"] == f"/v1/books/{item['id']}"
    assert resp.headers["etag"].startswith('"v') and " " not in resp.headers["etag"]
    assert item == {"id": item["id"], **BOOK}


async def test_get_returns_the_item_with_its_etag(client: httpx.AsyncClient) -> None:
    created = await _create(client)
    resp = await client.get(created.headers["location"])
    assert resp.status_code == 200
    assert resp.json() == created.json()
    assert resp.headers["etag"] == created.headers["etag"]
    assert resp.headers["content-type"] == "application/json"


async def test_get_of_a_missing_item_is_404_problem(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/books/nope")
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/problem+json"
    assert "nope" in resp.json()["detail"]


async def test_list_returns_items_and_next_cursor(client: httpx.AsyncClient) -> None:
    ids = [(await _create(client, {**BOOK, "title": f"t{i}"})).json()["id"] for i in range(3)]
    resp = await client.get("/v1/books", params={"limit": 2})
    assert resp.status_code == 200
    page = resp.json()
    assert [i["id"] for i in page["items"]] == ids[:2]
    resp = await client.get("/v1/books", params={"limit": 2, "cursor": page["nextCursor"]})
    assert [i["id"] for i in resp.json()["items"]] == ids[2:]
    assert resp.json()["nextCursor"] is None


async def test_put_creates_with_201_then_replaces_with_200(client: httpx.AsyncClient) -> None:
    resp = await client.put("/v1/books/dune", json=BOOK)
    assert resp.status_code == 201
    assert resp.headers["location"] == "/v1/books/dune"
    resp = await client.put("/v1/books/dune", json={"title": "Dune Messiah", "author": "Frank Herbert"})
    assert resp.status_code == 200
    assert resp.json() == {"id": "dune", "title": "Dune Messiah", "author": "Frank Herbert"}
    assert (await client.get("/v1/books/dune")).json()["title"] == "Dune Messiah"


async def test_put_accepts_the_matching_id_in_the_body_and_rejects_another(client: httpx.AsyncClient) -> None:
    assert (await client.put("/v1/books/dune", json={"id": "dune", **BOOK})).status_code == 201
    resp = await client.put("/v1/books/dune", json={"id": "other", **BOOK})
    assert resp.status_code == 422
    assert "/id" in resp.json()["detail"]


async def test_post_rejects_a_client_chosen_id(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/books", json={"id": "mine", **BOOK})
    assert resp.status_code == 422
    assert resp.json()["errors"][0]["pointer"] == "/id"


async def test_patch_merges_and_null_removes_a_member(client: httpx.AsyncClient) -> None:
    await client.put("/v1/books/dune", json={**BOOK, "tags": ["sf"]})
    resp = await client.patch(
        "/v1/books/dune",
        content=b'{"year": 1966, "tags": null}',
        headers={"content-type": "application/merge-patch+json"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"id": "dune", "title": "Dune", "author": "Frank Herbert", "year": 1966}
    assert (await client.get("/v1/books/dune")).json() == resp.json()


async def test_patch_result_is_validated_against_the_schema(client: httpx.AsyncClient) -> None:
    await client.put("/v1/books/dune", json=BOOK)
    resp = await client.patch("/v1/books/dune", json={"author": None})
    assert resp.status_code == 422
    assert "author" in resp.json()["detail"]
    assert (await client.get("/v1/books/dune")).json()["author"] == "Frank Herbert"


async def test_patch_of_a_missing_item_is_404(client: httpx.AsyncClient) -> None:
    resp = await client.patch("/v1/books/nope", json={"year": 1})
    assert resp.status_code == 404


async def test_delete_answers_204_then_the_item_is_gone(client: httpx.AsyncClient) -> None:
    location = (await _create(client)).headers["location"]
    await client.get(location)  # cached now
    assert (await client.delete(location)).status_code == 204
    assert (await client.get(location)).status_code == 404
    assert (await client.delete(location)).status_code == 404


async def test_unknown_resource_is_404_problem_naming_it(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/v1/films"),
        ("POST", "/v1/films"),
        ("GET", "/v1/films/1"),
        ("DELETE", "/v1/films/1"),
    ]:
        resp = await client.request(method, path, json={})
        assert resp.status_code == 404, (method, path)
        assert resp.headers["content-type"] == "application/problem+json"
        assert "films" in resp.json()["detail"]


async def test_unknown_path_and_method_are_problems(client: httpx.AsyncClient) -> None:
    resp = await client.get("/nowhere")
    assert resp.status_code == 404 and resp.headers["content-type"] == "application/problem+json"
    resp = await client.request("PUT", "/v1/books")
    assert resp.status_code == 405 and resp.headers["content-type"] == "application/problem+json"


async def test_invalid_json_is_400_naming_it(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/books", content=b"{nope", headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert "JSON" in resp.json()["detail"]


async def test_wrong_content_type_is_415(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/books", content=b"title=x", headers={"content-type": "text/plain"})
    assert resp.status_code == 415
    assert resp.headers["content-type"] == "application/problem+json"
    resp = await client.put("/v1/books/x", content=b"{}")
    assert resp.status_code == 415


async def test_oversized_body_is_413_even_without_content_length(client: httpx.AsyncClient) -> None:
    big = b'{"title": "' + b"x" * 1_100_000 + b'"}'
    resp = await client.post("/v1/books", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(20):
            yield b"x" * 100_000

    resp = await client.post("/v1/books", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert resp.headers["content-type"] == "application/problem+json"


async def test_bad_limit_and_cursor_are_400_naming_the_parameter(client: httpx.AsyncClient) -> None:
    for limit in ["0", "101", "abc", "-1"]:
        resp = await client.get("/v1/books", params={"limit": limit})
        assert resp.status_code == 400, limit
        assert resp.json()["detail"].startswith("limit:")
    resp = await client.get("/v1/books", params={"cursor": "not-a-cursor"})
    assert resp.status_code == 400
    assert resp.json()["detail"].startswith("cursor:")


async def test_put_with_an_unsafe_id_is_400(client: httpx.AsyncClient) -> None:
    resp = await client.put("/v1/books/a:b", json=BOOK)
    assert resp.status_code == 400
    assert "id" in resp.json()["detail"]


async def test_healthz_readyz_and_metrics_answer(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": "ok", "redis": "ok"}
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert "cachedapi_api_requests_total" in metrics.text


async def test_an_unexpected_error_is_500_problem_without_internals(
    client: httpx.AsyncClient, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await client.put("/v1/orders/o", json={"bookId": "b", "quantity": 1})
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE r_orders")  # behind the app's back
    resp = await client.get("/v1/orders/o")
    assert resp.status_code == 500
    assert resp.headers["content-type"] == "application/problem+json"
    assert "r_orders" not in resp.text and "Traceback" not in resp.text
    assert "r_orders" in caplog.text  # logged server-side


async def test_too_many_or_too_large_headers_are_431_problem(client: httpx.AsyncClient) -> None:
    flood = {f"x-flood-{i}": "y" for i in range(500)}
    huge = {"x-huge": "k" * 100_000}
    for headers in (flood, huge):
        resp = await client.get("/v1/books", headers=headers)
        assert resp.status_code == 431
        assert resp.headers["content-type"] == "application/problem+json"
    assert (await client.get("/v1/books", headers={"x-some": "y" * 1000})).status_code == 200


async def test_a_database_not_in_utf8_still_gives_and_takes_json(
    bookstore: model.CachedApi, postgres_server: embedded.PostgresServer, redis_url: str
) -> None:
    # initdb without a locale makes SQL_ASCII databases; psycopg then returned bytes, not JSON.
    name = f"ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' TEMPLATE template0")
    url = postgres_server.url.rsplit("/", 1)[0] + f"/{name}"
    try:
        async with serve(runtime_config(bookstore), database_url=url, redis_url=redis_url) as (_, client):
            created = await _create(client, {"title": "Dune — la épica", "author": "Frank Herbert"})
            fetched = await client.get(created.headers["location"])
            assert fetched.status_code == 200 and fetched.json()["title"] == "Dune — la épica"
    finally:
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
