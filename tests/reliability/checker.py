"""Checks a recorded history against what the README promises (Cache coherence), and audits the stores afterwards.

- stale reads: a read that returned a counter older than a write to the same
  key acknowledged *before the read began* (or a 404 after one);
- acknowledged vs stored: every acknowledged write and insert is in PostgreSQL;
- the cache: no entry in Redis holds a value older than the last acknowledged write.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import orjson
import psycopg
import redis

from cachedapi import contract, model
from cachedapi.operator.children import config as x_config

from .load import EVENTS, KV, History


@dataclass(frozen=True)
class StaleRead:
    key: str
    read_n: int | None
    acked_n: int
    read_start: float


def stale_reads(hist: History) -> list[StaleRead]:
    acked: dict[str, list[tuple[float, int]]] = {}
    for op in hist.acked_writes():
        acked.setdefault(op.key, []).append((op.end, op.n or 0))
    for series in acked.values():
        series.sort()
    found = []
    for op in hist.ops:
        if op.kind != "read" or op.status not in (200, 404):
            continue
        series = acked.get(op.key, [])
        i = bisect.bisect_left(series, (op.start, -1))
        if i == 0:
            continue
        newest = max(n for _, n in series[:i])
        if op.n is None or op.n < newest:
            found.append(StaleRead(op.key, op.n, newest, op.start))
    return found


def last_acked(hist: History) -> dict[str, int]:
    out: dict[str, int] = {}
    for op in hist.acked_writes():
        out[op.key] = max(out.get(op.key, 0), op.n or 0)
    return out


def stored_counters(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(f"SELECT id, (data->>'n')::bigint FROM r_{KV}").fetchall()  # noqa: S608
    return {row[0]: int(row[1]) for row in rows}


def lost_writes(hist: History, database_url: str) -> list[str]:
    """Keys whose stored counter is below the last acknowledged one (must be empty)."""
    stored = stored_counters(database_url)
    return [key for key, n in last_acked(hist).items() if stored.get(key, -1) < n]


def lost_creates(hist: History, database_url: str) -> int:
    ids = [op.item_id for op in hist.acked_creates()]
    if not ids:
        return 0
    with psycopg.connect(database_url) as conn:
        found = conn.execute(f"SELECT count(*) FROM r_{EVENTS} WHERE id = ANY(%s)", [ids]).fetchone()  # noqa: S608
    return len(ids) - int(found[0] if found else 0)


def stale_cache_entries(hist: History, api: model.CachedApi, redis_url: str) -> list[str]:
    """Keys whose Redis entry holds a counter older than the last acknowledged write."""
    prefix = x_config.key_prefix(api)
    client = redis.Redis.from_url(redis_url)
    try:
        bad = []
        for key, n in last_acked(hist).items():
            raw = client.get(contract.item_key(prefix, KV, key))
            if raw is None:
                continue
            entry = contract.decode_entry(raw)
            if entry is None or entry.status != 200:
                continue
            if int(orjson.loads(entry.body)["n"]) < n:
                bad.append(key)
        return bad
    finally:
        client.close()
