"""Header fields of the shared cache: one parse of a request, and what crosses each way.

Separate from the flow because every rule about which field goes where is here: the
identity fields the gateway sets (a client's own copies dropped, so the upstream can trust
them), credentials kept in the gateway unless ``forward_credentials``, hop-by-hop fields
(RFC 9110 section 7.6.1) and those a Connection field names never stored nor passed on,
Set-Cookie never stored, the cache-tag fields kept from clients, and the Vary key.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from dataclasses import dataclass, field

from cachedapi import contract
from cachedapi.runtime.gateway import upstream
from cachedapi.runtime.gateway.answers import Scope
from cachedapi.runtime.gateway.httpcache import policy

Headers = list[tuple[bytes, bytes]]

CALLER = contract.CALLER_HEADER.encode()
CALLER_AUTH = contract.CALLER_AUTH_HEADER.encode()
CACHE_TAG = contract.CACHE_TAG_HEADER.encode()
PURGE_TAG = contract.PURGE_TAG_HEADER.encode()
CREDENTIALS = frozenset({b"authorization", b"x-api-key"})
#: A client's conditional and range fields: a fill asks for the whole representation (with the
#: entry's own validators) and answers the client's conditions itself.
CONDITIONALS = frozenset({b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range"})
_DROP_TO_UPSTREAM = upstream.HOP_BY_HOP | {
    b"content-length",
    b"expect",
    b"host",
    b"x-request-id",
    b"x-forwarded-proto",
    CALLER,
    CALLER_AUTH,
}
#: Not kept in an entry: what is recomputed per answer, what concerns one exchange, the tags.
_NOT_STORED = upstream.HOP_BY_HOP | {
    b"content-length",
    b"date",
    b"server",
    b"age",
    b"x-cache",
    b"x-request-id",
    b"set-cookie",
    CACHE_TAG,
    PURGE_TAG,
}
#: Not passed to the client with a forwarded answer.
_NOT_PASSED = upstream.HOP_BY_HOP | {b"content-length", b"date", b"server", b"x-request-id", CACHE_TAG, PURGE_TAG}
#: What a 304 from the cache carries of the entry's fields (RFC 9110 section 15.4.5).
NOT_MODIFIED_FIELDS = frozenset({b"cache-control", b"content-location", b"etag", b"expires", b"vary", b"last-modified"})
MAX_TAGS = 64
MAX_TAG_BYTES = 256


@dataclass(slots=True)
class Request:
    """What the cache reads of one request, from one pass over its header fields."""

    method: str
    #: The path as sent (percent-encoded), without the query: the generation token's key.
    path: bytes
    query: bytes
    #: Path and query, as sent on to the upstream.
    target: str
    headers: Headers
    client: str
    request_id: bytes
    directives: policy.Directives = field(default_factory=dict)
    rules: policy.RequestRules = policy.NO_RULES
    if_none_match: bytes | None = None
    if_modified_since: bytes | None = None
    credentials: bool = False
    ranged: bool = False
    host: bytes | None = None

    def values(self, name: bytes) -> bytes | None:
        """Every line of one field, joined as RFC 9110 section 5.3 allows; None when absent."""
        found = [value for key, value in self.headers if key == name]
        return b", ".join(found) if found else None


def parse_request(scope: Scope, *, client: str, request_id: bytes) -> Request:
    raw = scope.get("raw_path")
    path = raw if isinstance(raw, bytes) and raw else urllib.parse.quote(str(scope["path"])).encode()
    path = path.partition(b"?")[0]
    query: bytes = scope.get("query_string") or b""
    target = path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
    headers: Headers = scope["headers"]
    req = Request(str(scope["method"]), path, query, target, headers, client, request_id)
    cache_control: list[bytes] = []
    for name, value in headers:
        if name == b"cache-control":
            cache_control.append(value)
        elif name == b"if-none-match":
            req.if_none_match = value
        elif name == b"if-modified-since":
            req.if_modified_since = value
        elif name in CREDENTIALS:
            req.credentials = True
        elif name == b"range":
            req.ranged = True
        elif name == b"host":
            req.host = value
    if cache_control:
        req.directives = policy.parse_cache_control(cache_control)
        req.rules = policy.request_rules(req.directives)
    return req


def caller_label(client: str) -> str:
    """What ``CALLER_HEADER`` says: the API key's label, the JWT's sub, or '' (auth none)."""
    for prefix in ("key:", "sub:"):
        if client.startswith(prefix):
            return client[len(prefix) :]
    return client


def to_upstream(
    req: Request,
    *,
    client_ip: str,
    scheme: str,
    auth_mode: str,
    forward_credentials: bool,
    fill: bool,
    validators: Headers | None = None,
) -> list[tuple[str, str]]:
    """The request's fields as the upstream gets them. ``fill``: the answer may be stored, so the
    client's conditionals and ranges are left out (``validators`` are the entry's own)."""
    named = _connection_named(req.headers)
    out: list[tuple[str, str]] = []
    forwarded_for = client_ip
    for name, value in req.headers:
        if name in _DROP_TO_UPSTREAM or name in named:
            continue
        if name in CREDENTIALS and not forward_credentials:
            continue
        if fill and (name in CONDITIONALS or name == b"range"):
            continue
        if name == b"x-forwarded-for":
            forwarded_for = f"{value.decode('latin-1')}, {client_ip}"
            continue
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    for name, value in validators or ():
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    out.append(("X-Forwarded-For", forwarded_for))
    out.append(("X-Forwarded-Proto", scheme))
    out.append(("X-Request-Id", req.request_id.decode("latin-1")))
    out.append((contract.CALLER_HEADER, caller_label(req.client)))
    out.append((contract.CALLER_AUTH_HEADER, auth_mode))
    return out


def _connection_named(headers: Headers | tuple[tuple[bytes, bytes], ...]) -> frozenset[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return frozenset(named)


def lower(raw: tuple[tuple[bytes, bytes], ...]) -> Headers:
    """An upstream answer's fields with lower-case names."""
    return [(name.lower(), value) for name, value in raw]


def stored(headers: Headers) -> Headers:
    """What an entry keeps of an answer's fields (``headers`` lower case)."""
    named = _connection_named(headers)
    return [(n, v) for n, v in headers if n not in _NOT_STORED and n not in named]


def passed(headers: Headers) -> Headers:
    """What a client gets of a forwarded answer's fields (``headers`` lower case)."""
    named = _connection_named(headers)
    return [(n, v) for n, v in headers if n not in _NOT_PASSED and n not in named]


def all_values(headers: Headers, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key == name]


def first(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def list_items(values: list[bytes]) -> list[bytes]:
    """The members of comma-separated list fields, stripped, empty ones dropped."""
    return [item.strip() for value in values for item in value.split(b",") if item.strip()]


def vary_names(headers: Headers) -> tuple[bytes, ...] | None:
    """The request fields the answer varies on (lower case, in order); None for ``Vary: *``."""
    names = [name.lower() for name in list_items(all_values(headers, b"vary"))]
    if b"*" in names:
        return None
    return tuple(dict.fromkeys(names))


def variant(req: Request, names: tuple[bytes, ...]) -> bytes:
    """The entry variant of this request for an answer that varies on ``names``; ``-`` for none."""
    if not names:
        return b"-"
    parts = []
    for name in names:
        value = req.values(name)
        parts.append(name + (b"\x00" if value is None else b"=" + b" ".join(value.split())))
    return hashlib.blake2b(b"\n".join(parts), digest_size=16).hexdigest().encode()


def key_parts(req: Request, route: contract.CacheRoute | None) -> bytes:
    """What selects the entry besides the path: the query as sent (not normalized: the upstream
    may give parameter order a meaning), the route's vary headers, and the caller for a
    ``by_caller`` route."""
    parts = [req.query]
    if route is not None:
        for name in route.vary_headers:
            value = req.values(name.encode())
            parts.append(b"\x00" if value is None else b"=" + value)
        if route.by_caller:
            parts.append(b"caller=" + req.client.encode())
    return b"\n".join(parts)


def tags(headers: Headers) -> list[bytes]:
    """The cache tags an answer names, each without spaces, at most ``MAX_TAGS``."""
    out = [
        tag
        for tag in dict.fromkeys(list_items(all_values(headers, CACHE_TAG)))
        if len(tag) <= MAX_TAG_BYTES and all(0x21 <= byte <= 0x7E for byte in tag)
    ]
    return out[:MAX_TAGS]


def purge_tags(headers: Headers) -> list[bytes]:
    return [
        tag
        for tag in dict.fromkeys(list_items(all_values(headers, PURGE_TAG)))
        if all(0x21 <= byte <= 0x7E for byte in tag)
    ]


def same_origin_paths(headers: Headers, *, hosts: frozenset[bytes]) -> list[bytes]:
    """The paths of Location and Content-Location when they are on this origin (RFC 9111 section
    4.4): relative references, or absolute ones naming one of ``hosts`` (the request's Host and
    the upstream's)."""
    out = []
    for name in (b"location", b"content-location"):
        value = first(headers, name)
        if not value:
            continue
        parts = urllib.parse.urlsplit(value.decode("latin-1").strip())
        if parts.netloc and parts.netloc.encode("latin-1").lower() not in hosts:
            continue
        if parts.scheme and parts.scheme not in ("http", "https"):
            continue
        if parts.path.startswith("/"):
            out.append(parts.path.encode("latin-1"))
    return out
