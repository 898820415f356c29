"""The upstream of the "any upstream" scenarios: a plain HTTP API that the caches stand in front of.

Every GET or HEAD answers the same 280-byte JSON body (the size of the bookstore
bench's reference book) with ``Cache-Control: public, max-age=3600``, from memory,
so any shared cache may keep it for an hour. Paths under ``/slow/`` are answered
after ``SLOW_MS`` milliseconds (the stampede's: the 200 requests of a burst all
arrive while the first is still at the upstream). It counts what it receives:
``GET /_origin/count?path=P`` answers how many requests for exactly ``P`` reached
it (counted for ``/slow/`` paths) and the total, so that a stampede's upstream
requests are counted by the upstream itself, not by the cache under test.

Why a Python asyncio server (uvloop, httptools) and not nginx: it counts requests
per path without parsing logs and holds a request for the stampede; its own speed
matters only on misses, where a request costs it ~20-30 us of CPU against the
hundreds each cache spends on the miss, on the same two cores (``bench/README.md``).
Run as ``python -m bench.peers.origin PORT``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
from urllib.parse import parse_qs, urlsplit

import httptools
import uvloop

SLOW_PREFIX = "/slow/"
SLOW_MS = 100
COUNT_PATH = "/_origin/count"
BODY_BYTES = 280


def _body() -> bytes:
    book = {
        "id": "0190a1f2-7c3e-7d4b-9a5e-1f2e3d4c5b6a",
        "title": "The Left Hand of Darkness",
        "author": "Ursula K. Le Guin",
        "year": 1969,
        "price": 9.99,
        "tags": ["science fiction", "classic"],
        "notes": "",
    }
    raw = json.dumps(book, separators=(",", ":")).encode()
    book["notes"] = "x" * (BODY_BYTES - len(raw))
    body = json.dumps(book, separators=(",", ":")).encode()
    assert len(body) == BODY_BYTES, len(body)
    return body


BODY = _body()
HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: application/json\r\n"
    b"cache-control: public, max-age=3600\r\n"
    b"content-length: " + str(len(BODY)).encode() + b"\r\n"
    b"\r\n"
)
NOT_ALLOWED = b"HTTP/1.1 405 Method Not Allowed\r\nallow: GET, HEAD\r\ncontent-length: 0\r\n\r\n"

#: path -> requests received (``/slow/`` paths only: the miss scenario's would fill memory).
counts: collections.Counter[str] = collections.Counter()
total = 0


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        #: Answers not yet written, in request order: one that waits (``/slow/``) holds back the
        #: ones after it on the same connection, as HTTP/1.1 requires.
        self.pending: collections.deque[asyncio.Future[bytes] | bytes] = collections.deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        global total
        url, self.url = self.url.decode("latin-1"), b""
        method = self.parser.get_method()
        if method not in (b"GET", b"HEAD"):
            self._answer(NOT_ALLOWED)
            return
        parts = urlsplit(url)
        if parts.path == COUNT_PATH:
            path = parse_qs(parts.query).get("path", [""])[0]
            body = json.dumps({"path": path, "count": counts[path], "total": total}).encode()
            head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-store\r\n"
            self._answer(head + b"content-length: %d\r\n\r\n" % len(body) + body)
            return
        total += 1
        answer = HEAD if method == b"HEAD" else HEAD + BODY
        if parts.path.startswith(SLOW_PREFIX):
            counts[url] += 1
            loop = asyncio.get_running_loop()
            later: asyncio.Future[bytes] = loop.create_future()
            loop.call_later(SLOW_MS / 1000, later.set_result, answer)
            later.add_done_callback(lambda _: self._flush())
            self._answer(later)
            return
        self._answer(answer)

    def _answer(self, item: asyncio.Future[bytes] | bytes) -> None:
        if not self.pending and isinstance(item, bytes):
            assert self.transport is not None
            self.transport.write(item)
            return
        self.pending.append(item)
        self._flush()

    def _flush(self) -> None:
        assert self.transport is not None
        while self.pending:
            head = self.pending[0]
            if not isinstance(head, bytes):
                if not head.done():
                    return
                head = head.result()
            self.pending.popleft()
            if not self.transport.is_closing():
                self.transport.write(head)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Connection, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    uvloop.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
