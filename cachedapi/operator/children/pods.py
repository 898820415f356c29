"""Pod-level building blocks every workload shares: the restricted Pod Security Standard,
probes, resources and the config-hash annotation."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from cachedapi import model
from cachedapi.operator.children import names

#: The runtime image's user (Dockerfile ``USER 65532``).
RUNTIME_UID = 65532
#: Redis runs as a high UID that no host account has (redis-server needs no passwd entry;
#: its only writable place is the /data emptyDir, which fsGroup makes its own).
REDIS_UID = 10999
#: PostgreSQL keeps the stock image's own user (postgres:16-alpine's uid 70): its initdb looks
#: its user up in /etc/passwd, and the alpine image has no nss_wrapper to run as any other.
POSTGRES_UID = 70
#: A writable scratch directory (an emptyDir) in a container whose root filesystem is read-only.
TMP_DIR = "/tmp"  # noqa: S108  (the pod's own emptyDir, not a shared host directory)


#: Mounted Secret files: readable by the pod's group (fsGroup) only.
SECRET_FILE_MODE = 0o440


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


def mebibytes(count: int) -> str:
    """A number of bytes as a quantity in whole Mi, rounded up."""
    return f"{math.ceil(count / 2**20)}Mi"


def resources(given: model.ResourceRequirements, *, cpu: str, memory: str, memory_limit: str) -> dict[str, Any]:
    """The user's requests and limits, with a CPU and memory request and a memory limit when
    they give none. No CPU limit unless asked: a limit throttles a busy pod even on an idle node,
    and a latency-sensitive server pays for that in its slowest answers.

    A memory limit by default, because a pod without one can take its node's memory from
    every other pod; never below the memory request, which the API server would refuse."""
    requests = {"cpu": cpu, "memory": memory, **given.requests}
    limits = dict(given.limits)
    if "memory" not in limits:
        wanted = requests["memory"]
        limits["memory"] = memory_limit if quantity_bytes(memory_limit) >= quantity_bytes(wanted) else wanted
    return {"requests": requests, "limits": limits}


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
