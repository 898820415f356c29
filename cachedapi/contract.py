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
entry, then answers. So a slow reader whose read predates a write can never
store its old value after that write is acknowledged: the stale fill of the
memcache paper, closed with the lease idea but with no lease to expire.
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
ENV_REDIS_URL = "CACHEDAPI_REDIS_URL"  # redis:// URL
ENV_UPSTREAM_URL = "CACHEDAPI_UPSTREAM_URL"  # overrides config.upstreamUrl (dev, tests)
ENV_API_KEYS_DIR = "CACHEDAPI_API_KEYS_DIR"  # one file per key: file name = client label
ENV_API_KEYS = "CACHEDAPI_API_KEYS"  # alternative: comma-separated keys (dev)
ENV_JWT_SECRET = "CACHEDAPI_JWT_SECRET"  # HS256 secret when auth.jwt.secretRef is used
ENV_LOG_LEVEL = "CACHEDAPI_LOG_LEVEL"

#: Each secret setting may instead name a file holding it: ``<NAME>_FILE`` (as the postgres
#: image's ``POSTGRES_PASSWORD_FILE``). The operator mounts Secrets as files under
#: ``SECRETS_DIR`` and sets these, so no secret sits in a pod's environment.
FILE_SUFFIX = "_FILE"
SECRET_SETTINGS = (ENV_DATABASE_URL, ENV_REDIS_URL, ENV_JWT_SECRET)
SECRETS_DIR = "/etc/cachedapi/secrets"


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


@dataclass(frozen=True, slots=True)
class ResourceConfig:
    name: str
    ttl_seconds: int
    schema: dict[str, Any]

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


def dump_config(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, indent=2) + "\n"


def parse_config(data: dict[str, Any]) -> RuntimeConfig:
    """Build the runtime's configuration object; raises ValueError naming a bad key."""
    if data.get("version") != CONFIG_VERSION:
        raise ValueError(f"config.version: expected {CONFIG_VERSION}, got {data.get('version')!r}")
    try:
        jwt_data = data["auth"].get("jwt")
        return RuntimeConfig(
            name=data["name"],
            namespace=data["namespace"],
            key_prefix=data["keyPrefix"],
            upstream_url=data["upstreamUrl"].rstrip("/"),
            resources={
                r["name"]: ResourceConfig(r["name"], int(r["ttlSeconds"]), r["schema"]) for r in data["resources"]
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
