"""``kubectl apply -k deploy/`` on a real API server: the CRD, the RBAC, the operator's own pod."""

from __future__ import annotations

import json

from cachedapi.operator import crd
from tests.e2e import build
from tests.e2e import cluster as control_plane

from .harness import DEPLOY, eventually


def test_the_control_plane_is_the_pinned_release_with_a_ready_node(cluster: control_plane.Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == build.KUBERNETES_VERSION
    assert version["clientVersion"]["gitVersion"] == build.KUBERNETES_VERSION
    node = cluster.get_json("node", control_plane.NODE_NAME)
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])


def test_deploy_installs_an_established_crd_with_its_columns_and_scale(deployed: control_plane.Cluster) -> None:
    live = deployed.get_json("crd", "cachedapis.cachedapi.dev")
    established = {c["type"]: c["status"] for c in live["status"]["conditions"]}
    assert established["Established"] == "True" and established["NamesAccepted"] == "True"
    # The server accepted the schema as structural and every CEL rule within its cost budget:
    # a refused rule would have failed the apply. What it stored is what we generated.
    version = live["spec"]["versions"][0]
    assert version["schema"] == crd.build()["spec"]["versions"][0]["schema"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Ready", "Endpoint", "Age"]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.gateway.replicas"
    assert live["spec"]["names"]["shortNames"] == ["capi"] and "all" in live["spec"]["names"]["categories"]


def test_a_second_apply_of_deploy_changes_nothing(deployed: control_plane.Cluster) -> None:
    # Fields the server drops (an empty list, an empty env value) would show as a change on
    # every apply; the shipped manifests have none.
    done = deployed.kubectl("apply", "-k", str(DEPLOY))
    changed = [line for line in done.stdout.splitlines() if not line.endswith(" unchanged")]
    assert changed == []


def test_the_operators_own_pod_is_admitted_under_the_restricted_standard(deployed: control_plane.Cluster) -> None:
    ns = control_plane.OPERATOR_NAMESPACE
    labels = deployed.get_json("namespace", ns)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"

    def available() -> bool:
        status = deployed.get_json("deployment", "cachedapi-operator", "-n", ns).get("status") or {}
        return status.get("availableReplicas") == 1

    eventually(available, what="the operator Deployment available")
    refused = [e for e in deployed.get_json("events", "-n", ns)["items"] if e["reason"] in {"FailedCreate", "Failed"}]
    assert refused == []
