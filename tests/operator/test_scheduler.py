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
    async with asyncio.timeout(10):  # a hang fails the test instead of holding the suite
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


def test_each_failure_in_a_row_doubles_the_delay_up_to_a_bound_and_retry_after_is_honoured() -> None:
    sched = scheduler.Scheduler(_never, retry_seconds=10)
    delays = [sched.delay("a") for _ in range(6)]
    for delay, factor in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert 10 * factor * (1 - scheduler.JITTER) <= delay <= 10 * factor * (1 + scheduler.JITTER)
    assert sched.delay("b", retry_after=120) == 120  # the server asked for longer
    assert sched.delay("c") <= 10 * (1 + scheduler.JITTER)  # each object backs off on its own


async def _never(key: Hashable) -> None:
    raise AssertionError("not called")


async def test_requests_while_a_retry_is_pending_wait_for_it_and_success_resets_the_backoff() -> None:
    calls = 0
    fail = True

    async def work(key: Hashable) -> None:
        nonlocal calls
        calls += 1
        if fail:
            raise RuntimeError("API server unreachable")

    sched = scheduler.Scheduler(work, retry_seconds=0.2)
    sched.request("a")
    await asyncio.sleep(0.05)
    for _ in range(20):
        sched.request("a")  # watch events and resyncs during the backoff
    await asyncio.sleep(0.05)
    assert calls == 1, "an event jumped the backoff"
    fail = False
    async with asyncio.timeout(10):
        while calls < 2 or not sched.idle:
            await asyncio.sleep(0.02)
    assert calls == 2
    assert sched.delay("a") <= 0.2 * (1 + scheduler.JITTER), "the success did not reset the backoff"
    await sched.close()
