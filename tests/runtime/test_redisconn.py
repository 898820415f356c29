"""The one Redis client of both roles (``runtime/redisconn.py``): against a real Redis, and against
fake servers on a socket for the failures a real one will not show on demand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis

from cachedapi.runtime import breaker, redisconn


async def test_concurrent_commands_share_the_connection_and_get_their_own_replies(redis_url: str) -> None:
    conn = redisconn.PipelinedRedis(redis_url)
    try:
        await asyncio.gather(*(conn.call(b"SET", b"k%d" % i, b"v%d" % i) for i in range(200)))
        replies = await asyncio.gather(*(conn.call(b"GET", b"k%d" % i) for i in range(200)))
        assert replies == [b"v%d" % i for i in range(200)]
        name = await conn.call(b"CLIENT", b"ID")
        assert await asyncio.gather(*(conn.call(b"CLIENT", b"ID") for _ in range(20))) == [name] * 20
    finally:
        await conn.close()


async def test_the_url_selects_the_database(redis_url: str) -> None:
    conn = redisconn.PipelinedRedis(redis_url.rsplit("/", 1)[0] + "/3")
    try:
        await conn.call(b"SET", b"where", b"three")
    finally:
        await conn.close()
    assert redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3").get("where") == b"three"
    assert redis.Redis.from_url(redis_url).get("where") is None


async def test_a_script_redis_lost_is_sent_whole_again_and_an_error_reply_is_raised(redis_url: str) -> None:
    script = redisconn.Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    conn = redisconn.PipelinedRedis(redis_url)
    try:
        assert await script(conn, keys=[b"n"], args=[b"2"]) == 2
        await conn.call(b"SCRIPT", b"FLUSH")  # as a restarted Redis: no scripts
        assert await script(conn, keys=[b"n"], args=[b"3"]) == 5
        await conn.call(b"SET", b"text", b"abc")
        with pytest.raises(redisconn.RedisReplyError, match="not an integer"):
            await script(conn, keys=[b"text"], args=[b"1"])
        assert await conn.call(b"PING") == b"PONG"  # the connection survives an error reply
    finally:
        await conn.close()


def test_only_redis_urls_are_taken() -> None:
    with pytest.raises(ValueError, match="only redis:// and rediss://"):
        redisconn.parse_url("http://localhost:6379")
    assert redisconn.parse_url("redis://:s%40cret@cache:6380/2") == ("cache", 6380, 2, None, "s@cret", False)
    assert redisconn.parse_url("rediss://app:p%3Aw@cache/1") == ("cache", 6379, 1, "app", "p:w", True)
    with pytest.raises(ValueError, match="without a password"):
        redisconn.parse_url("rediss://app@cache/1")


# --- failure paths, on fake servers ----------------------------------------------------------


@contextlib.asynccontextmanager
async def fake_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server on a free port; yields its redis:// URL and a list counting its connections."""
    connections: list[int] = []

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handle(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(counted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0", connections
    finally:
        server.close()
        await server.wait_closed()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts commands and never answers: a hung Redis (SIGSTOP, or swapped out)."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass


async def test_a_redis_that_never_answers_times_out_once_then_fails_fast_until_the_backoff_ends() -> None:
    downs: list[str] = []
    async with fake_server(_silent) as (url, connections):
        conn = redisconn.PipelinedRedis(url, reply_timeout=0.2, on_down=downs.append)
        try:
            pending = [asyncio.ensure_future(conn.call(b"GET", b"a")) for _ in range(5)]
            results = await asyncio.gather(*pending, return_exceptions=True)
            assert all(isinstance(r, redisconn.RedisTimeout) for r in results), results
            assert conn.down and conn.breaker.open and len(downs) == 1
            # While the breaker is open: no connection attempt, an immediate refusal, no new outage.
            with pytest.raises(redisconn.RedisUnavailable) as refused:
                await conn.call(b"GET", b"a")
            assert not isinstance(refused.value, redisconn.RedisTimeout)
            assert len(connections) == 1 and len(downs) == 1
            # A caller that must get through (an invalidation) forces a new connection.
            with pytest.raises(redisconn.RedisTimeout):
                await conn.call(b"GET", b"a", force=True)
            assert len(connections) == 2 and len(downs) == 1
        finally:
            await conn.close()


async def test_a_connection_closed_mid_reply_fails_what_was_pending_and_the_next_call_reconnects() -> None:
    answered: list[bytes] = []

    async def half_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        if not answered:
            answered.append(b"cut")
            writer.write(b"$10\r\nhal")  # a bulk string cut short
            await writer.drain()
            return
        writer.write(b"+PONG\r\n")
        await writer.drain()
        await reader.read(4096)

    ups: list[int] = []
    async with fake_server(half_then_close) as (url, connections):
        conn = redisconn.PipelinedRedis(url, on_up=lambda: ups.append(1))
        try:
            with pytest.raises(redisconn.RedisUnavailable, match="connection lost"):
                await conn.call(b"GET", b"a")
            await asyncio.sleep(breaker.FIRST_BACKOFF + 0.05)
            assert await conn.call(b"PING") == b"PONG"
            assert len(connections) == 2 and ups == [1] and not conn.down
        finally:
            await conn.close()


async def test_nothing_listening_is_unavailable_at_once() -> None:
    async with fake_server(_silent) as (url, _):
        pass  # closed: the port is free again
    conn = redisconn.PipelinedRedis(url, connect_timeout=0.5)
    try:
        with pytest.raises(redisconn.RedisUnavailable, match="cannot connect"):
            await conn.call(b"PING")
        assert conn.down
    finally:
        await conn.close()
