"""The shared cache's storage and freshness rules (RFC 9111 sections 3, 4.2, 5.2.2), against a real
upstream process and real Redis: what is stored, for how long, and with what Age."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator

import httpx
import pytest

from cachedapi.dev import devstack, embedded
from tests.gateway import httpcache_support as hc

ROUTES = [
    {"path": "/ttl/*", "ttlSeconds": 60},
    {"path": "/never/*", "ttlSeconds": 0},
]


@pytest.fixture(scope="module")
def up() -> Iterator[hc.Upstream]:
    with hc.upstream() as server:
        yield server


@pytest.fixture(scope="module")
def gw(up: hc.Upstream, redis_server: embedded.RedisServer) -> Iterator[devstack.Instance]:
    with hc.gateways(hc.config(up.url, routes=ROUTES), redis_url=redis_server.url) as (role,):
        yield role


@pytest.fixture(scope="module")
def keyed(up: hc.Upstream, redis_server: embedded.RedisServer) -> Iterator[devstack.Instance]:
    """A gateway whose callers authenticate with API keys."""
    with hc.gateways(hc.config(up.url, auth="apiKey"), redis_url=redis_server.url) as (role,):
        yield role


def get(role: devstack.Instance, path: str, **headers: str) -> httpx.Response:
    return httpx.get(role.url + path, headers=headers, timeout=10)


def twice(up: hc.Upstream, role: devstack.Instance, path: str, **headers: str) -> tuple[httpx.Response, int]:
    """Two GETs; the second answer and how many reached the upstream."""
    get(role, path, **headers)
    second = get(role, path, **headers)
    return second, up.count(path)


@pytest.mark.parametrize(
    "cache_control",
    ["max-age=60", "s-maxage=60", "public, max-age=60", "max-age=0, s-maxage=60"],
)
def test_explicit_freshness_is_stored(up: hc.Upstream, gw: devstack.Instance, cache_control: str) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", cache_control]])
    second, count = twice(up, gw, path)
    assert count == 1
    assert second.headers["x-cache"] == "HIT"
    assert second.json()["n"] == 1
    assert second.headers["cache-control"] == cache_control


def test_expires_minus_date_gives_the_lifetime(up: hc.Upstream, gw: devstack.Instance) -> None:
    path, past = hc.unique(), hc.unique()
    up.route(path, headers=[["expires", email.utils.formatdate(time.time() + 60, usegmt=True)]])
    up.route(past, headers=[["expires", "0"]])
    assert twice(up, gw, path)[1] == 1
    assert twice(up, gw, past)[1] == 2


def test_max_age_expires_and_the_next_request_refetches(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=1"]])
    assert twice(up, gw, path)[1] == 1
    time.sleep(2.1)
    again = get(gw, path)
    assert again.headers["x-cache"] == "MISS"
    assert again.json()["n"] == 2


def test_s_maxage_wins_over_max_age(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=60, s-maxage=1"]])
    assert twice(up, gw, path)[1] == 1
    time.sleep(2.1)
    assert get(gw, path).json()["n"] == 2


def test_without_freshness_nothing_is_stored_unless_a_route_gives_a_ttl(up: hc.Upstream, gw: devstack.Instance) -> None:
    plain, ruled = hc.unique(), hc.unique("/ttl")
    up.route(plain)
    up.route(ruled)
    second, count = twice(up, gw, plain)
    assert (second.headers["x-cache"], count) == ("MISS", 2)
    second, count = twice(up, gw, ruled)
    assert (second.headers["x-cache"], count) == ("HIT", 1)


def test_route_ttl_0_never_caches_even_with_max_age(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique("/never")
    up.route(path, headers=[["cache-control", "max-age=60"]])
    second, count = twice(up, gw, path)
    assert (second.headers["x-cache"], count) == ("BYPASS", 2)


def test_heuristic_statuses_use_the_route_ttl_and_others_need_explicit_freshness(
    up: hc.Upstream, gw: devstack.Instance
) -> None:
    gone, redirect, explicit = hc.unique("/ttl"), hc.unique("/ttl"), hc.unique()
    up.route(gone, status=404)
    up.route(redirect, status=302, headers=[["location", "/elsewhere"]])
    up.route(explicit, status=302, headers=[["location", "/elsewhere"], ["cache-control", "max-age=60"]])
    assert twice(up, gw, gone)[1] == 1
    assert twice(up, gw, redirect)[1] == 2
    assert twice(up, gw, explicit)[1] == 1


@pytest.mark.parametrize("cache_control", ["no-store", "private, max-age=60", "max-age=60, no-store"])
def test_no_store_and_private_are_not_stored(up: hc.Upstream, gw: devstack.Instance, cache_control: str) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", cache_control]])
    second, count = twice(up, gw, path)
    assert count == 2
    assert second.headers["x-cache"] == "MISS"


def test_request_no_store_is_answered_but_not_stored(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=60"]])
    get(gw, path, **{"Cache-Control": "no-store"})
    assert get(gw, path).headers["x-cache"] == "MISS"
    assert up.count(path) == 2


def test_no_cache_is_stored_but_revalidated_every_time(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "no-cache"]], etag='"v1"')
    first = get(gw, path)
    assert first.headers["x-cache"] == "MISS"
    for _ in range(2):
        again = get(gw, path)
        assert again.headers["x-cache"] == "REVALIDATED"
        assert again.json()["n"] == 1  # the stored body: the upstream said 304
    counts = up.counts()
    assert counts[f"GET {path}"] == 3
    assert counts[f"304 {path}"] == 2


@pytest.mark.parametrize("directive", ["must-revalidate", "proxy-revalidate", "s-maxage=1"])
def test_must_revalidate_is_never_served_stale(
    up: hc.Upstream, redis_server: embedded.RedisServer, directive: str
) -> None:
    path = hc.unique()
    cache_control = f"max-age=1, {directive}, stale-while-revalidate=60, stale-if-error=60"
    up.route(path, headers=[["cache-control", cache_control]])
    with hc.gateways(hc.config(up.url, swr=60, sie=60), redis_url=redis_server.url) as (role,):
        assert twice(up, role, path)[1] == 1
        time.sleep(2.1)
        up.route(path, status=503, headers=[["cache-control", cache_control]])
        failed = get(role, path)
        assert failed.status_code == 503
        assert failed.headers["x-cache"] == "MISS"


def test_credentials_need_public_s_maxage_or_must_revalidate(up: hc.Upstream, keyed: devstack.Instance) -> None:
    key = {"X-API-Key": hc.API_KEYS["alice"]}
    plain, public, shared, revalidated = hc.unique(), hc.unique(), hc.unique(), hc.unique()
    up.route(plain, headers=[["cache-control", "max-age=60"]])
    up.route(public, headers=[["cache-control", "public, max-age=60"]])
    up.route(shared, headers=[["cache-control", "s-maxage=60"]])
    up.route(revalidated, headers=[["cache-control", "max-age=60, must-revalidate"]])
    assert twice(up, keyed, plain, **key)[1] == 2
    for path in (public, shared, revalidated):
        second, count = twice(up, keyed, path, **key)
        assert count == 1, path
        assert second.headers["x-cache"] == "HIT"


def test_answers_to_authenticated_callers_are_made_private_downstream(
    up: hc.Upstream, keyed: devstack.Instance
) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "s-maxage=60"]])
    second, _ = twice(up, keyed, path, **{"X-API-Key": hc.API_KEYS["bob"]})
    assert second.headers["cache-control"] == "private, s-maxage=60"


def test_age_counts_the_upstreams_age_and_the_time_in_the_cache(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=60"], ["age", "10"]])
    first = get(gw, path)
    assert 10 <= int(first.headers["age"]) <= 11
    time.sleep(2.1)
    later = get(gw, path)
    assert later.headers["x-cache"] == "HIT"
    assert 12 <= int(later.headers["age"]) <= 13


def test_an_upstream_age_past_max_age_is_already_stale(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=5"], ["age", "30"]])
    assert twice(up, gw, path)[1] == 2


def test_a_delayed_answer_starts_out_as_old_as_its_delay(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=60"]], delay=1.2)
    assert int(get(gw, path).headers["age"]) >= 1


def test_set_cookie_is_not_stored_unless_public_and_then_not_passed_on(up: hc.Upstream, gw: devstack.Instance) -> None:
    private, public = hc.unique(), hc.unique()
    up.route(private, headers=[["cache-control", "max-age=60"], ["set-cookie", "s=1"]])
    up.route(public, headers=[["cache-control", "public, max-age=60"], ["set-cookie", "s=2"]])
    assert twice(up, gw, private)[1] == 2
    first = get(gw, public)
    assert first.headers["set-cookie"] == "s=2"  # the miss's own answer keeps it
    hit = get(gw, public)
    assert hit.headers["x-cache"] == "HIT"
    assert "set-cookie" not in hit.headers


def test_hop_by_hop_fields_and_cache_tags_are_neither_stored_nor_passed(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(
        path,
        headers=[
            ["cache-control", "max-age=60"],
            ["connection", "x-hop"],
            ["x-hop", "secret"],
            ["keep-alive", "timeout=5"],
            ["proxy-authenticate", "Basic"],
            ["cache-tag", "product-1, catalogue"],
            ["x-end-to-end", "kept"],
        ],
    )
    for answer in (get(gw, path), get(gw, path)):
        for name in ("x-hop", "keep-alive", "proxy-authenticate", "cache-tag"):
            assert name not in answer.headers, name
        assert answer.headers["x-end-to-end"] == "kept"
    assert up.count(path) == 1


def test_vary_star_is_never_stored(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=60"], ["vary", "*"]])
    assert twice(up, gw, path)[1] == 2


def test_the_stored_body_is_answered_byte_for_byte(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    body = "".join(chr(c) for c in range(32, 127)) * 300 + "\n\r\n end"
    up.route(path, headers=[["cache-control", "max-age=60"], ["content-type", "text/plain"]], body=body)
    get(gw, path)
    hit = get(gw, path)
    assert hit.headers["x-cache"] == "HIT"
    assert hit.content == body.encode()
    assert hit.headers["content-length"] == str(len(body))
