"""How the gateway answers: ASGI sends, problem+json errors, and the cache headers.

Everything here works on bytes: header names are lower-case byte strings and
values are built with ``%`` formatting, so that the hit path does no text
encoding beyond the few numbers it must print.

Who may keep an answer (``contract.cache_scope``) is decided per resource at
start: ``cache_control_format`` gives the Cache-Control value with a ``%d``
for the seconds of freshness left, so a hit formats one number, as before.
Error answers say ``no-store``: a 401 or 429 kept by a shared cache would be
served to callers it does not concern.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cachedapi import contract
from cachedapi.runtime import problems

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

PROBLEM_TYPE = problems.CONTENT_TYPE.encode()
JSON_TYPE = b"application/json"
NO_STORE = (b"cache-control", b"no-store")


async def send_answer(send: Send, status: int, *, headers: Headers, body: bytes = b"") -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_problem(send: Send, status: int, *, detail: str, headers: Headers | None = None) -> None:
    body = problems.problem(status, detail)
    out = [(b"content-type", PROBLEM_TYPE), (b"content-length", b"%d" % len(body)), NO_STORE]
    if headers:
        out.extend(headers)
    await send_answer(send, status, headers=out, body=body)


def cache_control_format(scope: str) -> bytes:
    """The Cache-Control value of a cached answer, ``%d`` standing for the seconds left."""
    return (f"{scope}, max-age=%d" if scope else "max-age=%d").encode()


def make_private(headers: Headers) -> None:
    """Make a forwarded answer to an authenticated caller ``private`` unless it already says who
    may keep it (``private``, ``public``, ``no-store``): the api role says so itself, and this
    covers one that does not (an older api role during a rolling upgrade)."""
    for i, (name, value) in enumerate(headers):
        if name == b"cache-control":
            lowered = value.lower()
            if b"private" not in lowered and b"public" not in lowered and b"no-store" not in lowered:
                headers[i] = (name, b"private, " + value)
            return


def rate_headers(limit: bytes, *, remaining: int, reset_us: int) -> Headers:
    """The IETF RateLimit fields: the burst, what is left of it, and seconds until it is full."""
    return [
        (b"ratelimit-limit", limit),
        (b"ratelimit-remaining", b"%d" % max(remaining, 0)),
        (b"ratelimit-reset", b"%d" % -(-reset_us // 1_000_000)),
    ]


def www_authenticate(realm: bytes, *, invalid: bool, detail: str) -> tuple[bytes, bytes]:
    value = b'Bearer realm="%b"' % realm
    if invalid:
        safe = detail.replace("\\", "").replace('"', "'").encode("ascii", "replace")
        value += b', error="invalid_token", error_description="%b"' % safe
    return (b"www-authenticate", value)


def etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    """RFC 9110 If-None-Match: ``*``, or any listed tag equal by weak comparison."""
    value = if_none_match.strip()
    if value == b"*":
        return True
    bare = etag[2:] if etag.startswith(b"W/") else etag
    for candidate in value.split(b","):
        candidate = candidate.strip()
        if candidate.startswith(b"W/"):
            candidate = candidate[2:]
        if candidate == bare:
            return True
    return False


def wants_no_cache(cache_control: bytes) -> bool:
    """A request ``Cache-Control: no-cache`` (or no-store, max-age=0) skips the cache."""
    value = cache_control.lower()
    return b"no-cache" in value or b"no-store" in value or b"max-age=0" in value


def query_has_key(query_string: bytes) -> bool:
    """Keys in the query string are refused: say so rather than 'missing credentials'."""
    return any(
        part.split(b"=", 1)[0] in (b"api_key", b"apiKey", b"apikey", b"access_token")
        for part in query_string.split(b"&")
    )


async def send_entry(
    send: Send,
    entry: contract.Entry,
    *,
    result: bytes,
    age_ms: int,
    max_age: int,
    cache_control: bytes,
    headers: Headers,
    if_none_match: bytes | None,
    head: bool,
) -> bool:
    """Answer from a cache entry: its bytes as stored, or 304; True when it was a 304.

    ``cache_control`` is the resource's ``cache_control_format``."""
    etag = entry.etag.encode()
    headers[0:0] = [
        (b"etag", etag),
        (b"x-cache", result),
        (b"age", b"%d" % (age_ms // 1000)),
        (b"cache-control", cache_control % max_age),
    ]
    if if_none_match is not None and etag_matches(if_none_match, etag):
        await send_answer(send, 304, headers=headers)
        return True
    body = entry.body
    headers.append((b"content-type", entry.content_type.encode()))
    headers.append((b"content-length", b"%d" % len(body)))
    await send_answer(send, entry.status, headers=headers, body=b"" if head else body)
    return False
