"""One operator process: the API client, the reconciler, the scheduler and the resync loop.

kopf's handlers (``handlers``) feed it: they keep the indexes of CachedApis and
of their children current and ask for reconciles; this module decides when a
reconcile runs and hands it the latest bodies from those indexes. No kopf here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cachedapi.operator import kube, reconcile, scheduler

#: kopf index names: the CachedApis by (namespace, name), and each child kind by (namespace, owner).
OWNER_INDEX = "cachedapis"
CHILD_INDEX = "children_{plural}"
#: Child kinds watched and indexed (Secrets are read on demand: watching every Secret
#: in the cluster would cost memory and a broader RBAC grant).
WATCHED = [k for k in kube.CHILD_KINDS.values() if k.kind != "Secret"]


def index_names() -> set[str]:
    return {OWNER_INDEX, *(CHILD_INDEX.format(plural=kind.plural) for kind in WATCHED)}


@dataclass
class Controller:
    """Everything one operator process holds: the client, the reconciler, the scheduler."""

    resync_seconds: float
    retry_seconds: float
    api_server: kube.ApiServer = field(default_factory=kube.ApiServer)
    indices: Mapping[str, Any] = field(default_factory=dict)
    reconciler: reconcile.Reconciler | None = None
    scheduler: scheduler.Scheduler | None = None
    resync_task: asyncio.Task[None] | None = None
    indexed: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self, indices: Mapping[str, Any]) -> None:
        """Begin, on the running loop, with kopf's live indexes (by index name)."""
        self.indices = indices
        self.reconciler = reconcile.Reconciler(self.api_server)
        self.scheduler = scheduler.Scheduler(self.work, retry_seconds=self.retry_seconds)
        self.resync_task = asyncio.get_running_loop().create_task(self.resync(), name="resync")

    async def stop(self) -> None:
        if self.resync_task is not None:
            self.resync_task.cancel()
        if self.scheduler is not None:
            await self.scheduler.close()
        await self.api_server.close()

    def request(self, key: Hashable) -> None:
        if self.scheduler is not None:
            self.indexed.set()  # kopf calls handlers only after every index was listed once
            self.scheduler.request(key)

    def children(self, key: tuple[str, str]) -> dict[reconcile.ChildKey, dict[str, Any]]:
        found: dict[reconcile.ChildKey, dict[str, Any]] = {}
        for kind in WATCHED:
            index = self.indices.get(CHILD_INDEX.format(plural=kind.plural)) or {}
            for kind_name, name, body in index.get(key, ()):
                found[(kind_name, name)] = body
        return found

    def owner(self, key: tuple[str, str]) -> dict[str, Any] | None:
        store = (self.indices.get(OWNER_INDEX) or {}).get(key)
        bodies: Iterable[dict[str, Any]] = store or ()
        return next(iter(bodies), None)

    async def work(self, key: Hashable) -> None:
        assert self.reconciler is not None and isinstance(key, tuple)
        body = self.owner(key)
        if body is None:
            self.reconciler.forget(key)
            return
        await self.reconciler.reconcile(body, self.children(key))

    async def resync(self) -> None:
        await self.indexed.wait()
        while True:
            await asyncio.sleep(self.resync_seconds)
            if self.reconciler is not None:
                self.reconciler.forget_secrets()
            for key in list(self.indices.get(OWNER_INDEX) or {}):
                self.request(key)
