"""The gateway's reading of a request: which entry it looks up, and when it leaves the query to the api role."""

from __future__ import annotations

import pytest

from cachedapi import contract, model
from cachedapi.operator.children import config as x_config
from cachedapi.runtime.gateway import answers, routes


@pytest.fixture
def table(bookstore: model.CachedApi) -> dict[str, routes.Resource]:
    return routes.build(x_config.runtime_config(bookstore))


def test_list_queries_are_spelled_as_the_api_role_stores_them() -> None:
    assert routes.canonical_query(b"") == contract.canonical_list_query(contract.DEFAULT_PAGE_LIMIT, None).encode()
    assert routes.canonical_query(b"cursor=abc&limit=5") == contract.canonical_list_query(5, "abc").encode()
    assert routes.canonical_query(b"limit=5&cursor=") == contract.canonical_list_query(5, None).encode()


@pytest.mark.parametrize(
    "query", [b"limit=0", b"limit=101", b"limit=x", b"limit=-1", b"limit=1&limit=2", b"sort=title"]
)
def test_queries_the_gateway_cannot_map_with_certainty_are_forwarded(query: bytes) -> None:
    assert routes.canonical_query(query) is None


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
