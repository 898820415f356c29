"""The gateway's reading of a request: which entry it looks up, and when it leaves the query to the api role."""

from __future__ import annotations

import pytest

from cachedapi import contract, model
from cachedapi.operator.children import config as x_config
from cachedapi.runtime.gateway import answers, routes


@pytest.fixture
def table(bookstore: model.CachedApi) -> dict[str, routes.Resource]:
    return routes.build(x_config.runtime_config(bookstore))


def _tail(table: dict[str, routes.Resource], query: bytes) -> bytes | None:
    return routes.page_tail(table["books"], query)


def test_list_queries_are_spelled_as_the_api_role_stores_them(table: dict[str, routes.Resource]) -> None:
    plain = contract.canonical_list_query(contract.DEFAULT_PAGE_LIMIT, None)
    assert _tail(table, b"") == f":{plain}".encode()
    assert _tail(table, b"limit=5&cursor=") == f":{contract.canonical_list_query(5, None)}".encode()


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (b"author=Le%20Guin&limit=5", b"limit=5&author%5Beq%5D=Le+Guin"),
        (b"year[in]=1969,1965&sort=-year,title", b"sort=-year,title&year[in]=1965,1969"),
        (b"year[gte]=1965.0&fields=year,title", b"fields=title,year,id&year[gte]=1965"),
        (b"year[in]=1965", b"year=1965"),
    ],
)
def test_equivalent_spellings_of_a_query_share_one_page_key(
    table: dict[str, routes.Resource], one: bytes, other: bytes
) -> None:
    assert _tail(table, one) is not None
    assert _tail(table, one) == _tail(table, other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (b"author=a", b"author=b"),
        (b"sort=year", b"sort=-year"),
        (b"year[gt]=1", b"year[gte]=1"),
        (b"", b"fields=title"),
    ],
)
def test_different_queries_have_different_page_keys(
    table: dict[str, routes.Resource], one: bytes, other: bytes
) -> None:
    assert _tail(table, one) != _tail(table, other)


@pytest.mark.parametrize(
    "query",
    [
        b"limit=0",
        b"limit=101",
        b"limit=x",
        b"limit=-1",
        b"limit=1&limit=2",
        b"sort=publisher",
        b"cursor=abc",
        b"isbn=1",
        b"year=soon",
        b"year[near]=1",
        b"tags=x",
    ],
)
def test_queries_the_gateway_cannot_map_with_certainty_are_forwarded(
    table: dict[str, routes.Resource], query: bytes
) -> None:
    assert _tail(table, query) is None
    assert routes.read(table, "books", query) is None


def test_uncached_resources_and_nested_paths_are_not_looked_up(table: dict[str, routes.Resource]) -> None:
    assert routes.read(table, "orders/1", b"") is None  # ttlSeconds 0
    assert routes.read(table, "books/1/extra", b"") is None
    assert routes.read(table, "unknown/1", b"") is None


def test_item_lookup_reads_the_api_roles_item_key(
    table: dict[str, routes.Resource], bookstore: model.CachedApi
) -> None:
    found = routes.read(table, "books/42", b"")
    assert found is not None and not found.is_list
    assert found.key == contract.item_key(x_config.key_prefix(bookstore), "books", "42").encode()


@pytest.mark.parametrize(
    ("header", "matches"),
    [(b'"a"', True), (b'"x", "a"', True), (b'W/"a"', True), (b"*", True), (b'"b"', False), (b"", False)],
)
def test_if_none_match_uses_weak_comparison(header: bytes, matches: bool) -> None:
    assert answers.etag_matches(header, b'"a"') is matches


def test_list_lookup_reads_the_page_the_api_role_stores_under_the_current_token(
    table: dict[str, routes.Resource], bookstore: model.CachedApi
) -> None:
    found = routes.read(table, "books", b"limit=5")
    assert found is not None and found.is_list
    prefix = x_config.key_prefix(bookstore)
    assert found.key == contract.list_gen_key(prefix, "books").encode()
    query = contract.canonical_list_query(5, None)
    joined = found.page_head + b"t0k3n" + found.page_tail
    assert joined == contract.list_page_key(prefix, "books", "t0k3n", query).encode()


def test_remembered_query_strings_stay_bounded_and_give_the_same_tails(table: dict[str, routes.Resource]) -> None:
    books = table["books"]
    books.tails.clear()
    first = routes.page_tail(books, b"author=a&sort=-year")
    assert routes.page_tail(books, b"author=a&sort=-year") == first
    assert routes.page_tail(books, b"author=zzz") is not None and routes.page_tail(books, b"nope=1") is None
    for i in range(routes.MAX_REMEMBERED_QUERIES + 10):
        routes.page_tail(books, b"author=a%d" % i)
    assert len(books.tails) <= routes.MAX_REMEMBERED_QUERIES
    assert routes.page_tail(books, b"author=a&sort=-year") == first
