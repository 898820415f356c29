"""The gateway's HTTP/1.1 client to its upstream: every forwarded request, on pooled keep-alive connections.

Why not aiohttp or httpx: per forwarded request, aiohttp's machinery (session,
request and response objects, timers, stream readers) measured at about half
of the gateway's CPU on the miss path, and httpx's pool did a tenth of
aiohttp's requests per second under contention (bench/README.md). This client
writes a request as one buffer on a pooled keep-alive connection and parses
the answer with httptools (the parser uvicorn uses), in callbacks. The gateway
has read the request body whole before (it is bounded), so bodies are sent with
a Content-Length, never chunked.

HEAD is not sent: a streaming parser cannot be told that an answer declaring a
length has no body, so ``upstream`` asks with GET instead and drops the body, as
Varnish does. Failures: refused or broken -> ``ConnectionError`` (502), no
answer between bytes within ``read_timeout`` or no connection within
``connect_timeout`` -> ``TimeoutError`` (504). A request that fails on a reused
connection before any byte of its answer came (the server closed it while it
was idle) is sent once more on a new connection when its method is idempotent
(RFC 9110 section 9.2.2); a POST or PATCH goes only on a connection idle for
less than ``FRESH_SECONDS`` (well inside any server's keep-alive timeout) or a
new one, and is never repeated.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import httptools


class Unreachable(ConnectionError):
    """No connection could be made (refused, no route)."""


#: Methods that may be sent twice (RFC 9110 section 9.2.2): retried after a reused connection broke.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: A non-idempotent request reuses only a connection idle for less than this (seconds).
FRESH_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._received = False
        self._last = 0.0

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._received = True
        self._last = self.loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"invalid HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError("the connection was closed before the answer was complete"))

    # --- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if not self._parser.should_keep_alive():
            self.close()
        waiter.set_result(Response(self._parser.get_status_code(), tuple(self._headers), b"".join(self._body)))

    # --- use ---------------------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def received(self) -> bool:
        """Whether any byte of the current answer came (a failure after that is not retried)."""
        return self._received

    @property
    def idle_since(self) -> float:
        """When the last byte came (the loop's clock)."""
        return self._last

    async def request(self, data: bytes, *, read_timeout: float) -> Response:
        assert self.transport is not None
        self._headers, self._body, self._received = [], [], False
        self._parser = httptools.HttpResponseParser(self)
        waiter: asyncio.Future[Response] = self.loop.create_future()
        self._waiter = waiter
        self._last = self.loop.time()
        self.transport.write(data)
        timer = self.loop.call_at(self._last + read_timeout, self._check_timeout, read_timeout)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _check_timeout(self, read_timeout: float) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        due = self._last + read_timeout
        if self.loop.time() >= due:
            self.close()
            waiter.set_exception(TimeoutError("the upstream did not answer in time"))
        else:
            self.loop.call_at(due, self._check_timeout, read_timeout)


class Pool:
    """Keep-alive connections to one host and port, at most ``size`` in use at once."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        size: int,
        connect_timeout: float,
        read_timeout: float,
        host_header: str,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.tls = tls
        self.port = port
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.host_header = host_header.encode("latin-1")
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(size)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(loop), self.host, self.port, ssl=self.tls),
                self.connect_timeout,
            )
        except TimeoutError:
            raise TimeoutError("no connection to the upstream in time") from None
        except OSError as exc:
            raise Unreachable(exc.strerror or "connection refused") from None
        return conn

    async def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"") -> Response:
        """Send ``method target`` (path and query) with ``headers`` and ``body``; raises ConnectionError
        or TimeoutError. Not for HEAD (see the module's docstring)."""
        lines = [
            b"%b %b HTTP/1.1\r\nHost: %b\r\n" % (method.encode("ascii"), target.encode("latin-1"), self.host_header)
        ]
        lines.extend(b"%b: %b\r\n" % (n.encode("latin-1"), v.encode("latin-1")) for n, v in headers)
        if body or method not in ("GET", "DELETE", "OPTIONS"):
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        lines.append(body)
        data = b"".join(lines)
        repeatable = method in IDEMPOTENT
        async with self._slots:
            while self._idle:
                conn = self._idle.pop()
                if conn.closed:
                    continue
                if not repeatable and conn.loop.time() - conn.idle_since > FRESH_SECONDS:
                    conn.close()
                    continue
                try:
                    return self._done(conn, await conn.request(data, read_timeout=self.read_timeout))
                except ConnectionError:
                    conn.close()
                    if conn.received or not repeatable:
                        raise
                    break  # closed while idle: once more, on a new connection
                except BaseException:
                    conn.close()
                    raise
            conn = await self._connect()
            try:
                return self._done(conn, await conn.request(data, read_timeout=self.read_timeout))
            except BaseException:
                conn.close()
                raise

    def _done(self, conn: _Connection, response: Response) -> Response:
        if not conn.closed:
            self._idle.append(conn)
        return response

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
