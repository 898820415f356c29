"""The stampede: 200 requests for one cold key, sent at the same instant, and what PostgreSQL saw.

Concurrent for real: the connections are opened first, then every request is
written before any answer is read, so that all of them arrive while the first
is still a miss. The database reads are counted at PostgreSQL
(``pg_stat_user_tables`` scans of the table, ``data.table_reads``), not by the
server under test (pg_stat_statements is not in the embedded build). A
backend publishes its counts when it goes idle, but at most once a second,
else 10 s later (PostgreSQL's PGSTAT_MIN_INTERVAL and PGSTAT_IDLE_INTERVAL),
so the count is read until it has not moved for 11 s, before and after.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from typing import Any

from bench import data


@dataclass(frozen=True)
class Outcome:
    requests: int
    statuses: dict[int, int]
    x_cache: dict[str, int]
    db_reads: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "x_cache": self.x_cache,
            "db_reads": self.db_reads,
            "seconds": round(self.seconds, 4),
        }


async def _answer(reader: asyncio.StreamReader) -> tuple[int, str]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    await reader.readexactly(int(fields.get("content-length", "0")))
    return status, fields.get("x-cache") or fields.get("x-fastapi-cache") or "-"


async def _burst(port: int, path: str, headers: dict[str, str], n: int) -> tuple[list[tuple[int, str]], float]:
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode("latin-1")
        started = time.perf_counter()
        for _, writer in conns:
            writer.write(request)
        answers = await asyncio.wait_for(asyncio.gather(*(_answer(r) for r, _ in conns)), timeout=30)
        return answers, time.perf_counter() - started
    finally:
        for _, writer in conns:
            writer.close()


def _settled_reads(database_url: str, *, before: int) -> int:
    """The scan count once it has not moved for 11 s (at most 40 s)."""
    deadline = time.monotonic() + 40
    last, since = data.table_reads(database_url), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < 11:
        time.sleep(0.5)
        now = data.table_reads(database_url)
        if now != last:
            last, since = now, time.monotonic()
    return last - before


def run(*, port: int, path: str, headers: dict[str, str], database_url: str, n: int = 200) -> Outcome:
    before = _settled_reads(database_url, before=0)
    answers, seconds = asyncio.run(_burst(port, path, headers, n))
    reads = _settled_reads(database_url, before=before)
    return Outcome(
        requests=n,
        statuses=dict(collections.Counter(status for status, _ in answers)),
        x_cache=dict(collections.Counter(x for _, x in answers)),
        db_reads=reads,
        seconds=seconds,
    )


def burst(*, port: int, path: str, headers: dict[str, str], n: int = 200) -> tuple[list[tuple[int, str]], float]:
    """The burst alone, for a caller that counts what reached the upstream itself (``bench.upstream``):
    each answer's status and X-Cache, and the seconds from the first write to the last answer."""
    return asyncio.run(_burst(port, path, headers, n))
