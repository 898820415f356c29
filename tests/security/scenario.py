"""One full life of the operator on the real control plane, recorded for the security tests.

It exercises every path that touches a Secret or needs a permission: generated Secrets, the
user's Secrets (API keys, JWT, external Redis and PostgreSQL URLs), a missing Secret (an
invalid spec), workloads becoming ready, a child of every kind edited by hand and one deleted,
a rotated Secret, children an older release could have left, and a spec change that removes
children. The user's Secrets hold distinctive values, so that a leak of any of them is found by
a plain text search. The operator logs at DEBUG, its most talkative. What comes back: the log,
every object in the namespace at the end (Events included), and every request the operator
made, as the API server's audit log recorded it with the answer it got.
"""

from __future__ import annotations

import base64
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.e2e import cluster as control_plane
from tests.e2e.harness import EXAMPLES, apply, eventually, restricted_namespace, running_operator

NS = "vault"
#: The values of the user's Secrets, each unlike anything else the operator could print.
SENTINELS = {
    "api-key": "SENTINEL-api-key-7f3a9c",
    "jwt": "SENTINEL-jwt-secret-41d2e8",
    "redis": "redis://:SENTINEL-redis-pass-0b7e55@cache.example:6379/0",
    "pg": "postgresql://app:SENTINEL-pg-pass-9aa1c4@db.example:5432/app",
    "rotated": "SENTINEL-rotated-key-c55e02",
}
KINDS = (
    "cachedapis,deployments,statefulsets,services,configmaps,secrets,networkpolicies,"
    "poddisruptionbudgets,horizontalpodautoscalers,events,pods"
)


@dataclass(frozen=True)
class Record:
    log: str
    objects: list[dict[str, Any]]
    #: The operator's requests (audit events), each with ``verb``, ``objectRef`` and ``responseStatus``.
    requests: list[dict[str, Any]]
    #: Every secret value the run handled: the sentinels and the values the operator generated.
    secret_values: list[str]


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    encoded = {k: _b64(v) for k, v in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "data": encoded}


def _bookstore(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / "bookstore.yaml").read_text(encoding="utf-8"))
    body["metadata"] = {"name": name, "namespace": NS}
    body["spec"].update(copy.deepcopy(spec))
    return body


def _children(cluster: control_plane.Cluster, name: str) -> dict[tuple[str, str], dict[str, Any]]:
    kinds = KINDS.replace("cachedapis,", "").replace(",events,pods", "")
    items = cluster.get_json(kinds, "-n", NS, "-l", f"app.kubernetes.io/instance={name}")["items"]
    return {(o["kind"], o["metadata"]["name"]): o for o in items}


def _phase(cluster: control_plane.Cluster, name: str) -> str:
    obj = cluster.get_json("cachedapi", name, "-n", NS)
    return str((obj.get("status") or {}).get("phase", ""))


def _merge(cluster: control_plane.Cluster, kind: str, name: str, patch: dict[str, Any]) -> None:
    cluster.kubectl("patch", kind, name, "-n", NS, "--type=merge", "-p", json.dumps(patch))


def _life(cluster: control_plane.Cluster) -> None:
    restricted_namespace(cluster, NS)
    for secret in (
        _secret("user-keys", {"ci": SENTINELS["api-key"]}),
        _secret("jwt", {"hs256": SENTINELS["jwt"]}),
        _secret("ext", {"redis": SENTINELS["redis"], "pg": SENTINELS["pg"]}),
    ):
        apply(cluster, secret)
    jwt = {"auth": {"mode": "jwt", "jwt": {"issuer": "me", "secretRef": {"name": "jwt", "key": "hs256"}}}}
    external_redis = {"redis": {"external": {"urlSecretRef": {"name": "ext", "key": "redis"}}}}
    for body in (
        _bookstore("managed"),
        _bookstore("own-keys", gateway={"auth": {"apiKeysSecretRef": {"name": "user-keys"}}}),
        _bookstore(
            "external",
            gateway=jwt,
            cache=external_redis,
            database={"external": {"urlSecretRef": {"name": "ext", "key": "pg"}}},
        ),
        _bookstore("missing", gateway={"auth": {"apiKeysSecretRef": {"name": "nowhere"}}}),
    ):
        apply(cluster, body)
    for name in ("managed", "own-keys", "external"):
        eventually(lambda n=name: _phase(cluster, n) == "Ready", what=f"{name} Ready")  # type: ignore[misc]
    eventually(lambda: _phase(cluster, "missing") == "Failed", what="missing reported")

    # By hand: a child of every kind edited, one deleted, a Secret rotated.
    drifts = {
        ("deployment", "managed-gateway"): {"spec": {"replicas": 9}},
        ("statefulset", "managed-db"): {"spec": {"replicas": 0}},
        ("service", "managed-gateway"): {"metadata": {"labels": {"app.kubernetes.io/component": "x"}}},
        ("configmap", "managed-config"): {"data": {"config.json": "{}"}},
        ("networkpolicy", "managed-api"): {"spec": {"ingress": []}},
        ("poddisruptionbudget", "managed-api"): {"spec": {"maxUnavailable": 3}},
        ("horizontalpodautoscaler", "managed-api"): {"spec": {"maxReplicas": 99}},
    }
    before = _children(cluster, "managed")
    for (kind, name), patch in drifts.items():
        _merge(cluster, kind, name, patch)
    cluster.kubectl("delete", "service", "managed-api", "-n", NS)
    _merge(cluster, "secret", "user-keys", {"data": {"ci": _b64(SENTINELS["rotated"])}})

    def restored() -> bool:
        now = _children(cluster, "managed")
        if ("Service", "managed-api") not in now:
            return False
        for kind, name in drifts:
            key = next(k for k in now if k[0].lower() == kind and k[1] == name)
            was, is_ = before[key], now[key]
            if was.get("data") != is_.get("data") or was["metadata"]["labels"] != is_["metadata"]["labels"]:
                return False
            if kind != "configmap" and not _same_spec(was["spec"], is_["spec"]):
                return False
        return True

    eventually(restored, what="every edited child put back")

    # Children an older release might have left (same owner, names this one does not make),
    # and a spec that drops the HPA and the managed Redis.
    meta = before[("ConfigMap", "managed-config")]["metadata"]
    stale = {"labels": meta["labels"], "ownerReferences": meta["ownerReferences"]}
    for kind, api_version, extra in (
        ("ConfigMap", "v1", {"data": {}}),
        ("PodDisruptionBudget", "policy/v1", {"spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"a": "b"}}}}),
        ("StatefulSet", "apps/v1", {"spec": _stale_stateful_set()}),
    ):
        body = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "managed-stale", "namespace": NS}}
        body["metadata"].update(copy.deepcopy(stale))
        apply(cluster, {**body, **extra})
    body = _bookstore("managed", cache=external_redis)
    del body["spec"]["api"]["autoscaling"]
    apply(cluster, body)

    def pruned() -> bool:
        now = _children(cluster, "managed")
        return not {name for _, name in now} & {"managed-stale", "managed-redis"} and (
            ("HorizontalPodAutoscaler", "managed-api") not in now
        )

    eventually(pruned, what="the children no longer asked for deleted")
    eventually(lambda: _phase(cluster, "managed") == "Ready", what="managed Ready again")
    time.sleep(2.5)  # a couple of resyncs more, reading every referenced Secret


def _same_spec(before: dict[str, Any], now: dict[str, Any]) -> bool:
    """Specs equal but for what controllers write back (the HPA may set replicas, say)."""
    return {k: v for k, v in before.items() if k != "replicas"} == {k: v for k, v in now.items() if k != "replicas"}


def _stale_stateful_set() -> dict[str, Any]:
    labels = {"app": "stale"}
    container = {
        "name": "c",
        "image": "stale",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    return {
        "replicas": 0,
        "serviceName": "managed-stale",
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
    }


def run(cluster: control_plane.Cluster, workdir: Path) -> Record:
    """The scenario, start to end, with an operator of its own at DEBUG."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    with running_operator(cluster, workdir, env={"CACHEDAPI_LOG_LEVEL": "DEBUG"}) as operator:
        _life(cluster)
    objects = cluster.get_json(KINDS, "-n", NS)["items"]
    requests = [
        e
        for e in cluster.audit_events()
        if e["user"]["username"] == control_plane.OPERATOR_USER and e["stageTimestamp"] >= started
    ]
    generated = [
        base64.b64decode(value).decode()
        for obj in objects
        if obj.get("kind") == "Secret" and obj["metadata"]["name"] in {"managed-db-credentials", "managed-api-keys"}
        for key, value in obj["data"].items()
        if key in {"password", "default", "url"}
    ]
    cluster.kubectl("delete", "namespace", NS, "--wait=false")
    return Record(
        log=operator.log,
        objects=objects,
        requests=requests,
        secret_values=[*SENTINELS.values(), *generated],
    )
