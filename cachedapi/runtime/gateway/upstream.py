"""Forwarding to the upstream (the api Service): pooled keep-alive connections, bounded in time,
headers cleaned. Every request goes through ``lean``, the gateway's one HTTP client (its docstring
says why it is not aiohttp or httpx); a HEAD is asked as a GET, whose body is dropped.

The upstream's answer is read whole (the api role's answers are bounded: one
item or one page of at most ``contract.MAX_PAGE_LIMIT`` items) so that the
gateway can fall back to a stale entry when the status is a 5xx, and can set
an exact Content-Length. Hop-by-hop headers (RFC 9110 section 7.6.1) and the
headers a Connection header names are dropped both ways, and so are the
client's credentials: API keys and tokens stay in the gateway.
"""

from __future__ import annotations

import ssl
import time
import urllib.parse
from dataclasses import dataclass

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
#: Not forwarded to the api role: hop-by-hop, credentials, and what ``lean`` sets itself.
DROP_REQUEST = HOP_BY_HOP | {b"authorization", b"x-api-key", b"content-length", b"expect", b"host"}
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
) -> list[tuple[str, str]]:
    """The client's headers as the api role should see them."""
    named = _connection_named(headers)
    out: list[tuple[str, str]] = []
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
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    out.append(("X-Forwarded-For", forwarded_for))
    out.append(("X-Forwarded-Proto", scheme))
    out.append(("X-Request-Id", request_id.decode("latin-1")))
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
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL: an http:// or https:// URL with a host is needed, got {base_url!r}")
        self.metrics = counts
        #: How failures name it: the api role, or (``httpcache``) the user's own upstream.
        self.name = "the api service"
        self.base_path = parts.path
        https = parts.scheme == "https"
        self._pool = lean.Pool(
            parts.hostname,
            parts.port or (443 if https else 80),
            tls=ssl.create_default_context() if https else None,
            size=pool_size,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            host_header=parts.netloc,
        )

    async def start(self) -> None:
        """Nothing to do before the first request (connections are made on demand)."""

    async def close(self) -> None:
        self._pool.close()

    async def exchange(
        self, method: str, target: str, *, headers: list[tuple[str, str]], body: bytes
    ) -> lean.Response | Failure:
        """One request (not HEAD: see ``lean``), its answer's headers as the upstream sent them."""
        started = time.perf_counter()
        try:
            resp = await self._pool.request(method, self.base_path + target, headers, body)
        except TimeoutError:
            self.metrics.counts.upstream_errors += 1
            return Failure(504, f"{self.name} did not answer in time")
        except lean.Unreachable as exc:
            self.metrics.counts.upstream_errors += 1
            return Failure(502, f"{self.name} is unreachable: {exc}")
        except OSError as exc:
            self.metrics.counts.upstream_errors += 1
            return Failure(502, f"{self.name} gave no valid answer ({type(exc).__name__})")
        self.metrics.upstream_latency.observe(time.perf_counter() - started)
        return resp

    async def forward(
        self, method: str, target: str, *, headers: list[tuple[str, str]], body: bytes
    ) -> Answer | Failure:
        """Send one request; ``target`` is the path and query string."""
        head = method == "HEAD"
        resp = await self.exchange("GET" if head else method, target, headers=headers, body=body)
        if isinstance(resp, Failure):
            return resp
        if head:
            return Answer(resp.status, response_headers(resp.headers), b"", content_length=len(resp.body))
        return Answer(resp.status, response_headers(resp.headers), resp.body)
