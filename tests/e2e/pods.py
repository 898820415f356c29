"""Run the pods the operator renders with podman, as a kubelet would run them.

What it runs is what ``cachedapi render`` printed, read field by field, never a copy
written by hand: each Deployment's or StatefulSet's pod template becomes one container
per replica, with its image, command and args, env (values and Secret/ConfigMap
references resolved from the rendered objects), ConfigMap, Secret, emptyDir and
volume-claim mounts (files written as the kubelet writes them: mode, group ``fsGroup``),
user and group, read-only root filesystem, no privilege escalation, all capabilities
dropped, memory limit, and its probes (httpGet, exec, tcpSocket), polled until Ready.
Each container is on one podman network, with the DNS names of the Services that select
it (``name``, ``name.namespace.svc`` ...) as network aliases, which is all the
service discovery these pods use.

Where it differs from a kubelet, it says so by refusing: a Service whose port is not its
target port (aliases cannot translate ports), an env source other than a Secret or
ConfigMap key, a volume of another kind. Like the kubelet (kubernetes PR 60342), it
creates the mount points of volumes nested in a read-only volume; runc alone would fail
there. NetworkPolicies are not enforced (no policy engine here).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e import image

CLUSTER_DOMAIN = "cluster.local"


class Unsupported(Exception):
    """The rendered objects ask for something this harness cannot do as a kubelet would."""


@dataclass
class Container:
    name: str
    pod_spec: dict[str, Any]
    labels: dict[str, str]
    claims: dict[str, Path] = field(default_factory=dict)
    ip: str = ""


def _match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


class Pods:
    """The workloads among ``objects``, run with podman; ``stop`` removes every container it made."""

    def __init__(self, objects: list[dict[str, Any]], *, replicas: int = 1) -> None:
        self.objects = objects
        self.replicas = replicas
        self.workdir = Path(tempfile.mkdtemp(prefix="cachedapi-pods-"))
        self.network = f"cachedapi-e2e-{secrets.token_hex(4)}"
        self.prefix = f"e2e-{secrets.token_hex(3)}"
        self.containers: list[Container] = []
        self._started: list[str] = []
        self._network_made = False
        self._by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}

    # --- reading the rendered objects ----------------------------------------------------

    def _object(self, kind: str, name: str) -> dict[str, Any]:
        found = self._by_name.get((kind, name))
        if found is None:
            raise Unsupported(f"{kind} {name} is referred to but was not rendered")
        return found

    def _key(self, kind: str, name: str, key: str) -> bytes:
        obj = self._object(kind, name)
        if kind == "Secret":
            if key in (obj.get("stringData") or {}):
                return str(obj["stringData"][key]).encode()
            return base64.b64decode(obj["data"][key])
        return str(obj["data"][key]).encode()

    def _aliases(self, labels: dict[str, str]) -> list[str]:
        """The DNS names of every Service that selects these labels; its ports must be its targets'."""
        out = []
        for svc in (o for o in self.objects if o["kind"] == "Service"):
            if not _match(svc["spec"].get("selector") or {}, labels):
                continue
            name, ns = svc["metadata"]["name"], svc["metadata"]["namespace"]
            out += [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.{CLUSTER_DOMAIN}"]
        return out

    def _check_service_ports(self, pod_spec: dict[str, Any], labels: dict[str, str]) -> None:
        ports = {p.get("name"): p["containerPort"] for c in pod_spec["containers"] for p in c.get("ports") or []}
        for svc in (o for o in self.objects if o["kind"] == "Service"):
            if not _match(svc["spec"].get("selector") or {}, labels):
                continue
            for port in svc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                target = ports.get(target, target) if isinstance(target, str) else target
                if target != port["port"]:
                    raise Unsupported(f"Service {svc['metadata']['name']} maps {port['port']} to {target}")

    # --- running ---------------------------------------------------------------------------

    def start(self, *, timeout: float = 180.0) -> None:
        image.podman("network", "create", self.network)
        self._network_made = True
        try:
            for kind in ("StatefulSet", "Deployment"):
                for workload in (o for o in self.objects if o["kind"] == kind):
                    self._run_workload(workload)
            deadline = time.monotonic() + timeout
            for container in self.containers:
                self._wait_ready(container, deadline=deadline)
        except BaseException:
            self.stop()
            raise

    def _run_workload(self, workload: dict[str, Any]) -> None:
        template = workload["spec"]["template"]
        labels = template["metadata"]["labels"]
        pod_spec = template["spec"]
        self._check_service_ports(pod_spec, labels)
        if len(pod_spec["containers"]) != 1 or pod_spec.get("initContainers"):
            raise Unsupported(f"{workload['metadata']['name']}: one container per pod is what this harness runs")
        count = min(int(workload["spec"].get("replicas", 1)), self.replicas)
        for index in range(count):
            name = f"{self.prefix}-{workload['metadata']['name']}-{index}"
            claims = {}
            for claim in workload["spec"].get("volumeClaimTemplates") or []:
                claims[claim["metadata"]["name"]] = self._claim(name, claim["metadata"]["name"], pod_spec)
            container = Container(name=name, pod_spec=pod_spec, labels=labels, claims=claims)
            self._run(container)
            self.containers.append(container)

    def _claim(self, pod: str, claim: str, pod_spec: dict[str, Any]) -> Path:
        """A bound volume: an empty directory the pod's fsGroup may write (as the kubelet makes it)."""
        path = self.workdir / "claims" / pod / claim
        path.mkdir(parents=True)
        group = (pod_spec.get("securityContext") or {}).get("fsGroup")
        if group is not None:
            os.chown(path, 0, int(group))
        path.chmod(0o2775)
        return path

    def _empty_dir(self, container: str, volume: str, group: int | None) -> Path:
        """An emptyDir on disk, as the kubelet makes it: mode 0777, and with an fsGroup, that group
        and the setgid bit (so that what the pod writes there stays the pod's group's)."""
        path = self.workdir / "empty" / container / volume
        path.mkdir(parents=True)
        if group is not None:
            os.chown(path, 0, group)
        path.chmod(0o2777 if group is not None else 0o777)
        return path

    def _files(self, container: str, volume: dict[str, Any], group: int | None) -> Path:
        """A ConfigMap or Secret volume as files: every key, or the items it names."""
        kind, source = ("Secret", volume["secret"]) if "secret" in volume else ("ConfigMap", volume["configMap"])
        name = source.get("secretName") or source.get("name")
        obj = self._object(kind, name)
        keys = list((obj.get("data") or {}) | (obj.get("stringData") or {}))
        items = source.get("items") or [{"key": k, "path": k} for k in keys]
        mode = int(source.get("defaultMode", 0o644))
        path = self.workdir / "volumes" / container / volume["name"]
        path.mkdir(parents=True)
        for item in items:
            target = path / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self._key(kind, name, item["key"]))
            os.chown(target, 0, group if group is not None else 0)
            target.chmod(int(item.get("mode", mode)))
        path.chmod(0o755)
        return path

    def _run(self, container: Container) -> None:
        spec = container.pod_spec
        (main,) = spec["containers"]
        pod_sc = spec.get("securityContext") or {}
        sc = {**pod_sc, **(main.get("securityContext") or {})}
        uid, gid, fs_group = sc.get("runAsUser"), sc.get("runAsGroup", sc.get("runAsUser")), pod_sc.get("fsGroup")
        if sc.get("runAsNonRoot") and (uid is None or int(uid) == 0):
            raise Unsupported(f"{container.name}: runAsNonRoot without a numeric non-root runAsUser")
        hostname = container.name.removeprefix(f"{self.prefix}-")
        args = ["run", "--detach", "--name", container.name, "--hostname", hostname,
                "--network", self.network, "--restart=always", "--pull=never"]  # fmt: skip
        for alias in self._aliases(container.labels):
            args += ["--network-alias", alias]
        if uid is not None:
            args += ["--user", f"{uid}:{gid}"]
        if fs_group is not None:
            args += ["--group-add", str(fs_group)]
        if sc.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for cap in (sc.get("capabilities") or {}).get("drop") or []:
            args += ["--cap-drop", cap.lower()]
        memory = ((main.get("resources") or {}).get("limits") or {}).get("memory")
        if memory:
            args += ["--memory", str(memory).replace("Mi", "m").replace("Gi", "g")]
        for env in main.get("env") or []:
            if "value" in env:
                args += ["--env", f"{env['name']}={env['value']}"]
                continue
            ref = env.get("valueFrom") or {}
            if "secretKeyRef" in ref:
                value = self._key("Secret", ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
            elif "configMapKeyRef" in ref:
                value = self._key("ConfigMap", ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"])
            else:
                raise Unsupported(f"{container.name}: env {env['name']} from {sorted(ref)}")
            args += ["--env", f"{env['name']}={value.decode()}"]
        args += self._mounts(container, main, fs_group)
        if main.get("command"):
            args += ["--entrypoint", json.dumps(main["command"])]
        args.append(main["image"])
        args += main.get("args") or []
        self._started.append(image.podman(*args))
        container.ip = image.podman(
            "inspect",
            container.name,
            "--format",
            f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}',
        )

    def _mounts(self, container: Container, main: dict[str, Any], fs_group: int | None) -> list[str]:
        volumes = {v["name"]: v for v in container.pod_spec.get("volumes") or []}
        mounts = sorted(main.get("volumeMounts") or [], key=lambda m: m["mountPath"].count("/"))
        host_dirs: dict[str, Path] = {}  # mount path -> host directory of a file volume
        args = []
        for mount in mounts:
            path = mount["mountPath"]
            # A mount point inside a read-only volume: the kubelet makes it there first.
            for parent, directory in host_dirs.items():
                if path.startswith(parent.rstrip("/") + "/"):
                    (directory / path[len(parent) :].lstrip("/")).mkdir(parents=True, exist_ok=True)
            name = mount["name"]
            if name in container.claims:
                args += ["--volume", f"{container.claims[name]}:{path}:rw"]
                continue
            volume = volumes.get(name)
            if volume is None:
                raise Unsupported(f"{container.name}: volume {name} is mounted but not declared")
            if "emptyDir" in volume:
                args += ["--volume", f"{self._empty_dir(container.name, name, fs_group)}:{path}:rw"]
            elif "secret" in volume or "configMap" in volume:
                directory = self._files(container.name, volume, fs_group)
                host_dirs[path] = directory
                args += ["--volume", f"{directory}:{path}:ro"]
            else:
                raise Unsupported(f"{container.name}: volume {name} of kind {sorted(volume)}")
        return args

    # --- probes --------------------------------------------------------------------------------

    def _port(self, container: Container, port: Any) -> int:
        if isinstance(port, int):
            return port
        (main,) = container.pod_spec["containers"]
        return int(next(p["containerPort"] for p in main.get("ports") or [] if p.get("name") == port))

    def probe(self, container: Container, probe: dict[str, Any]) -> bool:
        """One run of a probe, as the kubelet runs it; True when it passes."""
        timeout = float(probe.get("timeoutSeconds", 1))
        if "httpGet" in probe:
            http = probe["httpGet"]
            url = f"http://{container.ip}:{self._port(container, http['port'])}{http.get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    return 200 <= int(response.status) < 400
            except (urllib.error.URLError, OSError):
                return False
        if "tcpSocket" in probe:
            try:
                socket.create_connection(
                    (container.ip, self._port(container, probe["tcpSocket"]["port"])), timeout
                ).close()
            except OSError:
                return False
            return True
        if "exec" in probe:
            done = subprocess.run(
                ["podman", "exec", container.name, *probe["exec"]["command"]],
                env=image.environment(),
                capture_output=True,
                timeout=max(timeout, 10),
                check=False,
            )
            return done.returncode == 0
        raise Unsupported(f"{container.name}: probe {sorted(probe)}")

    def _wait_ready(self, container: Container, *, deadline: float) -> None:
        (main,) = container.pod_spec["containers"]
        probes = [main[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in main]
        for probe in probes:
            while not self.probe(container, probe):
                if time.monotonic() > deadline:
                    logs = image.podman("logs", "--tail", "30", container.name, check=False)
                    raise TimeoutError(f"{container.name} never passed its probe {probe}:\n{logs}")
                time.sleep(0.5)

    def address(self, service: str) -> str:
        """The address of the first container behind a Service (by name)."""
        svc = self._object("Service", service)
        for container in self.containers:
            if _match(svc["spec"]["selector"], container.labels):
                return container.ip
        raise KeyError(service)

    def stop(self) -> None:
        for name in reversed(self._started):
            image.podman("rm", "--force", "--time", "5", name, check=False)
        self._started.clear()
        if self._network_made:
            image.podman("network", "rm", "--force", self.network, check=False)
            self._network_made = False
        shutil.rmtree(self.workdir, ignore_errors=True)
