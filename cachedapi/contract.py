"""The contract between the operator and the pods it runs, and between roles.

One module, imported by both sides (as CloudNativePG keeps its pgbouncer
config package): the runtime configuration file that the operator renders into
the ``x-config`` ConfigMap, the environment variables that carry secrets, the
ports, and the Redis key scheme and entry format that the api role writes and
the gateway reads. Nothing here does I/O except ``load_config``.

Cache coherence, in one paragraph (the reasoning is in README "Cache"):
every item and every resource's set of list pages has a *generation token* in
Redis, a random string replaced after each committed write. A reader that
misses learns the token in the same round trip as the miss, reads PostgreSQL,
and stores what it read only if the token is still the same (a compare in a
Lua script). A write commits, then replaces the tokens and deletes the item
entry, then answers (a PUT or PATCH stores its own answer instead when the
entry it replaces is of an older version: entries only move forward). So a slow
reader whose read predates a write can never store its old value after that
write is acknowledged: the stale fill of the memcache paper, closed with the
lease idea but with no lease to expire.
Tokens are random, not counters, so that an expired token coming back cannot
match an old one (no ABA); they outlive every entry (``GEN_TTL_SECONDS``). A
lookup that finds no token creates one, so a reader never holds "absent": if
Redis restarts empty while a reader is in PostgreSQL, its fill is refused.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# --- Ports and paths ------------------------------------------------------------------------

GATEWAY_PORT = 8080
API_PORT = 8081
REDIS_PORT = 6379
POSTGRES_PORT = 5432
CONFIG_DIR = "/etc/cachedapi"
CONFIG_FILE = "config.json"
API_KEYS_DIR = "/etc/cachedapi/api-keys"

# --- Environment ----------------------------------------------------------------------------

ENV_CONFIG = "CACHEDAPI_CONFIG"  # path of the rendered configuration file
ENV_DATABASE_URL = "CACHEDAPI_DATABASE_URL"  # libpq URL or DSN
ENV_REDIS_URL = "CACHEDAPI_REDIS_URL"  # redis:// or rediss:// (TLS); an ACL user and password in it go to AUTH
ENV_UPSTREAM_URL = "CACHEDAPI_UPSTREAM_URL"  # overrides config.upstreamUrl (dev, tests)
ENV_API_KEYS_DIR = "CACHEDAPI_API_KEYS_DIR"  # one file per key: file name = client label
ENV_API_KEYS = "CACHEDAPI_API_KEYS"  # alternative: comma-separated keys (dev)
ENV_JWT_SECRET = "CACHEDAPI_JWT_SECRET"  # HS256 secret when auth.jwt.secretRef is used
ENV_LOG_LEVEL = "CACHEDAPI_LOG_LEVEL"
ENV_ADMIN_KEY = "CACHEDAPI_ADMIN_KEY"  # the gateway's admin key (cache purges), with any upstream
#: PEM CA bundles (paths) that the external servers' certificates must chain to: Redis's (the URL
#: must then be rediss://) and PostgreSQL's (then connected to with sslmode=verify-full). Not
#: secrets, but they come from the user's Secrets, mounted as files (``*_CA_PATH``).
ENV_REDIS_CA_FILE = "CACHEDAPI_REDIS_CA_FILE"
ENV_DATABASE_CA_FILE = "CACHEDAPI_DATABASE_CA_FILE"

#: Each secret setting may instead name a file holding it: ``<NAME>_FILE`` (as the postgres
#: image's ``POSTGRES_PASSWORD_FILE``). The operator mounts Secrets as files under
#: ``SECRETS_DIR`` and sets these, so no secret sits in a pod's environment.
FILE_SUFFIX = "_FILE"
SECRET_SETTINGS = (ENV_DATABASE_URL, ENV_REDIS_URL, ENV_JWT_SECRET, ENV_ADMIN_KEY)
SECRETS_DIR = "/etc/cachedapi/secrets"
#: Where the operator mounts the CA bundles of ``ENV_REDIS_CA_FILE`` and ``ENV_DATABASE_CA_FILE``.
REDIS_CA_PATH = "/etc/cachedapi/tls/redis/ca.crt"
DATABASE_CA_PATH = "/etc/cachedapi/tls/database/ca.crt"


def secret_file_path(setting: str) -> str:
    """Where the operator mounts the file for one secret setting."""
    return f"{SECRETS_DIR}/{setting.lower().replace('_', '-')}/value"


def resolve_secret_files(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment with every ``<NAME>_FILE`` read into ``<NAME>`` (a set ``<NAME>`` wins).

    Read once, at start; raises ValueError naming the variable and the file.
    """
    out = dict(environ)
    for name in SECRET_SETTINGS:
        path = environ.get(name + FILE_SUFFIX)
        if name in environ or not path:
            continue
        try:
            out[name] = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{name}{FILE_SUFFIX}: cannot read {path}: {exc.__class__.__name__}") from None
    return out


# --- Runtime configuration ------------------------------------------------------------------

CONFIG_VERSION = 1

# What a client may hold of a gateway (``spec.gateway.timeouts`` and ``.capacity``; README "Slow
# and idle clients"). The model's defaults are these, and a configuration rendered before the
# fields existed reads as these.
DEFAULT_REQUEST_HEADER_SECONDS = 10
DEFAULT_REQUEST_BODY_SECONDS = 10
DEFAULT_MAX_CONNECTIONS = 4096
DEFAULT_MAX_FORWARDS_PER_CLIENT = 128


# --- Any upstream: the user's own API behind the gateway (``spec.api.image``) -----------------
# With the bundled api role the gateway reads entries the api role writes. With any other
# upstream (``UPSTREAM_HTTP``) the gateway is a shared HTTP cache (RFC 9111, RFC 5861): it
# stores what the upstream's Cache-Control (or a route rule) allows, fills the entries itself,
# and invalidates on writes, by URI and by cache tag.

UPSTREAM_BUNDLED = "bundled"
UPSTREAM_HTTP = "http"


@dataclass(frozen=True, slots=True)
class CacheRoute:
    """``spec.cache.routes[]``: how to cache the answers to paths that match ``path``."""

    #: An exact path (``/v1/status``) or a prefix ending in ``*`` (``/v1/products/*``).
    path: str
    #: Freshness for answers whose upstream says nothing about it (no max-age, s-maxage or
    #: Expires); 0 = never cache; None = only what the upstream says.
    ttl_seconds: int | None = None
    #: Request headers (lower case) whose values select separate entries, beside ``Vary``.
    vary_headers: tuple[str, ...] = ()
    #: Answers depend on the caller: keyed by the caller's identity, never shared between callers.
    by_caller: bool = False

    def matches(self, path: str) -> bool:
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path


#: Headers the gateway sets on every request it forwards to a user's upstream; a client's own
#: copies are dropped, so the upstream can trust them. The caller: the API key's label or the
#: JWT's ``sub`` (empty with auth mode none); how it was authenticated: apiKey | jwt | none.
CALLER_HEADER = "x-cachedapi-caller"
CALLER_AUTH_HEADER = "x-cachedapi-auth"
#: An upstream's answer names its cache tags in this header, comma-separated (the name
#: Cloudflare and Akamai use); the gateway keeps it with the entry and does not pass it on.
CACHE_TAG_HEADER = "cache-tag"
#: An upstream's answer to a write names tags to purge in this header, comma-separated; the
#: purge is complete, on every gateway replica, before the client gets the answer.
PURGE_TAG_HEADER = "cache-tag-purge"
#: The gateway's admin endpoint: ``POST`` ``{"tags": [...], "paths": [...]}`` purges them,
#: authenticated by the admin key (``ENV_ADMIN_KEY``, a Secret), never by an API key.
ADMIN_PURGE_PATH = "/.cachedapi/purge"


@dataclass(frozen=True, slots=True)
class ResourceConfig:
    name: str
    ttl_seconds: int
    schema: dict[str, Any]
    #: ``spec.resources[].indexes``: each index's keys, spelled as in ``?sort=``.
    indexes: tuple[tuple[str, ...], ...] = ()
    #: ``spec.resources[].public``: any caller may see it, so a shared cache may keep it
    #: (``cache_scope``).
    public: bool = False

    @property
    def cacheable(self) -> bool:
        return self.ttl_seconds > 0


@dataclass(frozen=True, slots=True)
class JwtConfig:
    issuer: str | None
    audience: str | None
    jwks_url: str | None
    uses_secret: bool


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """What a runtime pod knows: read once at start, never per request."""

    name: str
    namespace: str
    key_prefix: str
    upstream_url: str
    resources: dict[str, ResourceConfig]
    stale_while_revalidate_seconds: int
    stale_if_error_seconds: int
    auth_mode: str
    jwt: JwtConfig | None
    rate_per_second: float
    rate_burst: int
    rate_by: str
    max_body_bytes: int = 1_048_576
    #: From a connection being ready for a request (opened, or idle after an answer) until the
    #: request's header is complete; past it the gateway's HTTP server closes the connection.
    request_header_seconds: int = DEFAULT_REQUEST_HEADER_SECONDS
    #: From the gateway starting to read a request body until it has all of it; past it, 408.
    request_body_seconds: int = DEFAULT_REQUEST_BODY_SECONDS
    #: Connections one gateway process holds at once; more wait in the kernel's listen queue.
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: Requests of one client address in a gateway beyond its cache at once (0: no cap); more: 503.
    max_forwards_per_client: int = DEFAULT_MAX_FORWARDS_PER_CLIENT
    #: ``UPSTREAM_BUNDLED`` (the api role) or ``UPSTREAM_HTTP`` (the user's own API: ``spec.api.image``).
    upstream_mode: str = "bundled"
    #: ``spec.cache.routes``, in the order declared (the first that matches a path applies).
    cache_routes: tuple[CacheRoute, ...] = ()
    #: Forward the caller's own credential (Authorization, X-API-Key) to the upstream too.
    forward_credentials: bool = False


def dump_config(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, indent=2) + "\n"


def parse_config(data: dict[str, Any]) -> RuntimeConfig:
    """Build the runtime's configuration object; raises ValueError naming a bad key."""
    if data.get("version") != CONFIG_VERSION:
        raise ValueError(f"config.version: expected {CONFIG_VERSION}, got {data.get('version')!r}")
    try:
        jwt_data = data["auth"].get("jwt")
        clients = data.get("clients") or {}
        return RuntimeConfig(
            name=data["name"],
            namespace=data["namespace"],
            key_prefix=data["keyPrefix"],
            upstream_url=data["upstreamUrl"].rstrip("/"),
            resources={
                r["name"]: ResourceConfig(
                    r["name"],
                    int(r["ttlSeconds"]),
                    r["schema"],
                    tuple(tuple(keys) for keys in r.get("indexes", ())),
                    public=bool(r.get("public", False)),
                )
                for r in data["resources"]
            },
            stale_while_revalidate_seconds=int(data["cache"]["staleWhileRevalidateSeconds"]),
            stale_if_error_seconds=int(data["cache"]["staleIfErrorSeconds"]),
            auth_mode=data["auth"]["mode"],
            jwt=JwtConfig(
                issuer=jwt_data.get("issuer"),
                audience=jwt_data.get("audience"),
                jwks_url=jwt_data.get("jwksUrl"),
                uses_secret=bool(jwt_data.get("usesSecret")),
            )
            if jwt_data
            else None,
            rate_per_second=float(data["rateLimit"]["requestsPerSecond"]),
            rate_burst=int(data["rateLimit"]["burst"]),
            rate_by=data["rateLimit"]["by"],
            request_header_seconds=int(clients.get("requestHeaderSeconds", DEFAULT_REQUEST_HEADER_SECONDS)),
            request_body_seconds=int(clients.get("requestBodySeconds", DEFAULT_REQUEST_BODY_SECONDS)),
            max_connections=int(clients.get("maxConnections", DEFAULT_MAX_CONNECTIONS)),
            max_forwards_per_client=int(clients.get("maxForwardsPerClient", DEFAULT_MAX_FORWARDS_PER_CLIENT)),
            upstream_mode=(data.get("upstream") or {}).get("mode", UPSTREAM_BUNDLED),
            forward_credentials=bool((data.get("upstream") or {}).get("forwardCredentials", False)),
            cache_routes=tuple(
                CacheRoute(
                    path=r["path"],
                    ttl_seconds=None if r.get("ttlSeconds") is None else int(r["ttlSeconds"]),
                    vary_headers=tuple(h.lower() for h in r.get("varyHeaders", ())),
                    by_caller=bool(r.get("byCaller", False)),
                )
                for r in data.get("cacheRoutes", ())
            ),
        )
    except KeyError as exc:
        raise ValueError(f"config: missing key {exc.args[0]!r}") from None


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> RuntimeConfig:
    """The configuration file as a role reads it at start; ``ENV_UPSTREAM_URL`` in ``environ``
    overrides its upstream (``cachedapi dev``, the tests)."""
    config = parse_config(json.loads(Path(path).read_text(encoding="utf-8")))
    upstream = (environ or {}).get(ENV_UPSTREAM_URL)
    return dataclasses.replace(config, upstream_url=upstream.rstrip("/")) if upstream else config


# --- Redis key scheme -----------------------------------------------------------------------
# {prefix}:{resource}:i:{id}           item entry (encoded with encode_entry)
# {prefix}:{resource}:g:{id}           item generation token
# {prefix}:{resource}:lg               list generation token (all pages of the resource)
# {prefix}:{resource}:l:{token}:{q}    list page entry, q = canonical query string
# {entry key}:lease                    fill lease of an entry (one database query per missed key)
# {prefix}:rl:{client}                 rate-limit state (GCRA theoretical arrival time)
#
# The Lua scripts of both roles spell none of this: they get the keys, or the two halves of a
# list page's key around the token they read (``list_page_key_parts``), and ``LEASE_SUFFIX``.

#: Generation tokens outlive every entry (entries live at most 3 * MAX_SECONDS).
GEN_TTL_SECONDS = 7 * 86_400


def item_key(prefix: str, resource: str, item_id: str) -> str:
    return f"{prefix}:{resource}:i:{item_id}"


def item_gen_key(prefix: str, resource: str, item_id: str) -> str:
    return f"{prefix}:{resource}:g:{item_id}"


def list_gen_key(prefix: str, resource: str) -> str:
    return f"{prefix}:{resource}:lg"


def list_page_key_parts(prefix: str, resource: str, query: str) -> tuple[str, str]:
    """A list page's key around its list generation token: ``head + token + tail``. (The token is
    read inside a Lua script, in the same round trip as the page.)"""
    return f"{prefix}:{resource}:l:", f":{query}"


def list_page_key(prefix: str, resource: str, token: str, query: str) -> str:
    head, tail = list_page_key_parts(prefix, resource, query)
    return head + token + tail


#: The fill lease of an entry is the entry's key + this (no entry key holds a colon after its
#: id or query, so no entry key can end like this).
LEASE_SUFFIX = ":lease"


def lease_key(entry_key: str) -> str:
    return entry_key + LEASE_SUFFIX


def rate_key(prefix: str, client: str) -> str:
    return f"{prefix}:rl:{client}"


DEFAULT_PAGE_LIMIT = 20
MAX_PAGE_LIMIT = 100


def canonical_list_query(limit: int, cursor: str | None) -> str:
    """The one spelling of a list query, so that ``?cursor=x&limit=5`` and ``?limit=5&cursor=x``
    share a cache entry. ``limit`` must already be clamped to 1..MAX_PAGE_LIMIT."""
    return f"limit={limit}&cursor={cursor or ''}"


# --- Entry format ---------------------------------------------------------------------------
# One Redis string: a one-line ASCII header, then the response body bytes, unchanged.
#   b"CA1 <stored_at_ms> <ttl_s> <status> <etag> <content-type>\n" + body
# The gateway splits on the first newline and never decodes the body. The ETag is
# strong and quoted; neither it nor the content type may hold a space or a newline.

ENTRY_MAGIC = b"CA1"
#: The header's stored-at and ttl fields, as a Lua pattern (the api role's lookup script reads them).
ENTRY_HEADER_LUA_PATTERN = "^CA1 (%d+) (%d+) "


@dataclass(frozen=True, slots=True)
class Entry:
    stored_at_ms: int
    ttl_seconds: int
    status: int
    etag: str
    content_type: str
    body: bytes


def encode_entry(
    *, stored_at_ms: int, ttl_seconds: int, status: int, etag: str, content_type: str, body: bytes
) -> bytes:
    if " " in etag or " " in content_type or "\n" in etag + content_type:
        raise ValueError("etag and content type must hold no space or newline")
    head = f"CA1 {stored_at_ms} {ttl_seconds} {status} {etag} {content_type}\n"
    return head.encode("ascii") + body


def decode_entry(raw: bytes) -> Entry | None:
    """The stored entry, or None for bytes that are not one (treated as a miss)."""
    end = raw.find(b"\n")
    if end < 0 or not raw.startswith(b"CA1 "):
        return None
    parts = raw[4:end].split(b" ")
    if len(parts) != 5:
        return None
    try:
        return Entry(
            stored_at_ms=int(parts[0]),
            ttl_seconds=int(parts[1]),
            status=int(parts[2]),
            etag=parts[3].decode("ascii"),
            content_type=parts[4].decode("ascii"),
            body=raw[end + 1 :],
        )
    except (ValueError, UnicodeDecodeError):
        return None


def entry_expiry_seconds(ttl_seconds: int, cfg: RuntimeConfig) -> int:
    """How long Redis keeps an entry: fresh time plus the longer of the two stale windows."""
    return ttl_seconds + max(cfg.stale_while_revalidate_seconds, cfg.stale_if_error_seconds)


# --- Headers the roles exchange -------------------------------------------------------------

#: Both roles answer 431 past these: header fields, and bytes of them (names and values).
MAX_HEADERS = 100
MAX_HEADER_BYTES = 32 * 1024

REQUEST_ID_HEADER = "x-request-id"
#: Set by the gateway on a refresh it sends on behalf of a stale entry: the api role
#: reads the database even if a fresh entry exists, and refills.
REVALIDATE_HEADER = "x-cachedapi-revalidate"
PROBLEM_JSON = "application/problem+json"
JSON = "application/json"


# --- Who may keep an answer -----------------------------------------------------------------


def cache_scope(config: RuntimeConfig, resource: str) -> str:
    """The Cache-Control directive that says who may keep a cacheable answer of ``resource``.

    Both roles answer with it (the gateway from Redis, the api role on a miss), so that a
    shared cache in front of the gateway (a CDN, a corporate proxy) never keeps an answer
    meant for an authenticated caller and serves it to someone without credentials. RFC
    9111 protects only requests that carry ``Authorization``; an ``X-API-Key`` is invisible
    to it. So: ``"private"`` when callers authenticate, unless the resource is declared
    ``public`` (``"public"``, which also lets a shared cache keep answers to requests with
    ``Authorization``); ``""`` (plain ``max-age``) when nobody authenticates, since the
    answer then does not depend on the caller. Answers that must never be kept say
    ``no-store`` whatever this says (ttl 0, errors).
    """
    if config.resources[resource].public:
        return "public"
    return "" if config.auth_mode == "none" else "private"
