"""What the e2e tests, the security scenario and the scale benchmark share: the operator run as
itself, restricted namespaces, applying objects, polling.

The operator runs as a process, ``cachedapi operator``, authenticated with a TokenRequest
token of the ServiceAccount that ``kubectl apply -k deploy/`` creates, so the shipped
ClusterRole is all it has. (The Deployment that ``deploy/`` creates runs on kwok's fake node,
which admits it under the restricted Pod Security Standard but runs nothing.)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cachedapi.dev import embedded
from tests.e2e import cluster as control_plane

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
EXAMPLES = ROOT / "examples"
#: The operator's periodic reconcile in these tests (60 s in deploy/): short, so that "several
#: resync periods" fit in seconds.
RESYNC_SECONDS = 2.0

T = TypeVar("T")


def eventually(check: Callable[[], T | None], *, timeout: float = 90.0, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; its value. ``timeout`` only stops a hang."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not so after {timeout:.0f} s: {what or check}")
        time.sleep(0.25)


class Operator:
    """``cachedapi operator`` as a process, with the ServiceAccount's credentials only."""

    def __init__(self, cluster: control_plane.Cluster, workdir: Path, *, env: dict[str, str] | None = None) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.log_path = workdir / "operator.log"
        self.kubeconfig = cluster.service_account_kubeconfig(
            control_plane.OPERATOR_NAMESPACE, control_plane.OPERATOR_ACCOUNT, path=workdir / "operator-kubeconfig"
        )
        self.liveness = f"http://127.0.0.1:{embedded.free_port()}/healthz"
        self.env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "CACHEDAPI_RESYNC_SECONDS": str(RESYNC_SECONDS),
            "CACHEDAPI_RETRY_SECONDS": "1",
            "CACHEDAPI_LIVENESS_ENDPOINT": self.liveness,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cachedapi", "operator"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc is not None:
            embedded.stop_process(self.proc, timeout=15)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def assert_clean(self) -> None:
        log = self.log
        assert "Traceback" not in log, log[max(log.index("Traceback") - 300, 0) :][:4000]


@contextlib.contextmanager
def running_operator(
    cluster: control_plane.Cluster, workdir: Path, *, env: dict[str, str] | None = None
) -> Iterator[Operator]:
    workdir.mkdir(parents=True, exist_ok=True)
    operator = Operator(cluster, workdir, env=env)
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()


def restricted_namespace(cluster: control_plane.Cluster, name: str) -> str:
    """A namespace that enforces the restricted Pod Security Standard, as a careful cluster's would."""
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl(
        "label", "namespace", name,
        "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/enforce-version=latest",
    )  # fmt: skip
    return name


def load(path: Path, *, namespace: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    body["metadata"]["namespace"] = namespace
    return body


def apply(cluster: control_plane.Cluster, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(body))


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), {})
