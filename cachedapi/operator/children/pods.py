"""Pod-level building blocks every workload shares: the restricted Pod Security Standard,
probes, resources and the config-hash annotation."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from cachedapi import model
from cachedapi.operator.children import names

#: The runtime image's user (Dockerfile ``USER 65532``), and the stock images' own users.
RUNTIME_UID = 65532
REDIS_UID = 999  # redis:7-alpine
POSTGRES_UID = 70  # postgres:16-alpine
#: A writable scratch directory (an emptyDir) in a container whose root filesystem is read-only.
TMP_DIR = "/tmp"  # noqa: S108  (the pod's own emptyDir, not a shared host directory)


def pod_security(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def http_probe(path: str, port: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def exec_probe(command: list[str], *, period: int, failures: int) -> dict[str, Any]:
    return {"exec": {"command": command}, "periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": failures}


def resources(given: model.ResourceRequirements, *, cpu: str, memory: str) -> dict[str, Any]:
    """The user's requests and limits, with a CPU and memory request when they give none."""
    out: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory, **given.requests}}
    if given.limits:
        out["limits"] = dict(given.limits)
    return out


def config_hash(*, texts: Iterable[str], secrets: Mapping[str, str]) -> str:
    """A digest of everything a pod reads at start: when it changes, the pods roll."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    for name in sorted(secrets):
        digest.update(f"secret/{name}={secrets[name]}\n".encode())
    return digest.hexdigest()[:32]


def template(api: model.CachedApi, *, component: str, spec: dict[str, Any], hash_: str) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": names.labels(api, component),
            "annotations": {names.CONFIG_HASH_ANNOTATION: hash_},
        },
        "spec": {"automountServiceAccountToken": False, "enableServiceLinks": False, **spec},
    }


def empty_dir(name: str, *, medium: str = "") -> dict[str, Any]:
    return {"name": name, "emptyDir": {"medium": medium} if medium else {}}
