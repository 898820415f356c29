"""The scheduler: one reconcile at a time per object, bursts coalesced, failures retried later."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from cachedapi.operator import scheduler


async def test_a_burst_of_requests_costs_one_more_pass_not_one_per_request() -> None:
    passes: list[Hashable] = []
    gate = asyncio.Event()

    async def work(key: Hashable) -> None:
        passes.append(key)
        await gate.wait()

    sched = scheduler.Scheduler(work, retry_seconds=60)
    sched.request("a")
    await asyncio.sleep(0)
    for _ in range(50):
        sched.request("a")
    sched.request("b")
    gate.set()
    while not sched.idle:
        await asyncio.sleep(0.01)
    assert sorted(passes) == ["a", "a", "b"]
    await sched.close()


async def test_a_failing_pass_is_retried_after_the_delay_not_at_once() -> None:
    calls = 0

    async def work(key: Hashable) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("API server unreachable")

    sched = scheduler.Scheduler(work, retry_seconds=0.3)
    sched.request("a")
    await asyncio.sleep(0.1)
    assert calls == 1
    await asyncio.sleep(0.4)
    assert calls == 2
    await sched.close()
