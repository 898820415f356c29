"""The query of ``GET /v1/{resource}``: filters, sort, sparse fields, limit and cursor.

Both roles parse a list query with this one module: the api role to run it, the
gateway to look the page up under the same key the api role stores it under, so
the two must agree on every spelling. ``parse`` checks each parameter against the
resource's JSON Schema and raises ``QueryError`` naming the parameter; nothing
is ignored. ``ListQuery.key_text`` is the one spelling of a query (parameter
order, ``[eq]`` or bare equality, the order of ``[in]`` values, ``1960`` or
``1960.0`` give one key).

The syntax (the README's HTTP section shows it with examples):

- ``?p=v`` or ``?p[eq]=v``, ``?p[ne]=v``, ``?p[gt|gte|lt|lte]=v``, ``?p[in]=a,b``
  (or ``?p[in]=["a,b","c"]``, a JSON array, for strings holding commas), on
  top-level properties the schema declares with a scalar ``type``; values are
  read as that JSON type (``null`` is JSON null where the type allows it). An
  absent property compares as null. Comparisons match values of their own type
  only.
- ``?sort=-year,title``: ``-`` for descending; ties in insertion order.
- ``?fields=title,year``: the properties to return; ``id`` always comes.
- ``limit`` (1..``MAX_PAGE_LIMIT``) and ``cursor``, as before. A cursor carries
  its position in one filtered, sorted sequence and the fingerprint of that
  sequence's filters and sort; given with others, it is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cachedapi import contract

OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in")
#: Operators that order values: they apply to numbers and strings only.
RANGE_OPERATORS = frozenset({"gt", "gte", "lt", "lte"})
RESERVED = ("limit", "cursor", "sort", "fields")
#: Property names a query can reach: no brackets, commas or leading ``-`` to confuse the syntax.
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*$"
SCALAR_TYPES = frozenset({"string", "number", "integer", "boolean", "null"})
MAX_FILTERS = 20
MAX_IN_VALUES = 100
MAX_SORT_KEYS = 8
#: Longer canonical queries are keyed by their digest, to keep Redis keys short.
MAX_KEY_TEXT = 256

_NAME = re.compile(NAME_PATTERN)
_PARAM = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)(?:\[([a-z]+)\])?$")
_INTEGER = re.compile(r"^-?(0|[1-9][0-9]*)$")
_NUMBER = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$")


class QueryError(ValueError):
    """A list query the API refuses: ``param`` is the parameter to name in the 400."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(frozen=True, slots=True)
class Property:
    """A top-level property of a resource's schema, as a query can use it."""

    name: str
    #: Its JSON types; empty when the schema gives it no scalar ``type`` (not usable in a query).
    types: frozenset[str]

    @property
    def comparable(self) -> bool:
        return bool(self.types & {"string", "number", "integer"})

    def describe(self) -> str:
        return " or ".join(sorted(self.types))


def properties(schema: Mapping[str, Any]) -> dict[str, Property]:
    """The properties of a resource's schema that a query may name (filters, sort, fields)."""
    out: dict[str, Property] = {}
    for name, sub in (schema.get("properties") or {}).items():
        if not _NAME.match(name):
            continue
        declared = sub.get("type") if isinstance(sub, Mapping) else None
        types = [declared] if isinstance(declared, str) else list(declared) if isinstance(declared, list) else []
        scalar = frozenset(t for t in types if t in SCALAR_TYPES)
        out[name] = Property(name, scalar if len(scalar) == len(types) else frozenset())
    return out


@dataclass(frozen=True, slots=True)
class Filter:
    name: str
    op: str  # one of OPERATORS, with "in" only for two values or more
    values: tuple[Any, ...]  # one value, except for "in"


@dataclass(frozen=True, slots=True)
class SortKey:
    name: str
    descending: bool = False

    def spelled(self) -> str:
        return f"-{self.name}" if self.descending else self.name


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page ends: the last item's sort values and its insertion sequence number."""

    seq: int
    values: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class ListQuery:
    filters: tuple[Filter, ...] = ()
    sort: tuple[SortKey, ...] = ()
    fields: tuple[str, ...] | None = None
    limit: int = contract.DEFAULT_PAGE_LIMIT
    cursor: str | None = None
    after: Position | None = None

    @property
    def plain(self) -> bool:
        """The unfiltered sequence in insertion order (whose cursors are plain sequence numbers)."""
        return not self.filters and not self.sort

    def sequence_text(self) -> str:
        """The canonical spelling of what fixes the sequence: the filters and the sort."""
        parts = [f"{_quote(f.name)}[{f.op}]={_quote(_spell_values(f.values))}" for f in self.filters]
        if self.sort:
            parts.append("sort=" + _quote(",".join(k.spelled() for k in self.sort)))
        return "&".join(parts)

    def fingerprint(self) -> str:
        return hashlib.blake2b(self.sequence_text().encode(), digest_size=6).hexdigest()

    def key_text(self) -> str:
        """The query's one spelling, for its cache key (no ``:``, so it cannot end like a lease key)."""
        text = contract.canonical_list_query(self.limit, self.cursor)
        rest = self.sequence_text()
        if self.fields is not None:
            rest += ("&" if rest else "") + "fields=" + _quote(",".join(self.fields))
        if rest:
            text += "&" + rest
        if len(text) > MAX_KEY_TEXT:
            return "sha=" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        return text

    def cursor_after(self, position: Position) -> str:
        """The cursor of the page that starts after ``position``, in this query's sequence."""
        if self.plain:
            return encode_plain_cursor(position.seq)
        raw = json.dumps([self.fingerprint(), position.seq, *position.values], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def encode_plain_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(seq.to_bytes(8, "big")).rstrip(b"=").decode()


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe=",-._~[]")


def _spell_values(values: Iterable[Any]) -> str:
    return ",".join(json.dumps(v, separators=(",", ":"), ensure_ascii=False) for v in values)


def _shown(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _value(param: str, prop: Property, raw: str, *, op: str) -> Any:
    """``raw`` read as the property's JSON type."""
    if "\x00" in raw:
        raise QueryError(param, "a value cannot hold the NUL character")
    types = prop.types
    if "null" in types and raw == "null":
        value: Any = None
    elif "boolean" in types and raw in ("true", "false"):
        value = raw == "true"
    elif types & {"integer", "number"} and _INTEGER.match(raw):
        value = int(raw)
    elif types & {"integer", "number"} and _NUMBER.match(raw) and ("number" in types or float(raw).is_integer()):
        number = float(raw)  # JSON Schema counts 1965.0 as an integer too
        if not math.isfinite(number):
            raise QueryError(param, f"{_shown(raw)} is out of range")
        value = int(number) if number.is_integer() and abs(number) < 2**53 else number
    elif "string" in types:
        value = raw
    else:
        raise QueryError(param, f"{_shown(raw)} is not a value of {prop.name}'s type ({prop.describe()})")
    if op in RANGE_OPERATORS and (value is None or isinstance(value, bool)):
        raise QueryError(param, f"[{op}] compares numbers and strings, not {_shown(raw)}")
    return value


def _in_values(param: str, prop: Property, raw: str) -> tuple[Any, ...]:
    if raw.startswith("["):
        try:
            items = json.loads(raw)
        except ValueError:
            raise QueryError(param, "a value list starting with [ must be a JSON array") from None
        if not isinstance(items, list) or not all(isinstance(i, str | int | float | bool) or i is None for i in items):
            raise QueryError(param, "a value list starting with [ must be a JSON array of scalars")
        texts = ["null" if i is None else i if isinstance(i, str) else json.dumps(i) for i in items]
    else:
        texts = raw.split(",")
    if not texts or len(texts) > MAX_IN_VALUES:
        raise QueryError(param, f"[in] takes 1 to {MAX_IN_VALUES} values")
    values = {_spell_values([v]): v for v in (_value(param, prop, t, op="in") for t in texts)}
    return tuple(values[k] for k in sorted(values))


def _names(param: str, raw: str, props: Mapping[str, Property], *, signed: bool) -> list[tuple[str, bool]]:
    out: list[tuple[str, bool]] = []
    for part in raw.split(","):
        descending = signed and part.startswith("-")
        name = part[1:] if descending else part
        if not signed and name == "id":
            continue
        prop = props.get(name)
        if prop is None:
            raise QueryError(param, f"{_shown(name)} is not a property of this resource's schema")
        if signed and not prop.types:
            raise QueryError(param, f"{name} has no scalar type in the schema, so it cannot be sorted on")
        if any(n == name for n, _ in out):
            raise QueryError(param, f"{name} is named twice")
        out.append((name, descending))
    return out


def _limit(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= contract.MAX_PAGE_LIMIT:
        raise QueryError("limit", f"must be an integer from 1 to {contract.MAX_PAGE_LIMIT}, got {_shown(raw)}")
    return int(raw)


def parse_pairs(pairs: Iterable[tuple[str, str]], props: Mapping[str, Property]) -> ListQuery:
    """The list query of these (name, value) pairs, or QueryError naming the first bad one."""
    limit = contract.DEFAULT_PAGE_LIMIT
    cursor: str | None = None
    sort: tuple[SortKey, ...] = ()
    fields: tuple[str, ...] | None = None
    filters: dict[tuple[str, str], Filter] = {}
    seen: set[str] = set()
    for param, raw in pairs:
        if param in seen:
            raise QueryError(param, "given more than once (for several values use [in])")
        seen.add(param)
        if param == "limit":
            limit = _limit(raw)
        elif param == "cursor":
            cursor = raw or None
        elif param == "sort":
            sort = tuple(SortKey(n, d) for n, d in _names(param, raw, props, signed=True))
            if len(sort) > MAX_SORT_KEYS:
                raise QueryError(param, f"at most {MAX_SORT_KEYS} keys")
        elif param == "fields":
            fields = tuple(sorted(n for n, _ in _names(param, raw, props, signed=False)))
        else:
            match = _PARAM.match(param)
            if match is None:
                raise QueryError(param, "not a parameter of this list: use limit, cursor, sort, fields or a filter")
            name, op = match.group(1), match.group(2) or "eq"
            prop = props.get(name)
            if prop is None:
                raise QueryError(param, f"{_shown(name)} is not a property of this resource's schema")
            if op not in OPERATORS:
                raise QueryError(param, f"[{op}] is not an operator; use one of {', '.join(OPERATORS)}")
            if not prop.types:
                raise QueryError(param, f"{name} has no scalar type in the schema, so it cannot be filtered on")
            if op in RANGE_OPERATORS and not prop.comparable:
                raise QueryError(param, f"[{op}] needs a number or string property; {name} is {prop.describe()}")
            if op == "in":
                values = _in_values(param, prop, raw)
                one = Filter(name, "in", values) if len(values) > 1 else Filter(name, "eq", values)
            else:
                one = Filter(name, op, (_value(param, prop, raw, op=op),))
            if (name, one.op) in filters:
                raise QueryError(param, f"{name}[{one.op}] is given twice (bare and [{one.op}] spell the same)")
            filters[(name, one.op)] = one
            if len(filters) > MAX_FILTERS:
                raise QueryError(param, f"at most {MAX_FILTERS} filters")
    query = ListQuery(
        filters=tuple(filters[k] for k in sorted(filters)), sort=sort, fields=fields, limit=limit, cursor=cursor
    )
    if cursor is None:
        return query
    return ListQuery(query.filters, sort, fields, limit, cursor, _decode_cursor(cursor, query))


def parse(query_string: str | bytes, props: Mapping[str, Property]) -> ListQuery:
    """The list query of a raw (percent-encoded) query string."""
    if isinstance(query_string, bytes):
        try:
            query_string = query_string.decode("ascii")
        except UnicodeDecodeError:
            raise QueryError("query", "must be percent-encoded ASCII") from None
    try:
        pairs = urllib.parse.parse_qsl(
            query_string, keep_blank_values=True, strict_parsing=bool(query_string), errors="strict"
        )
    except (ValueError, UnicodeDecodeError):
        raise QueryError("query", "is not a well-formed query string") from None
    return parse_pairs(pairs, props)


def _decode_cursor(cursor: str, query: ListQuery) -> Position:
    bad = QueryError("cursor", f"{_shown(cursor)} is not a cursor this API issued")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except ValueError:
        raise bad from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != cursor:
        raise bad
    if len(raw) == 8:  # a plain sequence number: the unfiltered, unsorted sequence's cursors
        if not query.plain:
            raise QueryError("cursor", "was made for another filter or sort than this request's")
        seq = int.from_bytes(raw, "big")
        if seq >= 2**63:
            raise bad
        return Position(seq)
    try:
        fingerprint, seq, *values = json.loads(raw)
    except ValueError:
        raise bad from None
    if not isinstance(seq, int) or not 0 <= seq < 2**63:
        raise bad
    if query.plain or fingerprint != query.fingerprint():
        raise QueryError("cursor", "was made for another filter or sort than this request's")
    if len(values) != len(query.sort):
        raise bad
    return Position(seq, tuple(values))
