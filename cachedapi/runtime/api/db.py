"""PostgreSQL for the api role: one table per declared resource, one seam for every query.

The tables (``tables``) are created at start under an advisory lock (several
pods may start at once), or lazily on the first request if PostgreSQL was down
at start.

Every failure to reach PostgreSQL becomes ``DatabaseUnavailable`` quickly: the
pool waits at most ``timeout`` seconds for a connection, after which every
operation fails at once for a short, growing backoff (``breaker``: the same policy
as for Redis, so that stale answers and 503s do not each wait the timeout; logged
once per outage);
when a pooled connection turns out broken (it predates a server restart), the
pool drops every broken idle one and the operation is retried once: reads
always, writes only if the failure came before COMMIT was sent (after it the
outcome is unknown, and the client gets 503 rather than a guess).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import orjson
import psycopg
import psycopg_pool
from psycopg.types.json import Jsonb, set_json_loads

from cachedapi.runtime import breaker
from cachedapi.runtime.api import metrics as metrics_mod
from cachedapi.runtime.api import tables

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Whether a write may go ahead, given the stored version (None: no such item).
Precondition = Callable[[int | None], bool]
_LOCK_ID = 0x0CAC4ED


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
    ) -> None:
        self._metrics = metrics
        self._timeout = timeout
        self._queries = {name: tables.Queries(name) for name in resources}
        self._pool = psycopg_pool.AsyncConnectionPool(
            url,
            min_size=1,
            max_size=10,
            open=False,
            timeout=timeout,
            # UTF-8 whatever the database's own encoding: with a SQL_ASCII database (what initdb
            # makes where no locale is set) psycopg would hand back bytes instead of text and JSON.
            kwargs={"autocommit": True, "connect_timeout": 2, "client_encoding": "utf8"},
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
                self._breaker.failure(exc)
            raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc
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

    async def page(self, resource: str, *, after_seq: int, limit: int) -> list[tables.Row]:
        rows = await self._read("list", query=self._queries[resource].page, params=[after_seq, limit])
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

    async def insert(self, resource: str, item_id: str, *, data: dict[str, Any]) -> tables.Row:
        query = self._queries[resource].insert

        async def statements(conn: psycopg.AsyncConnection[Any]) -> tables.Row:
            cur = await conn.execute(query, [item_id, Jsonb(data, tables.dumps)])
            row = await cur.fetchone()
            assert row is not None
            return tables.row(row, created=True)

        return await self._write("insert", statements)

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
