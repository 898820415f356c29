"""PostgreSQL for the api role: one table per declared resource, one seam for every query.

The tables (``tables``) are created at start under an advisory lock (several
pods may start at once), or lazily on the first request if PostgreSQL was down
at start. The indexes declared in the spec (``listing``) are then created, and the
ones no longer declared dropped, in the background, without blocking writes.

Every failure to reach PostgreSQL becomes ``DatabaseUnavailable`` quickly: the
pool waits at most ``timeout`` seconds for a connection, after which every
operation fails at once for a short, growing backoff (``breaker``: the same policy
as for Redis, so that stale answers and 503s do not each wait the timeout; logged
once per outage);
when a pooled connection turns out broken (it predates a server restart), the
pool drops every broken idle one and the operation is retried once: reads
always, writes only if the failure came before COMMIT was sent (after it the
outcome is unknown, and the client gets 503 rather than a guess).

A write that is one statement (a POST's insert, a PUT without preconditions: an
upsert) is sent alone, in autocommit: one round trip instead of BEGIN, the
statements and COMMIT, each of which held a pooled connection and waited for the
event loop in turn (the mix of the bench: four round trips per PUT made the writes
queue for the pool). It is retried only when the connection was found closed
before the statement was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import orjson
import psycopg
import psycopg_pool
from psycopg import pq
from psycopg.types.json import Jsonb, set_json_loads

from cachedapi import contract, listquery
from cachedapi.runtime import breaker, tls
from cachedapi.runtime.api import dbconnect, listing, tables
from cachedapi.runtime.api import metrics as metrics_mod

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Whether a write may go ahead, given the stored version (None: no such item).
Precondition = Callable[[int | None], bool]
_LOCK_ID = 0x0CAC4ED
#: Held (per session, so not across a statement) by the one pod changing indexes at a time.
_INDEX_LOCK_ID = 0x0CAC4EE
#: How long the index task waits before trying again after a failure.
_INDEX_RETRY_SECONDS = 10.0
#: The pool's size: at most this many pooled connections can turn out dead at once.
_POOL_MAX = 10


def _closed_while_idle(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server closed this pooled connection while it was idle (a restart did): its
    last words, an error and the end of the stream, already wait in the socket, so a statement
    sent on it could not have been executed and may go again on another. One poll, no round trip,
    when nothing waits (anything else, a notice, is read and left to libpq)."""
    pgconn = conn.pgconn
    if pgconn.status != pq.ConnStatus.OK:
        return True
    poller = select.poll()
    poller.register(pgconn.socket, select.POLLIN)
    for _ in range(4):
        if not poller.poll(0):
            return pgconn.status != pq.ConnStatus.OK
        try:
            pgconn.consume_input()  # raises at the end of the stream
        except psycopg.OperationalError:
            return True
    return True  # still more to read: not a connection to trust with a write


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached (or did not answer in time)."""


class OutcomeUnknown(DatabaseUnavailable):
    """The connection broke after COMMIT was sent: the write may or may not have committed."""


class NotFound(Exception):
    """No item with that id."""


class Unstorable(Exception):
    """PostgreSQL refused the data itself (e.g. a ``\\u0000`` in a string, which jsonb cannot hold)."""


class PreconditionFailed(Exception):
    """If-Match / If-None-Match did not hold."""


class Database:
    """The connection pool and every query the api role makes."""

    def __init__(
        self,
        *,
        url: str,
        resources: Iterable[str],
        metrics: metrics_mod.Metrics,
        timeout: float = 1.5,
        indexes: Mapping[str, Sequence[Sequence[str]]] | None = None,
        schemas: Mapping[str, Mapping[str, Any]] | None = None,
        ca_file: str | None = None,
    ) -> None:
        """``ca_file``: PostgreSQL over TLS, ``sslmode=verify-full`` against this PEM bundle
        (``dbconnect``); ValueError when it cannot be read."""
        if ca_file is not None:
            tls.check_ca_file(ca_file, setting=contract.ENV_DATABASE_CA_FILE)
        self._attempts = dbconnect.Attempts()
        self._metrics = metrics
        self._indexes = {name: [tuple(keys) for keys in declared] for name, declared in (indexes or {}).items()}
        self._properties = {name: listquery.properties(schema) for name, schema in (schemas or {}).items()}
        self._index_task: asyncio.Task[None] | None = None
        self._timeout = timeout
        self._queries = {name: tables.Queries(name) for name in resources}
        self._pool = psycopg_pool.AsyncConnectionPool(
            url,
            min_size=1,
            max_size=_POOL_MAX,
            open=False,
            timeout=timeout,
            kwargs=dbconnect.params(ca_file=ca_file),
            connection_class=self._attempts.connection_class(),
            configure=self._configure,
            # Give up a failed background connection at once: the next request that needs one
            # makes the pool try again, so recovery is not delayed by an exponential backoff.
            reconnect_timeout=0,
        )
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()
        self._checking = False
        self._breaker = breaker.Breaker.logging_to(log, name="PostgreSQL")

    @staticmethod
    async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
        set_json_loads(orjson.loads, conn)

    async def open(self) -> None:
        await self._pool.open(wait=False)
        with contextlib.suppress(DatabaseUnavailable):
            await self.ensure_schema()

    async def close(self) -> None:
        if self._index_task is not None:
            self._index_task.cancel()
            with contextlib.suppress(BaseException):
                await self._index_task
        await self._pool.close()

    async def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        async with self._schema_lock:
            if self._schema_ready:
                return
            async with self._connection("schema") as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_ID])
                await conn.execute(tables.SEQUENCE)
                for queries in self._queries.values():
                    for statement in queries.create:
                        await conn.execute(statement)
            self._schema_ready = True
            self._index_task = asyncio.get_running_loop().create_task(self._keep_indexes())

    # --- indexes ----------------------------------------------------------------------------

    async def _keep_indexes(self) -> None:
        """Bring the declared indexes about in the background (a build can take minutes on a
        large table, and the pod serves meanwhile, on sequential scans); retried until done."""
        while True:
            try:
                await self.sync_indexes()
                return
            except (DatabaseUnavailable, psycopg.Error) as exc:
                log.warning(
                    "indexes not brought up to date yet (%s); trying again in %.0f s", exc, _INDEX_RETRY_SECONDS
                )
                await asyncio.sleep(_INDEX_RETRY_SECONDS)

    async def sync_indexes(self) -> None:
        """Create the declared indexes and drop the ones no longer declared, each CONCURRENTLY
        (writes go on), one pod at a time (several start together on a rollout). A build that
        failed half-way leaves an invalid index: it is dropped and built again."""
        async with self._connection("indexes") as conn:
            # No statement waits on the lock: a waiting one would hold a snapshot, and a
            # concurrent index build waits for every older snapshot (a deadlock).
            while True:
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", [_INDEX_LOCK_ID])
                locked = await cur.fetchone()
                if locked and locked[0]:
                    break
                await asyncio.sleep(0.5)
            try:
                for resource, declared in self._indexes.items():
                    await self._sync_resource_indexes(conn, resource, declared)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", [_INDEX_LOCK_ID])

    async def _sync_resource_indexes(
        self, conn: psycopg.AsyncConnection[Any], resource: str, declared: list[tuple[str, ...]]
    ) -> None:
        wanted = {listing.index_name(resource, keys): keys for keys in declared}
        cur = await conn.execute(listing.LIST_INDEXES, [f"r_{resource}", f"r_{resource}{listing.INDEX_INFIX}"])
        existing = {name: valid for name, valid in await cur.fetchall()}
        for name, valid in existing.items():
            if name not in wanted or not valid:
                await conn.execute(listing.drop_index(name))
                log.info("index %s dropped (%s)", name, "invalid: a build failed" if name in wanted else "not declared")
        for name, keys in wanted.items():
            if existing.get(name):
                continue
            started = time.monotonic()
            await conn.execute(listing.create_index(resource, keys))
            log.info("index %s on %s (%s) built in %.1f s", name, resource, ", ".join(keys), time.monotonic() - started)

    @property
    def last_error(self) -> str | None:
        """Why the last attempt to connect failed, as libpq said it; None after a success."""
        return self._attempts.last_error

    async def ping(self) -> bool:
        try:
            async with self._connection("ping") as conn:
                await conn.execute("SELECT 1")
        except DatabaseUnavailable:
            return False
        return True

    @contextlib.asynccontextmanager
    async def _connection(self, op: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        start = time.perf_counter()
        if self._breaker.open:
            self._metrics.db_errors.labels(op).inc()
            raise DatabaseUnavailable("PostgreSQL was unreachable moments ago; not retrying yet")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            self._metrics.db_errors.labels(op).inc()
            self._check_pool_soon()
            outage = isinstance(exc, psycopg_pool.PoolTimeout) and self._pool.get_stats().get("pool_size", 0) == 0
            if outage:  # not one connection (rather than all of them busy): stop waiting for a while
                self._breaker.failure(self._attempts.last_error or exc)
            raise DatabaseUnavailable(f"{type(exc).__name__}: {self._attempts.last_error or exc}") from exc
        else:
            self._breaker.success()
        finally:
            self._metrics.db_queries.labels(op).inc()
            self._metrics.db_seconds.labels(op).observe(time.perf_counter() - start)

    def _check_pool_soon(self) -> None:
        if not self._checking:
            self._checking = True
            task = asyncio.get_running_loop().create_task(self._check_pool())
            task.add_done_callback(lambda _: setattr(self, "_checking", False))

    async def _check_pool(self) -> None:
        with contextlib.suppress(Exception):
            await self._pool.check()

    async def _read(self, op: str, *, query: str, params: list[Any]) -> list[tuple[Any, ...]]:
        await self.ensure_schema()
        for attempt in (1, 2):
            try:
                async with self._connection(op) as conn:
                    cur = await conn.execute(query, params)
                    return await cur.fetchall()
            except DatabaseUnavailable as exc:
                if attempt == 2 or not isinstance(exc.__cause__, psycopg.OperationalError):
                    raise
                # A pooled connection was broken (a server restart?): drop every broken one, then retry.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._pool.check(), timeout=self._timeout)
        raise AssertionError("unreachable")

    # --- reads ------------------------------------------------------------------------------

    async def get(self, resource: str, item_id: str) -> tables.Row | None:
        rows = await self._read("get", query=self._queries[resource].get, params=[item_id])
        return tables.row(rows[0]) if rows else None

    async def page(self, resource: str, query: listquery.ListQuery, *, limit: int) -> list[tables.Row]:
        """At most ``limit`` rows of ``query``'s sequence after its cursor."""
        if query.plain:  # the statement rendered once at start
            after_seq = query.after.seq if query.after is not None else 0
            rows = await self._read("list", query=self._queries[resource].page, params=[after_seq, limit])
        else:
            statement, params = listing.page(resource, query, self._properties[resource], limit=limit)
            rows = await self._read("list", query=statement, params=params)
        return [tables.row(r) for r in rows]

    # --- writes -----------------------------------------------------------------------------

    async def _write(self, op: str, statements: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run ``statements`` in one transaction; retried once if the connection broke before COMMIT
        was sent (nothing can have been written then), never after (the outcome is unknown: 503)."""
        await self.ensure_schema()
        for attempt in (1, 2):
            committing = False
            try:
                async with self._connection(op) as conn:
                    async with conn.transaction():
                        result = await statements(conn)
                        committing = True
                    return result
            except psycopg.DataError as exc:
                diag = exc.diag
                raise Unstorable(" ".join(filter(None, [diag.message_primary, diag.message_detail]))) from None
            except DatabaseUnavailable as exc:
                if committing:
                    raise OutcomeUnknown(str(exc)) from exc
                if attempt == 2 or not isinstance(exc.__cause__, psycopg.OperationalError):
                    raise
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._pool.check(), timeout=self._timeout)
        raise AssertionError("unreachable")

    async def _write_one(self, op: str, query: str, params: list[Any]) -> tuple[Any, ...]:
        """One statement that commits by itself (the connection is in autocommit): one round trip,
        where a transaction takes three or more, and the pooled connection is held for that long.
        Retried once if the pooled connection turns out to have been closed by the server before
        the statement was sent (``_closed_while_idle``); a failure once it was sent leaves the
        outcome unknown (503), as a failure after COMMIT does."""
        await self.ensure_schema()
        # Every pooled connection may have died with a server restart: a statement never sent may
        # try each of them in turn (the pool's check between tries usually drops them all at once).
        for attempt in range(1, _POOL_MAX + 2):
            sent = False
            try:
                async with self._connection(op) as conn:
                    if _closed_while_idle(conn):
                        raise psycopg.OperationalError("the server closed this pooled connection")
                    sent = True
                    cur = await conn.execute(query, params)
                    row = await cur.fetchone()
            except psycopg.DataError as exc:
                diag = exc.diag
                raise Unstorable(" ".join(filter(None, [diag.message_primary, diag.message_detail]))) from None
            except DatabaseUnavailable as exc:
                if sent:
                    raise OutcomeUnknown(str(exc)) from exc
                if attempt > _POOL_MAX or not isinstance(exc.__cause__, psycopg.OperationalError):
                    raise
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._pool.check(), timeout=self._timeout)
            else:
                assert row is not None
                return tuple(row)
        raise AssertionError("unreachable")

    async def insert(self, resource: str, item_id: str, *, data: dict[str, Any]) -> tables.Row:
        row = await self._write_one("insert", self._queries[resource].insert, [item_id, Jsonb(data, tables.dumps)])
        return tables.row(row, created=True)

    async def put(self, resource: str, item_id: str, *, data: dict[str, Any]) -> tables.Row:
        """Create or replace the item whatever it holds: one statement (``tables.Queries.upsert``),
        where ``replace`` takes four round trips (BEGIN, SELECT ... FOR UPDATE, the write, COMMIT)."""
        row = await self._write_one("write", self._queries[resource].upsert, [item_id, Jsonb(data, tables.dumps)])
        return tables.row(row, created=bool(row[4]))

    async def replace(
        self,
        resource: str,
        item_id: str,
        *,
        compute: Callable[[tables.Row | None], dict[str, Any]],
        precondition: Precondition | None,
        create: bool,
    ) -> tables.Row:
        """Lock the item, check the precondition, write ``compute(current)``; one transaction.

        Raises NotFound when the item is absent and ``create`` is false, PreconditionFailed,
        or whatever ``compute`` raises (the transaction is then rolled back).
        """
        queries = self._queries[resource]

        async def statements(conn: psycopg.AsyncConnection[Any]) -> tables.Row:
            cur = await conn.execute(queries.get_for_update, [item_id])
            found = await cur.fetchone()
            current = tables.row(found) if found else None
            if precondition is not None and not precondition(current.version if current else None):
                raise PreconditionFailed
            if current is None and not create:
                raise NotFound
            data = Jsonb(compute(current), tables.dumps)
            if current is None:
                cur = await conn.execute(queries.insert, [item_id, data])
            else:
                cur = await conn.execute(queries.update, [data, item_id])
            row = await cur.fetchone()
            assert row is not None
            return tables.row(row, created=current is None)

        return await self._write("write", statements)

    async def delete(self, resource: str, item_id: str, *, precondition: Precondition | None) -> None:
        """Raises NotFound or PreconditionFailed."""
        queries = self._queries[resource]

        async def statements(conn: psycopg.AsyncConnection[Any]) -> None:
            cur = await conn.execute(queries.get_for_update, [item_id])
            found = await cur.fetchone()
            if precondition is not None and not precondition(found[2] if found else None):
                raise PreconditionFailed
            if found is None:
                raise NotFound
            await conn.execute(queries.delete, [item_id])

        await self._write("delete", statements)
