"""One full life of the operator against the emulator, recorded for the security tests.

It exercises every path that touches a Secret or needs a permission: generated Secrets, the
user's Secrets (API keys, JWT, external Redis and PostgreSQL URLs), a missing Secret (an
invalid spec), workloads becoming ready, a child of every kind edited by hand and one deleted,
a rotated Secret, children an older release could have left, and a spec change that removes
children of every other kind. The user's Secrets hold distinctive values, so that a
leak of any of them is found by a plain text search. The operator logs at DEBUG, its most
talkative. What comes back: the log, every object stored at the end, and every request made.
"""

from __future__ import annotations

import asyncio
import base64
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..conftest import EXAMPLES
from ..operator import emulator as em

NS = "vault"
#: The values of the user's Secrets, each unlike anything else the operator could print.
SENTINELS = {
    "api-key": "SENTINEL-api-key-7f3a9c",
    "jwt": "SENTINEL-jwt-secret-41d2e8",
    "redis": "redis://:SENTINEL-redis-pass-0b7e55@cache.example:6379/0",
    "pg": "postgresql://app:SENTINEL-pg-pass-9aa1c4@db.example:5432/app",
    "rotated": "SENTINEL-rotated-key-c55e02",
}


@dataclass(frozen=True)
class Record:
    log: str
    objects: list[dict[str, Any]]
    requests: list[em.Seen]
    #: Every secret value the run handled: the sentinels and the values the operator generated.
    secret_values: list[str]


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "data": encoded}


def _bookstore(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / "bookstore.yaml").read_text(encoding="utf-8"))
    body["metadata"] = {"name": name, "namespace": NS}
    body["spec"].update(copy.deepcopy(spec))
    return body


async def _run(workdir: Path) -> Record:
    async with em.emulated_cluster() as cluster:
        with em.operator_process(
            server=cluster.url, workdir=workdir, resync_seconds=1.0, extra_env={"CACHEDAPI_LOG_LEVEL": "DEBUG"}
        ):
            await cluster.create(_secret("user-keys", {"ci": SENTINELS["api-key"]}))
            await cluster.create(_secret("jwt", {"hs256": SENTINELS["jwt"]}))
            await cluster.create(_secret("ext", {"redis": SENTINELS["redis"], "pg": SENTINELS["pg"]}))
            managed = _bookstore("managed")
            own_keys = _bookstore("own-keys", gateway={"auth": {"apiKeysSecretRef": {"name": "user-keys"}}})
            external = _bookstore(
                "external",
                gateway={
                    "auth": {"mode": "jwt", "jwt": {"issuer": "me", "secretRef": {"name": "jwt", "key": "hs256"}}}
                },
                cache={"redis": {"external": {"urlSecretRef": {"name": "ext", "key": "redis"}}}},
                database={"external": {"urlSecretRef": {"name": "ext", "key": "pg"}}},
            )
            missing = _bookstore("missing", gateway={"auth": {"apiKeysSecretRef": {"name": "nowhere"}}})
            for body in (managed, own_keys, external, missing):
                await cluster.apply_cachedapi(body)

            def built(name: str) -> bool:
                return ("Deployment", f"{name}-gateway") in cluster.children(NS, name)

            for name in ("managed", "own-keys", "external"):
                await em.eventually(lambda n=name: built(n), timeout=60)
                await cluster.simulate_workload_controllers(NS, name)

            async def ready(name: str) -> bool:
                obj = await cluster.get("CachedApi", NS, name)
                return ((obj or {}).get("status") or {}).get("phase") == "Ready"

            for name in ("managed", "own-keys", "external"):
                await em.eventually(lambda n=name: ready(n), timeout=60)

            async def reported_missing() -> bool:
                obj = await cluster.get("CachedApi", NS, "missing")
                return ((obj or {}).get("status") or {}).get("phase") == "Failed"

            await em.eventually(reported_missing, timeout=60)

            # By hand: a child of every kind edited, one deleted, a Secret rotated.
            drifts = {
                ("Deployment", "managed-gateway"): {"spec": {"replicas": 9}},
                ("StatefulSet", "managed-db"): {"spec": {"replicas": 0}},
                ("Service", "managed-gateway"): {"spec": {"type": "NodePort"}},
                ("ConfigMap", "managed-config"): {"data": {"config.json": "{}"}},
                ("NetworkPolicy", "managed-api"): {"spec": {"ingress": []}},
                ("PodDisruptionBudget", "managed-api"): {"spec": {"maxUnavailable": 3}},
                ("HorizontalPodAutoscaler", "managed-api"): {"spec": {"maxReplicas": 99}},
            }
            before = cluster.children(NS, "managed")
            for (kind, name), patch in drifts.items():
                await cluster.patch(kind, NS, name, patch)
            await cluster.delete("Service", NS, "managed-api")
            await cluster.patch("Secret", NS, "user-keys", {"data": {"ci": _b64(SENTINELS["rotated"])}})

            def restored() -> bool:
                now = cluster.children(NS, "managed")
                return ("Service", "managed-api") in now and all(
                    now[key].get("spec", now[key].get("data")) == before[key].get("spec", before[key].get("data"))
                    for key in drifts
                )

            await em.eventually(restored, timeout=60)

            # Children an older release might have left (same owner, names this one does not make),
            # and a spec that drops the HPA, the managed Redis and the managed PostgreSQL.
            uid = (await cluster.get("CachedApi", NS, "managed") or {})["metadata"]["uid"]
            template = before[("ConfigMap", "managed-config")]["metadata"]
            stale = {"labels": template["labels"], "ownerReferences": template["ownerReferences"]}
            assert stale["ownerReferences"][0]["uid"] == uid
            for kind, extra in (("ConfigMap", {"data": {}}), ("PodDisruptionBudget", {"spec": {"maxUnavailable": 1}})):
                meta = {"name": "managed-stale", "namespace": NS, **copy.deepcopy(stale)}
                api_version = "v1" if kind == "ConfigMap" else "policy/v1"
                await cluster.create({"apiVersion": api_version, "kind": kind, "metadata": meta, **extra})
            await cluster.patch(
                "CachedApi",
                NS,
                "managed",
                {
                    "spec": {
                        "api": {"autoscaling": None},
                        "cache": {
                            "redis": {"managed": None, "external": {"urlSecretRef": {"name": "ext", "key": "redis"}}}
                        },
                        "database": {"managed": None, "external": {"urlSecretRef": {"name": "ext", "key": "pg"}}},
                    }
                },
            )

            def pruned() -> bool:
                now = {name for _, name in cluster.children(NS, "managed")}
                return not now & {"managed-stale", "managed-redis", "managed-db"} and (
                    ("HorizontalPodAutoscaler", "managed-api") not in cluster.children(NS, "managed")
                )

            await em.eventually(pruned, timeout=60)
            await asyncio.sleep(2.5)  # a couple of resyncs more, reading every referenced Secret

            objects = [dict(obj.raw) for obj in cluster.emulator.objects.values() if not obj.deleted]
            requests = list(cluster.emulator.log)
    generated = [
        base64.b64decode(value).decode()
        for obj in objects
        if obj.get("kind") == "Secret" and obj["metadata"]["name"] in {"managed-db-credentials", "managed-api-keys"}
        for key, value in obj["data"].items()
        if key in {"password", "default", "url"}
    ]
    return Record(
        log=(workdir / "operator.log").read_text(errors="replace"),
        objects=objects,
        requests=requests,
        secret_values=[*SENTINELS.values(), *generated],
    )


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def run(workdir: Path) -> Record:
    """The scenario, start to end, on an event loop of its own."""
    return asyncio.run(_run(workdir))
