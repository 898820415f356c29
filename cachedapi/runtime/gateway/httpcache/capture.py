"""One upstream answer to a GET, judged once: may it be stored, and if so, as what entry.

Every RFC 9111 number an entry carries is computed here, when the answer arrives (so a hit
computes none): its freshness lifetime, corrected initial age, stale windows and flags, its
tags, its Vary names, and how long Redis keeps it. A 304 to a revalidation goes through the
same judgment, with the entry's fields updated by the 304's (``merge``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from cachedapi import contract
from cachedapi.runtime.gateway.httpcache import entry, fields, policy, store

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Captured:
    stored: entry.Stored
    #: Why the answer is not stored; None: it is.
    reason: str | None
    #: The response's own reasons (not the request's): worth a hit-for-miss marker.
    pass_marker: bool
    tags: list[bytes]
    seconds: int
    fields: bytes
    payload: bytes


def merge(stored: Headers, updated: Headers) -> Headers:
    """RFC 9111 section 3.2: the stored fields, each replaced by the 304's fields of that name."""
    names = {name for name, _ in updated}
    return [(n, v) for n, v in stored if n not in names] + updated


def capture(
    *,
    status: int,
    headers: Headers,
    body: bytes,
    req: fields.Request,
    route: contract.CacheRoute | None,
    config: contract.RuntimeConfig,
    request_ms: int,
    response_ms: int,
    stored_at_ms: int,
    tags_fallback: Sequence[bytes] = (),
) -> Captured:
    """``headers``: the answer's fields, lower case, as the upstream sent them; ``request_ms`` and
    ``response_ms``: this gateway's wall clock around the exchange; ``stored_at_ms``: the same
    moment on Redis's clock (the lookup's time plus the exchange's duration)."""
    directives = policy.parse_cache_control(fields.all_values(headers, b"cache-control"))
    date_ms = policy.http_date_ms(fields.first(headers, b"date"))
    fresh = policy.freshness(
        directives,
        expires=fields.first(headers, b"expires"),
        date_ms=date_ms,
        response_ms=response_ms,
        heuristic_s=route.ttl_seconds if route is not None else None,
    )
    initial_age = policy.corrected_initial_age_ms(
        age=fields.first(headers, b"age"), date_ms=date_ms, request_ms=request_ms, response_ms=response_ms
    )
    vary = fields.vary_names(headers)
    by_caller = route is not None and route.by_caller
    reason = policy.not_storable(
        status=status,
        response=directives,
        request=req.directives,
        explicit=fresh.explicit,
        credentials=req.credentials,
        per_caller=by_caller,
        set_cookie=any(name == b"set-cookie" for name, _ in headers),
        vary=vary,
    )
    no_cache = "no-cache" in directives
    lifetime = 0 if no_cache else fresh.lifetime_ms
    swr, sie = policy.stale_windows_ms(directives, config, fresh=lifetime > 0)
    kept = fields.stored(headers)
    validator = any(name in (b"etag", b"last-modified") for name, _ in kept)
    if reason is None and lifetime <= initial_age and not validator and not (swr or sie):
        reason = "stale on arrival, with no validator to revalidate it"
    flags = (b"m" if policy.forbids_stale(directives) else b"") + (b"n" if no_cache else b"")
    names = vary or ()
    block = entry.header_block(kept)
    line = entry.fields(
        initial_age_ms=initial_age,
        lifetime_ms=lifetime,
        swr_ms=swr,
        sie_ms=sie,
        flags=flags,
        status=status,
        vary=names,
        header_block=block,
    )
    tags = fields.tags(headers) if any(name == fields.CACHE_TAG for name, _ in headers) else list(tags_fallback)
    keep_ms = max(0, lifetime - initial_age) + max(swr, sie)
    seconds = math.ceil(keep_ms / 1000) + (store.VALIDATOR_GRACE_SECONDS if validator else 0)
    # Never past the path's token (a longer max-age is answered, then refetched once a week).
    seconds = min(seconds, store.MAX_ENTRY_SECONDS)
    return Captured(
        stored=entry.Stored(
            variant=fields.variant(req, names),
            stored_at_ms=stored_at_ms,
            initial_age_ms=initial_age,
            lifetime_ms=lifetime,
            swr_ms=swr,
            sie_ms=sie,
            flags=flags or b"-",
            status=status,
            vary=names,
            headers=kept,
            body=body,
            tags=tuple(tags),
        ),
        reason=reason,
        pass_marker=reason is not None and "no-store" not in req.directives,
        tags=tags,
        seconds=max(1, seconds),
        fields=line,
        payload=block + body,
    )
