"""The managed Redis: a cache only, so no persistence, an LRU bound from ``maxMemory``,
and an emptyDir for the working directory under a read-only root filesystem."""

from __future__ import annotations

from typing import Any

from cachedapi import contract, model
from cachedapi.operator.children import inputs, names, pods

IMAGE = "redis:7.4-alpine"


def memory_limit(api: model.CachedApi) -> str:
    """``maxMemory`` bounds the data set only: a quarter more plus 32 Mi for Redis's own use
    (buffers, fragmentation, the clients' output buffers)."""
    data = pods.quantity_bytes(_managed(api).maxMemory)
    return pods.mebibytes(data + data // 4 + 32 * 2**20)


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
        "--maxmemory", str(pods.quantity_bytes(_managed(api).maxMemory)),
        "--maxmemory-policy", "allkeys-lru",
    ]  # fmt: skip


def deployment(api: model.CachedApi, inp: inputs.Inputs) -> dict[str, Any]:
    role = names.Component.REDIS.value
    managed = _managed(api)
    container = {
        "name": "redis",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": command(api),
        "ports": [{"name": "redis", "containerPort": contract.REDIS_PORT, "protocol": "TCP"}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "resources": pods.resources(
            managed.resources, cpu="50m", memory=managed.maxMemory, memory_limit=memory_limit(api)
        ),
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
    role = names.Component.REDIS.value
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
