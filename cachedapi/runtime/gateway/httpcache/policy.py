"""RFC 9111 (and RFC 5861) decisions of a shared cache, as pure functions of header values.

Kept apart from the request flow so that every rule is a small function of bytes and
numbers, with no I/O: what Cache-Control says, how long a response stays fresh, whether a
shared cache may keep it at all, how old it is, and when a stale one may still be served.
Times are in milliseconds (wall clock for dates, the caller's clock for the rest).
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Iterable
from dataclasses import dataclass

from cachedapi import contract

Directives = dict[str, str | None]

#: Statuses a cache may keep without explicit freshness (RFC 9110 section 15.1, "heuristically
#: cacheable"), 206 left out: the gateway does not combine ranges. Their heuristic freshness is
#: the route rule's ``ttl_seconds``, never a guess from Last-Modified.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
#: Answers to these methods never invalidate (RFC 9110 section 9.2.1, safe methods).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: Upstream answers for which a stale entry may be served instead (RFC 5861 section 4).
ERROR_STATUSES = frozenset({500, 502, 503, 504})


def parse_cache_control(values: Iterable[bytes]) -> Directives:
    """Every Cache-Control field line joined: directive (lower case) -> argument (unquoted) or None.

    A repeated directive keeps its first argument (RFC 9111 section 4.2.1 leaves the choice to
    the cache; the first is what most caches take)."""
    out: Directives = {}
    for value in values:
        for part in _split_commas(value.decode("latin-1")):
            name, eq, arg = part.partition("=")
            name = name.strip().lower()
            if not name or name in out:
                continue
            arg = arg.strip()
            if len(arg) >= 2 and arg[0] == '"' and arg[-1] == '"':
                arg = arg[1:-1]
            out[name] = arg if eq else None
    return out


def _split_commas(text: str) -> list[str]:
    """Split on commas outside quoted strings (``private="set-cookie, x"`` is one directive)."""
    parts, start, quoted = [], 0, False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def seconds(directives: Directives, name: str) -> int | None:
    """A delta-seconds argument; None when absent; an invalid one counts as 0 (RFC 9111 section
    1.2.2: a cache treats an argument it cannot parse as the safest value, stale)."""
    if name not in directives:
        return None
    arg = directives[name]
    if arg is None or not arg.isdigit():
        return 0
    return min(int(arg), 2**31)


def http_date_ms(value: bytes | None) -> int | None:
    """An HTTP-date in ms since the epoch; None when absent or not a date."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    return int(parsed.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Freshness:
    lifetime_ms: int
    #: The response said how long it is fresh (s-maxage, max-age or Expires): a route's ttl is
    #: not used then, and a status outside ``HEURISTIC_STATUSES`` may be stored.
    explicit: bool


def freshness(
    directives: Directives, *, expires: bytes | None, date_ms: int | None, response_ms: int, heuristic_s: int | None
) -> Freshness:
    """RFC 9111 section 4.2.1, for a shared cache: s-maxage, max-age, Expires - Date, then the
    route rule's ttl (``heuristic_s``; None or absent: 0)."""
    for name in ("s-maxage", "max-age"):
        value = seconds(directives, name)
        if value is not None:
            return Freshness(value * 1000, True)
    if expires is not None:
        at = http_date_ms(expires)
        # An Expires that is not a date ("0", "-1") means already expired (RFC 9111 section 5.3).
        base = date_ms if date_ms is not None else response_ms
        return Freshness(max(0, at - base) if at is not None else 0, True)
    return Freshness((heuristic_s or 0) * 1000, False)


#: How much apparent age (response time - Date) is taken as the Date's resolution.
DATE_SLACK_MS = 2000


def corrected_initial_age_ms(*, age: bytes | None, date_ms: int | None, request_ms: int, response_ms: int) -> int:
    """RFC 9111 section 4.2.3: the larger of the apparent age (response time - Date) and the
    upstream's Age plus the response delay. Date has whole seconds and servers print it once a
    second (uvicorn, hyper), so up to ``DATE_SLACK_MS`` of apparent age is resolution, not age:
    without the allowance an answer with max-age=1 would be stale on arrival."""
    apparent = max(0, response_ms - date_ms - DATE_SLACK_MS) if date_ms is not None else 0
    age_value = 0
    if age is not None and age.strip().isdigit():
        age_value = min(int(age.strip()), 2**31) * 1000
    return max(apparent, age_value + max(0, response_ms - request_ms))


def forbids_stale(directives: Directives) -> bool:
    """must-revalidate, proxy-revalidate, s-maxage (which implies proxy-revalidate in a shared
    cache) and no-cache: never served stale, neither while revalidating nor on an error."""
    return any(name in directives for name in ("must-revalidate", "proxy-revalidate", "s-maxage", "no-cache"))


def stale_windows_ms(directives: Directives, config: contract.RuntimeConfig, *, fresh: bool) -> tuple[int, int]:
    """(stale-while-revalidate, stale-if-error) in ms: the response's own directives, else the
    spec's ``cache.staleWhileRevalidateSeconds`` / ``staleIfErrorSeconds`` as defaults, but only
    for an answer that was fresh for a while (``fresh``: a lifetime above 0), so that an answer
    that says nothing about caching is never served stale; 0 when the response forbids stale
    answers."""
    if forbids_stale(directives):
        return 0, 0
    swr = seconds(directives, "stale-while-revalidate")
    sie = seconds(directives, "stale-if-error")
    return (
        (config.stale_while_revalidate_seconds if swr is None and fresh else swr or 0) * 1000,
        (config.stale_if_error_seconds if sie is None and fresh else sie or 0) * 1000,
    )


def not_storable(
    *,
    status: int,
    response: Directives,
    request: Directives,
    explicit: bool,
    credentials: bool,
    per_caller: bool,
    set_cookie: bool,
    vary: tuple[bytes, ...] | None,
) -> str | None:
    """Why a shared cache must not keep this answer to a GET, or None when it may (RFC 9111
    section 3, 3.5). ``per_caller``: the route rule keys entries by the caller (``by_caller``),
    so ``private`` answers and answers to credentials may be kept, per caller. ``vary`` None
    stands for ``Vary: *``."""
    if "no-store" in request:
        return "the request said no-store"
    if "no-store" in response:
        return "no-store"
    if vary is None:
        return "Vary: *"
    if "private" in response and not per_caller:
        return "private"
    if not (explicit or status in HEURISTIC_STATUSES or "public" in response):
        return f"status {status} without explicit freshness"
    if (
        credentials
        and not per_caller
        and not any(name in response for name in ("public", "s-maxage", "must-revalidate"))
    ):
        return "an authenticated request, and the answer says neither public, s-maxage nor must-revalidate"
    if set_cookie and "public" not in response:
        return "Set-Cookie without public"
    return None


@dataclass(frozen=True, slots=True)
class RequestRules:
    """What a request's own Cache-Control asks of a shared cache (RFC 9111 section 5.2.1)."""

    no_cache: bool = False
    no_store: bool = False
    max_age_ms: int | None = None
    #: None: no max-stale; ``math.inf``: max-stale without a limit.
    max_stale_ms: float | None = None
    min_fresh_ms: int = 0
    only_if_cached: bool = False

    @property
    def must_validate(self) -> bool:
        """The cache must ask the upstream whatever it holds."""
        return self.no_cache or self.max_age_ms == 0


NO_RULES = RequestRules()


def request_rules(directives: Directives) -> RequestRules:
    if not directives:
        return NO_RULES
    max_stale: float | None = None
    if "max-stale" in directives:
        value = seconds(directives, "max-stale")
        max_stale = math.inf if directives["max-stale"] is None else (value or 0) * 1000
    max_age = seconds(directives, "max-age")
    return RequestRules(
        no_cache="no-cache" in directives,
        no_store="no-store" in directives,
        max_age_ms=None if max_age is None else max_age * 1000,
        max_stale_ms=max_stale,
        min_fresh_ms=(seconds(directives, "min-fresh") or 0) * 1000,
        only_if_cached="only-if-cached" in directives,
    )


def fresh_for(rules: RequestRules, *, age_ms: int, lifetime_ms: int) -> bool:
    """The entry is fresh enough for this request (max-age, min-fresh)."""
    if rules.max_age_ms is not None and age_ms > rules.max_age_ms:
        return False
    return age_ms + rules.min_fresh_ms < lifetime_ms


def stale_allowed_by_request(rules: RequestRules, *, age_ms: int, lifetime_ms: int) -> bool:
    """The request's max-stale accepts this stale entry (never past its own max-age)."""
    if rules.max_stale_ms is None or rules.no_cache:
        return False
    if rules.max_age_ms is not None and age_ms > rules.max_age_ms:
        return False
    return age_ms - lifetime_ms <= rules.max_stale_ms
