"""The managed Redis: a cache only, so no persistence, an LRU bound from ``maxMemory``,
and an emptyDir for the working directory under a read-only root filesystem."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from cachedapi import contract, model
from cachedapi.operator.children import inputs, names, pods

IMAGE = "redis:7.4-alpine"

_SUFFIXES: dict[str, int | Decimal] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "m": Decimal("0.001"), "u": Decimal("0.000001"), "n": Decimal("0.000000001"), "": 1,
}  # fmt: skip


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes quantity as a whole number (``256Mi`` -> 268435456)."""
    match = re.fullmatch(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[kKMGTPEmun]?)", quantity)
    if match is None:
        raise ValueError(f"not a quantity: {quantity!r}")
    return int(Decimal(match.group(1)) * Decimal(_SUFFIXES[match.group(2)]))


def _managed(api: model.CachedApi) -> model.ManagedRedis:
    managed = api.spec.cache.redis.managed
    if managed is None:
        raise ValueError("the Redis is not managed")
    return managed


def command(api: model.CachedApi) -> list[str]:
    return [
        "redis-server",
        "--port", str(contract.REDIS_PORT),
        "--dir", "/data",
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "no",
        "--maxmemory", str(quantity_bytes(_managed(api).maxMemory)),
        "--maxmemory-policy", "allkeys-lru",
    ]  # fmt: skip


def deployment(api: model.CachedApi, inp: inputs.Inputs) -> dict[str, Any]:
    role = names.Role.REDIS.value
    managed = _managed(api)
    container = {
        "name": "redis",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": command(api),
        "ports": [{"name": "redis", "containerPort": contract.REDIS_PORT, "protocol": "TCP"}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "resources": pods.resources(managed.resources, cpu="50m", memory=managed.maxMemory),
        "securityContext": pods.container_security(pods.REDIS_UID),
        "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": pods.exec_probe(["redis-cli", "-p", str(contract.REDIS_PORT), "ping"], period=5, failures=2),
    }
    pod_spec = {
        "securityContext": pods.pod_security(pods.REDIS_UID),
        "containers": [container],
        "volumes": [pods.empty_dir("data")],
    }
    hash_ = pods.config_hash(texts=[" ".join(command(api))], secrets={})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": names.metadata(api, name=names.child(api, role), component=role, uid=inp.owner_uid),
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": names.selector(api, role)},
            # One Redis at a time: two would split the cache and the rate-limit state.
            "strategy": {"type": "Recreate"},
            "template": pods.template(api, component=role, spec=pod_spec, hash_=hash_),
        },
    }


def service(api: model.CachedApi, inp: inputs.Inputs) -> dict[str, Any]:
    role = names.Role.REDIS.value
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": names.metadata(api, name=names.child(api, role), component=role, uid=inp.owner_uid),
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector(api, role),
            "ports": [{"name": "redis", "port": contract.REDIS_PORT, "targetPort": "redis", "protocol": "TCP"}],
        },
    }
