"""The resource endpoints of the README's HTTP table, on raw Starlette requests.

A write commits in PostgreSQL, then invalidates in Redis, then answers; an
invalidation that cannot reach Redis is queued by the cache store and the
write is still acknowledged (it committed). The invalidation of a PUT or PATCH
stores the write's answer in place of an older version's entry (``cache.Written``).
A write whose COMMIT outcome is unknown (the connection broke after COMMIT was
sent) answers 503 but still invalidates, since it may have committed. Reads go
through ``reads.Reader``.
List pages (``listquery`` parses the query, ``listing`` makes its SQL) use
keyset pagination: the cursor is the position of a page's last item in the
filtered, sorted sequence (opaque, base64url), so items inserted meanwhile
never shift a page.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cachedapi import contract, listquery
from cachedapi.runtime.api import cache, documents, listing, protocol, reads, tables
from cachedapi.runtime.api import db as db_mod

T = TypeVar("T")
_JSON_TYPES = (contract.JSON,)
_PATCH_TYPES = (protocol.MERGE_PATCH, contract.JSON)


class Handlers:
    """One per app: configuration is read here, once; the methods only serve."""

    def __init__(
        self,
        *,
        config: contract.RuntimeConfig,
        database: db_mod.Database,
        reader: reads.Reader,
        store: cache.CacheStore | None,
    ) -> None:
        self._db = database
        self._reader = reader
        self._store = store
        self._limit = config.max_body_bytes
        self._prefix = config.key_prefix
        self._validators = documents.Validators(config.resources)
        self._names = frozenset(config.resources)
        self._known = ", ".join(sorted(config.resources))
        self._no_store = {name for name, res in config.resources.items() if not res.cacheable}
        #: "private, " / "public, " / "": who may keep a cacheable answer (``contract.cache_scope``).
        self._scope = {name: f"{s}, " if (s := contract.cache_scope(config, name)) else "" for name in config.resources}
        self._properties = {name: listquery.properties(res.schema) for name, res in config.resources.items()}

    # --- helpers ----------------------------------------------------------------------------

    def _resource(self, request: Request) -> str:
        name: str = request.path_params["resource"]
        if name not in self._names:
            raise protocol.Problem(404, f"no resource named {protocol.shown(name)}; this API serves: {self._known}")
        return name

    @staticmethod
    def _forced(request: Request) -> bool:
        return contract.REVALIDATE_HEADER in request.headers or "no-cache" in request.headers.get("cache-control", "")

    def _read_response(self, request: Request, *, resource: str, answer: reads.Answer, missing: str) -> Response:
        if answer.status == 404:
            return protocol.problem_response(404, missing, headers={"X-Cache": answer.x_cache})
        if resource in self._no_store:
            cache_control = "no-store"
        else:
            scope = self._scope[resource]
            cache_control = f"{scope}max-age={answer.max_age}" if answer.max_age > 0 else f"{scope}no-cache"
        headers = {
            "ETag": answer.etag,
            "X-Cache": answer.x_cache,
            "Age": str(answer.age),
            "Cache-Control": cache_control,
        }
        if protocol.not_modified(request, answer.etag):
            return Response(status_code=304, headers=headers)
        return Response(answer.body, status_code=answer.status, headers=headers, media_type=answer.content_type)

    async def _invalidate(self, resource: str, item_id: str | None) -> None:
        if self._store is not None:
            await self._store.invalidate(resource, item_id)

    async def _invalidate_written(self, resource: str, row: tables.Row) -> None:
        """Invalidate after a PUT or PATCH, storing its answer in place of an entry of an older
        version (``cache.Written``): the next read is a hit."""
        if self._store is not None:
            body = documents.encode_item(row.id, row.data)
            written = self._reader.written(resource, row.version, body=body, etag=documents.etag(row.version))
            await self._store.invalidate(resource, row.id, written=written)

    async def _unknown_invalidates(self, write: Awaitable[T], *, resource: str, item_id: str | None) -> T:
        """Run a write; if its outcome is unknown (connection lost after COMMIT was sent), it may
        have committed, so invalidate anyway before the client gets its 503."""
        try:
            return await write
        except db_mod.OutcomeUnknown:
            await self._invalidate(resource, item_id)
            raise

    def _item_id(self, request: Request) -> str:
        item_id: str = request.path_params["id"]
        return item_id

    def _missing(self, resource: str, item_id: str) -> str:
        return f"no {resource} item with id {protocol.shown(item_id)}"

    # --- collection -------------------------------------------------------------------------

    async def list(self, request: Request) -> Response:
        resource = self._resource(request)
        try:
            query = listquery.parse(request.scope["query_string"], self._properties[resource])
        except listquery.QueryError as exc:
            raise protocol.Problem(400, str(exc), parameter=exc.param) from None
        limit = query.limit

        async def load() -> reads.Loaded:
            rows = await self._db.page(resource, query, limit=limit + 1)
            more = len(rows) > limit
            rows = rows[:limit]
            page = {
                "items": [listing.item(query, r) for r in rows],
                "nextCursor": query.cursor_after(listing.position(query, rows[-1])) if more else None,
            }
            body = orjson.dumps(page)
            return reads.Loaded(200, body, f'"l{hashlib.blake2b(body, digest_size=9).hexdigest()}"')

        target = cache.list_target(self._prefix, resource, query.key_text())
        answer = await self._reader.read(target=target, load=load, force=self._forced(request))
        return self._read_response(request, resource=resource, answer=answer, missing="")

    async def create(self, request: Request) -> Response:
        resource = self._resource(request)
        protocol.require_content_type(request, _JSON_TYPES)
        body = documents.body_object(await protocol.read_json(request, limit=self._limit))
        data = documents.strip_id(body, path_id=None)
        self._validators.check(resource, data)
        row = await self._unknown_invalidates(
            self._db.insert(resource, str(uuid.uuid4()), data=data), resource=resource, item_id=None
        )
        await self._invalidate(resource, None)
        return self._written(resource, row, status=201)

    def _written(self, resource: str, row: tables.Row, *, status: int) -> Response:
        headers = {"ETag": documents.etag(row.version)}
        if status == 201:
            headers["Location"] = f"/v1/{resource}/{row.id}"
        return protocol.json_response(documents.encode_item(row.id, row.data), status=status, headers=headers)

    # --- item -------------------------------------------------------------------------------

    async def get(self, request: Request) -> Response:
        resource = self._resource(request)
        item_id = self._item_id(request)
        missing = self._missing(resource, item_id)
        if not documents.valid_id(item_id):
            return protocol.problem_response(404, missing)

        async def load() -> reads.Loaded:
            row = await self._db.get(resource, item_id)
            if row is None:
                return reads.Loaded(404)
            return reads.Loaded(200, documents.encode_item(item_id, row.data), documents.etag(row.version))

        target = cache.item_target(self._prefix, resource, item_id)
        answer = await self._reader.read(target=target, load=load, force=self._forced(request))
        return self._read_response(request, resource=resource, answer=answer, missing=missing)

    async def put(self, request: Request) -> Response:
        resource = self._resource(request)
        item_id = self._item_id(request)
        if not documents.valid_id(item_id):
            raise protocol.Problem(400, f"id: {protocol.shown(item_id)} does not match {documents.ID_PATTERN}")
        protocol.require_content_type(request, _JSON_TYPES)
        body = documents.body_object(await protocol.read_json(request, limit=self._limit))
        data = documents.strip_id(body, path_id=item_id)
        self._validators.check(resource, data)
        pre = protocol.Preconditions(request)
        if pre.any:
            write = self._db.replace(resource, item_id, compute=lambda _: data, precondition=pre, create=True)
        else:  # nothing to check against the stored item: one statement, one round trip
            write = self._db.put(resource, item_id, data=data)
        row = await self._unknown_invalidates(write, resource=resource, item_id=item_id)
        await self._invalidate_written(resource, row)
        return self._written(resource, row, status=201 if row.created else 200)

    async def patch(self, request: Request) -> Response:
        resource = self._resource(request)
        item_id = self._item_id(request)
        if not documents.valid_id(item_id):
            raise protocol.Problem(404, self._missing(resource, item_id))
        protocol.require_content_type(request, _PATCH_TYPES)
        patch = await protocol.read_json(request, limit=self._limit)
        if not isinstance(patch, dict):
            # RFC 7396: a non-object patch replaces the whole target, and an item is an object.
            # Said before the preconditions are checked, so a bad body is a 422 whatever If-Match holds.
            raise documents.Invalid([{"pointer": "", "detail": "a merge patch of an item must be a JSON object"}])
        patch = documents.strip_id(patch, path_id=item_id)
        pre = protocol.Preconditions(request)

        def compute(current: tables.Row | None) -> dict[str, Any]:
            assert current is not None
            merged = documents.body_object(documents.merge_patch(current.data, patch))
            self._validators.check(resource, merged)
            return merged

        write = self._db.replace(
            resource, item_id, compute=compute, precondition=pre if pre.any else None, create=False
        )
        row = await self._unknown_invalidates(write, resource=resource, item_id=item_id)
        await self._invalidate_written(resource, row)
        return self._written(resource, row, status=200)

    async def delete(self, request: Request) -> Response:
        resource = self._resource(request)
        item_id = self._item_id(request)
        if not documents.valid_id(item_id):
            raise protocol.Problem(404, self._missing(resource, item_id))
        pre = protocol.Preconditions(request)
        await self._unknown_invalidates(
            self._db.delete(resource, item_id, precondition=pre if pre.any else None),
            resource=resource,
            item_id=item_id,
        )
        await self._invalidate(resource, item_id)
        return Response(status_code=204)
