"""Which Redis key a request reads: the route table, built once from the configuration.

The gateway reads what the api role writes, so the keys come from
``contract`` and a list query (filters, sort, fields, limit, cursor) is parsed
by ``listquery`` into its one spelling exactly as the api role does. A request
the gateway cannot map with certainty (any query ``listquery`` refuses, a
nested path) is not looked up but forwarded: the api role answers it, with a
400 if it is wrong, so the gateway never serves a page for a query the api
role would have refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cachedapi import contract, listquery
from cachedapi.runtime.gateway import answers


@dataclass(frozen=True, slots=True)
class Resource:
    name: str
    ttl_seconds: int
    item_prefix: str
    list_gen_key: bytes
    #: A list page's key is this + the list generation token + ``page_tail(query)``.
    page_head: bytes
    prefix: str
    #: What a list query may name (``listquery.properties`` of the resource's schema).
    properties: dict[str, listquery.Property] = field(default_factory=dict)
    #: The page tails of the query strings seen (``page_tail``): parsing a query costs more
    #: than the rest of a list hit; bounded, and emptied when full.
    tails: dict[bytes, bytes | None] = field(default_factory=dict)
    #: Cache-Control of its cached answers, ``%d`` for the seconds left (``answers.cache_control_format``).
    cache_control: bytes = b"max-age=%d"


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
            properties=listquery.properties(res.schema),
            cache_control=answers.cache_control_format(contract.cache_scope(config, name)),
        )
        for name, res in config.resources.items()
        if res.cacheable
    }


MAX_REMEMBERED_QUERIES = 4096


def page_tail(resource: Resource, query_string: bytes) -> bytes | None:
    """The page key's tail for this query, or None when the api role must judge the query itself."""
    tails = resource.tails
    try:
        return tails[query_string]
    except KeyError:
        pass
    try:
        query = listquery.parse(query_string, resource.properties)
    except listquery.QueryError:
        tail = None
    else:
        tail = contract.list_page_key_parts(resource.prefix, resource.name, query.key_text())[1].encode()
    if len(tails) >= MAX_REMEMBERED_QUERIES:
        tails.clear()
    tails[query_string] = tail
    return tail


def read(resources: dict[str, Resource], path: str, query_string: bytes) -> Read | None:
    """What to read for ``GET /v1/...`` (``path`` without ``/v1/``), or None to forward."""
    resource_name, slash, item_id = path.partition("/")
    resource = resources.get(resource_name)
    if resource is None:
        return None
    if not slash:
        tail = page_tail(resource, query_string)
        if tail is None:
            return None
        return Read(resource, resource.list_gen_key, resource.page_head, tail)
    if not item_id or "/" in item_id:
        return None
    return Read(resource, (resource.item_prefix + item_id).encode())
