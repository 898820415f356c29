"""Who may keep an answer: Cache-Control through the gateway, as a CDN in front of it would read it.

Answers to authenticated callers say ``private`` (a shared cache must not serve them to
someone without a key), hits from Redis and forwarded misses alike; a resource declared
``public: true`` says ``public``; with ``auth.mode: none`` answers stay plainly shareable;
errors say ``no-store``. README "What a CDN in front of the gateway may keep".
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from cachedapi import contract, model
from cachedapi.dev import devstack, embedded
from cachedapi.runtime.gateway import answers
from tests.gateway.conftest import API_KEY, extra_gateway, running_stack, variant


def _new_book(client: httpx.Client) -> str:
    resp = client.post("/v1/books", json={"title": "Dune", "author": "Frank Herbert"})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _renamed(api: model.CachedApi, name: str, **spec: Any) -> model.CachedApi:
    """``api`` under another name (so its Redis keys are its own on the shared Redis), with
    ``spec.gateway.auth`` and ``spec.resources[*]`` fields replaced."""
    data = api.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["metadata"]["name"] = name
    if "auth" in spec:
        data["spec"]["gateway"]["auth"] = spec["auth"]
    for res in data["spec"]["resources"]:
        res.update(spec.get("resources", {}).get(res["name"], {}))
    return model.CachedApi.model_validate(data)


def _miss_then_hit(client: httpx.Client, path: str) -> tuple[httpx.Response, httpx.Response]:
    miss, hit = client.get(path), client.get(path)
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT"), (miss.text, hit.text)
    return miss, hit


def test_hit_and_miss_answers_to_an_api_key_caller_are_private(client: httpx.Client) -> None:
    book = _new_book(client)
    for path in (f"/v1/books/{book}", "/v1/books?limit=3"):
        miss, hit = _miss_then_hit(client, path)
        for resp in (miss, hit):
            assert resp.headers["cache-control"].startswith("private, max-age="), resp.headers
            assert int(resp.headers["cache-control"].rsplit("=", 1)[1]) > 0
    etag = client.get(f"/v1/books/{book}").headers["etag"]
    not_modified = client.get(f"/v1/books/{book}", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.headers["cache-control"].startswith("private, max-age=")
    assert client.head(f"/v1/books/{book}").headers["cache-control"].startswith("private, max-age=")


def test_errors_and_ttl_zero_answers_are_no_store(client: httpx.Client, anonymous: httpx.Client) -> None:
    refused = [
        anonymous.get("/v1/books"),
        anonymous.get("/v1/books", headers={"X-API-Key": "not-a-key"}),
        anonymous.get("/v1/books?api_key=x"),
    ]
    assert [r.status_code for r in refused] == [401, 401, 401]
    missing = client.get("/v1/books/no-such-book")  # the api role's 404, forwarded
    bad_limit = client.get("/v1/books?limit=1000")  # the api role's 400
    no_route = client.get("/nothing-here")  # the gateway's own 404
    for resp in [*refused, missing, bad_limit, no_route]:
        assert resp.headers["content-type"] == contract.PROBLEM_JSON, resp.text
        assert resp.headers["cache-control"] == "no-store", (resp.status_code, resp.headers)
    assert (missing.status_code, bad_limit.status_code, no_route.status_code) == (404, 400, 404)
    order = client.post("/v1/orders", json={"bookId": "x", "quantity": 1}).json()["id"]
    for _ in range(2):
        resp = client.get(f"/v1/orders/{order}")
        assert (resp.status_code, resp.headers["cache-control"]) == (200, "no-store")


def test_429_is_no_store(stack: devstack.Stack, bookstore_module: model.CachedApi) -> None:
    # Its own name, so its own rate-limit keys: the slow bucket of unauthenticated callers must
    # not limit the other tests' anonymous requests on the shared Redis.
    limits = {"rateLimit": {"requestsPerSecond": 0.1, "burst": 1, "by": "apiKey"}}
    api = variant(_renamed(bookstore_module, "cc-limited"), gateway=limits)
    with extra_gateway(stack, api, env={contract.ENV_API_KEYS: "no-store-key"}) as gateway:
        with httpx.Client(base_url=gateway.url, headers={"X-API-Key": "no-store-key"}, timeout=10) as http:
            answers_ = [http.get("/v1/books") for _ in range(3)]
        with httpx.Client(base_url=gateway.url, timeout=10) as anonymous:
            unauthenticated = [anonymous.get("/v1/books") for _ in range(3)]
    limited = [r for r in answers_ + unauthenticated if r.status_code == 429]
    assert [r.status_code for r in answers_] == [200, 429, 429]
    assert [r.status_code for r in unauthenticated] == [401, 429, 429]  # guessing keys is limited too
    for resp in limited + [r for r in unauthenticated if r.status_code == 401]:
        assert resp.headers["cache-control"] == "no-store", resp.headers


def test_a_public_resource_says_public_and_the_others_stay_private(
    bookstore_module: model.CachedApi, postgres_server: embedded.PostgresServer, redis_server: embedded.RedisServer
) -> None:
    api = _renamed(bookstore_module, "cc-public", resources={"books": {"public": True}})
    with (
        running_stack(api, postgres=postgres_server, redis=redis_server) as public_stack,
        httpx.Client(base_url=public_stack.url, headers={"X-API-Key": API_KEY}, timeout=10) as http,
    ):
        book = _new_book(http)
        author = http.post("/v1/authors", json={"name": "Frank Herbert"}).json()["id"]
        for path in (f"/v1/books/{book}", "/v1/books?limit=2"):
            for resp in _miss_then_hit(http, path):
                assert resp.headers["cache-control"].startswith("public, max-age="), resp.headers
        for resp in _miss_then_hit(http, f"/v1/authors/{author}"):
            assert resp.headers["cache-control"].startswith("private, max-age="), resp.headers
        assert http.get("/v1/books/no-such-book").headers["cache-control"] == "no-store"


def test_with_auth_mode_none_answers_stay_shareable_and_a_gateway_with_keys_makes_them_private(
    bookstore_module: model.CachedApi, postgres_server: embedded.PostgresServer, redis_server: embedded.RedisServer
) -> None:
    api = _renamed(bookstore_module, "cc-open", auth={"mode": "none"})
    with running_stack(api, postgres=postgres_server, redis=redis_server) as open_stack:
        with httpx.Client(base_url=open_stack.url, timeout=10) as http:
            book = _new_book(http)
            for path in (f"/v1/books/{book}", "/v1/books?limit=2"):
                for resp in _miss_then_hit(http, path):
                    value = resp.headers["cache-control"]
                    assert value.startswith("max-age="), resp.headers
                    assert "private" not in value and "public" not in value
            assert http.get("/v1/books/no-such-book").headers["cache-control"] == "no-store"
        # An api role that does not say ``private`` (as one with auth none, or an older release
        # during a rolling upgrade) behind a gateway whose callers authenticate: the gateway does.
        keyed = _renamed(bookstore_module, "cc-open", auth={"mode": "apiKey"})
        with (
            extra_gateway(open_stack, keyed) as gateway,
            httpx.Client(base_url=gateway.url, headers={"X-API-Key": API_KEY}, timeout=10) as http,
        ):
            other = _new_book(http)
            miss = http.get(f"/v1/books/{other}", headers={"Cache-Control": "no-cache"})
            assert miss.headers["x-cache"] == "MISS"
            assert miss.headers["cache-control"].startswith("private, max-age="), miss.headers


@pytest.mark.parametrize(
    ("upstream", "expected"),
    [
        (b"max-age=60", b"private, max-age=60"),
        (b"no-cache", b"private, no-cache"),
        (b"private, max-age=5", b"private, max-age=5"),
        (b"public, max-age=5", b"public, max-age=5"),
        (b"no-store", b"no-store"),
    ],
)
def test_make_private_leaves_an_answer_that_says_who_may_keep_it(upstream: bytes, expected: bytes) -> None:
    headers = [(b"etag", b'"v1"'), (b"cache-control", upstream), (b"x-cache", b"MISS")]
    answers.make_private(headers)
    assert headers == [(b"etag", b'"v1"'), (b"cache-control", expected), (b"x-cache", b"MISS")]


def test_the_cache_control_format_is_built_once_per_resource() -> None:
    assert answers.cache_control_format("private") % 12 == b"private, max-age=12"
    assert answers.cache_control_format("public") % 0 == b"public, max-age=0"
    assert answers.cache_control_format("") % 7 == b"max-age=7"
