"""Forwarding: hop-by-hop headers stripped both ways, X-Request-Id, X-Forwarded-*, body bounds."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from cachedapi import contract, model
from cachedapi.dev import devstack, embedded
from cachedapi.runtime.gateway import upstream
from tests.gateway.conftest import API_KEY, extra_gateway

ROOT = __file__.rsplit("/tests/", 1)[0]


@pytest.fixture(scope="module")
def echo_gateway(stack: devstack.Stack, bookstore_module: model.CachedApi) -> Iterator[devstack.Instance]:
    """A gateway in front of the echo upstream (a real process on a free port)."""
    port = embedded.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.gateway.echo_upstream", str(port)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        embedded.wait_for_port(port, proc=proc, timeout=20)
        env = {upstream.ENV_READ_TIMEOUT: "1"}
        with extra_gateway(stack, bookstore_module, upstream=f"http://127.0.0.1:{port}", env=env) as role:
            yield role
    finally:
        embedded.stop_process(proc, sig=signal.SIGKILL)  # a slow request may still be sleeping


def _echo(
    role: devstack.Instance, headers: dict[str, str], *, method: str = "GET", path: str = "/v1/orders"
) -> httpx.Response:
    return httpx.request(method, role.url + path, headers={"X-API-Key": API_KEY, **headers}, timeout=10)


def _seen(resp: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in resp.json()["headers"]}


def test_hop_by_hop_headers_are_stripped_both_ways(echo_gateway: devstack.Instance) -> None:
    resp = _echo(
        echo_gateway,
        {
            "Connection": "keep-alive, X-Client-Hop",
            "X-Client-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic abc",
            "TE": "trailers",
            "X-End-To-End": "kept",
        },
    )
    assert resp.status_code == 200
    seen = _seen(resp)
    for name in ("connection", "x-client-hop", "keep-alive", "proxy-authorization", "te"):
        assert name not in seen, name
    assert seen["x-end-to-end"] == "kept"
    for name in ("x-upstream-hop", "keep-alive", "proxy-authenticate"):
        assert name not in resp.headers, name
    assert resp.headers["x-end-to-end"] == "kept"


def test_credentials_stay_in_the_gateway(echo_gateway: devstack.Instance) -> None:
    seen = _seen(_echo(echo_gateway, {"Authorization": f"Bearer {API_KEY}"}))
    assert "x-api-key" not in seen
    assert "authorization" not in seen


def test_request_id_is_propagated_and_returned(echo_gateway: devstack.Instance) -> None:
    resp = _echo(echo_gateway, {"X-Request-Id": "trace-123"})
    assert resp.headers["x-request-id"] == "trace-123"
    assert _seen(resp)["x-request-id"] == "trace-123"


def test_request_id_is_generated_when_absent(echo_gateway: devstack.Instance) -> None:
    first, second = _echo(echo_gateway, {}), _echo(echo_gateway, {})
    assert first.headers["x-request-id"]
    assert first.headers["x-request-id"] == _seen(first)["x-request-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_forwarded_for_and_proto_are_added(echo_gateway: devstack.Instance) -> None:
    seen = _seen(_echo(echo_gateway, {"X-Forwarded-For": "203.0.113.9"}))
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"


def test_request_body_over_the_limit_is_413(echo_gateway: devstack.Instance) -> None:
    big = b"x" * (1_048_576 + 1)
    resp = httpx.post(f"{echo_gateway.url}/v1/orders", content=big, headers={"X-API-Key": API_KEY}, timeout=10)
    assert resp.status_code == 413
    assert resp.headers["content-type"] == contract.PROBLEM_JSON
    small = httpx.post(f"{echo_gateway.url}/v1/orders", content=b"{}", headers={"X-API-Key": API_KEY}, timeout=10)
    assert small.json()["bodyBytes"] == 2


def test_unknown_route_outside_v1_is_a_404_problem(echo_gateway: devstack.Instance) -> None:
    resp = httpx.get(f"{echo_gateway.url}/nowhere", timeout=10)
    assert resp.status_code == 404
    assert resp.headers["content-type"] == contract.PROBLEM_JSON


def test_head_passes_the_upstreams_content_length(echo_gateway: devstack.Instance) -> None:
    resp = _echo(echo_gateway, {}, method="HEAD")
    assert resp.status_code == 200
    assert int(resp.headers["content-length"]) > 0
    assert resp.content == b""


def test_an_upstream_too_slow_to_answer_gives_504_not_a_hang(echo_gateway: devstack.Instance) -> None:
    started = time.monotonic()
    resp = _echo(echo_gateway, {}, path="/v1/orders/slow")
    assert resp.status_code == 504
    assert resp.headers["content-type"] == contract.PROBLEM_JSON
    assert time.monotonic() - started < 8  # the upstream would take 10 s; the gateway waits 1 s
