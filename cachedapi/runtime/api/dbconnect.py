"""How the api role connects to PostgreSQL: libpq's parameters, and why the last attempt failed.

The pool (``psycopg_pool``) connects in the background, and a request that waits for a
connection in vain learns only "couldn't get a connection after 1.50 sec". The reason (a
password refused, a host unknown, or "certificate verify failed" for a CA that does not match the
server's) is what a person reading ``/readyz`` or the log needs, so the connection class the pool
uses keeps it (``Attempts``).

TLS: with a CA bundle (``contract.ENV_DATABASE_CA_FILE``) every connection is
``sslmode=verify-full`` against it (``tls.libpq_params``), whatever the URL says.
"""

from __future__ import annotations

import re
from typing import Any, Self

import psycopg

from cachedapi.runtime import tls


def params(*, ca_file: str | None, connect_timeout: int = 2) -> dict[str, Any]:
    """The keyword arguments of every connection the pool makes."""
    out: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": connect_timeout,
        # UTF-8 whatever the database's own encoding: with a SQL_ASCII database (what initdb
        # makes where no locale is set) psycopg would hand back bytes instead of text and JSON.
        "client_encoding": "utf8",
    }
    if ca_file is not None:
        out |= tls.libpq_params(ca_file)
    return out


class Attempts:
    """The outcome of the pool's last connection attempt."""

    def __init__(self) -> None:
        #: libpq's message for the last failed attempt, on one line; None after a success.
        self.last_error: str | None = None

    def connection_class(self) -> type[psycopg.AsyncConnection[Any]]:
        """A connection class for the pool that records each attempt here."""
        attempts = self

        class Connection(psycopg.AsyncConnection[Any]):
            @classmethod
            async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
                try:
                    conn = await super().connect(conninfo, **kwargs)
                except psycopg.OperationalError as exc:
                    attempts.last_error = re.sub(r"\s+", " ", str(exc)).strip() or type(exc).__name__
                    raise
                attempts.last_error = None
                return conn

        return Connection
