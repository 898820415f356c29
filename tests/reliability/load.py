"""A bounded, recorded load: writers and readers on a small key space, through gateways.

Every request is recorded with its start and end (monotonic clock of this
process), its status and, for reads and writes of the ``kv`` resource, the
counter ``n`` carried by the item. Each key has exactly one writer, which writes
``n = 1, 2, 3, ...`` one request at a time, so for each key the order of
acknowledgements is the order of commits and "older" simply means a smaller n.
``creates`` POSTs to a second resource so that acknowledged inserts can be
counted against rows afterwards.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import httpx

from cachedapi import model

KV = "kv"
EVENTS = "events"


def manifest(*, ttl: int = 30, swr: int = 0, sie: int = 300, rate: float = 1_000_000) -> model.CachedApi:
    """The CachedApi the reliability scenarios run: a counter store and an append-only log."""
    return model.parse(
        {
            "metadata": {"name": "reliab", "namespace": "faults"},
            "spec": {
                "gateway": {"rateLimit": {"requestsPerSecond": rate, "burst": 10_000_000}},
                "cache": {
                    "defaultTtlSeconds": ttl,
                    "staleWhileRevalidateSeconds": swr,
                    "staleIfErrorSeconds": sie,
                },
                "resources": [
                    {
                        "name": KV,
                        "schema": {
                            "type": "object",
                            "required": ["n"],
                            "properties": {"n": {"type": "integer"}, "writer": {"type": "string"}},
                        },
                    },
                    {"name": EVENTS, "ttlSeconds": 0, "schema": {"type": "object"}},
                ],
            },
        }
    )


@dataclass(slots=True)
class Op:
    kind: str  # "read" | "write" | "create" | "list" (a list page; each item on it is also a "read")
    key: str
    start: float
    end: float
    status: int  # 0 = no HTTP answer (connection refused, reset, timeout)
    n: int | None = None  # the counter written, or read (None: none in the answer)
    x_cache: str | None = None
    item_id: str | None = None


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)

    def by_status(self, kind: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            if op.kind == kind:
                label = str(op.status) if op.status else "no-answer"
                if op.kind in ("read", "list") and op.x_cache and op.status == 200:
                    label += f" {op.x_cache}"
                counts[label] = counts.get(label, 0) + 1
        return dict(sorted(counts.items()))

    def acked_writes(self) -> list[Op]:
        return [op for op in self.ops if op.kind == "write" and op.status in (200, 201)]

    def acked_creates(self) -> list[Op]:
        return [op for op in self.ops if op.kind == "create" and op.status == 201]

    def max_latency(self, kind: str) -> float:
        return max((op.end - op.start for op in self.ops if op.kind == kind), default=0.0)


async def _seed(client: httpx.AsyncClient, keys: list[str], hist: History) -> None:
    """Write n=0 to every key before the load starts, so reads find items from the first one."""
    for key in keys:
        start = time.monotonic()
        resp = await client.put(f"/v1/{KV}/{key}", json={"n": 0, "writer": "seed"})
        resp.raise_for_status()
        hist.ops.append(Op("write", key, start, time.monotonic(), resp.status_code, n=0))


async def _writer(client: httpx.AsyncClient, keys: list[str], name: str, until: float, hist: History) -> None:
    counters = dict.fromkeys(keys, 0)
    while time.monotonic() < until:
        key = random.choice(keys)
        n = counters[key] + 1
        start = time.monotonic()
        try:
            resp = await client.put(f"/v1/{KV}/{key}", json={"n": n, "writer": name})
            status = resp.status_code
        except httpx.HTTPError:
            status = 0
        hist.ops.append(Op("write", key, start, time.monotonic(), status, n=n))
        # An unacknowledged write may still have committed: the next n stays above it.
        counters[key] = n
        if status in (0, 502, 503, 504):
            await asyncio.sleep(0.02)


async def _reader(client: httpx.AsyncClient, keys: list[str], until: float, hist: History) -> None:
    while time.monotonic() < until:
        key = random.choice(keys)
        start = time.monotonic()
        n = x_cache = None
        try:
            resp = await client.get(f"/v1/{KV}/{key}")
            status = resp.status_code
            x_cache = resp.headers.get("x-cache")
            if status == 200:
                n = int(resp.json()["n"])
        except httpx.HTTPError:
            status = 0
        hist.ops.append(Op("read", key, start, time.monotonic(), status, n=n, x_cache=x_cache))
        if status in (0, 502, 503, 504):
            await asyncio.sleep(0.02)


#: Filtered, sorted and sparse list reads: each item on the page counts as a read of its key,
#: so the checker holds list pages (cached under the list's generation token) to the same rule.
LIST_QUERIES = (
    "n[gte]=0&sort=-n,writer&limit=100",
    "writer[ne]=nobody&fields=n&limit=100",
    "n[lt]=1000000000&sort=writer&limit=100",
)


async def _list_reader(client: httpx.AsyncClient, until: float, hist: History) -> None:
    while time.monotonic() < until:
        query = random.choice(LIST_QUERIES)
        start = time.monotonic()
        items: list[dict[str, object]] = []
        x_cache = None
        try:
            resp = await client.get(f"/v1/{KV}?{query}")
            status = resp.status_code
            x_cache = resp.headers.get("x-cache")
            if status == 200:
                items = resp.json()["items"]
        except httpx.HTTPError:
            status = 0
        end = time.monotonic()
        hist.ops.append(Op("list", query, start, end, status, x_cache=x_cache))
        if status != 200:
            await asyncio.sleep(0.02)
        for item in items:
            hist.ops.append(Op("read", str(item["id"]), start, end, 200, n=int(str(item["n"])), x_cache=x_cache))


async def _creator(client: httpx.AsyncClient, until: float, hist: History) -> None:
    seq = 0
    while time.monotonic() < until:
        seq += 1
        start = time.monotonic()
        item_id = None
        try:
            resp = await client.post(f"/v1/{EVENTS}", json={"seq": seq})
            status = resp.status_code
            if status == 201:
                item_id = resp.json()["id"]
        except httpx.HTTPError:
            status = 0
        hist.ops.append(Op("create", str(seq), start, time.monotonic(), status, item_id=item_id))
        await asyncio.sleep(0.01 if status == 201 else 0.05)


async def run(
    *,
    urls: list[str],
    api_key: str,
    seconds: float,
    keys: int = 8,
    readers_per_url: int = 4,
    list_readers_per_url: int = 1,
    creators: int = 1,
    timeout: float = 10.0,
) -> History:
    """Drive every URL for ``seconds``; key i is written by one writer through URL i mod len(urls)."""
    hist = History()
    names = [f"k{i}" for i in range(keys)]
    headers = {"X-API-Key": api_key}
    clients = [
        httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, limits=httpx.Limits(max_connections=32))
        for url in urls
    ]
    try:
        await _seed(clients[0], names, hist)
        until = time.monotonic() + seconds
        tasks = []
        for w, client in enumerate(clients):
            mine = names[w :: len(clients)]
            tasks.append(_writer(client, mine, f"w{w}", until, hist))
            tasks.extend(_reader(client, names, until, hist) for _ in range(readers_per_url))
            tasks.extend(_list_reader(client, until, hist) for _ in range(list_readers_per_url))
        tasks.extend(_creator(clients[i % len(clients)], until, hist) for i in range(creators))
        await asyncio.gather(*tasks)
    finally:
        for client in clients:
            await client.aclose()
    return hist
