"""Hostile input through the gateway and straight at the api role: each gets a 4xx, never a crash.

Every case asserts the status a client would see and, for answers our code
writes, a problem+json body; after each, both processes must still be healthy.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from cachedapi import model
from cachedapi.dev import devstack

from ..conftest import EXAMPLES


@pytest.fixture(scope="module")
def stack() -> Iterator[devstack.Stack]:
    api = model.load_manifest(EXAMPLES / "bookstore.yaml")[0]
    with devstack.Stack(api) as s:
        yield s
        assert not s.dead_instances(), s.logs()


@pytest.fixture(params=["gateway", "api"])
def client(request: pytest.FixtureRequest, stack: devstack.Stack) -> Iterator[httpx.Client]:
    url = stack.gateways[0].url if request.param == "gateway" else stack.apis[0].url
    with httpx.Client(base_url=url, headers={"X-API-Key": stack.api_key}, timeout=10) as c:
        yield c
    for role in [*stack.gateways, *stack.apis]:
        assert httpx.get(f"{role.url}/healthz", timeout=5).status_code == 200, stack.logs()


def _is_problem(resp: httpx.Response) -> bool:
    if not resp.headers.get("content-type", "").startswith("application/problem+json"):
        return False
    body = resp.json()
    return body["status"] == resp.status_code and bool(body["detail"])


def test_huge_body_is_413(client: httpx.Client) -> None:
    resp = client.post(
        "/v1/books", content=b'{"title": "' + b"x" * 3_000_000 + b'"}', headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 413 and _is_problem(resp)


def test_huge_body_without_content_length_is_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"title": "'
        for _ in range(300):
            yield b"x" * 10_000
        yield b'"}'

    resp = client.post("/v1/books", content=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and _is_problem(resp)


def test_deeply_nested_json_is_rejected(client: httpx.Client) -> None:
    body = b'{"title": "t", "author": "a", "tags": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    resp = client.post("/v1/books", content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code in (400, 422) and _is_problem(resp)


def test_invalid_utf8_is_400(client: httpx.Client) -> None:
    resp = client.post(
        "/v1/books", content=b'{"title": "\xff\xfe", "author": "a"}', headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 400 and _is_problem(resp)


def test_not_json_is_400_naming_the_body(client: httpx.Client) -> None:
    resp = client.post("/v1/books", content=b"{title: nope", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and _is_problem(resp)
    assert "json" in resp.json()["detail"].lower()


@pytest.mark.parametrize(
    "path",
    [
        "/v1/books/..%2F..%2Fetc%2Fpasswd",
        "/v1/..%2Fetc/passwd",
        "/v1/books/1'%20OR%20'1'%3D'1",
        "/v1/books/1;DROP%20TABLE%20r_books;--",
        "/v1/pg_catalog.pg_user",
        "/v1/books/%00",
    ],
)
def test_traversal_and_sql_looking_paths_are_4xx(client: httpx.Client, path: str) -> None:
    resp = client.get(path)
    assert 400 <= resp.status_code < 500, resp.text
    assert _is_problem(resp)
    # The table is still there.
    assert client.get("/v1/books").status_code == 200


def test_key_in_query_string_is_not_accepted(stack: devstack.Stack) -> None:
    resp = httpx.get(f"{stack.url}/v1/books", params={"api_key": stack.api_key}, timeout=5)
    assert resp.status_code == 401 and _is_problem(resp)
    assert "query" in resp.json()["detail"]


def test_header_flood_is_rejected_and_server_survives(stack: devstack.Stack) -> None:
    headers = {f"X-Flood-{i}": "y" * 100 for i in range(2000)}
    headers["X-API-Key"] = stack.api_key
    for url in (stack.gateways[0].url, stack.apis[0].url):
        resp = httpx.get(f"{url}/v1/books", headers=headers, timeout=10)
        assert resp.status_code == 431, url
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


def test_huge_single_header_is_431(stack: devstack.Stack) -> None:
    for url in (stack.gateways[0].url, stack.apis[0].url):
        resp = httpx.get(f"{url}/v1/books", headers={"X-API-Key": "k" * 200_000}, timeout=10)
        assert resp.status_code == 431, url
        # The gateway's HTTP server answers it itself, bare, before the app: its read buffer is
        # bounded (48 KiB, ``gateway.server.HTTP1_BUFFER_BYTES``) so that a slow header holds little.
        assert _is_problem(resp) == (url == stack.apis[0].url), url


def test_slow_clients_do_not_starve_others(stack: devstack.Stack) -> None:
    """Slowloris: 50 connections that send half a request line and stall."""
    port = stack.gateways[0].port
    socks = []
    try:
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /v1/books HTTP/1.1\r\nHost: x\r\nX-API-Key: ")
            socks.append(s)
        started = time.monotonic()
        resp = httpx.get(f"{stack.url}/v1/books", headers={"X-API-Key": stack.api_key}, timeout=10)
        assert resp.status_code == 200
        assert time.monotonic() - started < 5  # generous: an anti-starvation bound, not a benchmark
    finally:
        for s in socks:
            s.close()


def test_wrong_content_type_is_415(client: httpx.Client) -> None:
    resp = client.post("/v1/books", content=b"title=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 415 and _is_problem(resp)


def test_huge_limit_and_garbage_cursor_are_400(client: httpx.Client) -> None:
    for params in ({"limit": "10000000000000000000000"}, {"limit": "-1"}, {"cursor": "'; DROP TABLE x; --"}):
        resp = client.get("/v1/books", params=params)
        assert resp.status_code == 400 and _is_problem(resp), params
