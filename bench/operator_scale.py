"""Benchmark: N CachedApis applied at once to a real control plane, until every one is Ready.

The control plane of the e2e suite (tests/e2e: kube-apiserver, etcd, controller-manager
and scheduler built from the upstream Go modules, kwok's node), ``kubectl apply -k
deploy/``, and the operator as itself (``cachedapi operator``, the ServiceAccount's
token). N copies of examples/bookstore.yaml, in ten restricted namespaces, go in with one
``kubectl apply``; the clock runs until every CachedApi says Ready (so every Deployment
and StatefulSet is rolled out and available: 7 pods and a bound volume claim each). Then
the operator's resident memory (now and peak) and its requests by verb, from the API
server's audit log. Written to ``bench/results-operator.json`` (one entry per N).

    python -m bench.operator_scale [--count 100 --count 500]

The design target: 100 Ready within 60 s.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from cachedapi import model
from cachedapi.operator import children, render
from tests.e2e import build
from tests.e2e import cluster as control_plane
from tests.e2e.harness import DEPLOY, EXAMPLES, ROOT, restricted_namespace, running_operator

TARGET_SECONDS = 60.0
NAMESPACES = 10
RESULTS = ROOT / "bench" / "results-operator.json"


def _memory(pid: int) -> dict[str, float]:
    """The process's resident memory now and at its peak, in MiB (from /proc)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mib": fields["VmRSS"], "peak_rss_mib": fields["VmHWM"]}


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime, stime in clock ticks (100/s)


def _ready_count(cluster: control_plane.Cluster, prefix: str) -> int:
    """How many CachedApis in the namespaces named ``prefix...`` are Ready."""
    items = cluster.api_get("/apis/cachedapi.dev/v1alpha1/cachedapis")["items"]
    return sum(
        1
        for obj in items
        if obj["metadata"]["namespace"].startswith(prefix)
        and any(
            c["type"] == "Ready" and c["status"] == "True" for c in (obj.get("status") or {}).get("conditions") or []
        )
    )


def _workloads_ready(cluster: control_plane.Cluster, prefix: str) -> int:
    """How many Deployments and StatefulSets in the namespaces named ``prefix...`` are rolled out."""
    done = 0
    for path in ("/apis/apps/v1/deployments", "/apis/apps/v1/statefulsets"):
        for obj in cluster.api_get(path)["items"]:
            status, want = obj.get("status") or {}, obj["spec"].get("replicas", 1)
            if obj["metadata"]["namespace"].startswith(prefix) and (
                status.get("observedGeneration", 0) >= obj["metadata"]["generation"]
                and min(status.get("updatedReplicas", 0), status.get("readyReplicas", 0)) >= want
            ):
                done += 1
    return done


def baseline(cluster: control_plane.Cluster, count: int) -> dict[str, Any]:
    """The same children, rendered by ``cachedapi render`` and applied by kubectl, no operator:
    how long this control plane, on this machine, takes to roll them out by itself."""
    api = model.load_manifest(EXAMPLES / "bookstore.yaml")[0]
    prefix = f"b{count}-"
    for i in range(NAMESPACES):
        restricted_namespace(cluster, f"{prefix}team{i}")
    objects = []
    for i in range(count):
        named = model.parse(
            {
                **api.model_dump(by_alias=True),
                "metadata": {"name": f"api{i:03d}", "namespace": f"{prefix}team{i % NAMESPACES}"},
            }
        )
        for obj in children.desired_objects(named, render.render_inputs(named)):
            obj["metadata"].pop("ownerReferences")  # no CachedApi owns them here
            objects.append(obj)
    workloads = sum(1 for o in objects if o["kind"] in {"Deployment", "StatefulSet"})
    started = time.monotonic()
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects), timeout=1800)
    applied = time.monotonic() - started
    while _workloads_ready(cluster, prefix) < workloads:
        if time.monotonic() - started > 1800:
            raise TimeoutError("the baseline did not roll out in 30 min")
        time.sleep(1.0)
    converged = time.monotonic() - started
    for i in range(NAMESPACES):
        cluster.kubectl("delete", "namespace", f"{prefix}team{i}", "--wait=false")
    return {
        "objects": len(objects),
        "seconds_to_apply": round(applied, 1),
        "seconds_until_rolled_out": round(converged, 1),
    }


def run(cluster: control_plane.Cluster, count: int, workdir: Path) -> dict[str, Any]:
    template = yaml.safe_load((EXAMPLES / "bookstore.yaml").read_text(encoding="utf-8"))
    prefix = f"s{count}-"
    for i in range(NAMESPACES):
        restricted_namespace(cluster, f"{prefix}team{i}")
    bodies = []
    for i in range(count):
        body = copy.deepcopy(template)
        body["metadata"] = {"name": f"api{i:03d}", "namespace": f"{prefix}team{i % NAMESPACES}"}
        bodies.append(body)
    with running_operator(cluster, workdir, env={"CACHEDAPI_RESYNC_SECONDS": "60"}) as operator:
        time.sleep(3)  # the operator is up and watching (kopf's discovery done)
        assert operator.proc is not None
        pids = {name: proc.pid for name, proc in cluster.procs.items()} | {"operator": operator.proc.pid}
        cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        curve: list[tuple[float, int]] = []
        audit_from = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        started = time.monotonic()
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(bodies), timeout=600)
        applied = time.monotonic() - started
        while (ready := _ready_count(cluster, prefix)) < count:
            curve.append((round(time.monotonic() - started, 1), ready))
            if time.monotonic() - started > 1800:
                raise TimeoutError(f"{ready} of {count} Ready after 30 min")
            time.sleep(1.0)
        converged = time.monotonic() - started
        memory = _memory(operator.proc.pid)
        cpu = {name: round(_cpu_seconds(pid) - cpu_before[name], 1) for name, pid in pids.items()}
        operator.assert_clean()
    verbs = collections.Counter(
        e["verb"]
        for e in cluster.audit_events()
        if e["user"]["username"] == control_plane.OPERATOR_USER and e["stageTimestamp"] >= audit_from
    )
    for i in range(NAMESPACES):
        cluster.kubectl("delete", "namespace", f"{prefix}team{i}", "--wait=false")
    return {
        "cachedapis": count,
        "pods": count * 7,
        "seconds_to_apply": round(applied, 1),
        "seconds_until_all_ready": round(converged, 1),
        "target_seconds": TARGET_SECONDS if count == 100 else None,
        "operator_memory": memory,
        "cpu_seconds_by_process": cpu,
        "ready_over_time": curve[:: max(1, len(curve) // 30)],
        "operator_requests_by_verb": dict(sorted(verbs.items())),
        "kubernetes": build.KUBERNETES_VERSION,
        "machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _deploy(cluster: control_plane.Cluster) -> None:
    cluster.kubectl("apply", "-k", str(DEPLOY))
    cluster.kubectl("wait", "--for=condition=Established", "crd/cachedapis.cachedapi.dev", "--timeout=60s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, action="append", help="how many CachedApis (repeatable; default 100)")
    parser.add_argument(
        "--baseline", action="store_true", help="also roll out the same objects without the operator (kubectl apply)"
    )
    args = parser.parse_args()
    results = []
    for count in args.count or [100]:
        # Each measurement on a control plane of its own, fresh, so that none pays for another's clean-up.
        with control_plane.Cluster(binaries=build.ensure()) as cluster, tempfile.TemporaryDirectory() as tmp:
            _deploy(cluster)
            result = run(cluster, count, Path(tmp))
        print(
            f"{count} CachedApis ({result['pods']} pods): all Ready in {result['seconds_until_all_ready']} s; "
            f"operator RSS {result['operator_memory']['rss_mib']} MiB "
            f"(peak {result['operator_memory']['peak_rss_mib']}); requests {result['operator_requests_by_verb']}; "
            f"CPU s {result['cpu_seconds_by_process']}",
            flush=True,
        )
        if args.baseline:
            with control_plane.Cluster(binaries=build.ensure()) as cluster:
                _deploy(cluster)
                result["without_operator"] = baseline(cluster, count)
            print(f"  the same objects by kubectl apply, no operator: {result['without_operator']}", flush=True)
        results.append(result)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
