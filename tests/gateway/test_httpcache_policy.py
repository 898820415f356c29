"""The pure RFC 9111 decisions of ``httpcache.policy`` and the entry layout, without processes."""

from __future__ import annotations

import math

from cachedapi import contract
from cachedapi.runtime.gateway.httpcache import entry, policy

CONFIG = contract.RuntimeConfig(
    name="t",
    namespace="d",
    key_prefix="p",
    upstream_url="http://127.0.0.1:1",
    resources={},
    stale_while_revalidate_seconds=30,
    stale_if_error_seconds=60,
    auth_mode="none",
    jwt=None,
    rate_per_second=10,
    rate_burst=10,
    rate_by="client",
    upstream_mode=contract.UPSTREAM_HTTP,
)


def test_cache_control_parsing() -> None:
    parsed = policy.parse_cache_control([b'Max-Age=60, private="set-cookie, x", no-cache', b"max-age=5, public"])
    assert parsed == {"max-age": "60", "private": "set-cookie, x", "no-cache": None, "public": None}
    assert policy.seconds({"max-age": "abc"}, "max-age") == 0
    assert policy.seconds({}, "max-age") is None


def test_freshness_order() -> None:
    both = policy.parse_cache_control([b"max-age=10, s-maxage=20"])
    assert policy.freshness(both, expires=None, date_ms=None, response_ms=0, heuristic_s=99).lifetime_ms == 20_000
    expires = b"Thu, 01 Jan 1970 00:01:40 GMT"  # 100 s
    fresh = policy.freshness({}, expires=expires, date_ms=40_000, response_ms=0, heuristic_s=99)
    assert (fresh.lifetime_ms, fresh.explicit) == (60_000, True)
    assert policy.freshness({}, expires=b"0", date_ms=None, response_ms=0, heuristic_s=99).lifetime_ms == 0
    heuristic = policy.freshness({}, expires=None, date_ms=None, response_ms=0, heuristic_s=7)
    assert (heuristic.lifetime_ms, heuristic.explicit) == (7_000, False)


def test_corrected_initial_age() -> None:
    assert policy.corrected_initial_age_ms(age=b"10", date_ms=None, request_ms=0, response_ms=300) == 10_300
    assert policy.corrected_initial_age_ms(age=None, date_ms=0, request_ms=9_000, response_ms=10_000) == 8_000
    assert policy.corrected_initial_age_ms(age=None, date_ms=0, request_ms=1_000, response_ms=1_500) == 500


def test_storable() -> None:
    def why(cc: bytes, **kw: object) -> str | None:
        args: dict[str, object] = {
            "status": 200,
            "response": policy.parse_cache_control([cc]),
            "request": {},
            "explicit": True,
            "credentials": False,
            "per_caller": False,
            "set_cookie": False,
            "vary": (),
        }
        args.update(kw)
        return policy.not_storable(**args)  # type: ignore[arg-type]

    assert why(b"max-age=60") is None
    assert why(b"no-store") == "no-store"
    assert why(b"private") == "private"
    assert why(b"private", per_caller=True) is None
    assert why(b"max-age=60", credentials=True) is not None
    for ok in (b"public", b"s-maxage=5", b"max-age=5, must-revalidate"):
        assert why(ok, credentials=True) is None
    assert why(b"max-age=60", set_cookie=True) is not None
    assert why(b"public, max-age=60", set_cookie=True) is None
    assert why(b"", status=302, explicit=False) is not None
    assert why(b"", status=404, explicit=False) is None
    assert why(b"max-age=60", vary=None) == "Vary: *"
    assert why(b"max-age=60", request={"no-store": None}) is not None


def test_stale_windows_and_defaults() -> None:
    assert policy.stale_windows_ms({"max-age": "5"}, CONFIG, fresh=True) == (30_000, 60_000)
    assert policy.stale_windows_ms({"max-age": "5"}, CONFIG, fresh=False) == (0, 0)
    own = {"stale-while-revalidate": "3", "stale-if-error": "4"}
    assert policy.stale_windows_ms(own, CONFIG, fresh=False) == (3_000, 4_000)
    for strict in ("must-revalidate", "proxy-revalidate", "s-maxage", "no-cache"):
        assert policy.stale_windows_ms({strict: None, **own}, CONFIG, fresh=True) == (0, 0)


def test_request_rules() -> None:
    rules = policy.request_rules(policy.parse_cache_control([b"max-stale, min-fresh=5"]))
    assert rules.max_stale_ms == math.inf and rules.min_fresh_ms == 5_000
    assert policy.request_rules({"max-age": "0"}).must_validate
    assert not policy.fresh_for(rules, age_ms=56_000, lifetime_ms=60_000)
    assert policy.stale_allowed_by_request(rules, age_ms=10**9, lifetime_ms=1)


def test_entry_layout_round_trip() -> None:
    headers = [(b"content-type", b"text/plain"), (b"etag", b'"x"')]
    block = entry.header_block(headers)
    line = entry.fields(
        initial_age_ms=5,
        lifetime_ms=6,
        swr_ms=7,
        sie_ms=8,
        flags=b"m",
        status=203,
        vary=(b"accept",),
        header_block=block,
    )
    body = b"a\r\nb\n\x00"
    raw = b"HC1 abc 1000 " + line + b" T tag 12\n" + block + body
    stored = entry.decode(raw)
    assert stored is not None
    assert (stored.stored_at_ms, stored.initial_age_ms, stored.lifetime_ms, stored.status) == (1000, 5, 6, 203)
    assert (stored.headers, stored.body, stored.tags, stored.vary) == (headers, body, (b"tag",), (b"accept",))
    assert stored.no_stale and not stored.no_cache
    assert entry.decode(entry.PASS) is None
