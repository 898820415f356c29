"""Stale entries and what a request asks: conditional revalidation (304 refreshes the entry),
stale-while-revalidate and stale-if-error (RFC 5861), the request's own Cache-Control, HEAD
from a stored GET, the client's conditionals, and Vary."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from cachedapi.dev import devstack, embedded
from tests.gateway import httpcache_support as hc

LAST_MODIFIED = "Tue, 01 Dec 2026 10:00:00 GMT"
ROUTES = [{"path": "/tenant/*", "varyHeaders": ["x-tenant"]}]


@pytest.fixture(scope="module")
def up() -> Iterator[hc.Upstream]:
    with hc.upstream() as server:
        yield server


@pytest.fixture(scope="module")
def gw(up: hc.Upstream, redis_server: embedded.RedisServer) -> Iterator[devstack.Instance]:
    with hc.gateways(hc.config(up.url, routes=ROUTES), redis_url=redis_server.url) as (role,):
        yield role


def get(role: devstack.Instance, path: str, **headers: str) -> httpx.Response:
    return httpx.get(role.url + path, headers=headers, timeout=10)


def test_a_stale_entry_with_an_etag_is_revalidated_and_the_304_refreshes_it(
    up: hc.Upstream, gw: devstack.Instance
) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=1"], ["x-version", "one"]], etag='"v1"')
    assert get(gw, path).headers["x-cache"] == "MISS"
    time.sleep(2.1)
    # The 304 brings a new field value and a longer lifetime: both replace the stored ones.
    up.route(path, headers=[["cache-control", "max-age=60"], ["x-version", "two"]], etag='"v1"')
    again = get(gw, path)
    assert again.headers["x-cache"] == "REVALIDATED"
    assert again.json()["n"] == 1
    assert again.headers["x-version"] == "two"
    assert int(again.headers["age"]) <= 1
    hit = get(gw, path)
    assert hit.headers["x-cache"] == "HIT"
    assert hit.headers["x-version"] == "two"
    assert hit.headers["cache-control"] == "max-age=60"
    counts = up.counts()
    assert (counts[f"GET {path}"], counts[f"304 {path}"]) == (2, 1)


def test_last_modified_is_revalidated_with_if_modified_since(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=1"]], last_modified=LAST_MODIFIED)
    get(gw, path)
    time.sleep(2.1)
    assert get(gw, path).headers["x-cache"] == "REVALIDATED"
    assert up.counts()[f"304 {path}"] == 1


def test_a_changed_representation_replaces_the_entry(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=1"]], etag='"v1"')
    get(gw, path)
    time.sleep(2.1)
    up.route(path, headers=[["cache-control", "max-age=60"]], etag='"v2"')
    changed = get(gw, path)
    assert changed.headers["x-cache"] == "MISS"
    assert changed.headers["etag"] == '"v2"'
    assert get(gw, path).json()["n"] == 2


def test_stale_while_revalidate_answers_stale_and_refreshes_in_the_background(
    up: hc.Upstream, gw: devstack.Instance
) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=1, stale-while-revalidate=30"]])
    get(gw, path)
    time.sleep(2.1)
    stale = get(gw, path)
    assert stale.headers["x-cache"] == "STALE"
    assert stale.json()["n"] == 1
    deadline = time.monotonic() + 5
    while up.count(path) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    fresh = get(gw, path)
    assert fresh.headers["x-cache"] == "HIT"
    assert fresh.json()["n"] == 2


def test_past_the_swr_window_the_request_waits_for_the_upstream(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=1, stale-while-revalidate=1"]])
    get(gw, path)
    time.sleep(3.1)
    assert get(gw, path).headers["x-cache"] == "MISS"


def test_stale_if_error_answers_the_entry_when_the_upstream_fails(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    cache_control = "max-age=1, stale-if-error=60"
    up.route(path, headers=[["cache-control", cache_control]])
    get(gw, path)
    time.sleep(2.1)
    up.route(path, status=503, headers=[["cache-control", cache_control]])
    rescued = get(gw, path)
    assert rescued.status_code == 200
    assert rescued.headers["x-cache"] == "STALE"
    assert rescued.json()["n"] == 1


def test_without_stale_if_error_the_failure_is_passed_on(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=1"]])
    get(gw, path)
    time.sleep(2.1)
    up.route(path, status=503)
    assert get(gw, path).status_code == 503


def test_the_specs_stale_windows_are_defaults_for_answers_that_say_nothing(
    up: hc.Upstream, redis_server: embedded.RedisServer
) -> None:
    said, silent = hc.unique(), hc.unique()
    up.route(said, headers=[["cache-control", "max-age=1, stale-while-revalidate=0"]])
    up.route(silent, headers=[["cache-control", "max-age=1"]])
    with hc.gateways(hc.config(up.url, swr=30), redis_url=redis_server.url) as (role,):
        get(role, said)
        get(role, silent)
        time.sleep(2.1)
        assert get(role, said).headers["x-cache"] == "MISS"
        assert get(role, silent).headers["x-cache"] == "STALE"


def test_stale_if_error_when_the_upstream_is_gone(redis_server: embedded.RedisServer) -> None:
    path = hc.unique()
    with hc.upstream() as server:
        server.route(path, headers=[["cache-control", "max-age=1, stale-if-error=60"]])
        with hc.gateways(hc.config(server.url), redis_url=redis_server.url) as (role,):
            get(role, path)
            server.stop()
            time.sleep(2.1)
            rescued = get(role, path)
            assert (rescued.status_code, rescued.headers["x-cache"]) == (200, "STALE")
            other = get(role, hc.unique())
            assert other.status_code == 502


def test_request_no_cache_and_max_age_0_revalidate(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=60"]], etag='"v1"')
    get(gw, path)
    for value in ("no-cache", "max-age=0"):
        answer = get(gw, path, **{"Cache-Control": value})
        assert answer.headers["x-cache"] == "REVALIDATED", value
    assert up.counts()[f"304 {path}"] == 2


def test_request_max_age_and_min_fresh_refuse_an_entry_too_old(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=60"]])
    get(gw, path)
    time.sleep(2.1)
    assert get(gw, path, **{"Cache-Control": "max-age=30"}).headers["x-cache"] == "HIT"
    assert get(gw, path, **{"Cache-Control": "max-age=1"}).headers["x-cache"] == "MISS"
    assert get(gw, path, **{"Cache-Control": "min-fresh=10"}).headers["x-cache"] == "HIT"
    assert get(gw, path, **{"Cache-Control": "min-fresh=100"}).headers["x-cache"] == "MISS"


def test_request_max_stale_accepts_a_stale_entry(up: hc.Upstream, gw: devstack.Instance) -> None:
    path, other, strict = hc.unique(), hc.unique(), hc.unique()
    # With a validator, so that Redis keeps the entries past their lifetime.
    up.route(path, headers=[["cache-control", "max-age=1"]], etag='"a"')
    up.route(other, headers=[["cache-control", "max-age=1"]], etag='"a"')
    up.route(strict, headers=[["cache-control", "max-age=1, must-revalidate"]], etag='"b"')
    for each in (path, other, strict):
        get(gw, each)
    time.sleep(2.1)
    assert get(gw, path, **{"Cache-Control": "max-stale=60"}).headers["x-cache"] == "STALE"
    assert get(gw, other, **{"Cache-Control": "max-stale"}).headers["x-cache"] == "STALE"
    assert get(gw, other, **{"Cache-Control": "max-stale=0"}).headers["x-cache"] in ("HIT", "REVALIDATED")
    assert get(gw, strict, **{"Cache-Control": "max-stale"}).headers["x-cache"] == "REVALIDATED"


def test_only_if_cached_is_504_without_an_entry(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=60"]])
    missing = get(gw, path, **{"Cache-Control": "only-if-cached"})
    assert missing.status_code == 504
    assert up.count(path) == 0
    get(gw, path)
    assert get(gw, path, **{"Cache-Control": "only-if-cached"}).headers["x-cache"] == "HIT"


def test_head_is_answered_from_the_stored_get_and_a_head_miss_fills_it(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=60"]])
    head = httpx.head(gw.url + path, timeout=10)
    assert head.status_code == 200
    assert head.content == b""
    length = int(head.headers["content-length"])
    got = get(gw, path)
    assert got.headers["x-cache"] == "HIT"
    assert len(got.content) == length
    again = httpx.head(gw.url + path, timeout=10)
    assert (again.headers["x-cache"], again.content) == ("HIT", b"")
    assert up.count(path) == 1


def test_the_clients_if_none_match_gets_a_304_from_the_entry(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=60"]], etag='"v7"', last_modified=LAST_MODIFIED)
    get(gw, path)
    matched = get(gw, path, **{"If-None-Match": '"v7"'})
    assert matched.status_code == 304
    assert matched.headers["etag"] == '"v7"'
    assert matched.headers["x-cache"] == "HIT"
    assert get(gw, path, **{"If-None-Match": '"other"'}).status_code == 200
    assert get(gw, path, **{"If-Modified-Since": LAST_MODIFIED}).status_code == 304
    # On a miss too: the fill asks for the whole answer and judges the condition itself.
    fresh = hc.unique()
    up.route(fresh, headers=[["cache-control", "max-age=60"]], etag='"v7"')
    assert get(gw, fresh, **{"If-None-Match": '"v7"'}).status_code == 304
    assert get(gw, fresh).status_code == 200
    assert up.count(fresh) == 1


def test_vary_keeps_one_entry_per_variant(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=60"], ["vary", "Accept-Language"]])
    english = get(gw, path, **{"Accept-Language": "en"})
    french = get(gw, path, **{"Accept-Language": "fr"})
    assert (english.json()["n"], french.json()["n"]) == (1, 2)
    for _ in range(2):
        assert get(gw, path, **{"Accept-Language": "en"}).json()["n"] == 1
        assert get(gw, path, **{"Accept-Language": "fr"}).json()["n"] == 2
    assert get(gw, path).json()["n"] == 3  # no Accept-Language: a third variant
    assert up.count(path) == 3


def test_route_vary_headers_select_entries(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique("/tenant")
    up.route(path, headers=[["cache-control", "max-age=60"]])
    assert get(gw, path, **{"X-Tenant": "a"}).json()["n"] == 1
    assert get(gw, path, **{"X-Tenant": "b"}).json()["n"] == 2
    assert get(gw, path, **{"X-Tenant": "a"}).json()["n"] == 1
    assert up.count(path) == 2


def test_the_query_is_part_of_the_key_as_sent(up: hc.Upstream, gw: devstack.Instance) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=60"]])
    assert get(gw, path + "?a=1&b=2").json()["query"] == "a=1&b=2"
    assert get(gw, path + "?a=1&b=2").headers["x-cache"] == "HIT"
    assert get(gw, path + "?b=2&a=1").headers["x-cache"] == "MISS"
