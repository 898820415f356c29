"""A Kubernetes API emulator over HTTP (kmock), for the faults a real API server cannot easily be
made to show: answers injected on the operator's requests (500, 503, 429, 409, a reply lost after
the write was stored), and statuses no schema would let anyone write. Everything else about the
operator is shown on the real control plane (tests/e2e).

The emulator hands out uids and generations (``ApiServerEmulator``) and nothing more: no
resourceVersion bookkeeping, no status subresource split, no garbage collection, no workload
controllers. The operator is ``cachedapi operator`` in a subprocess with a kubeconfig naming
the emulator, stopped by its pid whatever happens.

The emulator logs every request with the RBAC verb and resource it needs and
the answer it got (``Seen``), and can answer the operator's requests with
errors instead (``Fault``): an API server that is overloaded, failing, or
whose reply was lost after it stored the write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml

from cachedapi import model

CACHEDAPI = "cachedapi.dev/v1alpha1/cachedapis"

#: Built-in kinds the operator uses, as (group/version/plural, kind).
BUILTINS = [
    ("apps/v1/deployments", "Deployment"),
    ("apps/v1/statefulsets", "StatefulSet"),
    ("v1/services", "Service"),
    ("v1/configmaps", "ConfigMap"),
    ("v1/secrets", "Secret"),
    ("v1/events", "Event"),
    ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy"),
    ("policy/v1/poddisruptionbudgets", "PodDisruptionBudget"),
    ("autoscaling/v2/horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition"),
    # kopf waits for the namespaces resource to be discoverable even when it serves the whole cluster.
    ("v1/namespaces", "Namespace"),
]
CLUSTER_SCOPED = {"CustomResourceDefinition", "Namespace"}
VERBS = ["get", "list", "watch", "create", "patch", "update", "delete"]
WRITES = {"POST", "PUT", "PATCH", "DELETE"}

PLURALS = {kind: path.rsplit("/", 1)[1] for path, kind in BUILTINS}
PATHS = {kind: path for path, kind in BUILTINS}


@attrs.define
class Seen:
    """One request as the emulator saw it, and the status it answered (0 while a watch streams)."""

    method: str
    path: str
    user_agent: str
    at: float
    #: The RBAC verb it needs (get, list, watch, create, patch, update, delete), "" for discovery.
    verb: str = ""
    #: ``group/plural[/subresource]`` as RBAC names it (``""`` group for the core API), "" for discovery.
    resource: str = ""
    #: The object's name: from the path, or from the body of a create.
    name: str = ""
    status: int = 0
    #: True when the answer was a fault injected by the test, not the emulator's own.
    injected: bool = False
    #: True when the emulator stored the write (whatever answer the client then got).
    committed: bool = False

    @property
    def by_test(self) -> bool:
        return self.user_agent.startswith("kmock/")  # the test's own client; anything else is the operator


@attrs.define(kw_only=True)
class Fault:
    """Answer ``status`` instead of the emulator's own answer to some of the operator's requests.

    ``rate`` is the share of matching requests that fail (drawn from a seeded generator, so a run
    repeats), ``limit`` the most that fail (None: no bound). With ``after_write`` the write is
    stored first and only its answer is replaced: the reply lost on the way back, after the
    server committed (the case that makes a create meet 409 on its retry).
    """

    status: int
    methods: frozenset[str] = frozenset({"POST", "PATCH", "DELETE"})
    rate: float = 1.0
    limit: int | None = None
    after_write: bool = False
    retry_after: int | None = None
    seed: int = 5
    fired: int = 0
    _random: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def fires(self, method: str) -> bool:
        if method not in self.methods or (self.limit is not None and self.fired >= self.limit):
            return False
        if self._random.random() >= self.rate:
            return False
        self.fired += 1
        return True

    def response(self) -> aiohttp.web.StreamResponse:
        reasons = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
        body = {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "code": self.status,
            "reason": reasons.get(self.status, "InternalError"),
            "message": f"injected by the test: {self.status}",
        }
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return aiohttp.web.json_response(body, status=self.status, headers=headers)


_VERBS = {
    kmock.action.LIST: "list",
    kmock.action.WATCH: "watch",
    kmock.action.FETCH: "get",
    kmock.action.CREATE: "create",
    kmock.action.DELETE: "delete",
}


def _rbac(request: Any) -> tuple[str, str, str]:
    """(verb, group/plural[/subresource], name) of a request, as RBAC would check it."""
    if request.resource is None or request.action is None or request.resource.plural is None:
        return "", "", ""  # discovery: /api, /apis/<group>/<version>
    verb = _VERBS.get(request.action, "")
    if request.action == kmock.action.UPDATE:
        verb = "patch" if str(request.method.value) == "PATCH" else "update"
    resource = f"{request.resource.group or ''}/{request.resource.plural}"
    if request.subresource:
        resource += f"/{request.subresource}"
    name = request.name or ""
    if not name and isinstance(request.data, dict):
        name = str((request.data.get("metadata") or {}).get("name") or "")
    return verb, resource, name


@attrs.define(kw_only=True)
class ApiServerEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the two bits of bookkeeping every API server does and kmock does not:
    a ``metadata.uid`` on create (kopf's indexes tell objects apart by it) and
    ``metadata.generation`` (1 on create, +1 on a write that changes ``spec``).

    It also keeps its own request log (``log``) and trims kmock's: kmock 0.8 matches
    every new request against its whole request history, which makes each request
    slower than the last (about 0.6 s each after a few thousand).
    """

    log: list[Seen] = attrs.field(factory=list)
    #: Faults to inject into the operator's requests (never the test's own), tried in order.
    faults: list[Fault] = attrs.field(factory=list)

    async def _handle(self, request: Any) -> Any:
        verb, resource, name = _rbac(request)
        seen = Seen(
            str(request.method.value),
            request.url.path,
            request.headers.get("User-Agent", ""),
            time.monotonic(),
            verb=verb,
            resource=resource,
            name=name,
        )
        self.log.append(seen)
        del self._requests[:-1]
        fault = None if seen.by_test else next((f for f in self.faults if f.fires(seen.method)), None)
        if fault is not None and not fault.after_write:
            seen.status, seen.injected = fault.status, True
            return fault.response()
        try:
            response = await self._bookkept(request)
        except kmock.KubernetesError as exc:
            seen.status = exc.status
            raise
        seen.status = response.status
        seen.committed = seen.method in WRITES and response.status < 400
        if fault is not None:
            seen.status, seen.injected = fault.status, True
            return fault.response()
        return response

    async def _bookkept(self, request: Any) -> Any:
        action = request.action
        data = request.data if isinstance(request.data, dict) else None
        if request.resource is not None and data is not None and request.subresource is None:
            if action == kmock.action.CREATE:
                meta = data.setdefault("metadata", {})
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("generation", 1)
            elif action == kmock.action.UPDATE and "spec" in data:
                key = (request.resource, request.namespace, request.name)
                if key in self.objects and not self.objects[key].deleted:
                    current = self.objects[key].raw
                    merged_spec = _merged(current.get("spec"), data["spec"])
                    if merged_spec != current.get("spec"):
                        generation = int((current.get("metadata") or {}).get("generation") or 1) + 1
                        data.setdefault("metadata", {})["generation"] = generation
        return await super()._handle(request)


def _merged(base: Any, patch: Any) -> Any:
    """RFC 7396 merge, to tell whether a patch changes anything (as the emulator will apply it)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merged(out.get(key), value)
    return out


def register(emulator: kmock.KubernetesEmulator) -> None:
    """Declare every resource for discovery (kopf looks them up before watching)."""
    emulator.resources[CACHEDAPI] = kmock.ResourceInfo(
        kind=model.KIND,
        namespaced=True,
        singular="cachedapi",
        verbs=VERBS,
        shortnames=["capi"],
        categories=["all"],
        subresources=["status", "scale"],
    )
    for path, kind in BUILTINS:
        emulator.resources[path] = kmock.ResourceInfo(
            kind=kind,
            namespaced=kind not in CLUSTER_SCOPED,
            singular=kind.lower(),
            verbs=VERBS,
            subresources=["status"] if kind in {"Deployment", "StatefulSet"} else [],
        )


def api_path(kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    path = CACHEDAPI if kind == model.KIND else PATHS[kind]
    group_version, plural = path.rsplit("/", 1)
    base = f"/api/{group_version}" if group_version == "v1" else f"/apis/{group_version}"
    out = f"{base}/namespaces/{namespace}/{plural}"
    if name:
        out += f"/{name}"
    if sub:
        out += f"/{sub}"
    return out


class Cluster:
    """The emulator plus helpers that speak to it over HTTP, as kubectl would."""

    def __init__(self, emulator: ApiServerEmulator, server: kmock.Server) -> None:
        self.emulator: ApiServerEmulator = emulator
        self.server = server

    @property
    def url(self) -> str:
        return str(self.server.url).rstrip("/")

    def operator_writes(self) -> list[Seen]:
        """Write requests from anyone but this test."""
        return [r for r in self.emulator.log if r.method in WRITES and not r.by_test]

    def operator_requests(self) -> list[Seen]:
        return [r for r in self.emulator.log if not r.by_test]

    async def request(self, method: str, path: str, body: Any = None, *, merge: bool = False) -> Any:
        headers = {"Content-Type": "application/merge-patch+json" if merge else "application/json"}
        async with self.server.client.request(method, path, json=body, headers=headers) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise AssertionError(f"{method} {path}: {resp.status} {data}")
            return data

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        async with self.server.client.get(api_path(kind, namespace, name)) as resp:
            if resp.status == 404:
                return None
            data: dict[str, Any] = await resp.json(content_type=None)
            return data

    async def create(self, obj: dict[str, Any]) -> Any:
        meta = obj["metadata"]
        return await self.request("POST", api_path(obj["kind"], meta["namespace"]), obj)

    async def patch(self, kind: str, namespace: str, name: str, body: Any, *, sub: str | None = None) -> Any:
        return await self.request("PATCH", api_path(kind, namespace, name, sub), body, merge=True)

    async def delete(self, kind: str, namespace: str, name: str) -> Any:
        return await self.request("DELETE", api_path(kind, namespace, name))

    def children(self, namespace: str, instance: str) -> dict[tuple[str, str], dict[str, Any]]:
        """Every stored child of one CachedApi, read from the emulator's memory."""
        found = {}
        for (resource, ns, name), obj in list(self.emulator.objects.items()):
            if ns != namespace or obj.deleted:
                continue
            raw = obj.raw
            labels = (raw.get("metadata") or {}).get("labels") or {}
            if labels.get("app.kubernetes.io/instance") == instance:
                found[(raw.get("kind") or resource.plural, name)] = raw
        return found

    async def apply_cachedapi(self, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        body.setdefault("apiVersion", "cachedapi.dev/v1alpha1")
        body.setdefault("kind", model.KIND)
        result: dict[str, Any] = await self.create(body)
        return result


async def eventually(
    check: Callable[[], Awaitable[Any]] | Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.1
) -> Any:
    """Poll ``check`` until it returns a truthy value; fail with its last value or error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            last = result
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s; last: {last!r}")
        await asyncio.sleep(interval)


def write_kubeconfig(path: Path, server: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")


@contextlib.asynccontextmanager
async def emulated_cluster() -> AsyncIterator[Cluster]:
    async with ApiServerEmulator() as emulator, kmock.Server(emulator) as server:
        register(emulator)
        yield Cluster(emulator, server)


@contextlib.contextmanager
def operator_process(
    *, server: str, workdir: Path, resync_seconds: float = 2.0, extra_env: dict[str, str] | None = None
) -> Any:
    """``cachedapi operator`` against the emulator; stopped by pid (SIGINT, then SIGKILL)."""
    workdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = workdir / "kubeconfig"
    write_kubeconfig(kubeconfig, server)
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "CACHEDAPI_RESYNC_SECONDS": str(resync_seconds),
        "CACHEDAPI_RETRY_SECONDS": "1",
        "CACHEDAPI_LIVENESS_ENDPOINT": "",
        "PYTHONUNBUFFERED": "1",
        "CACHEDAPI_LOG_LEVEL": os.environ.get("CACHEDAPI_TEST_OPERATOR_LOG_LEVEL", "INFO"),
        **(extra_env or {}),
    }
    log = (workdir / "operator.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachedapi", "operator"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()
