"""Which Redis key a request reads: the route table, built once from the configuration.

The gateway reads what the api role writes, so the keys come from
``contract`` and a list query is put into ``contract.canonical_list_query``'s
one spelling exactly as the api role does. A request the gateway cannot map
with certainty (an invalid ``limit``, a repeated or unknown parameter, a
nested path) is not looked up but forwarded: the api role answers it, with a
400 if it is wrong, so the gateway never serves a page for a query the api
role would have refused.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from cachedapi import contract


@dataclass(frozen=True, slots=True)
class Resource:
    name: str
    ttl_seconds: int
    item_prefix: str
    list_gen_key: bytes
    #: A list page's key is this + the list generation token + ``page_tail(query)``.
    page_head: bytes
    prefix: str


@dataclass(frozen=True, slots=True)
class Read:
    """What to read: an item key, or a list (its generation key, and its page key around the token)."""

    resource: Resource
    key: bytes
    page_head: bytes = b""
    page_tail: bytes = b""

    @property
    def is_list(self) -> bool:
        return bool(self.page_head)


def build(config: contract.RuntimeConfig) -> dict[str, Resource]:
    """The cacheable resources (ttl > 0); the others are always forwarded."""
    prefix = config.key_prefix
    return {
        name: Resource(
            name=name,
            ttl_seconds=res.ttl_seconds,
            item_prefix=contract.item_key(prefix, name, ""),
            list_gen_key=contract.list_gen_key(prefix, name).encode(),
            page_head=contract.list_page_key_parts(prefix, name, "")[0].encode(),
            prefix=prefix,
        )
        for name, res in config.resources.items()
        if res.cacheable
    }


def canonical_query(query_string: bytes) -> bytes | None:
    """The canonical list query, or None when the api role must judge the query itself."""
    limit = contract.DEFAULT_PAGE_LIMIT
    cursor: str | None = None
    if query_string:
        seen: set[str] = set()
        try:
            pairs = urllib.parse.parse_qsl(query_string.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            return None
        for name, value in pairs:
            if name in seen:
                return None
            seen.add(name)
            if name == "limit":
                if not value.isascii() or not value.isdigit():
                    return None
                limit = int(value)
                if not 1 <= limit <= contract.MAX_PAGE_LIMIT:
                    return None
            elif name == "cursor":
                cursor = value
            else:
                return None
    return contract.canonical_list_query(limit, cursor).encode()


def read(resources: dict[str, Resource], path: str, query_string: bytes) -> Read | None:
    """What to read for ``GET /v1/...`` (``path`` without ``/v1/``), or None to forward."""
    resource_name, slash, item_id = path.partition("/")
    resource = resources.get(resource_name)
    if resource is None:
        return None
    if not slash:
        query = canonical_query(query_string)
        if query is None:
            return None
        tail = contract.list_page_key_parts(resource.prefix, resource.name, query.decode())[1]
        return Read(resource, resource.list_gen_key, resource.page_head, tail.encode())
    if not item_id or "/" in item_id:
        return None
    return Read(resource, (resource.item_prefix + item_id).encode())
