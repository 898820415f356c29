"""The gateway's one HTTP client (``gateway/lean.py``): against a real HTTP server (uvicorn, in this
process), and against fake servers on a socket for the failures a real one will not show on demand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import pytest
import uvicorn

from cachedapi.dev import embedded
from cachedapi.runtime.gateway import lean

from . import echo_upstream

Message = MutableMapping[str, Any]


@contextlib.asynccontextmanager
async def real_server() -> AsyncIterator[int]:
    port = embedded.free_port()
    config = uvicorn.Config(echo_upstream.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


def _pool(port: int, **kw: Any) -> lean.Pool:
    options = {"size": 8, "connect_timeout": 1.0, "read_timeout": 2.0, "host_header": f"127.0.0.1:{port}", **kw}
    return lean.Pool("127.0.0.1", port, **options)


async def test_every_method_with_its_body_on_one_kept_alive_connection() -> None:
    async with real_server() as port:
        pool = _pool(port)
        try:
            seen = []
            for method, body in (("GET", b""), ("POST", b'{"a":1}'), ("PUT", b"x" * 70_000), ("PATCH", b"{}"),
                                 ("DELETE", b"")):  # fmt: skip
                resp = await pool.request(method, "/v1/books/1?x=y", [("X-Request-Id", "r1")], body)
                assert resp.status == 200
                echoed = orjson.loads(resp.body)
                assert (echoed["method"], echoed["query"], echoed["body"].encode()) == (method, "x=y", body)
                headers = dict(echoed["headers"])
                assert headers["host"] == f"127.0.0.1:{port}" and headers["x-request-id"] == "r1"
                seen.append(echoed["clientPort"])
            assert len(set(seen)) == 1, "each request opened a connection of its own"
            empty = await pool.request("GET", "/empty", [])
            assert (empty.status, empty.body) == (204, b"")
        finally:
            pool.close()


async def test_concurrent_requests_use_at_most_the_pool_size_of_connections() -> None:
    async with real_server() as port:
        pool = _pool(port, size=3)
        try:
            answers = await asyncio.gather(*(pool.request("GET", f"/n/{i}", []) for i in range(30)))
            paths = [orjson.loads(a.body)["path"] for a in answers]
            assert paths == [f"/n/{i}" for i in range(30)]
            assert len({orjson.loads(a.body)["clientPort"] for a in answers}) <= 3
        finally:
            pool.close()


# --- failure paths, on fake servers ----------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@contextlib.asynccontextmanager
async def fake_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]],
) -> AsyncIterator[int]:
    """A TCP server; ``handle`` gets the connection's number (from 1). Yields its port."""
    count = 0

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        try:
            await handle(reader, writer, count)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(counted, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _read(reader: asyncio.StreamReader, heads: list[bytes]) -> None:
    """Read one request (head and body) and note its head."""
    head = await reader.readuntil(b"\r\n\r\n")
    heads.append(head)
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_an_idempotent_request_on_a_connection_closed_while_idle_goes_again_on_a_new_one(method: str) -> None:
    heads: list[bytes] = []

    async def once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await _read(reader, heads)
        writer.write(OK)
        await writer.drain()
        if n == 1:
            await _read(reader, heads)  # the second request comes, and the server closes without answering
            return
        await reader.read()

    async with fake_server(once_then_close) as port:
        pool = _pool(port)
        try:
            assert (await pool.request(method, "/a", [])).body == b"ok"
            assert (await pool.request(method, "/b", [])).body == b"ok"
            assert len(heads) == 3  # /a, /b on the old connection (unanswered), /b again
        finally:
            pool.close()


async def test_a_post_is_never_sent_twice() -> None:
    heads: list[bytes] = []

    async def once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await _read(reader, heads)
        writer.write(OK)
        await writer.drain()
        await _read(reader, heads)  # the next request comes, and the server closes without answering

    async with fake_server(once_then_close) as port:
        pool = _pool(port)
        try:
            assert (await pool.request("POST", "/a", [], b"{}")).body == b"ok"
            with pytest.raises(ConnectionError):
                await pool.request("POST", "/b", [], b"{}")
            assert len(heads) == 2, "the POST went twice"
        finally:
            pool.close()


async def test_a_post_takes_a_new_connection_rather_than_one_idle_for_long(monkeypatch: pytest.MonkeyPatch) -> None:
    heads: list[bytes] = []

    async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await _read(reader, heads)
            writer.write(OK)
            await writer.drain()

    monkeypatch.setattr(lean, "FRESH_SECONDS", 0.05)
    async with fake_server(keep_answering) as port:
        pool = _pool(port)
        try:
            await pool.request("GET", "/a", [])
            await pool.request("POST", "/b", [], b"{}")  # idle for less than FRESH_SECONDS: reused
            await asyncio.sleep(0.1)
            await pool.request("POST", "/c", [], b"{}")  # idle too long: a new connection
            assert [h.split(b" ")[1] for h in heads] == [b"/a", b"/b", b"/c"]
            assert len(pool._idle) == 1 and pool._idle[0].transport is not None
        finally:
            pool.close()


async def test_no_answer_within_the_read_timeout_is_a_timeout() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.read()

    async with fake_server(never) as port:
        pool = _pool(port, read_timeout=0.2)
        try:
            with pytest.raises(TimeoutError):
                await pool.request("GET", "/a", [])
        finally:
            pool.close()


async def test_an_answer_that_is_not_http_is_a_connection_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with fake_server(garbage) as port:
        pool = _pool(port)
        try:
            with pytest.raises(ConnectionError, match="invalid HTTP"):
                await pool.request("GET", "/a", [])
        finally:
            pool.close()


async def test_nothing_listening_is_unreachable() -> None:
    pool = _pool(embedded.free_port())
    with pytest.raises(lean.Unreachable):
        await pool.request("GET", "/a", [])
