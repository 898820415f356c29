"""The rate limit: GCRA in Redis, shared by every gateway replica."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import httpx
import pytest

from cachedapi import contract, model
from cachedapi.dev import devstack
from tests.gateway.conftest import extra_gateway, variant

RATE = 0.2  # per second: a test's few seconds add at most a request or two
BURST = 5
KEYS = ["burst-key", "shared-key"]


@pytest.fixture(scope="module")
def limited(stack: devstack.Stack, bookstore_module: model.CachedApi) -> Iterator[list[devstack.Instance]]:
    """Two gateways with a low limit, in front of the same api role and Redis."""
    api = variant(bookstore_module, gateway={"rateLimit": {"requestsPerSecond": RATE, "burst": BURST, "by": "apiKey"}})
    env = {contract.ENV_API_KEYS: ",".join(KEYS)}
    with extra_gateway(stack, api, env=env) as first, extra_gateway(stack, api, env=env) as second:
        yield [first, second]


def _get(role: devstack.Instance, key: str) -> httpx.Response:
    return httpx.get(f"{role.url}/v1/books", headers={"X-API-Key": key}, timeout=10)


def test_burst_past_the_limit_gets_429_with_retry_after(limited: list[devstack.Instance]) -> None:
    started = time.monotonic()
    answers = [_get(limited[0], "burst-key") for _ in range(BURST + 3)]
    allowed = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert BURST <= len(allowed) <= BURST + math.ceil((time.monotonic() - started) * RATE)
    assert refused, "no request was limited"
    assert [a.status_code for a in answers[:BURST]] == [200] * BURST
    remaining = [int(a.headers["ratelimit-remaining"]) for a in allowed[:BURST]]
    assert remaining == sorted(remaining, reverse=True)
    assert remaining[-1] == 0
    last = refused[-1]
    assert last.headers["content-type"] == contract.PROBLEM_JSON
    assert int(last.headers["retry-after"]) >= 1
    assert last.headers["ratelimit-limit"] == str(BURST)
    assert last.headers["ratelimit-remaining"] == "0"
    assert int(last.headers["ratelimit-reset"]) >= 1


def test_two_gateways_share_one_limit(limited: list[devstack.Instance]) -> None:
    started = time.monotonic()
    answers = [_get(limited[i % 2], "shared-key") for i in range(2 * BURST + 2)]
    allowed = sum(a.status_code == 200 for a in answers)
    assert BURST <= allowed <= BURST + math.ceil((time.monotonic() - started) * RATE)
    assert {a.status_code for a in answers} == {200, 429}


def test_failed_authentication_is_limited_by_client_ip(limited: list[devstack.Instance]) -> None:
    answers = [_get(limited[0], "wrong-key") for _ in range(BURST + 2)]
    assert [a.status_code for a in answers[:BURST]] == [401] * BURST
    assert answers[-1].status_code == 429
    assert "ratelimit-remaining" in answers[0].headers


def test_limit_by_client_ip_is_shared_by_every_key_from_that_address(
    stack: devstack.Stack, bookstore_module: model.CachedApi
) -> None:
    api = variant(bookstore_module, gateway={"rateLimit": {"requestsPerSecond": RATE, "burst": 3, "by": "clientIP"}})
    with extra_gateway(stack, api, env={contract.ENV_API_KEYS: "ip-key-a,ip-key-b"}) as gateway:
        first = [_get(gateway, "ip-key-a").status_code for _ in range(3)]
        other_key = _get(gateway, "ip-key-b")
    assert first == [200, 200, 200]
    assert other_key.status_code == 429
