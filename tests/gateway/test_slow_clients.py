"""Slow and idle clients: the header and body deadlines, the idle timeout, the caps, 431.

One gateway process with short deadlines and small caps (``spec.gateway.timeouts`` and
``.capacity``) in front of the module's api role. The clients are raw sockets, since what is
tested is what a connection sees: when it is closed, and what, if anything, it is answered.
Times are checked only as deadlines (closed within the deadline and a slack), never as speed.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from cachedapi import model
from cachedapi.dev import devstack
from cachedapi.runtime.gateway import server
from tests.gateway.conftest import API_KEY, extra_gateway, variant

HEADER_SECONDS = 2
BODY_SECONDS = 3
MAX_CONNECTIONS = 16
PER_CLIENT = 2
#: What a deadline may overrun by on a loaded 2-core machine.
SLACK = 3.0


@pytest.fixture(scope="module")
def gateway(stack: devstack.Stack, bookstore_module: model.CachedApi) -> Iterator[devstack.Instance]:
    api = variant(
        bookstore_module,
        gateway={
            "timeouts": {"requestHeaderSeconds": HEADER_SECONDS, "requestBodySeconds": BODY_SECONDS},
            "capacity": {"maxConnections": MAX_CONNECTIONS, "maxForwardsPerClient": PER_CLIENT},
        },
    )
    with extra_gateway(stack, api) as role:
        yield role


@contextlib.contextmanager
def connection(role: devstack.Instance, *, source: str = "127.0.0.1") -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", role.port), timeout=10, source_address=(source, 0))
    try:
        yield sock
    finally:
        sock.close()


def read_until_closed(sock: socket.socket, *, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took; fails past ``within``."""
    started = time.monotonic()
    received = b""
    while True:
        sock.settimeout(max(0.01, within - (time.monotonic() - started)))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"still open after {within} s; received {received[:200]!r}")
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return received, time.monotonic() - started
        received += chunk


def request_head(method: str, path: str, *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway", f"X-API-Key: {API_KEY}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def test_a_header_that_never_completes_is_cut_at_the_deadline(gateway: devstack.Instance) -> None:
    received = b""
    with connection(gateway) as sock:
        sock.sendall(b"GET /v1/books HTTP/1.1\r\nHost: gateway\r\n")
        started = time.monotonic()
        line = 0
        while True:
            # One more header line a second, as a slowloris client does: progress does not
            # extend the deadline.
            sock.settimeout(1.0)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                assert time.monotonic() - started < HEADER_SECONDS + SLACK, "still open past the deadline"
                line += 1
                try:
                    sock.sendall(b"X-Slow-%d: 1\r\n" % line)
                except (BrokenPipeError, ConnectionResetError):
                    break
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        elapsed = time.monotonic() - started
    assert received == b"", "hyper closes a late header's connection without an answer"
    assert line >= 1, "the client did send header lines before the deadline"
    assert HEADER_SECONDS - 0.5 <= elapsed <= HEADER_SECONDS + SLACK


def test_a_connection_that_sends_nothing_is_closed_at_the_deadline(gateway: devstack.Instance) -> None:
    with connection(gateway) as sock:
        answer, waited = read_until_closed(sock, within=HEADER_SECONDS + SLACK)
    assert answer == b""
    assert waited >= HEADER_SECONDS - 0.5


def test_an_idle_keep_alive_connection_is_closed(gateway: devstack.Instance) -> None:
    with connection(gateway) as sock:
        sock.sendall(request_head("GET", "/healthz"))
        first = b""
        while b'{"ok":true}' not in first:
            chunk = sock.recv(65536)
            assert chunk, f"closed before the answer: {first!r}"
            first += chunk
        assert status_of(first) == 200
        assert b"connection: close" not in first.lower(), "the connection is kept alive after the answer"
        rest, waited = read_until_closed(sock, within=HEADER_SECONDS + SLACK)
    assert rest == b""
    assert waited >= HEADER_SECONDS - 0.5


def test_a_late_body_is_answered_408_and_the_connection_closed(gateway: devstack.Instance) -> None:
    head = request_head("PUT", f"/v1/books/{uuid.uuid4().hex}", "Content-Type: application/json", "Content-Length: 100")
    with connection(gateway) as sock:
        sock.sendall(head + b'{"title": ')
        answer, waited = read_until_closed(sock, within=BODY_SECONDS + SLACK)
    assert status_of(answer) == 408
    assert b"application/problem+json" in answer
    assert b"connection: close" in answer.lower()
    assert waited >= BODY_SECONDS - 0.5


def test_a_body_that_arrives_in_time_is_forwarded(gateway: devstack.Instance) -> None:
    body = json.dumps({"title": "Slow but in time", "author": "T"}).encode()
    head = request_head(
        "PUT", f"/v1/books/{uuid.uuid4().hex}", "Content-Type: application/json", f"Content-Length: {len(body)}"
    )
    with connection(gateway) as sock:
        sock.sendall(head + body[:10])
        time.sleep(0.5)
        sock.sendall(body[10:])
        sock.settimeout(10)
        answer = sock.recv(65536)
    assert status_of(answer) == 201


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["X-Big: " + "a" * 40_000], True),  # over the app's 32 KB of header: the app's problem+json
        (["X-Big: " + "a" * 200_000], False),  # over granian's read buffer: hyper's bare 431
        ([f"X-Many-{i}: 1" for i in range(150)], False),  # over hyper's 100 fields
    ],
    ids=["40KB", "200KB", "150-fields"],
)
def test_an_oversized_header_is_answered_431(gateway: devstack.Instance, extra: list[str], problem: bool) -> None:
    with connection(gateway) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request_head("GET", "/v1/books", "Connection: close", *extra))
        answer, _ = read_until_closed(sock, within=10)
    assert status_of(answer) == 431
    assert (b"application/problem+json" in answer) == problem


def test_connections_past_the_cap_wait_until_one_is_freed(gateway: devstack.Instance) -> None:
    """Beyond maxConnections granian accepts nothing (no 503 can be sent from the listen queue):
    the next connection is served once the header deadline has freed a held one."""
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
            sock.sendall(b"GET /v1/books HTTP/1.1\r\nHost: gateway\r\n")
            held.append(sock)
        time.sleep(0.3)
        with connection(gateway) as extra:
            extra.sendall(request_head("GET", "/healthz", "Connection: close"))
            extra.settimeout(HEADER_SECONDS / 2)
            with pytest.raises(TimeoutError):
                extra.recv(65536)  # not accepted while all are held
            answer, _ = read_until_closed(extra, within=HEADER_SECONDS + SLACK)
        assert status_of(answer) == 200
        for sock in held:
            assert read_until_closed(sock, within=SLACK)[0] == b""
    finally:
        for sock in held:
            sock.close()


def test_one_address_over_its_cap_gets_503_while_others_are_served(gateway: devstack.Instance) -> None:
    item = f"cap-{uuid.uuid4().hex}"
    base = gateway.url
    with httpx.Client(base_url=base, headers={"X-API-Key": API_KEY}, timeout=10) as http:
        assert http.put(f"/v1/books/{item}", json={"title": "Cached", "author": "C"}).status_code in (200, 201)
        http.get(f"/v1/books/{item}")
        assert http.get(f"/v1/books/{item}").headers["x-cache"] == "HIT"
    head = request_head("PUT", f"/v1/books/{uuid.uuid4().hex}", "Content-Type: application/json", "Content-Length: 100")
    with connection(gateway) as first, connection(gateway) as second:
        # Two requests of 127.0.0.1 past the cache, reading bodies that do not come.
        first.sendall(head + b"{")
        second.sendall(head + b"{")
        time.sleep(0.5)
        bypass = {"X-API-Key": API_KEY, "Cache-Control": "no-cache"}
        same = httpx.get(f"{base}/v1/books/{item}", headers=bypass, timeout=10)
        hit = httpx.get(f"{base}/v1/books/{item}", headers={"X-API-Key": API_KEY}, timeout=10)
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=transport, timeout=10) as elsewhere:
            other = elsewhere.get(f"{base}/v1/books/{item}", headers=bypass)
        assert same.status_code == 503, same.text
        assert same.headers["retry-after"] == "1"
        assert same.headers["content-type"] == "application/problem+json"
        assert hit.status_code == 200 and hit.headers["x-cache"] == "HIT", "a hit is not counted against the cap"
        assert other.status_code == 200, "another address is served"
        assert status_of(read_until_closed(first, within=BODY_SECONDS + SLACK)[0]) == 408
        assert status_of(read_until_closed(second, within=SLACK)[0]) == 408
    again = httpx.get(f"{base}/v1/books/{item}", headers=bypass, timeout=10)
    assert again.status_code == 200, "the cap is freed when the requests end"
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert "cachedapi_gateway_over_capacity_total 1.0" in metrics
    assert "cachedapi_gateway_body_timeouts_total" in metrics


@pytest.mark.parametrize(
    ("limits", "wanted", "soft_after", "cap"),
    [
        ((1024, resource.RLIM_INFINITY), 4096, 4096 + 1024, 4096),  # raised: a container's soft 1024
        ((1024, 2048), 4096, 2048, 1536),  # raised to the hard limit, the cap lowered to fit under it
        ((65536, 65536), 4096, 65536, 4096),  # already enough: left as it is
    ],
)
def test_the_file_descriptor_limit_is_raised_for_the_connection_cap(
    monkeypatch: pytest.MonkeyPatch, limits: tuple[int, int], wanted: int, soft_after: int, cap: int
) -> None:
    state = {"limits": limits}
    monkeypatch.setattr(server.resource, "getrlimit", lambda _which: state["limits"])
    monkeypatch.setattr(server.resource, "setrlimit", lambda _which, new: state.update(limits=new))
    assert server.connection_cap(wanted) == cap
    assert state["limits"] == (soft_after, limits[1])
