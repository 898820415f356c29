"""Who the upstream is told is calling: the gateway's identity fields (a client's own copies
dropped), credentials kept in the gateway unless ``forwardCredentials``, and per-caller entries."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from cachedapi import contract
from cachedapi.dev import devstack, embedded
from tests.gateway import httpcache_support as hc

ROUTES = [{"path": "/me/*", "byCaller": True}]


@pytest.fixture(scope="module")
def up() -> Iterator[hc.Upstream]:
    with hc.upstream() as server:
        yield server


@pytest.fixture(scope="module")
def keyed(up: hc.Upstream, redis_server: embedded.RedisServer) -> Iterator[devstack.Instance]:
    with hc.gateways(hc.config(up.url, auth="apiKey", routes=ROUTES), redis_url=redis_server.url) as (role,):
        yield role


def seen(resp: httpx.Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in resp.json()["headers"]:
        out.setdefault(name, []).append(value)
    return out


def test_the_caller_and_how_it_authenticated_are_set_by_the_gateway(up: hc.Upstream, keyed: devstack.Instance) -> None:
    resp = httpx.get(
        keyed.url + hc.unique(),
        headers={
            "X-API-Key": hc.API_KEYS["alice"],
            contract.CALLER_HEADER: "mallory",
            contract.CALLER_AUTH_HEADER: "admin",
        },
        timeout=10,
    )
    assert resp.status_code == 200
    fields = seen(resp)
    assert fields[contract.CALLER_HEADER] == ["alice"]
    assert fields[contract.CALLER_AUTH_HEADER] == ["apiKey"]
    assert "x-api-key" not in fields
    assert "authorization" not in fields


def test_bearer_api_keys_are_not_forwarded_either(up: hc.Upstream, keyed: devstack.Instance) -> None:
    resp = httpx.post(
        keyed.url + hc.unique(), headers={"Authorization": f"Bearer {hc.API_KEYS['bob']}"}, content=b"{}", timeout=10
    )
    fields = seen(resp)
    assert "authorization" not in fields
    assert fields[contract.CALLER_HEADER] == ["bob"]


def test_forward_credentials_passes_them_on(up: hc.Upstream, redis_server: embedded.RedisServer) -> None:
    data = hc.config(up.url, auth="apiKey", forward_credentials=True)
    with hc.gateways(data, redis_url=redis_server.url) as (role,):
        resp = httpx.get(role.url + hc.unique(), headers={"X-API-Key": hc.API_KEYS["alice"]}, timeout=10)
        assert seen(resp)["x-api-key"] == [hc.API_KEYS["alice"]]


def test_without_authentication_the_caller_is_empty(up: hc.Upstream, redis_server: embedded.RedisServer) -> None:
    with hc.gateways(hc.config(up.url), redis_url=redis_server.url) as (role,):
        resp = httpx.get(role.url + hc.unique(), headers={contract.CALLER_HEADER: "forged"}, timeout=10)
        fields = seen(resp)
        assert fields[contract.CALLER_HEADER] == [""]
        assert fields[contract.CALLER_AUTH_HEADER] == ["none"]


def test_every_path_needs_a_key(keyed: devstack.Instance) -> None:
    for path in ("/anything", "/openapi.json", "/docs"):
        assert httpx.get(keyed.url + path, timeout=10).status_code == 401
    assert httpx.get(keyed.url + "/healthz", timeout=10).status_code == 200


def test_a_by_caller_route_keeps_one_entry_per_caller_even_private_ones(
    up: hc.Upstream, keyed: devstack.Instance
) -> None:
    path = hc.unique("/me")
    up.route(path, headers=[["cache-control", "private, max-age=60"]])

    def as_(label: str) -> httpx.Response:
        return httpx.get(keyed.url + path, headers={"X-API-Key": hc.API_KEYS[label]}, timeout=10)

    assert as_("alice").json()["n"] == 1
    assert as_("bob").json()["n"] == 2
    alice = as_("alice")
    assert (alice.headers["x-cache"], alice.json()["n"]) == ("HIT", 1)
    assert seen(alice)[contract.CALLER_HEADER] == ["alice"]
    assert as_("bob").json()["n"] == 2
    assert up.count(path) == 2


def test_private_answers_on_shared_routes_are_never_served_to_another_caller(
    up: hc.Upstream, keyed: devstack.Instance
) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "private, max-age=60"]])
    for label in ("alice", "bob", "alice"):
        resp = httpx.get(keyed.url + path, headers={"X-API-Key": hc.API_KEYS[label]}, timeout=10)
        assert seen(resp)[contract.CALLER_HEADER] == [label]
    assert up.count(path) == 3
