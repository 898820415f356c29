"""The operator under faults: killed mid-reconcile, and an API server that fails, throttles or
conflicts. Whatever happens, it must converge on exactly the children the spec asks for, create
each once, never regenerate a Secret, and never answer a failing server with a storm of writes.

The emulator (``emulator.Fault``) injects the errors on the operator's requests only, so the
test's own reads and writes always succeed. Figures (convergence time, peak write rate) are
printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cachedapi import model
from cachedapi.operator import children, render

from . import emulator as em

NS = "faults"
RESYNC_SECONDS = 2.0


def _body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "cachedapi.dev/v1alpha1",
        "kind": "CachedApi",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"resources": [{"name": "notes", "ttlSeconds": 30}]},
    }


def _expected(name: str) -> set[tuple[str, str]]:
    api = model.parse(_body(name))
    return {(o["kind"], o["metadata"]["name"]) for o in children.desired_objects(api, render.render_inputs(api))}


def _condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), {})


async def _converged(cluster: em.Cluster, names: Iterable[str]) -> bool:
    """Every child of every CachedApi exists, and each status says so at generation 1."""
    for name in names:
        if set(cluster.children(NS, name)) != _expected(name):
            return False
        obj = await cluster.get("CachedApi", NS, name)
        if _condition(obj, "SpecValid").get("status") != "True" or (obj or {})["status"]["observedGeneration"] != 1:
            return False
    return True


def _stored_creates(cluster: em.Cluster) -> collections.Counter[tuple[str, str]]:
    """How many times each object was created (stored) by the operator: (resource, name) -> count."""
    return collections.Counter(
        (r.resource, r.name) for r in cluster.operator_writes() if r.verb == "create" and r.committed
    )


def _peak_rate(seen: list[em.Seen], *, window: float = 1.0) -> int:
    """The most requests in any ``window`` seconds."""
    times = sorted(r.at for r in seen)
    peak, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] > window:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


def _clean(log: str) -> None:
    assert "Traceback" not in log, log[log.index("Traceback") - 200 :][:3000]
    errors = [line for line in log.splitlines() if " ERROR " in line or " CRITICAL " in line]
    assert errors == [], errors[:5]


async def test_operator_killed_mid_reconcile_converges_after_restart_creating_each_child_once(
    tmp_path: Path,
) -> None:
    names = [f"shop-{i}" for i in range(8)]
    total = sum(len(_expected(n)) for n in names)
    async with em.emulated_cluster() as cluster:
        with em.operator_process(server=cluster.url, workdir=tmp_path / "first", resync_seconds=RESYNC_SECONDS) as op:
            for name in names:
                await cluster.apply_cachedapi(_body(name))

            def some_built() -> bool:
                return sum(len(cluster.children(NS, n)) for n in names) >= total // 4

            await em.eventually(some_built, timeout=60, interval=0.005)
            op.send_signal(signal.SIGKILL)
            op.wait(timeout=10)
        built_at_kill = sum(len(cluster.children(NS, n)) for n in names)
        assert built_at_kill < total, "killed too late to be mid-reconcile"
        secrets_at_kill = {
            (n, key): obj["data"] for n in names for key, obj in cluster.children(NS, n).items() if key[0] == "Secret"
        }

        restarted = time.monotonic()
        with em.operator_process(server=cluster.url, workdir=tmp_path / "second", resync_seconds=RESYNC_SECONDS):
            await em.eventually(lambda: _converged(cluster, names), timeout=90, interval=0.2)
            converged_in = time.monotonic() - restarted
            await asyncio.sleep(RESYNC_SECONDS + 0.5)  # a resync later, still nothing more
            assert await _converged(cluster, names)

        creates = _stored_creates(cluster)
        assert [key for key, count in creates.items() if count > 1] == [], "a child created twice"
        assert sum(creates.values()) == total, "every child created exactly once, across both operators"
        for (name, key), data in secrets_at_kill.items():
            assert cluster.children(NS, name)[key]["data"] == data, f"{key} regenerated after the restart"
        print(
            f"\noperator killed mid-reconcile ({built_at_kill}/{total} children built): "
            f"0 duplicate children, converged {converged_in:.1f} s after the restart"
        )
    _clean((tmp_path / "second" / "operator.log").read_text(errors="replace"))
    _clean((tmp_path / "first" / "operator.log").read_text(errors="replace"))


def _retry_writes(writes: list[em.Seen]) -> list[em.Seen]:
    """Writes that repeat one that failed (same verb, same object): the retries."""
    failed: set[tuple[str, str, str]] = set()
    out = []
    for r in writes:
        key = (r.verb, r.resource, r.name)
        if key in failed:
            out.append(r)
        if r.status >= 400:
            failed.add(key)
    return out


async def test_api_errors_on_a_third_of_writes_are_retried_until_converged_without_a_storm(tmp_path: Path) -> None:
    names = [f"shop-{i}" for i in range(8)]
    async with em.emulated_cluster() as cluster:
        cluster.emulator.faults += [
            em.Fault(status=500, rate=0.1, seed=1),
            em.Fault(status=503, rate=0.12, seed=2),
            em.Fault(status=429, rate=0.14, seed=3, retry_after=1),
        ]
        with em.operator_process(server=cluster.url, workdir=tmp_path, resync_seconds=RESYNC_SECONDS):
            started = time.monotonic()
            for name in names:
                await cluster.apply_cachedapi(_body(name))
            await em.eventually(lambda: _converged(cluster, names), timeout=120, interval=0.2)
            converged_in = time.monotonic() - started
        writes = cluster.operator_writes()
        injected = [r for r in writes if r.injected]
        assert len(injected) >= len(writes) // 5, "the faults did fire"

        creates = _stored_creates(cluster)
        assert [key for key, count in creates.items() if count > 1] == [], "a child created twice"
        retries = _retry_writes(writes)
        peak = _peak_rate(retries)
        assert peak <= 2 * len(names), f"retries came at {peak} writes/s for {len(names)} objects"
        print(
            f"\nAPI errors injected on {len(injected)}/{len(writes)} writes "
            f"({100 * len(injected) // len(writes)}%, 500/503/429): converged in {converged_in:.1f} s, "
            f"peak {_peak_rate(writes)} writes/s overall, peak {peak} retried writes/s for {len(names)} objects"
        )
    log = (tmp_path / "operator.log").read_text(errors="replace")
    _clean(log)


async def test_an_api_server_down_for_seconds_gets_backed_off_writes_and_then_convergence(tmp_path: Path) -> None:
    names = [f"shop-{i}" for i in range(8)]
    async with em.emulated_cluster() as cluster:
        with em.operator_process(server=cluster.url, workdir=tmp_path, resync_seconds=RESYNC_SECONDS):
            for name in names:
                await cluster.apply_cachedapi(_body(name))
            await em.eventually(lambda: _converged(cluster, names), timeout=60, interval=0.2)

            outage = em.Fault(status=503)
            cluster.emulator.faults.append(outage)
            before = len(cluster.operator_writes())
            # Every workload and its Service lost at once (by hand: the test's writes never fail).
            for name in names:
                for kind, child in cluster.children(NS, name):
                    if kind in {"Deployment", "StatefulSet", "Service"}:
                        await cluster.delete(kind, NS, child)
            down_at = time.monotonic()
            await asyncio.sleep(8.0)
            during = cluster.operator_writes()[before:]
            cluster.emulator.faults.remove(outage)
            await em.eventually(lambda: _converged(cluster, names), timeout=90, interval=0.2)
            recovered_in = time.monotonic() - down_at - 8.0

        per_object_second = len(during) / len(names) / 8.0
        assert per_object_second <= 1.0, f"{len(during)} writes in 8 s for {len(names)} objects: a storm"
        creates = _stored_creates(cluster)
        assert [key for key, count in creates.items() if count > 2] == [], "a child created more than twice"
        print(
            f"\nAPI server answering 503 to every write for 8 s, {len(names)} objects missing 8 children each: "
            f"{len(during)} writes ({per_object_second:.2f} per object per second, peak {_peak_rate(during)}/s), "
            f"converged {recovered_in:.1f} s after it came back"
        )
    _clean((tmp_path / "operator.log").read_text(errors="replace"))


async def test_conflicts_are_survived_a_lost_create_reply_as_existing_and_a_refused_patch_retried(
    tmp_path: Path,
) -> None:
    names = [f"shop-{i}" for i in range(4)]
    async with em.emulated_cluster() as cluster:
        # A create stored by the server whose reply was lost meets 409 when retried; here the 409 is
        # the reply itself. And a patch refused with 409, as an API server does on a conflict.
        lost_replies = em.Fault(status=409, methods=frozenset({"POST"}), rate=0.3, limit=12, after_write=True)
        refused_patches = em.Fault(status=409, methods=frozenset({"PATCH"}), rate=0.5, limit=8, seed=7)
        cluster.emulator.faults += [lost_replies, refused_patches]
        with em.operator_process(server=cluster.url, workdir=tmp_path, resync_seconds=RESYNC_SECONDS):
            for name in names:
                await cluster.apply_cachedapi(_body(name))
            await em.eventually(lambda: _converged(cluster, names), timeout=60, interval=0.2)
            assert lost_replies.fired == 12

            # Children edited by hand, and the patches that put them back refused at first.
            patches_refused = refused_patches.fired
            refused_patches.limit = patches_refused + 4
            for name in names:
                await cluster.patch("Service", NS, f"{name}-api", {"spec": {"ports": []}})

            def restored() -> bool:
                return all(cluster.children(NS, n)[("Service", f"{n}-api")]["spec"]["ports"] for n in names)

            await em.eventually(restored, timeout=60, interval=0.2)
            assert refused_patches.fired > patches_refused

        creates = _stored_creates(cluster)
        assert [key for key, count in creates.items() if count > 1] == [], "a child created twice"
        assert sum(creates.values()) == sum(len(_expected(n)) for n in names)
    _clean((tmp_path / "operator.log").read_text(errors="replace"))
