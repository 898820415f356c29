"""The tables of the api role: one per declared resource, and the SQL to use them.

Each resource ``r`` lives in table ``r_<name>``: ``id`` (text, primary key),
``seq`` (bigserial: list order and the keyset cursor, kept when an item is
replaced), ``version`` (from the one global sequence ``cachedapi_version``, taken
anew by every write: it is the ETag), ``data`` (jsonb: the item without its id),
``created_at`` and ``updated_at``. Names are checked by the model's pattern and
still quoted with ``psycopg.sql``; every statement is rendered once, at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from psycopg import sql

SEQUENCE = "CREATE SEQUENCE IF NOT EXISTS cachedapi_version"


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    seq: int
    version: int
    data: dict[str, Any]
    created: bool = False


def row(t: tuple[Any, ...], *, created: bool = False) -> Row:
    return Row(t[0], t[1], t[2], t[3], created)


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


class Queries:
    """The SQL of one resource, composed and rendered once at start."""

    def __init__(self, resource: str) -> None:
        t = sql.Identifier(f"r_{resource}")
        cols = sql.SQL("id, seq, version, data")

        def q(template: str, **extra: sql.Composable) -> str:
            return sql.SQL(template).format(t=t, cols=cols, **extra).as_string()

        self.create = [
            q(
                "CREATE TABLE IF NOT EXISTS {t} (id text PRIMARY KEY, seq bigserial NOT NULL, "
                "version bigint NOT NULL, data jsonb NOT NULL, "
                "created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now())"
            ),
            q("CREATE UNIQUE INDEX IF NOT EXISTS {i} ON {t} (seq)", i=sql.Identifier(f"r_{resource}_seq")),
        ]
        self.get = q("SELECT {cols} FROM {t} WHERE id = %s")
        self.get_for_update = q("SELECT {cols} FROM {t} WHERE id = %s FOR UPDATE")
        self.page = q("SELECT {cols} FROM {t} WHERE seq > %s ORDER BY seq LIMIT %s")
        self.insert = q(
            "INSERT INTO {t} (id, version, data) VALUES (%s, nextval('cachedapi_version'), %s) RETURNING {cols}"
        )
        # Create or replace in one statement. The version is taken in DO UPDATE, once the row is
        # locked, so that an item's versions grow in commit order (the one VALUES took is then left
        # unused). The last column says whether the row was inserted: a row that an upsert updated
        # has the updating transaction in its xmax.
        self.upsert = q(
            "INSERT INTO {t} (id, version, data) VALUES (%s, nextval('cachedapi_version'), %s) "
            "ON CONFLICT (id) DO UPDATE SET data = excluded.data, version = nextval('cachedapi_version'), "
            "updated_at = now() RETURNING {cols}, xmax = 0"
        )
        self.update = q(
            "UPDATE {t} SET data = %s, version = nextval('cachedapi_version'), updated_at = now() "
            "WHERE id = %s RETURNING {cols}"
        )
        self.delete = q("DELETE FROM {t} WHERE id = %s")
