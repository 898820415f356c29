"""Fault scenarios on the local stack, each under a steady recorded load for a bounded time.

A scenario starts a ``devstack.Stack`` of its own (real PostgreSQL, Redis,
api and gateway processes), drives it with ``load.run`` from this process, and
at a third of the time applies a fault (kill a server, kill a role), at two
thirds heals it, then audits: requests by status, acknowledged against stored
writes, stale reads, stale cache entries. ``python -m tests.reliability``
runs them all for longer and prints the README's table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cachedapi.dev import devstack

from . import checker, load


@dataclass
class Outcome:
    name: str
    seconds: float
    history: load.History
    figures: dict[str, Any]


async def _drive(
    *,
    stack: devstack.Stack,
    urls: list[str],
    seconds: float,
    fault: Callable[[], None] | None,
    heal: Callable[[], None] | None,
) -> load.History:
    async def faults() -> None:
        if fault is None:
            return
        await asyncio.sleep(seconds / 3)
        await asyncio.to_thread(fault)
        await asyncio.sleep(seconds / 3)
        if heal is not None:
            await asyncio.to_thread(heal)

    hist, _ = await asyncio.gather(load.run(urls=urls, api_key=stack.api_key, seconds=seconds), faults())
    return hist


def _audit(name: str, seconds: float, stack: devstack.Stack, hist: load.History) -> Outcome:
    # Give background retries (pending invalidations) a moment, then read the stores.
    time.sleep(0.5)
    figures = {
        "reads": hist.by_status("read"),
        "lists": hist.by_status("list"),
        "writes": hist.by_status("write"),
        "creates": hist.by_status("create"),
        "acked_writes": len(hist.acked_writes()),
        "lost_writes": len(checker.lost_writes(hist, stack.postgres.url)),
        "acked_creates": len(hist.acked_creates()),
        "lost_creates": checker.lost_creates(hist, stack.postgres.url),
        "stale_reads": len(checker.stale_reads(hist)),
        "stale_cache_entries": len(checker.stale_cache_entries(hist, stack.api, stack.redis.url)),
        "max_write_seconds": round(hist.max_latency("write"), 3),
        "max_read_seconds": round(hist.max_latency("read"), 3),
    }
    return Outcome(name, seconds, hist, figures)


def _run(
    name: str,
    *,
    seconds: float,
    fault: Callable[[devstack.Stack], None] | None,
    heal: Callable[[devstack.Stack], None] | None,
    gateways: int = 1,
    apis: int = 1,
    **manifest: Any,
) -> Outcome:
    api = load.manifest(**manifest)
    with devstack.Stack(api, api_instances=apis, gateway_instances=gateways) as stack:
        try:
            hist = asyncio.run(
                _drive(
                    stack=stack,
                    urls=[g.url for g in stack.gateways],
                    seconds=seconds,
                    fault=(lambda: fault(stack)) if fault else None,
                    heal=(lambda: heal(stack)) if heal else None,
                )
            )
            return _audit(name, seconds, stack, hist)
        except BaseException:
            print(stack.logs())
            raise


def redis_killed(seconds: float) -> Outcome:
    return _run(
        "Redis killed and restarted",
        seconds=seconds,
        fault=lambda s: s.redis.kill(),
        heal=lambda s: s.redis.start(),
    )


def postgres_killed(seconds: float) -> Outcome:
    # A one-second TTL, so that cached items go stale during the outage and are served STALE.
    return _run(
        "PostgreSQL killed and restarted",
        seconds=seconds,
        fault=lambda s: s.postgres.kill(),
        heal=lambda s: s.postgres.start(),
        ttl=1,
        sie=300,
    )


def api_killed(seconds: float) -> Outcome:
    return _run(
        "api instance killed and restarted",
        seconds=seconds,
        fault=lambda s: s.apis[0].kill(),
        heal=lambda s: s.apis[0].start(),
    )


def gateway_restarted(seconds: float) -> Outcome:
    def restart(stack: devstack.Stack) -> None:
        stack.gateways[0].stop()
        stack.gateways[0].start()

    return _run("gateway restarted", seconds=seconds, fault=restart, heal=None)


def consistency(seconds: float) -> Outcome:
    """No fault: two gateways over two api instances, concurrent writers and readers."""
    return _run("consistency: 2 gateways x 2 api", seconds=seconds, fault=None, heal=None, gateways=2, apis=2)


ALL = [redis_killed, postgres_killed, api_killed, gateway_restarted, consistency]
