"""The data every contender serves: written once into PostgreSQL, before any contender starts.

All contenders read the same table (``r_books``, the api role's) so that they
answer the same bytes: the small item of the hit scenario, a 50 KB item, a hot
set for the read/write mix, and a long run of cold items for the miss scenario
(each requested once per wrk run: ``lua/miss.lua``), written in one
``INSERT ... SELECT generate_series`` rather than through the API, which would
take minutes. Ids go to files that the Lua scripts read.

The list scenarios add ``list_items`` rows (1,000,000 by default, only when a
list scenario runs) to the same table, by authors of their own
(``list_author``, ``LIST_ROWS_PER_AUTHOR`` books each, spread over the whole
table as insertion order goes), so that ``?author=<a>`` matches a couple of
dozen rows among a million. The api role builds its declared indexes
(``CREATE INDEX CONCURRENTLY``, in the background, from its start); ``seed``
waits until every one is valid, then VACUUMs and ANALYZEs (which also gathers
the statistics of the indexes' expressions that the planner needs to choose them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

SMALL = {"title": "Dune", "author": "Frank Herbert", "year": 1965, "price": 9.99, "tags": ["sf", "classic"]}
LARGE_BYTES = 50 * 1024
# The schema caps tags at 20 strings and title at 200 characters; author is free.
LARGE = {"title": "The large one", "author": "A" * (LARGE_BYTES - 80), "year": 2000, "tags": ["bench"]}

_SERIES = """
INSERT INTO r_books (id, version, data)
SELECT %(prefix)s || lpad(i::text, 7, '0'), nextval('cachedapi_version'),
       jsonb_build_object('title', 'Book ' || i, 'author', 'Author ' || (i %% 997),
                          'year', 1900 + i %% 120, 'price', 9.99, 'tags', jsonb_build_array('bench'))
FROM generate_series(1, %(n)s) AS i
"""


#: Each list author has this many books: a filter by author returns one full page (20) and a cursor.
LIST_ROWS_PER_AUTHOR = 25

_LIST_SERIES = """
INSERT INTO r_books (id, version, data)
SELECT 'list-' || lpad(i::text, 7, '0'), nextval('cachedapi_version'),
       jsonb_build_object('title', 'List book ' || i,
                          'author', 'List author ' || lpad((i %% %(authors)s)::text, 6, '0'),
                          'year', 1900 + (i / %(authors)s * 37 + i) %% 125,
                          'price', 9.99, 'tags', jsonb_build_array('bench'))
FROM generate_series(0, %(n)s - 1) AS i
"""

#: The api role's declared indexes of the books table (``listing.index_name``: ``r_books_x_<digest>``).
_INDEXES = (
    "SELECT count(*), count(*) FILTER (WHERE i.indisvalid AND i.indisready) FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid "
    "WHERE t.relname = 'r_books' AND starts_with(c.relname, 'r_books_x_')"
)


def list_author(n: int) -> str:
    """The author of list rows ``n``, ``n + authors``, ... (as ``_LIST_SERIES`` writes them)."""
    return f"List author {n:06d}"


@dataclass(frozen=True)
class Seeded:
    small_id: str
    large_id: str
    miss_ids: Path
    miss_count: int
    mix_ids: Path
    #: Rows of the list scenarios and their authors (``list_author(0)`` .. ``list_author(authors - 1)``).
    list_items: int = 0
    list_authors: int = 0
    #: How long writing the list rows, waiting for the indexes, VACUUM and ANALYZE took.
    list_seconds: float = 0.0


def series_ids(prefix: str, n: int) -> list[str]:
    """The ids ``_SERIES`` writes, in order."""
    return [f"{prefix}{i:07d}" for i in range(1, n + 1)]


def seed(
    database_url: str,
    *,
    workdir: Path,
    miss_items: int,
    mix_items: int,
    list_items: int = 0,
    indexes: int = 0,
    index_timeout: float = 900.0,
) -> Seeded:
    """Write the items (the api role has created the table) and the id files; with ``list_items``,
    the list rows too, and wait for the api role's ``indexes`` declared indexes of books to be valid."""
    list_authors = max(1, list_items // LIST_ROWS_PER_AUTHOR) if list_items else 0
    started = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        for item_id, data in (("small", SMALL), ("large", LARGE)):
            conn.execute(
                "INSERT INTO r_books (id, version, data) VALUES (%s, nextval('cachedapi_version'), %s)",
                [item_id, Jsonb(data)],
            )
        conn.execute(_SERIES, {"prefix": "miss-", "n": miss_items})
        conn.execute(_SERIES, {"prefix": "mix-", "n": mix_items})
        if list_items:
            started = time.monotonic()
            conn.execute(_LIST_SERIES, {"n": list_items, "authors": list_authors})
            wait_for_indexes(conn, indexes, timeout=index_timeout)
        # VACUUM too after a million rows: else the first reads of each page set its hint bits and
        # autovacuum visits the table mid-run, both costs of whichever contender comes first.
        conn.execute("VACUUM (ANALYZE) r_books" if list_items else "ANALYZE r_books")
    list_seconds = round(time.monotonic() - started, 1) if list_items else 0.0
    miss_file = workdir / "miss-ids.txt"
    miss_file.write_text("\n".join(series_ids("miss-", miss_items)) + "\n", encoding="ascii")
    mix_file = workdir / "mix-ids.txt"
    mix_file.write_text("\n".join(series_ids("mix-", mix_items)) + "\n", encoding="ascii")
    return Seeded("small", "large", miss_file, miss_items, mix_file, list_items, list_authors, list_seconds)


def wait_for_indexes(conn: psycopg.Connection[tuple[object, ...]], expected: int, *, timeout: float) -> None:
    """Until the books table has ``expected`` indexes of the api role's and each is valid (its
    concurrent build done); TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    found: tuple[object, ...] | None = None
    while time.monotonic() < deadline:
        found = conn.execute(_INDEXES).fetchone()
        if found is not None and found[0] == expected and found[1] == expected:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the api role's indexes of r_books: {found} (count, valid), {expected} expected")


def explain(database_url: str, statement: str, params: list[Any]) -> str:
    """PostgreSQL's plan of ``statement`` (EXPLAIN, not run), as text."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(f"EXPLAIN {statement}", params).fetchall()
    return "\n".join(str(row[0]) for row in rows)


def new_cold_item(database_url: str, item_id: str) -> None:
    """One more item, never read yet (the stampede's cold key)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO r_books (id, version, data) VALUES (%s, nextval('cachedapi_version'), %s)",
            [item_id, Jsonb(SMALL)],
        )


def table_reads(database_url: str) -> int:
    """Scans of ``r_books`` counted by PostgreSQL itself (sequential + index): its reads of the table."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'r_books'"
        ).fetchone()
    return int(row[0]) if row else 0
