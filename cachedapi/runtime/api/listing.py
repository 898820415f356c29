"""The SQL of a list query, and of the indexes declared to serve it.

A query (``listquery.ListQuery``) becomes one keyset-paginated SELECT on the
resource's table. A property is read as ``COALESCE(data -> 'p', 'null'::jsonb)``
everywhere, in filters, sort and indexes alike: an absent property then sorts and
compares as JSON null (first in ascending order), there is no SQL NULL to break
the keyset comparison, and PostgreSQL matches an index to a query only when the
expressions are the same. jsonb orders values of one type as that type (numbers
as numbers, strings by the database's collation), and the types as null < string
< number < boolean; so a comparison ``[gt|gte|lt|lte]`` is bounded to its value's
type: by a range above null where the schema allows only that type (or null), by
``jsonb_typeof`` otherwise.

The order is the sort keys, then ``seq`` (insertion order). The page after a
cursor's position (v1.., s) is ``k1 > v1 OR (k1 = v1 AND (... OR seq > s))``
(``<`` for descending keys), with ``k1 >= v1`` repeated on its own so that an
index scan starts at the cursor rather than at the beginning.

An index on keys ``-year, title`` is ``(year-expr DESC, title-expr, seq)``: it
serves equality and range filters on its leading keys and the sorts it spells,
with no sort step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from cachedapi import listquery
from cachedapi.runtime.api import tables

_COMPARE = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
#: The declared types under which a comparison with a number (string) meets only numbers
#: (strings) and nulls.
_ONE_ORDERED_TYPE = {
    "number": frozenset({"number", "integer", "null"}),
    "string": frozenset({"string", "null"}),
}
_COLUMNS = sql.SQL("id, seq, version, data")


def table(resource: str) -> sql.Identifier:
    return sql.Identifier(f"r_{resource}")


def value(name: str) -> sql.Composable:
    """A property's value as filters, sorts and indexes all spell it (see the module's docstring)."""
    return sql.SQL("COALESCE(data -> {}, 'null'::jsonb)").format(sql.Literal(name))


def _param(v: Any) -> Jsonb:
    # The standard library's encoder: a query may hold integers beyond 64 bits (orjson's range).
    return Jsonb(v, _dumps)


def _dumps(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, allow_nan=False)


def _json_type(v: Any) -> str:
    return "string" if isinstance(v, str) else "number"


#: How a comparison ``[gt|gte|lt|lte]`` is kept to its value's type (see ``_bounded``).
_PLAIN, _ABOVE_NULL, _TYPEOF = "plain", "above-null", "typeof"


def _bounded(f: listquery.Filter, prop: listquery.Property) -> str:
    if f.op not in listquery.RANGE_OPERATORS:
        return _PLAIN
    if prop.types <= _ONE_ORDERED_TYPE[_json_type(f.values[0])]:
        # Only this type and null can be stored (the schema says so): null sits below every
        # value, so an upper bound needs a lower one above null. Plain ranges: the planner
        # estimates them from the column's statistics, where it would guess for jsonb_typeof.
        return _PLAIN if f.op in ("gt", "gte") else _ABOVE_NULL
    return _TYPEOF


def _filter_sql(f: listquery.Filter, bounded: str) -> sql.Composable:
    expr = value(f.name)
    if f.op == "in":
        return sql.SQL("{} = ANY(%s)").format(expr)
    compared = sql.SQL("{} {} %s").format(expr, sql.SQL(_COMPARE[f.op]))
    if bounded == _ABOVE_NULL:
        return sql.SQL("({} AND {} > 'null'::jsonb)").format(compared, expr)
    if bounded == _TYPEOF:
        return sql.SQL("({} AND jsonb_typeof({}) = %s)").format(compared, expr)
    return compared


def _after_sql(sort: Sequence[listquery.SortKey]) -> sql.Composable:
    """Rows strictly after a position in the order (sort keys..., seq); parameters: ``_after_params``."""
    cond: sql.Composable = sql.SQL("seq > %s")
    if not sort:
        return cond
    # Built inside out: seq > s, then (k_n > v_n OR (k_n = v_n AND ...)), ...
    for key in reversed(sort):
        expr = value(key.name)
        op = sql.SQL("<" if key.descending else ">")
        cond = sql.SQL("({e} {op} %s OR ({e} = %s AND {rest}))").format(e=expr, op=op, rest=cond)
    first = sort[0]
    bound = sql.SQL("{} {} %s").format(value(first.name), sql.SQL("<=" if first.descending else ">="))
    return sql.SQL("{} AND {}").format(bound, cond)


def _after_params(sort: Sequence[listquery.SortKey], position: listquery.Position) -> list[Any]:
    if not sort:
        return [position.seq]
    params: list[Any] = [_param(position.values[0])]
    for v in position.values:
        params += [_param(v), _param(v)]
    return [*params, position.seq]


def _statement(resource: str, query: listquery.ListQuery, shape: tuple[str, ...]) -> str:
    where = [_filter_sql(f, bounded) for f, bounded in zip(query.filters, shape, strict=True)]
    if query.after is not None:
        where.append(_after_sql(query.sort))
    order: list[sql.Composable] = [
        sql.SQL("{} DESC" if k.descending else "{}").format(value(k.name)) for k in query.sort
    ]
    order.append(sql.SQL("seq"))
    statement = sql.SQL("SELECT {cols} FROM {t}{where} ORDER BY {order} LIMIT %s").format(
        cols=_COLUMNS,
        t=table(resource),
        where=sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
        order=sql.SQL(", ").join(order),
    )
    return statement.as_string()


#: Statements by the shape of their query (resource, filters and how each is bounded, sort,
#: cursor or not): composing one costs about as much as the rest of a page's Python work.
_STATEMENTS: dict[tuple[Any, ...], str] = {}
_MAX_STATEMENTS = 4096


def page(
    resource: str, query: listquery.ListQuery, properties: Mapping[str, listquery.Property], *, limit: int
) -> tuple[str, list[Any]]:
    """The SELECT of one page of ``query`` (``limit`` rows at most) and its parameters."""
    shape = tuple(_bounded(f, properties[f.name]) for f in query.filters)
    key = (resource, tuple((f.name, f.op) for f in query.filters), shape, query.sort, query.after is not None)
    text = _STATEMENTS.get(key)
    if text is None:
        text = _statement(resource, query, shape)
        if len(_STATEMENTS) >= _MAX_STATEMENTS:
            _STATEMENTS.clear()
        _STATEMENTS[key] = text
    params: list[Any] = []
    for f, bounded in zip(query.filters, shape, strict=True):
        if f.op == "in":
            params.append([_param(v) for v in f.values])
            continue
        params.append(_param(f.values[0]))
        if bounded == _TYPEOF:
            params.append(_json_type(f.values[0]))
    if query.after is not None:
        params += _after_params(query.sort, query.after)
    params.append(limit)
    return text, params


def position(query: listquery.ListQuery, row: tables.Row) -> listquery.Position:
    """Where a page ending with ``row`` ends, for its next cursor."""
    return listquery.Position(row.seq, tuple(row.data.get(k.name) for k in query.sort))


def item(query: listquery.ListQuery, row: tables.Row) -> dict[str, Any]:
    """A row as the page shows it: every property, or ``id`` and the ``fields`` asked for."""
    if query.fields is None:
        return {"id": row.id, **row.data}
    return {"id": row.id, **{k: row.data[k] for k in query.fields if k in row.data}}


# --- Indexes ----------------------------------------------------------------------------------

#: Every index this module makes is named ``r_<resource>_x_<digest of its keys>``; indexes
#: with that prefix that the configuration no longer declares are dropped.
INDEX_INFIX = "_x_"


def index_name(resource: str, keys: Sequence[str]) -> str:
    digest = hashlib.blake2b(",".join(keys).encode(), digest_size=6).hexdigest()
    return f"r_{resource}{INDEX_INFIX}{digest}"  # at most 2 + 40 + 3 + 12 = 57 of PostgreSQL's 63


def create_index(resource: str, keys: Sequence[str]) -> str:
    """``CREATE INDEX CONCURRENTLY``: writes go on while it builds (not in a transaction)."""
    columns: list[sql.Composable] = [
        sql.SQL("({}) DESC" if key.startswith("-") else "({})").format(value(key.removeprefix("-"))) for key in keys
    ]
    columns.append(sql.SQL("seq"))
    return (
        sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {i} ON {t} ({cols})")
        .format(i=sql.Identifier(index_name(resource, keys)), t=table(resource), cols=sql.SQL(", ").join(columns))
        .as_string()
    )


def drop_index(name: str) -> str:
    return sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name)).as_string()


#: This resource's indexes made by ``create_index``: (name, valid). An invalid one is a
#: concurrent build that failed (it is dropped and built again).
LIST_INDEXES = (
    "SELECT c.relname, i.indisvalid FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid "
    "WHERE t.relname = %s AND t.relnamespace = current_schema()::regnamespace AND starts_with(c.relname, %s)"
)
