"""Coalescing and coherence across replicas: many misses make one upstream request, with two
gateway processes; a holder that dies is taken over from; and under load, with readers and
writers through both gateways, no read returns a value older than a write acknowledged before
the read began (the checker idea of tests/reliability/checker.py)."""

from __future__ import annotations

import asyncio
import bisect
import os
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from cachedapi.dev import devstack, embedded
from tests.gateway import httpcache_support as hc


@pytest.fixture(scope="module")
def up() -> Iterator[hc.Upstream]:
    with hc.upstream() as server:
        yield server


@pytest.fixture(scope="module")
def pair(up: hc.Upstream, redis_server: embedded.RedisServer) -> Iterator[list[devstack.Instance]]:
    with hc.gateways(hc.config(up.url), redis_url=redis_server.url, count=2) as roles:
        yield roles


async def _burst(pair: list[devstack.Instance], path: str, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        return await asyncio.gather(*(client.get(pair[i % 2].url + path) for i in range(n)))


def test_200_concurrent_misses_on_two_gateways_make_one_upstream_request(
    up: hc.Upstream, pair: list[devstack.Instance]
) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=60"]], delay=0.5)
    answers = asyncio.run(_burst(pair, path, 200))
    assert {a.status_code for a in answers} == {200}
    assert {a.json()["n"] for a in answers} == {1}
    assert up.count(path) == 1
    assert sum(a.headers["x-cache"] == "MISS" for a in answers) == 1


def test_concurrent_misses_of_an_answer_that_cannot_be_stored_do_not_queue(
    up: hc.Upstream, pair: list[devstack.Instance]
) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "private"]], delay=0.3)
    started = time.monotonic()
    answers = asyncio.run(_burst(pair, path, 40))
    elapsed = time.monotonic() - started
    assert {a.status_code for a in answers} == {200}
    # Each got its own answer (private), and they did not wait on each other one by one
    # (40 x 0.3 s = 12 s): the first answer leaves a hit-for-miss marker.
    assert len({a.json()["n"] for a in answers}) == 40
    assert elapsed < 6


def test_a_waiting_replica_takes_over_from_a_holder_that_died(
    up: hc.Upstream, redis_server: embedded.RedisServer
) -> None:
    path = hc.unique()
    up.route(path, headers=[["cache-control", "max-age=60"]], delay=1.5)
    with hc.gateways(hc.config(up.url), redis_url=redis_server.url, count=2) as (holder, waiter):

        async def scenario() -> httpx.Response:
            async with httpx.AsyncClient(timeout=30) as client:
                doomed = asyncio.ensure_future(client.get(holder.url + path))
                await asyncio.sleep(0.3)  # the holder has the lease and is asking the upstream
                assert holder.proc is not None
                # Its process group: granian serves from a worker process of its own.
                os.killpg(holder.proc.pid, signal.SIGKILL)
                answer = await client.get(waiter.url + path)
                doomed.cancel()
                await asyncio.gather(doomed, return_exceptions=True)
                return answer

        started = time.monotonic()
        answer = asyncio.run(scenario())
        assert answer.status_code == 200
        assert time.monotonic() - started < 8
        assert up.count(path) == 2


@dataclass(frozen=True)
class Read:
    key: str
    start: float
    n: int
    #: For a failure's message: which gateway, its X-Cache, when the answer came.
    via: str = ""


def test_no_replica_serves_a_value_older_than_an_acknowledged_write(
    up: hc.Upstream, pair: list[devstack.Instance]
) -> None:
    keys = [f"k{i}-{random.randrange(10**6)}" for i in range(6)]
    acked: dict[str, list[tuple[float, int]]] = {key: [] for key in keys}
    reads: list[Read] = []
    errors: list[str] = []
    seconds = 6.0

    async def writer(client: httpx.AsyncClient, key: str, stop: float) -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            role = random.choice(pair)
            resp = await client.put(f"{role.url}/kv/{key}", json={"n": n})
            if resp.status_code != 200:
                errors.append(f"PUT {key}: {resp.status_code}")
                return
            acked[key].append((time.monotonic(), n))
            await asyncio.sleep(random.random() * 0.05)

    async def reader(client: httpx.AsyncClient, stop: float) -> None:
        while time.monotonic() < stop:
            role = random.choice(pair)
            start = time.monotonic()
            if random.random() < 0.25:
                resp = await client.get(f"{role.url}/kvlist")
                if resp.status_code != 200:
                    errors.append(f"GET /kvlist: {resp.status_code}")
                    return
                values = resp.json()
                via = f"{role.port} list {resp.headers['x-cache']} {time.monotonic() - start:.3f}s"
                reads.extend(Read(key, start, int(values.get(key, 0)), via) for key in keys)
            else:
                key = random.choice(keys)
                resp = await client.get(f"{role.url}/kv/{key}")
                if resp.status_code != 200:
                    errors.append(f"GET {key}: {resp.status_code}")
                    return
                via = f"{role.port} {resp.headers['x-cache']} {time.monotonic() - start:.3f}s"
                reads.append(Read(key, start, int(resp.json()["n"]), via))

    async def scenario() -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            stop = time.monotonic() + seconds
            await asyncio.gather(
                *(writer(client, key, stop) for key in keys), *(reader(client, stop) for _ in range(24))
            )

    asyncio.run(scenario())
    assert not errors, errors[:5]
    stale = []
    for read in reads:
        series = acked[read.key]
        i = bisect.bisect_left(series, (read.start, -1))
        if i and read.n < max(n for _, n in series[:i]):
            stale.append(read)
    assert len(reads) > 300
    assert sum(len(s) for s in acked.values()) > 50
    context = [(r, [w for w in acked[r.key] if abs(w[0] - r.start) < 0.2]) for r in stale[:3]]
    assert not stale, f"{len(stale)} stale reads of {len(reads)}, e.g. {context}"
    counts = up.counts()
    # The cache did serve: far fewer upstream reads than reads.
    upstream_reads = sum(v for k, v in counts.items() if k.startswith("GET /kv"))
    assert upstream_reads < len(reads)
