"""With a grant of the shipped ClusterRole taken away, a real API server refuses the operator, and
the failure is reported with the verb and the resource; nothing crash-loops, and the operator
converges once the grant is back. (That the ClusterRole is enough for a full run, and no more
than it needs, is shown by tests/security on the same server.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import cluster as control_plane

from .harness import DEPLOY, EXAMPLES, Operator, apply, condition, eventually, load

CLUSTER_ROLE = "cachedapi-operator"


def _get(cluster: control_plane.Cluster, namespace: str, name: str = "bookstore") -> dict[str, Any]:
    return json.loads(cluster.kubectl("get", "cachedapi", name, "-n", namespace, "-o", "json").stdout)


def _ready(cluster: control_plane.Cluster, namespace: str) -> None:
    eventually(lambda: condition(_get(cluster, namespace), "Ready").get("status") == "True", what="Ready")


@pytest.fixture
def restore_rbac(deployed: control_plane.Cluster) -> Iterator[None]:
    yield
    deployed.kubectl("apply", "-f", str(DEPLOY / "rbac.yaml"), "-n", control_plane.OPERATOR_NAMESPACE)


def _without(cluster: control_plane.Cluster, *, verb: str, resource: str) -> None:
    """Take ``verb`` on ``resource`` out of the live ClusterRole."""
    role = cluster.get_json("clusterrole", CLUSTER_ROLE)
    rules = []
    for rule in role["rules"]:
        if resource in rule["resources"] and verb in rule["verbs"]:
            others = [r for r in rule["resources"] if r != resource]
            if others:
                rules.append({**rule, "resources": others})
            verbs = [v for v in rule["verbs"] if v != verb]
            if verbs:
                rules.append({**rule, "resources": [resource], "verbs": verbs})
        else:
            rules.append(rule)
    cluster.kubectl("patch", "clusterrole", CLUSTER_ROLE, "--type=merge", "-p", json.dumps({"rules": rules}))


@pytest.mark.usefixtures("restore_rbac")
def test_a_missing_write_grant_is_reported_in_status_naming_verb_and_resource(
    deployed: control_plane.Cluster, operator: Operator, namespace: str
) -> None:
    _without(deployed, verb="create", resource="poddisruptionbudgets")
    apply(deployed, load(EXAMPLES / "bookstore.yaml", namespace=namespace))

    def reported() -> str:
        message = condition(_get(deployed, namespace), "Ready").get("message", "")
        return message if "poddisruptionbudgets" in message else ""

    message = eventually(reported, what="the refused create in Ready's message")
    assert (
        'cannot create resource "poddisruptionbudgets"' in message
        and _get(deployed, namespace)["status"]["phase"] != "Ready"
    )
    assert 'cannot create resource "poddisruptionbudgets"' in operator.log
    # Everything else was built; the operator is up and keeps trying (slowly), not crash-looping.
    assert deployed.get_json("deployment", "bookstore-gateway", "-n", namespace)
    assert operator.proc is not None and operator.proc.poll() is None

    # The grant comes back: the next retry converges.
    deployed.kubectl("apply", "-f", str(DEPLOY / "rbac.yaml"), "-n", control_plane.OPERATOR_NAMESPACE)
    _ready(deployed, namespace)


@pytest.mark.usefixtures("restore_rbac")
def test_a_missing_status_grant_is_logged_naming_verb_and_resource(
    deployed: control_plane.Cluster, operator: Operator, namespace: str, tmp_path: Path
) -> None:
    _without(deployed, verb="patch", resource="cachedapis/status")
    apply(deployed, load(EXAMPLES / "minimal.yaml", namespace=namespace))
    eventually(lambda: 'cannot patch resource "cachedapis/status"' in operator.log, what="the refusal in the log")
    assert not _get(deployed, namespace, "notes").get("status"), "no status could be written"
    assert operator.proc is not None and operator.proc.poll() is None
    deployed.kubectl("apply", "-f", str(DEPLOY / "rbac.yaml"), "-n", control_plane.OPERATOR_NAMESPACE)
    eventually(lambda: condition(_get(deployed, namespace, "notes"), "Ready").get("status") == "True", what="Ready")
