"""Forwarding to the api role: pooled keep-alive connections, bounded in time, headers cleaned.

aiohttp rather than httpx: both were measured forwarding every request of
``wrk -c50`` to the same upstream through a pool of 128 keep-alive
connections, and aiohttp did 6,400-7,400 requests per second where
httpx.AsyncClient did 400-700 (its pool serialises under contention). It is
also already installed as a kopf dependency. GETs (the cache misses, the
gateway's most frequent forward) take ``lean`` instead, a client that does
only that, at about half the gateway's CPU per miss (bench/README.md).

The upstream's answer is read whole (the api role's answers are bounded: one
item or one page of at most ``contract.MAX_PAGE_LIMIT`` items) so that the
gateway can fall back to a stale entry when the status is a 5xx, and can set
an exact Content-Length. Hop-by-hop headers (RFC 9110 section 7.6.1) and the
headers a Connection header names are dropped both ways, and so are the
client's credentials: API keys and tokens stay in the gateway.
"""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict

from cachedapi.runtime.gateway import lean, metrics

#: Seconds to wait for the api role's answer (between bytes) before a 504; default 15.
ENV_READ_TIMEOUT = "CACHEDAPI_UPSTREAM_TIMEOUT_SECONDS"

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Not forwarded to the api role: hop-by-hop, credentials, and what aiohttp sets itself.
DROP_REQUEST = HOP_BY_HOP | {b"authorization", b"x-api-key", b"content-length", b"expect"}
#: Not passed back to the client: hop-by-hop, and what the gateway's own server sets.
DROP_RESPONSE = HOP_BY_HOP | {b"content-length", b"date", b"server"}


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    #: The upstream's Content-Length, which only an answer to HEAD needs (its body is empty).
    content_length: int | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """The upstream could not answer: 502 (unreachable, broken answer) or 504 (too slow)."""

    status: int
    detail: str


def _connection_named(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return frozenset(named)


def request_headers(
    headers: list[tuple[bytes, bytes]], *, client_ip: str, scheme: str, request_id: bytes
) -> CIMultiDict[str]:
    """The client's headers as the api role should see them."""
    named = _connection_named(headers)
    out: CIMultiDict[str] = CIMultiDict()
    forwarded_for = client_ip
    for name, value in headers:
        lname = name.lower()
        if lname in DROP_REQUEST or lname in named or lname == b"x-request-id":
            continue
        if lname == b"x-forwarded-for":
            forwarded_for = f"{value.decode('latin-1')}, {client_ip}"
            continue
        if lname == b"x-forwarded-proto":
            continue
        out.add(name.decode("latin-1"), value.decode("latin-1"))
    out["X-Forwarded-For"] = forwarded_for
    out["X-Forwarded-Proto"] = scheme
    out["X-Request-Id"] = request_id.decode("latin-1")
    return out


def response_headers(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[bytes, bytes]]:
    named = _connection_named(list(raw))
    return [(n.lower(), v) for n, v in raw if n.lower() not in DROP_RESPONSE and n.lower() not in named]


class Upstream:
    """A keep-alive pool to one base URL (the api Service)."""

    def __init__(
        self,
        base_url: str,
        *,
        counts: metrics.Metrics,
        connect_timeout: float = 2.0,
        read_timeout: float = 15.0,
        pool_size: int = 128,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.metrics = counts
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._session: aiohttp.ClientSession | None = None
        self._lean: lean.Pool | None = None
        self.base_path = ""

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.pool_size, keepalive_timeout=30, use_dns_cache=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme == "http" and parts.hostname:
            self.base_path = parts.path
            self._lean = lean.Pool(
                parts.hostname,
                parts.port or 80,
                size=self.pool_size,
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                host_header=parts.netloc,
            )

    async def close(self) -> None:
        if self._lean is not None:
            self._lean.close()
        if self._session is not None:
            await self._session.close()

    async def forward(self, method: str, target: str, *, headers: CIMultiDict[str], body: bytes) -> Answer | Failure:
        """Send one request; ``target`` is the path and query string."""
        session = self._session
        assert session is not None, "Upstream.start() was not awaited"
        started = time.perf_counter()
        if method == "GET" and not body and self._lean is not None:
            return await self._get(target, headers=headers, started=started)
        try:
            async with session.request(
                method, self.base_url + target, headers=headers, data=body or None, allow_redirects=False
            ) as resp:
                content = await resp.read()
                answer = Answer(resp.status, response_headers(resp.raw_headers), content, resp.content_length)
        except aiohttp.ClientConnectorError as exc:
            self.metrics.counts.upstream_errors += 1
            return Failure(502, f"the api service is unreachable: {exc.strerror or 'connection refused'}")
        except (TimeoutError, aiohttp.ServerTimeoutError):
            self.metrics.counts.upstream_errors += 1
            return Failure(504, "the api service did not answer in time")
        except aiohttp.ClientError as exc:
            self.metrics.counts.upstream_errors += 1
            return Failure(502, f"the api service gave no valid answer ({type(exc).__name__})")
        self.metrics.upstream_latency.observe(time.perf_counter() - started)
        return answer

    async def _get(self, target: str, *, headers: CIMultiDict[str], started: float) -> Answer | Failure:
        """``forward`` for a GET, through ``lean``; the same answers and failures."""
        assert self._lean is not None
        try:
            resp = await self._lean.get(self.base_path + target, list(headers.items()))
        except TimeoutError:
            self.metrics.counts.upstream_errors += 1
            return Failure(504, "the api service did not answer in time")
        except lean.Unreachable as exc:
            self.metrics.counts.upstream_errors += 1
            return Failure(502, f"the api service is unreachable: {exc}")
        except OSError as exc:
            self.metrics.counts.upstream_errors += 1
            return Failure(502, f"the api service gave no valid answer ({type(exc).__name__})")
        self.metrics.upstream_latency.observe(time.perf_counter() - started)
        return Answer(resp.status, response_headers(resp.headers), resp.body)
