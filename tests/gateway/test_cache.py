"""The cache check at the gateway, against entries the real api role writes."""

from __future__ import annotations

import time

import httpx
import redis

from cachedapi import contract
from cachedapi.dev import devstack
from cachedapi.operator.children import config as x_config


def _new_book(client: httpx.Client, title: str = "Dune") -> str:
    resp = client.post("/v1/books", json={"title": title, "author": "Frank Herbert"})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def test_first_get_of_an_item_is_a_miss_then_a_hit_with_the_same_bytes(client: httpx.Client) -> None:
    book = _new_book(client)
    first = client.get(f"/v1/books/{book}")
    second = client.get(f"/v1/books/{book}")
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert second.content == first.content
    assert second.headers["etag"] == first.headers["etag"]
    assert second.headers["content-type"] == "application/json"
    assert second.headers["cache-control"].startswith("private, max-age=")
    assert int(second.headers["age"]) >= 0


def test_head_of_a_cached_item_has_the_headers_and_no_body(client: httpx.Client) -> None:
    book = _new_book(client)
    body = client.get(f"/v1/books/{book}").content
    client.get(f"/v1/books/{book}")
    head = client.head(f"/v1/books/{book}")
    assert head.status_code == 200
    assert head.headers["x-cache"] == "HIT"
    assert head.headers["content-length"] == str(len(body))
    assert head.content == b""


def test_a_put_through_the_gateway_is_visible_on_the_next_get(client: httpx.Client) -> None:
    book = _new_book(client)
    client.get(f"/v1/books/{book}")
    assert client.get(f"/v1/books/{book}").headers["x-cache"] == "HIT"
    resp = client.put(f"/v1/books/{book}", json={"title": "Dune Messiah", "author": "Frank Herbert"})
    assert resp.status_code == 200, resp.text
    after = client.get(f"/v1/books/{book}")
    assert after.headers["x-cache"] == "HIT"  # the write stored its own answer (the writer's fill)
    assert after.json()["title"] == "Dune Messiah"
    assert after.headers["etag"] == resp.headers["etag"]


def test_a_post_invalidates_the_cached_list_page(client: httpx.Client) -> None:
    client.get("/v1/books", params={"limit": 100})
    cached = client.get("/v1/books", params={"limit": 100})
    assert cached.headers["x-cache"] == "HIT"
    book = _new_book(client, "Children of Dune")
    after = client.get("/v1/books", params={"limit": 100})
    assert after.headers["x-cache"] == "MISS"
    assert book in {item["id"] for item in after.json()["items"]}


def test_list_queries_spelled_differently_share_one_entry(client: httpx.Client) -> None:
    client.get("/v1/books?limit=7&cursor=")
    assert client.get("/v1/books?cursor=&limit=7").headers["x-cache"] == "HIT"


def _gateway_hits(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('cachedapi_gateway_cache_requests_total{result="HIT"}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no hit counter in the gateway's metrics")


def test_a_filtered_sorted_page_is_answered_by_the_gateway_under_every_spelling(client: httpx.Client) -> None:
    for title, year in (("Dune", 1965), ("Dune Messiah", 1969), ("Children of Dune", 1976)):
        assert client.post("/v1/books", json={"title": title, "author": "Frank Herbert", "year": year}).is_success
    query = "/v1/books?author=Frank%20Herbert&year[gte]=1969&sort=-year&fields=title"
    first = client.get(query)
    assert first.headers["x-cache"] == "MISS", first.text
    assert all(set(item) == {"id", "title"} for item in first.json()["items"])
    assert [i["title"] for i in first.json()["items"]] == ["Children of Dune", "Dune Messiah"]
    hits = _gateway_hits(client)
    again = client.get("/v1/books?fields=title,id&sort=-year&year%5Bgte%5D=1969.0&author%5Beq%5D=Frank+Herbert")
    assert again.headers["x-cache"] == "HIT"
    assert again.content == first.content
    assert _gateway_hits(client) == hits + 1, "the gateway, not the api role, answered from the cache"
    client.post("/v1/books", json={"title": "God Emperor of Dune", "author": "Frank Herbert", "year": 1981})
    after = client.get(query)
    assert after.headers["x-cache"] == "MISS"
    assert [i["title"] for i in after.json()["items"]] == ["God Emperor of Dune", "Children of Dune", "Dune Messiah"]


def test_a_bad_list_parameter_is_a_400_naming_it_through_the_gateway(client: httpx.Client) -> None:
    resp = client.get("/v1/books?publisher=Chilton")
    assert resp.status_code == 400
    assert resp.headers["content-type"] == contract.PROBLEM_JSON
    assert resp.json()["parameter"] == "publisher"


def test_invalid_limit_is_left_to_the_api_role(client: httpx.Client) -> None:
    resp = client.get("/v1/books", params={"limit": 1000})
    assert resp.status_code == 400
    assert resp.headers["content-type"] == contract.PROBLEM_JSON


def test_if_none_match_with_the_current_etag_gives_304(client: httpx.Client) -> None:
    book = _new_book(client)
    etag = client.get(f"/v1/books/{book}").headers["etag"]
    resp = client.get(f"/v1/books/{book}", headers={"If-None-Match": f'"other", {etag}'})
    assert resp.status_code == 304
    assert resp.headers["etag"] == etag
    assert resp.content == b""
    assert "ratelimit-remaining" in resp.headers
    assert client.get(f"/v1/books/{book}", headers={"If-None-Match": '"other"'}).status_code == 200


def test_resource_with_ttl_zero_is_never_served_from_the_cache(client: httpx.Client) -> None:
    resp = client.post("/v1/orders", json={"bookId": "x", "quantity": 1})
    assert resp.status_code == 201, resp.text
    order = resp.json()["id"]
    for _ in range(2):
        assert client.get(f"/v1/orders/{order}").headers["x-cache"] == "BYPASS"


def test_request_no_cache_is_forwarded(client: httpx.Client) -> None:
    book = _new_book(client)
    client.get(f"/v1/books/{book}")
    assert client.get(f"/v1/books/{book}").headers["x-cache"] == "HIT"
    resp = client.get(f"/v1/books/{book}", headers={"Cache-Control": "no-cache"})
    assert resp.status_code == 200
    assert resp.headers["x-cache"] == "MISS"  # read from PostgreSQL although a fresh entry exists


def _age_entry(stack: devstack.Stack, book: str, *, seconds: int) -> None:
    """Make the api role's stored entry look ``seconds`` older, as time passing would."""
    prefix = x_config.key_prefix(stack.api)
    key = contract.item_key(prefix, "books", book)
    r = redis.Redis.from_url(stack.redis.url)
    try:
        entry = contract.decode_entry(r.get(key) or b"")
        assert entry is not None
        r.set(
            key,
            contract.encode_entry(
                stored_at_ms=entry.stored_at_ms - seconds * 1000,
                ttl_seconds=entry.ttl_seconds,
                status=entry.status,
                etag=entry.etag,
                content_type=entry.content_type,
                body=entry.body,
            ),
            keepttl=True,
        )
    finally:
        r.close()


def test_stale_entry_within_swr_is_served_stale_and_refreshed_in_the_background(
    stack: devstack.Stack, client: httpx.Client
) -> None:
    book = _new_book(client)
    client.get(f"/v1/books/{book}")
    ttl = stack.api.spec.resources[0].ttlSeconds
    assert ttl is not None
    _age_entry(stack, book, seconds=ttl + 5)  # within staleWhileRevalidateSeconds (30)
    stale = client.get(f"/v1/books/{book}")
    assert stale.headers["x-cache"] == "STALE"
    assert stale.headers["cache-control"] == "private, max-age=0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if client.get(f"/v1/books/{book}").headers["x-cache"] == "HIT":
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the background refresh did not refill the entry")
