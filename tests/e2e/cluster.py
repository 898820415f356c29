"""A real, local Kubernetes control plane: for the e2e suite and for people.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler, built from the
upstream Go modules (``build``), and kwok, which plays one node: pods the scheduler
binds to it become Running and Ready, and volume claims are bound (kwok's own
Stage definitions). Everything else is the real thing: admission (Pod Security
included), RBAC, CEL, the garbage collector and the workload controllers.

Every process listens on a free loopback port, keeps its data and logs in one
temporary directory, and is stopped by process id in every outcome (``stop`` is
idempotent; the context manager and an ``atexit`` hook call it).

    python -m tests.e2e.cluster up

builds what is missing, starts everything, prints ``export KUBECONFIG=...`` once
the node is Ready, and runs until Ctrl-C. The API server's audit log (every
write, by user, and every request of the operator's ServiceAccount) is at
``<workdir>/audit.log``.
"""

from __future__ import annotations

import atexit
import base64
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from cachedapi.dev import embedded
from tests.e2e import build

NODE_NAME = "kwok-node-0"
#: The operator's identity, as deploy/ creates it; the audit policy records all of its requests.
OPERATOR_NAMESPACE = "cachedapi-system"
OPERATOR_ACCOUNT = "cachedapi-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"

#: Every request of the operator's ServiceAccount, with its answer, and nothing else (writing an
#: event for each of the controllers' writes would cost the API server a tenth of its CPU).
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "users": [OPERATOR_USER]}, {"level": "None"}],
}

#: The scheduler's client is allowed more than its default 50 requests/s, or binding the
#: pods of a hundred CachedApis would take longer than everything else together.
SCHEDULER_QPS = {"qps": 500, "burst": 1000}
SCHEDULER_CONFIG = {
    "apiVersion": "kubescheduler.config.k8s.io/v1",
    "kind": "KubeSchedulerConfiguration",
    "leaderElection": {"leaderElect": False},
}

#: kwok's Stages from its own module: a node that initializes and keeps its lease, pods that
#: become Ready (and complete, and go when deleted), claims that get a volume.
STAGE_FILES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
    "volume/fast/pv-bind.yaml",
    "volume/fast/pv-delete.yaml",
    "volume/fast/pvc-provision.yaml",
    "volume/fast/pvc-delete.yaml",
)
STORAGE_CLASS_FILE = "volume/fast/storage-class.yaml"

_live: set[Cluster] = set()


def _write(path: Path, data: bytes | str, *, mode: int = 0o600) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def _certificates(directory: Path) -> None:
    """A CA, the API server's serving certificate for 127.0.0.1, and the service-account key."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cachedapi-e2e-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    names = [x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")]
    ips = [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "10.96.0.1")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([*names, *ips]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory / "ca.crt", ca.public_bytes(serialization.Encoding.PEM), mode=0o644)
    _write(directory / "server.crt", cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    _write(directory / "server.key", _pem_key(key))
    _write(directory / "sa.key", _pem_key(rsa.generate_private_key(public_exponent=65537, key_size=2048)))


def kubeconfig(*, server: str, ca_file: Path, token: str, user: str) -> dict[str, Any]:
    """A kubeconfig with one cluster, one token user and one context."""
    ca = base64.b64encode(ca_file.read_bytes()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "e2e", "user": user}}],
        "current-context": user,
    }


class Cluster:
    """One control plane in ``workdir`` (a new temporary directory by default)."""

    def __init__(self, *, binaries: build.Binaries, workdir: Path | None = None) -> None:
        self.binaries = binaries
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="cachedapi-e2e-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.port = embedded.free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.audit_log = self.workdir / "audit.log"
        self._admin_token = secrets.token_urlsafe(32)

    # --- processes ---------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def start(self) -> None:
        _live.add(self)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        _certificates(pki)
        _write(self.workdir / "tokens.csv", f"{self._admin_token},admin,admin,system:masters\n")
        _write(self.workdir / "audit-policy.yaml", yaml.safe_dump(AUDIT_POLICY))
        admin = kubeconfig(server=self.server, ca_file=pki / "ca.crt", token=self._admin_token, user="admin")
        _write(self.kubeconfig, yaml.safe_dump(admin))
        scheduler = {**SCHEDULER_CONFIG, "clientConnection": {**SCHEDULER_QPS, "kubeconfig": str(self.kubeconfig)}}
        _write(self.workdir / "scheduler.yaml", yaml.safe_dump(scheduler))

        etcd_port, peer_port = embedded.free_port(), embedded.free_port()
        etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
        self._spawn("etcd", [
            self.binaries.path("etcd"), "--name=e2e", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=e2e={peer_url}", "--unsafe-no-fsync", "--log-level=warn",
            "--quota-backend-bytes=4294967296", "--auto-compaction-retention=1",
        ])  # fmt: skip
        self._wait("etcd", lambda: self._http_ok(f"{etcd_url}/health"), timeout=30)

        self._spawn("kube-apiserver", [
            self.binaries.path("kube-apiserver"),
            f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}", f"--tls-cert-file={pki / 'server.crt'}",
            f"--tls-private-key-file={pki / 'server.key'}", f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC", "--service-cluster-ip-range=10.96.0.0/12",
            "--endpoint-reconciler-type=none", "--allow-privileged=false",
            f"--service-account-key-file={pki / 'sa.key'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}", f"--audit-log-path={self.audit_log}",
            "--audit-log-maxsize=0", f"--cert-dir={self.workdir / 'apiserver-certs'}", "--v=1",
        ])  # fmt: skip
        self._wait("kube-apiserver", lambda: self._http_ok(f"{self.server}/readyz", auth=True), timeout=120)

        self._spawn("kube-controller-manager", [
            self.binaries.path("kube-controller-manager"), f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false", f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'sa.key'}", "--use-service-account-credentials=true",
            "--secure-port=0", "--kube-api-qps=500", "--kube-api-burst=1000", "--v=1",
            "--concurrent-deployment-syncs=10", "--concurrent-replicaset-syncs=10",
            "--concurrent-statefulset-syncs=10", "--concurrent-gc-syncs=40",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [
            self.binaries.path("kube-scheduler"), f"--config={self.workdir / 'scheduler.yaml'}",
            "--secure-port=0", "--v=1",
        ])  # fmt: skip
        self._start_kwok()
        self._create_node()
        self.kubectl("apply", "-f", str(self.binaries.kwok_stages / STORAGE_CLASS_FILE))
        self._wait("the node", self._node_ready, timeout=60)
        # The controller manager is working once it has made the default ServiceAccount.
        self._wait("kube-controller-manager", self._default_service_account, timeout=60)

    def _start_kwok(self) -> None:
        stages = [(self.binaries.kwok_stages / f).read_text() for f in STAGE_FILES]
        kwok_config = "---\n".join(stages)
        _write(self.workdir / "kwok.yaml", kwok_config)
        port = embedded.free_port()
        pki = self.workdir / "pki"
        self._spawn("kwok", [
            self.binaries.path("kwok"), f"--kubeconfig={self.kubeconfig}", f"--config={self.workdir / 'kwok.yaml'}",
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            # A pod with this annotation is left alone: it never becomes Ready (a stuck rollout).
            "--disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom",
            f"--tls-cert-file={pki / 'server.crt'}", f"--tls-private-key-file={pki / 'server.key'}",
            "--node-ip=127.0.0.1", "--node-name=kwok-controller", f"--node-port={port}",
            f"--server-address=127.0.0.1:{port}", "--node-lease-duration-seconds=40",
        ])  # fmt: skip

    def _create_node(self) -> None:
        capacity = {"cpu": "1000", "memory": "4Ti", "pods": "10000", "ephemeral-storage": "1Ti"}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux", "type": "kwok"},
            },
            # A pod address range wide enough for thousands of pods (kwok's default is a /24).
            "spec": {"podCIDR": "10.128.0.0/12", "podCIDRs": ["10.128.0.0/12"]},
            "status": {"allocatable": capacity, "capacity": capacity},
        }
        self.kubectl("create", "-f", "-", stdin=json.dumps(node))

    def _wait(self, what: str, ready: Any, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            if ready():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
            time.sleep(0.25)

    def _http_ok(self, url: str, *, auth: bool = False) -> bool:
        request = urllib.request.Request(url)  # noqa: S310  (loopback URLs we made)
        context = None
        if auth:
            request.add_header("Authorization", f"Bearer {self._admin_token}")
            context = ssl.create_default_context(cafile=str(self.workdir / "pki" / "ca.crt"))
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _node_ready(self) -> bool:
        done = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if done.returncode != 0:
            return False
        conditions = json.loads(done.stdout).get("status", {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def _default_service_account(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            embedded.stop_process(self.procs[name], timeout=15)
        _live.discard(self)
        if self._own_dir and not os.environ.get("CACHEDAPI_E2E_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self.stop()

    # --- using it ----------------------------------------------------------------------------

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """The environment for a client of this cluster: its kubeconfig and its kubectl first on PATH."""
        path = f"{self.binaries.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig), "PATH": path}

    def kubectl(
        self,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.binaries.path("kubectl"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(kubeconfig),
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def api_get(self, path: str) -> Any:
        """GET ``path`` from the API server as the admin, without a kubectl process: for polling."""
        request = urllib.request.Request(self.server + path)  # noqa: S310  (our own server)
        request.add_header("Authorization", f"Bearer {self._admin_token}")
        context = ssl.create_default_context(cafile=str(self.workdir / "pki" / "ca.crt"))
        with urllib.request.urlopen(request, timeout=30, context=context) as response:  # noqa: S310
            return json.loads(response.read())

    def service_account_kubeconfig(self, namespace: str, name: str, *, path: Path) -> Path:
        """A kubeconfig that authenticates as a ServiceAccount (a TokenRequest token), as a pod would."""
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration=24h").stdout.strip()
        config = kubeconfig(server=self.server, ca_file=self.workdir / "pki" / "ca.crt", token=token, user=name)
        return _write(path, yaml.safe_dump(config))

    def audit_events(self) -> Iterator[dict[str, Any]]:
        """The audit log so far, one event per completed request."""
        if not self.audit_log.exists():
            return
        with open(self.audit_log, encoding="utf-8") as log:
            for line in log:
                if line.strip():
                    yield json.loads(line)


@atexit.register
def _stop_all() -> None:
    for cluster in list(_live):
        cluster.stop()


def up() -> int:
    binaries = build.ensure()
    cluster = Cluster(binaries=binaries)
    stopping = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        started = time.monotonic()
        cluster.start()
        print(f"# control plane {build.KUBERNETES_VERSION} up in {time.monotonic() - started:.0f} s; "
              f"logs and data in {cluster.workdir}; Ctrl-C stops it", file=sys.stderr)  # fmt: skip
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        print(f"export PATH={binaries.bin_dir}:$PATH  # kubectl {build.KUBERNETES_VERSION}")
        sys.stdout.flush()
        while True:
            time.sleep(1)
            cluster._check_alive()
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()


def main(argv: list[str]) -> int:
    if argv[1:] != ["up"]:
        print("usage: python -m tests.e2e.cluster up", file=sys.stderr)
        return 2
    return up()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
