"""Writes and purges (RFC 9111 section 4.4, cache tags, the admin endpoint): whatever they retire
is retired on every gateway replica before the write's or the purge's answer goes out."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cachedapi import contract
from cachedapi.dev import devstack, embedded
from tests.gateway import httpcache_support as hc

CACHED = [["cache-control", "max-age=300"]]


@pytest.fixture(scope="module")
def up() -> Iterator[hc.Upstream]:
    with hc.upstream() as server:
        yield server


@pytest.fixture(scope="module")
def pair(up: hc.Upstream, redis_server: embedded.RedisServer) -> Iterator[list[devstack.Instance]]:
    """Two replicas: a write through one must retire what the other holds."""
    with hc.gateways(hc.config(up.url), redis_url=redis_server.url, count=2) as roles:
        yield roles


def get(role: devstack.Instance, path: str) -> httpx.Response:
    return httpx.get(role.url + path, timeout=10)


def warm(pair: list[devstack.Instance], *paths: str) -> None:
    for path in paths:
        for role in pair:
            get(role, path)
        assert get(pair[1], path).headers["x-cache"] == "HIT", path


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_a_write_retires_its_target_on_every_replica(
    up: hc.Upstream, pair: list[devstack.Instance], method: str
) -> None:
    path = hc.unique()
    up.route(path, headers=CACHED)
    warm(pair, path, path + "?page=2")
    written = httpx.request(method, pair[0].url + path, content=b"{}", timeout=10)
    assert written.status_code == 200
    fresh = get(pair[1], path)
    assert fresh.headers["x-cache"] == "MISS"
    assert get(pair[0], path).json()["n"] == fresh.json()["n"]
    # The token is per path: every query string of it is retired too.
    assert get(pair[1], path + "?page=2").headers["x-cache"] == "MISS"


def test_location_and_content_location_are_retired_when_same_origin(
    up: hc.Upstream, pair: list[devstack.Instance]
) -> None:
    collection, item, described, foreign = hc.unique(), hc.unique(), hc.unique(), hc.unique()
    for path in (item, described, foreign):
        up.route(path, headers=CACHED)
    up.route(
        collection,
        method="POST",
        status=201,
        headers=[
            ["location", item],
            ["content-location", f"http://127.0.0.1:{up.port}{described}"],
        ],
    )
    up.route(foreign, method="PUT", headers=[["location", f"https://elsewhere.example{item}"]])
    warm(pair, item, described)
    assert httpx.post(pair[0].url + collection, content=b"{}", timeout=10).status_code == 201
    assert get(pair[1], item).headers["x-cache"] == "MISS"
    assert get(pair[1], described).headers["x-cache"] == "MISS"
    warm(pair, item)
    httpx.put(pair[0].url + foreign, content=b"{}", timeout=10)
    assert get(pair[1], item).headers["x-cache"] == "HIT"


def test_an_error_answer_to_a_write_retires_nothing_but_a_5xx_retires_the_target(
    up: hc.Upstream, pair: list[devstack.Instance]
) -> None:
    refused, broken = hc.unique(), hc.unique()
    for path in (refused, broken):
        up.route(path, headers=CACHED)
    up.route(refused, method="PUT", status=409)
    up.route(broken, method="PUT", status=500)
    warm(pair, refused, broken)
    assert httpx.put(pair[0].url + refused, content=b"{}", timeout=10).status_code == 409
    assert httpx.put(pair[0].url + broken, content=b"{}", timeout=10).status_code == 500
    assert get(pair[1], refused).headers["x-cache"] == "HIT"
    assert get(pair[1], broken).headers["x-cache"] == "MISS"


def test_safe_methods_retire_nothing(up: hc.Upstream, pair: list[devstack.Instance]) -> None:
    path = hc.unique()
    up.route(path, headers=CACHED)
    warm(pair, path)
    assert httpx.options(pair[0].url + path, timeout=10).status_code == 200
    assert get(pair[1], path).headers["x-cache"] == "HIT"


def test_a_writes_purge_header_retires_tagged_entries_everywhere(
    up: hc.Upstream, pair: list[devstack.Instance]
) -> None:
    tag = f"product-{uuid.uuid4().hex[:6]}"
    listing, item, untagged, writer = hc.unique(), hc.unique(), hc.unique(), hc.unique()
    up.route(listing, headers=[*CACHED, ["cache-tag", f"catalogue, {tag}"]])
    up.route(item, headers=[*CACHED, ["cache-tag", tag]])
    up.route(untagged, headers=CACHED)
    up.route(writer, method="PUT", headers=[[contract.PURGE_TAG_HEADER, tag]])
    warm(pair, listing, item, untagged)
    written = httpx.put(pair[0].url + writer, content=b"{}", timeout=10)
    assert contract.PURGE_TAG_HEADER not in written.headers
    for role in pair:
        assert get(role, listing).json()["n"] == 2
    assert get(pair[1], item).headers["x-cache"] == "MISS"
    assert get(pair[1], untagged).headers["x-cache"] == "HIT"


def purge(role: devstack.Instance, body: Any, *, key: str | None = hc.ADMIN_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(role.url + contract.ADMIN_PURGE_PATH, json=body, headers=headers, timeout=10)


def test_the_admin_endpoint_purges_tags_and_paths(up: hc.Upstream, pair: list[devstack.Instance]) -> None:
    tag = f"t-{uuid.uuid4().hex[:6]}"
    tagged, path, kept = hc.unique(), hc.unique(), hc.unique()
    up.route(tagged, headers=[*CACHED, ["cache-tag", tag]])
    up.route(path, headers=CACHED)
    up.route(kept, headers=CACHED)
    warm(pair, tagged, path, kept)
    done = purge(pair[0], {"tags": [tag], "paths": [path + "?ignored=1"]})
    assert done.status_code == 200
    assert done.json() == {"purged": {"tags": [tag], "paths": [path]}}
    assert get(pair[1], tagged).headers["x-cache"] == "MISS"
    assert get(pair[1], path).headers["x-cache"] == "MISS"
    assert get(pair[1], kept).headers["x-cache"] == "HIT"


def test_the_admin_endpoint_needs_the_admin_key(pair: list[devstack.Instance]) -> None:
    body = {"tags": ["x"]}
    assert purge(pair[0], body, key=None).status_code == 401
    assert purge(pair[0], body, key="wrong").status_code == 403
    assert purge(pair[0], body, key=hc.API_KEYS["alice"]).status_code == 403
    assert httpx.get(pair[0].url + contract.ADMIN_PURGE_PATH, timeout=10).status_code == 405
    assert purge(pair[0], {"tags": "x"}).status_code == 400
    assert purge(pair[0], {}).status_code == 400


def test_without_an_admin_key_every_purge_is_refused(up: hc.Upstream, redis_server: embedded.RedisServer) -> None:
    with hc.gateways(hc.config(up.url), redis_url=redis_server.url, env={contract.ENV_ADMIN_KEY: ""}) as (role,):
        assert purge(role, {"tags": ["x"]}, key="x").status_code == 403
        assert purge(role, {"tags": ["x"]}).status_code == 403


def test_the_admin_path_is_404_with_the_bundled_api(up: hc.Upstream, redis_server: embedded.RedisServer) -> None:
    data = hc.config(up.url)
    data["upstream"] = {"mode": contract.UPSTREAM_BUNDLED}
    with hc.gateways(data, redis_url=redis_server.url) as (role,):
        assert purge(role, {"tags": ["x"]}).status_code == 404
