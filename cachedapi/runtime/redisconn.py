"""The one Redis client of both roles: a pipelined connection, every request's command in one syscall.

Why not ``redis.asyncio``: it takes a connection from a pool per command and
writes and reads each command on its own, so 50 concurrent requests cost 50
writes, 50 reads and the pool's locking, which measured at about a third of
the throughput the hit path needs. Redis answers commands in the order it
reads them, so one connection with a queue of futures is enough: commands
issued during one event-loop turn are joined into one ``transport.write`` at
the end of the turn, and ``hiredis.Reader`` parses the replies in bulk as they
arrive (the "automatic pipelining" of clients such as ioredis).

Failure handling is part of the client because the gateway fails open: a
connection error or a reply that does not come within ``reply_timeout``
fails every pending command at once with ``RedisUnavailable``
(``RedisTimeout`` for the latter), and while the circuit breaker is open
(``breaker``: a short, growing backoff) new commands fail immediately instead
of each waiting for a timeout, unless the caller forces a new connection (the
api role does for invalidations, which must not give up on a breaker that a
stale connection opened). ``on_down`` / ``on_up`` are called once per outage,
so each role logs one line per outage, not per request.

Lua scripts run through ``Script``: EVALSHA, and EVAL once when Redis does not
have the script (a restarted Redis has none).

``rediss://`` is TLS, verified as ``tls`` says (the CA bundle the operator mounted, the host
name of the URL), and a user and password in the URL are sent with ``AUTH``, so that an ACL
user works. The handshake counts against ``connect_timeout`` and ``AUTH``'s reply against
``reply_timeout``: a server that does not answer never holds a caller longer than those. A
certificate that does not verify and an ``AUTH`` refused are not outages that pass but
configuration errors (``RedisRefused``); while this client has never got through,
``misconfigured`` says why, and readiness reports it (``check``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import ssl
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import hiredis

from cachedapi import contract
from cachedapi.runtime import breaker, tls


class RedisUnavailable(ConnectionError):
    """Redis cannot answer now (down, unreachable, slow, or in backoff)."""


class RedisTimeout(RedisUnavailable):
    """Redis accepted the command but did not answer within ``reply_timeout`` (hung or overloaded)."""


class RedisRefused(RedisUnavailable):
    """Redis (or the way to it) refuses this client: its certificate does not verify against the CA,
    does not name the host, or ``AUTH``/``SELECT`` was refused. Retrying will not help."""


class RedisReplyError(Exception):
    """Redis answered a command with an error (a script error, OOM, READONLY ...)."""


class RedisAddress(NamedTuple):
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool


def parse_url(url: str) -> RedisAddress:
    """What a ``redis://`` or ``rediss://`` (TLS) URL says: ``rediss://user:password@host:port/db``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"redis", "rediss"}:
        raise ValueError(f"Redis URL: only redis:// and rediss:// are supported, got {parts.scheme!r}")
    try:
        db = int(parts.path.lstrip("/") or 0)
        port = parts.port or contract.REDIS_PORT
    except ValueError:
        raise ValueError("Redis URL: the port and the database must be numbers") from None
    username = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password else None
    if username is not None and password is None:
        raise ValueError(f"Redis URL: user {username!r} is named without a password (user:password@host)")
    host = parts.hostname or "127.0.0.1"
    return RedisAddress(host, port, db, username, password, parts.scheme == "rediss")


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def encode(args: Sequence[bytes]) -> bytes:
    """A command in RESP: an array of bulk strings."""
    return b"*%d\r\n" % len(args) + b"".join(bulk(arg) for arg in args)


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: PipelinedRedis) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.owner._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(self, exc)


class PipelinedRedis:
    """A single auto-pipelined connection with a circuit breaker; ``call`` is the one method."""

    def __init__(
        self,
        url: str,
        *,
        ca_file: str | None = None,
        reply_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        on_down: Callable[[str], None] | None = None,
        on_up: Callable[[], None] | None = None,
    ) -> None:
        """``ca_file``: the PEM bundle a ``rediss://`` server's certificate must chain to (None: the
        system's CAs). Raises ValueError for a URL or bundle that cannot work."""
        address = parse_url(url)
        self.host, self.port, self.db = address.host, address.port, address.db
        if ca_file and not address.tls:
            raise ValueError(
                f"{contract.ENV_REDIS_CA_FILE} is set but the Redis URL is redis://, which is not TLS: "
                "use rediss:// (or drop the CA)"
            )
        self.ssl = tls.client_context(ca_file, setting=contract.ENV_REDIS_CA_FILE) if address.tls else None
        self._setup: list[tuple[bytes, ...]] = []
        if address.password is not None:
            user = () if address.username is None else (address.username.encode(),)
            self._setup.append((b"AUTH", *user, address.password.encode()))
        if self.db:
            self._setup.append((b"SELECT", str(self.db).encode()))
        #: Why the last connection attempt was refused (``RedisRefused``); None after one got through.
        self.refused: str | None = None
        #: Whether a connection ever got through (TLS and AUTH included).
        self.accepted_once = False
        self.reply_timeout = reply_timeout
        self.connect_timeout = connect_timeout
        self.breaker = breaker.Breaker(on_down=on_down, on_up=on_up)
        self._proto: _Protocol | None = None
        self._reader = hiredis.Reader()
        self._pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self._connecting: asyncio.Future[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def down(self) -> bool:
        return self.breaker.down

    @property
    def misconfigured(self) -> str | None:
        """Why this client cannot use Redis, while it never could: a certificate that does not verify,
        a host name it does not name, AUTH refused. None once a connection got through: a refusal
        after that (a server's certificate replaced) is ridden out failing open, like any outage."""
        return None if self.accepted_once else self.refused

    async def check(self) -> str | None:
        """For readiness: try Redis now if no connection ever got through (and the breaker lets a
        call through), then ``misconfigured``. Bounded by the connect and reply timeouts."""
        if not self.accepted_once and not self.breaker.open:
            with contextlib.suppress(RedisUnavailable):
                await self.call(b"PING")
        return self.misconfigured

    async def call(self, *args: bytes, force: bool = False) -> Any:
        """Send one command and await its reply; a Redis error reply is returned, not raised.
        ``force``: connect now even while the breaker is open."""
        return await self.call_encoded(encode(args), force=force)

    async def call_encoded(self, command: bytes, *, force: bool = False) -> Any:
        """``call`` for a command already in RESP (the hot path builds it from precomputed parts)."""
        proto = self._proto
        if proto is None or proto.transport is None:
            await self._connect(force=force)
        loop = self._loop
        assert loop is not None
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append((fut, loop.time()))
        self._outbox.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        proto = self._proto
        data = b"".join(self._outbox)
        self._outbox.clear()
        if proto is not None and proto.transport is not None and data:
            proto.transport.write(data)

    async def _connect(self, *, force: bool = False) -> None:
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        if not force and self.breaker.open:
            raise RedisUnavailable("Redis is unavailable (backing off)")
        self._loop = loop = asyncio.get_running_loop()
        self._connecting = connecting = loop.create_future()
        where = f"{self.host}:{self.port}"
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Protocol(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                    ssl_handshake_timeout=self.connect_timeout if self.ssl is not None else None,
                ),
                self.connect_timeout,
            )
            self._reader = hiredis.Reader()
            self._proto = proto
            connecting.set_result(None)
            for command in self._setup:
                # Bounded: the watchdog that fails a silent server starts only once connected.
                reply = await asyncio.wait_for(self.call(*command), self.reply_timeout)
                if isinstance(reply, hiredis.ReplyError):
                    raise RedisRefused(f"Redis at {where} refused {command[0].decode()}: {reply}")
        except RedisRefused as exc:
            self.refused = str(exc)
            self._failed(str(exc), error=RedisRefused)
            raise
        except RedisUnavailable:
            raise  # a setup command failed with the connection, which is failed already
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, ssl.SSLError):
                why = f"Redis at {where}: {tls.describe(exc)}"
                error: type[RedisUnavailable] = RedisRefused if tls.is_refusal(exc) else RedisUnavailable
                if error is RedisRefused:
                    self.refused = why
            else:
                why = f"cannot connect to Redis at {where}: {str(exc) or type(exc).__name__}"
                error = RedisUnavailable
            self._failed(why)
            if not connecting.done():
                connecting.set_exception(error(why))
                connecting.exception()  # retrieved: waiters get it through shield
            raise error(why) from None
        finally:
            self._connecting = None
        self.refused = None
        self.accepted_once = True
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = loop.create_task(self._watch())

    def _received(self, proto: _Protocol, data: bytes) -> None:
        if proto is not self._proto:
            return
        if self.breaker.down:
            # Up again only once Redis answers: a hung server still accepts connections.
            self.breaker.success()
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        while True:
            reply = reader.gets()
            if reply is False:
                return
            if not pending:
                self._failed("Redis sent a reply nobody asked for")
                return
            fut, _ = pending.popleft()
            if not fut.done():
                fut.set_result(reply)

    def _lost(self, proto: _Protocol, exc: Exception | None) -> None:
        if proto is self._proto:
            self._failed(f"connection lost: {exc or 'closed by the server'}")

    def _failed(self, why: str, *, error: type[RedisUnavailable] = RedisUnavailable) -> None:
        """Drop the connection, fail everything pending, and open the circuit for a while."""
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.abort()
        self._outbox.clear()
        pending, self._pending = self._pending, collections.deque()
        for fut, _ in pending:
            if not fut.done():
                fut.set_exception(error(why))
                fut.exception()  # mark retrieved even if the awaiting task was cancelled
        self.breaker.failure(why)

    async def _watch(self) -> None:
        """Fail the connection when its oldest command waits longer than ``reply_timeout``."""
        loop = asyncio.get_running_loop()
        while self._proto is not None:
            await asyncio.sleep(self.reply_timeout / 4)
            if self._pending and loop.time() - self._pending[0][1] > self.reply_timeout:
                self._failed(f"no reply within {self.reply_timeout}s", error=RedisTimeout)

    async def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        if self._watchdog is not None:
            self._watchdog.cancel()


class Script:
    """A Lua script, run by its SHA1 (EVALSHA); sent whole (EVAL) only when Redis lacks it."""

    def __init__(self, source: str | bytes) -> None:
        self.source = source.encode() if isinstance(source, str) else source
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest().encode()

    async def __call__(
        self, conn: PipelinedRedis, *, keys: Sequence[bytes], args: Sequence[bytes], force: bool = False
    ) -> Any:
        """The script's reply; raises ``RedisReplyError`` for an error reply, ``RedisUnavailable``
        when Redis cannot answer."""
        tail = [b"%d" % len(keys), *keys, *args]
        reply = await conn.call(b"EVALSHA", self.sha, *tail, force=force)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            reply = await conn.call(b"EVAL", self.source, *tail, force=force)
        if isinstance(reply, hiredis.ReplyError):
            raise RedisReplyError(str(reply))
        return reply
