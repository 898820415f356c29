"""``deploy/``: renders with kustomize, validates, and grants the operator no more than it uses."""

from __future__ import annotations

import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cachedapi.operator import kube
from cachedapi.operator.children import inputs
from tests.e2e import build

from ..conftest import ROOT


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    done = subprocess.run(
        [build.ensure(quiet=True).path("kubectl"), "kustomize", str(ROOT / "deploy")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _one(rendered: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in rendered if d["kind"] == kind]
    return found


def test_kustomize_renders_objects_valid_for_kubernetes(rendered: list[dict[str, Any]]) -> None:
    assert sorted(d["kind"] for d in rendered) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "Namespace",
        "NetworkPolicy",
        "ServiceAccount",
    ]
    for doc in rendered:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_cluster_role_names_only_what_the_operator_uses(rendered: list[dict[str, Any]]) -> None:
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in _one(rendered, "ClusterRole")["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    for kind in kube.CHILD_KINDS.values():
        group = kind.api_version.rsplit("/", 1)[0] if "/" in kind.api_version else ""
        expected = {"get", "create"} if kind.kind == "Secret" else {"list", "watch", "create", "patch", "delete"}
        assert grants.pop((group, kind.plural)) == expected, kind.kind
    assert grants.pop(("cachedapi.dev", "cachedapis")) == {"list", "watch"}
    assert grants.pop(("cachedapi.dev", "cachedapis/status")) == {"patch"}
    assert grants.pop(("", "events")) == {"create"}
    assert grants.pop(("apiextensions.k8s.io", "customresourcedefinitions")) == {"list", "watch"}
    assert grants == {}, "a grant the operator does not use"


def test_operator_runs_alone_restricted_with_a_liveness_probe(rendered: list[dict[str, Any]]) -> None:
    deployment = _one(rendered, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["image"] == inputs.DEFAULT_IMAGE and container["args"] == ["operator"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CACHEDAPI_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8080/healthz"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    namespace = _one(rendered, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_image_runs_as_the_numeric_user_the_pods_declare() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "USER 65532:65532" in dockerfile and 'ENTRYPOINT ["cachedapi"]' in dockerfile


def test_operator_pod_takes_no_connections_and_reaches_only_api_server_ports(rendered: list[dict[str, Any]]) -> None:
    policy = _one(rendered, "NetworkPolicy")
    pod_labels = _one(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["metadata"]["namespace"] == "cachedapi-system"
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and not policy["spec"].get("ingress")
    (egress,) = policy["spec"]["egress"]
    assert "to" not in egress and {p["port"] for p in egress["ports"]} == {443, 6443, 8443}
