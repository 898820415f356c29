"""The data every contender serves: written once into PostgreSQL, before any contender starts.

All contenders read the same table (``r_books``, the api role's) so that they
answer the same bytes: the small item of the hit scenario, a 50 KB item, a hot
set for the read/write mix, and a long run of cold items for the miss scenario
(each requested once per wrk run: ``lua/miss.lua``), written in one
``INSERT ... SELECT generate_series`` rather than through the API, which would
take minutes. Ids go to files that the Lua scripts read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class Seeded:
    small_id: str
    large_id: str
    miss_ids: Path
    miss_count: int
    mix_ids: Path


def series_ids(prefix: str, n: int) -> list[str]:
    """The ids ``_SERIES`` writes, in order."""
    return [f"{prefix}{i:07d}" for i in range(1, n + 1)]


def seed(database_url: str, *, workdir: Path, miss_items: int, mix_items: int) -> Seeded:
    """Write the items (the api role has created the table) and the id files."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for item_id, data in (("small", SMALL), ("large", LARGE)):
            conn.execute(
                "INSERT INTO r_books (id, version, data) VALUES (%s, nextval('cachedapi_version'), %s)",
                [item_id, Jsonb(data)],
            )
        conn.execute(_SERIES, {"prefix": "miss-", "n": miss_items})
        conn.execute(_SERIES, {"prefix": "mix-", "n": mix_items})
        conn.execute("ANALYZE r_books")
    miss_file = workdir / "miss-ids.txt"
    miss_file.write_text("\n".join(series_ids("miss-", miss_items)) + "\n", encoding="ascii")
    mix_file = workdir / "mix-ids.txt"
    mix_file.write_text("\n".join(series_ids("mix-", mix_items)) + "\n", encoding="ascii")
    return Seeded("small", "large", miss_file, miss_items, mix_file)


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
