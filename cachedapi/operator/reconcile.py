"""One reconcile of one CachedApi: observe -> validate -> converge -> status.

Level-based and idempotent: it reads the CachedApi and its children as they
are now (from kopf's in-memory indexes, which its watches keep current),
builds the desired children with the same builders as ``cachedapi render``,
and writes only what differs: a missing child is created, a drifted one is
merge-patched, an unwanted one deleted, and the status patched only when the
computed status is not the one already stored. An unchanged world therefore
costs no write at all, Events included (they are posted on transitions only).

A write answered 429, 5xx or not at all stops the pass (``Unavailable``): the
other writes would meet the same answer, and a server in trouble needs fewer
requests, not more. The scheduler comes back later, backing off while passes
make no progress.

A spec that cannot be acted on (rejected by the model, or naming a Secret
that does not exist) is not an exception: it becomes ``SpecValid=False`` with
the field in the message, phase ``Failed``, one Warning Event, and the next
look happens at the next periodic resync, not in a retry storm.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cachedapi import model
from cachedapi.operator import children as builders
from cachedapi.operator import drift, kube, status
from cachedapi.operator.children import config, names, runtime, secrets

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
ChildKey = tuple[str, str]  # (kind, name)

#: How long a create is trusted before the index shows the object (then a 409 is expected anyway).
EXPECTATION_SECONDS = 30.0
#: After a create met 409, look again this soon: the object exists now, so if it is ours the
#: watch shows it within moments; if it is still missing from our index, it is someone else's.
CONFLICT_RECHECK_SECONDS = 5.0


class SpecError(Exception):
    """A spec that the operator cannot act on; the message names the field."""


class ConvergeError(Exception):
    """Some children could not be written; the rest were, and the status says which failed."""

    expected = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ConvergeError):
    """The API server answered a write with 429, 5xx or not at all: the pass stopped there, since
    every further write would meet the same answer (a storm against a server already in trouble).
    Nothing else is written, the status included; the scheduler comes back later."""

    def __init__(self, message: str, *, retry_after: float | None, progressed: bool) -> None:
        super().__init__(message, retry_after=retry_after)
        #: Some writes of this pass did go through: the server is struggling, not down, so the
        #: scheduler comes back after its shortest delay instead of backing off further.
        self.progressed = progressed


@dataclass
class Memory:
    """What one CachedApi's reconciles remember between passes (never persisted)."""

    created: dict[ChildKey, float] = field(default_factory=dict)
    #: Children whose create met 409 once: ours with a lost reply, or a watch that lags. A
    #: second 409 after the watch had time to show it means someone else's object has the name.
    conflicted: set[ChildKey] = field(default_factory=set)
    #: The last spec parsed (by digest) and what came of it: the model, or the error. Parsing
    #: checks every resource's JSON Schema, which costs seconds for a large spec; resyncs and
    #: children's events would pay it again and again on the operator's one event loop.
    parsed: tuple[str, model.CachedApi | str] | None = None
    #: The desired children (less Secrets) for the last (spec, uid, Secret digests) seen, each
    #: with what drift compares of it: rebuilt only when one of those changes, not on every pass
    #: (a new CachedApi's children's events make a dozen passes, each rendering and copying).
    desired: tuple[Any, list[Desired]] | None = None


@dataclass(frozen=True)
class Desired:
    obj: dict[str, Any]
    ignore: list[tuple[str, ...]]
    compared: dict[str, Any]


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    """Converges CachedApis; all API traffic goes through ``kube.ApiServer``."""

    def __init__(self, api_server: kube.ApiServer) -> None:
        self.api_server = api_server
        self.memory: dict[Key, Memory] = {}
        #: Secrets as last read, by (namespace, name), until the next periodic resync
        #: (``forget_secrets``). Secrets are not watched (that would mean reading every Secret in
        #: the cluster), so they are read by name; without this, every pass re-read them, and a
        #: new CachedApi's children's events make a dozen passes: on a hundred new CachedApis,
        #: the most frequent request the API server got. A Secret that does not exist is never
        #: remembered, so one the user creates is seen at the next pass.
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}

    def forget(self, key: Key) -> None:
        self.memory.pop(key, None)

    def forget_secrets(self) -> None:
        """Read every Secret again at its next use (each periodic resync calls this)."""
        self.secrets.clear()

    async def _secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        cached = self.secrets.get((namespace, name))
        if cached is not None:
            return cached
        live = await self.api_server.get(kube.SECRET, namespace=namespace, name=name)
        if live is not None:
            self.secrets[(namespace, name)] = live
        return live

    async def reconcile(self, body: Mapping[str, Any], children: Mapping[ChildKey, dict[str, Any]]) -> None:
        accepted = self.api_server.accepted
        try:
            await self._reconcile(body, children)
        except kube.ApiError as exc:
            if not exc.unavailable:
                raise
            progressed = self.api_server.accepted > accepted
            message = f"{exc}; the pass stopped at this answer"
            raise Unavailable(message, retry_after=exc.retry_after, progressed=progressed) from None

    async def _reconcile(self, body: Mapping[str, Any], children: Mapping[ChildKey, dict[str, Any]]) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace") or "default", meta["name"])
        if meta.get("deletionTimestamp"):
            return  # being deleted: garbage collection removes the children
        memory = self.memory.setdefault(key, Memory())
        logger.debug("reconciling %s/%s at generation %s", key[0], key[1], meta.get("generation"))
        generation = int(meta.get("generation") or 1)
        stored_status = body.get("status")
        old_status = status.readable(stored_status)
        try:
            api = self._parse_once(body, memory)
            digests = await self._referenced_secrets(api)
            digests.update(await self._generated_secrets(api, uid=meta["uid"]))
        except SpecError as exc:
            new_status = status.invalid(old=old_status, error=str(exc), generation=generation, now=now_iso())
            await self._write_status(key, body=body, old=old_status, new=new_status, stored=stored_status)
            return

        desired = self._desired(api, memory, uid=meta["uid"], digests=digests)
        failures: list[str] = []
        touched = await self._converge(desired=desired, children=children, memory=memory, failures=failures)
        logger.debug("%s/%s: %d children observed, %d written", key[0], key[1], len(children), len(touched))
        await self._prune([d.obj for d in desired], children, uid=meta["uid"])

        workloads = self._workloads(api, children=children, touched=touched)
        new_status = status.compute(
            api=api,
            old=old_status,
            workloads=workloads,
            generation=generation,
            api_keys_secret=names.api_keys_secret(api),
            now=now_iso(),
        )
        if failures:
            ready = next(c for c in new_status["conditions"] if c["type"] == "Ready")
            ready.update(status="False", reason="ApplyFailed", message="; ".join(failures)[:1024])
            new_status["phase"] = "Degraded" if old_status.get("phase") in {"Ready", "Degraded"} else "Provisioning"
        await self._write_status(key, body=body, old=old_status, new=new_status, stored=stored_status)
        if failures:
            raise ConvergeError("; ".join(failures))  # the scheduler tries again later

    # --- observe and validate ------------------------------------------------------------------

    def _parse_once(self, body: Mapping[str, Any], memory: Memory) -> model.CachedApi:
        meta = body.get("metadata") or {}
        seen = {"name": meta.get("name"), "namespace": meta.get("namespace"), "spec": body.get("spec")}
        digest = hashlib.sha256(json.dumps(seen, sort_keys=True, default=str).encode()).hexdigest()
        if memory.parsed is None or memory.parsed[0] != digest:
            try:
                memory.parsed = (digest, self._parse(body))
            except SpecError as exc:
                memory.parsed = (digest, str(exc))
        outcome = memory.parsed[1]
        if isinstance(outcome, str):
            raise SpecError(outcome)
        return outcome

    @staticmethod
    def _parse(body: Mapping[str, Any]) -> model.CachedApi:
        meta = body.get("metadata") or {}
        spec = body.get("spec")
        if not isinstance(spec, dict):
            raise SpecError("spec: required")
        try:
            api = model.parse({"metadata": dict(meta), "spec": spec})
        except model.ManifestError as exc:
            raise SpecError(str(exc)) from None
        problem = config.too_large(api)
        if problem is not None:
            raise SpecError(problem)
        return api

    async def _referenced_secrets(self, api: model.CachedApi) -> dict[str, str]:
        """Digests of the user's Secrets the pods read; a missing one is a SpecError naming the field."""
        digests: dict[str, str] = {}
        found: dict[str, dict[str, Any]] = {}
        for name, where in secrets.referenced(api).items():
            live = await self._secret(api.metadata.namespace, name)
            if live is None:
                raise SpecError(f"{where}: secret {name} not found in namespace {api.metadata.namespace}")
            found[name] = live
            digests[name] = secrets.digest(live.get("data"))
        for (name, key), where in secrets.required_keys(api).items():
            if key not in (found[name].get("data") or {}):
                raise SpecError(f"{where}: secret {name} has no key {key!r}")
        return digests

    async def _generated_secrets(self, api: model.CachedApi, *, uid: str) -> dict[str, str]:
        """Create the generated Secrets that are missing (never touch existing ones); their digests."""
        fresh = builders.Inputs(
            owner_uid=uid, api_key=secrets.new_token(), db_password=secrets.new_token(), admin_key=secrets.new_token()
        )
        digests: dict[str, str] = {}
        for wanted in secrets.generated(api, fresh):
            name = wanted["metadata"]["name"]
            live = await self._secret(api.metadata.namespace, name)
            owners = {r.get("uid") for r in ((live or {}).get("metadata") or {}).get("ownerReferences") or []}
            if live is not None and uid not in owners:
                # Remembered from a CachedApi of the same name that was deleted (and its Secrets
                # with it), or the user's own: look at what is there now.
                self.secrets.pop((api.metadata.namespace, name), None)
                live = await self._secret(api.metadata.namespace, name)
            if live is None:
                created = await self.api_server.create(wanted)
                logger.info("created Secret %s/%s", api.metadata.namespace, name)
                live = created or await self._secret(api.metadata.namespace, name) or wanted
                self.secrets[(api.metadata.namespace, name)] = live
            data = live.get("data")
            if data is None and live.get("stringData"):
                data = {k: base64.b64encode(str(v).encode()).decode() for k, v in live["stringData"].items()}
            digests[name] = secrets.digest(data)
        return digests

    # --- converge ------------------------------------------------------------------------------

    @staticmethod
    def _desired(api: model.CachedApi, memory: Memory, *, uid: str, digests: dict[str, str]) -> list[Desired]:
        assert memory.parsed is not None
        key = (memory.parsed[0], uid, tuple(sorted(digests.items())))
        if memory.desired is None or memory.desired[0] != key:
            inputs = builders.Inputs(owner_uid=uid, api_key="", db_password="", secret_digests=digests)
            create_only = builders.create_only_paths(api)
            built = []
            for obj in builders.desired_objects(api, inputs):
                if obj["kind"] == "Secret":
                    continue
                ignore = create_only.get((obj["kind"], obj["metadata"]["name"]), [])
                built.append(Desired(obj, ignore, drift.comparable(obj, ignore=ignore)))
            memory.desired = (key, built)
        return memory.desired[1]

    async def _converge(
        self,
        *,
        desired: list[Desired],
        children: Mapping[ChildKey, dict[str, Any]],
        memory: Memory,
        failures: list[str],
    ) -> set[ChildKey]:
        """Create what is missing and patch what drifted; a child the API server refuses is
        reported in ``failures`` and does not stop the others."""
        touched: set[ChildKey] = set()
        clock = time.monotonic()
        for want in desired:
            obj = want.obj
            ckey = (obj["kind"], obj["metadata"]["name"])
            live = children.get(ckey)
            namespace = obj["metadata"]["namespace"]
            if live is None:
                if clock - memory.created.get(ckey, -EXPECTATION_SECONDS) < EXPECTATION_SECONDS:
                    continue  # created moments ago; the watch has not shown it yet
                try:
                    created = await self.api_server.create(obj)
                except kube.ApiError as exc:
                    if exc.unavailable:
                        raise
                    failures.append(f"creating {obj['kind']} {ckey[1]}: {exc}")
                    continue
                memory.created[ckey] = clock
                touched.add(ckey)
                if created is not None:
                    logger.info("created %s %s/%s", obj["kind"], namespace, ckey[1])
                else:
                    if ckey in memory.conflicted:
                        failures.append(
                            f"{obj['kind']} {ckey[1]} already exists and is not controlled by this CachedApi: "
                            "delete or rename it"
                        )
                    memory.conflicted.add(ckey)
                    memory.created[ckey] = clock - EXPECTATION_SECONDS + CONFLICT_RECHECK_SECONDS
                continue
            memory.created.pop(ckey, None)
            memory.conflicted.discard(ckey)
            ignore = want.ignore
            if drift.differs(obj, live, ignore=ignore, compared=want.compared):
                try:
                    await self.api_server.patch(
                        kube.kind_of(obj),
                        namespace=namespace,
                        name=ckey[1],
                        body=drift.patch_body(obj, live, ignore=ignore),
                    )
                except kube.ApiError as exc:
                    if exc.unavailable:
                        raise
                    failures.append(f"patching {obj['kind']} {ckey[1]}: {exc}")
                    continue
                touched.add(ckey)
                logger.info("patched %s %s/%s to the spec", obj["kind"], namespace, ckey[1])
        return touched

    async def _prune(
        self, desired: list[dict[str, Any]], children: Mapping[ChildKey, dict[str, Any]], *, uid: str
    ) -> None:
        """Delete children this CachedApi controls that the spec no longer asks for."""
        wanted = {(o["kind"], o["metadata"]["name"]) for o in desired}
        for ckey, live in children.items():
            if ckey in wanted or ckey[0] == "Secret" or ckey[0] not in kube.CHILD_KINDS:
                continue
            refs = (live.get("metadata") or {}).get("ownerReferences") or []
            if not any(r.get("uid") == uid and r.get("controller") for r in refs):
                continue
            namespace = live["metadata"].get("namespace") or "default"
            await self.api_server.delete(kube.CHILD_KINDS[ckey[0]], namespace=namespace, name=ckey[1])
            logger.info("deleted %s %s/%s: no longer in the spec", ckey[0], namespace, ckey[1])

    @staticmethod
    def _workloads(
        api: model.CachedApi, *, children: Mapping[ChildKey, dict[str, Any]], touched: set[ChildKey]
    ) -> dict[status.Component, status.Workload]:
        out: dict[status.Component, status.Workload] = {}
        for role in (names.Component.GATEWAY, names.Component.API):
            tier = runtime.tier(api, role)
            ckey = ("Deployment", names.child(api, role.value))
            desired = None if tier.autoscaling is not None else tier.replicas
            out[role] = status.observe(
                role=role, kind="Deployment", live=children.get(ckey), desired=desired, touched=ckey in touched
            )
        if api.spec.cache.redis.managed is not None:
            ckey = ("Deployment", names.child(api, names.Component.REDIS.value))
            out[names.Component.REDIS] = status.observe(
                role=names.Component.REDIS,
                kind="Deployment",
                live=children.get(ckey),
                desired=1,
                touched=ckey in touched,
            )
        if api.spec.database.managed is not None:
            ckey = ("StatefulSet", names.child(api, names.Component.DB.value))
            out[names.Component.DB] = status.observe(
                role=names.Component.DB, kind="StatefulSet", live=children.get(ckey), desired=1, touched=ckey in touched
            )
        return out

    # --- status and events ---------------------------------------------------------------------

    async def _write_status(
        self, key: Key, *, body: Mapping[str, Any], old: dict[str, Any], new: dict[str, Any], stored: Any
    ) -> None:
        """Write ``new`` unless it is what is stored; ``old`` is the stored status as read."""
        if new == stored:
            return
        patch = {**new, **{k: None for k in (stored if isinstance(stored, dict) else {}) if k not in new}}
        if not isinstance(stored, dict):
            patch = new  # a merge patch cannot merge into what is not an object: it replaces it
        try:
            await self.api_server.patch(
                kube.CACHEDAPI, namespace=key[0], name=key[1], body={"status": patch}, subresource="status"
            )
        except kube.ApiError as exc:
            if exc.status != 404:
                raise
            logger.debug("%s/%s is gone; its status is not written", key[0], key[1])
            return
        await self._events(key, body=body, old=old, new=new)

    async def _events(self, key: Key, *, body: Mapping[str, Any], old: dict[str, Any], new: dict[str, Any]) -> None:
        def cond(st: dict[str, Any], type_: str) -> dict[str, Any]:
            return next((c for c in st.get("conditions") or [] if c.get("type") == type_), {})

        before, after = cond(old, "SpecValid"), cond(new, "SpecValid")
        if after.get("status") == "False" and (
            before.get("status") != "False" or before.get("message") != after.get("message")
        ):
            await self._event(key, body, type_="Warning", reason="InvalidSpec", message=after.get("message", ""))
        ready_before, ready_after = cond(old, "Ready").get("status"), cond(new, "Ready").get("status")
        if ready_after == "True" and ready_before != "True":
            await self._event(key, body, type_="Normal", reason="Ready", message="every component is available")

    async def _event(self, key: Key, body: Mapping[str, Any], *, type_: str, reason: str, message: str) -> None:
        meta = body.get("metadata") or {}
        stamp = now_iso()
        await self.api_server.post_event(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{key[1]}.{uuid.uuid4().hex[:16]}", "namespace": key[0]},
                "involvedObject": {
                    "apiVersion": f"{model.API_GROUP}/{model.API_VERSION}",
                    "kind": model.KIND,
                    "name": key[1],
                    "namespace": key[0],
                    "uid": meta.get("uid"),
                },
                "type": type_,
                "reason": reason,
                "message": message[:1024],
                "source": {"component": names.MANAGER},
                "reportingComponent": names.MANAGER,
                "reportingInstance": names.MANAGER,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
            }
        )
