"""Drift detection: what counts as a child edited by hand, and what is the API server's own doing."""

from __future__ import annotations

import copy
from typing import Any

from cachedapi.operator import drift

DESIRED: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {
        "name": "x-api",
        "namespace": "ns",
        "labels": {"app": "x"},
        "ownerReferences": [{"uid": "u1", "controller": True, "kind": "CachedApi", "name": "x"}],
    },
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "x"}},
        "template": {
            "metadata": {"annotations": {"cachedapi.dev/config-hash": "h1"}},
            "spec": {"containers": [{"name": "api", "resources": {"requests": {"cpu": "0.5", "memory": "64Mi"}}}]},
        },
    },
}


def _live() -> dict[str, Any]:
    """What an API server returns for DESIRED: defaults added, quantities canonicalised."""
    live = copy.deepcopy(DESIRED)
    live["metadata"]["uid"] = "child-uid"
    live["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "1"}
    live["spec"]["progressDeadlineSeconds"] = 600
    container = live["spec"]["template"]["spec"]["containers"][0]
    container["resources"]["requests"]["cpu"] = "500m"
    container["terminationMessagePath"] = "/dev/termination-log"
    live["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] = "now"
    live["status"] = {"replicas": 2}
    return live


def test_server_defaults_and_canonical_quantities_are_not_drift() -> None:
    assert not drift.differs(DESIRED, _live())


def test_changed_replicas_hash_or_extra_container_is_drift() -> None:
    live = _live()
    live["spec"]["replicas"] = 9
    assert drift.differs(DESIRED, live)
    live = _live()
    live["spec"]["template"]["metadata"]["annotations"]["cachedapi.dev/config-hash"] = "old"
    assert drift.differs(DESIRED, live)
    live = _live()
    live["spec"]["template"]["spec"]["containers"].append({"name": "sidecar"})
    assert drift.differs(DESIRED, live)


def test_a_lost_owner_reference_or_label_is_drift_and_the_patch_keeps_other_owners() -> None:
    live = _live()
    live["metadata"]["ownerReferences"] = [{"uid": "someone-else", "controller": False}]
    live["metadata"]["labels"] = {}
    assert drift.differs(DESIRED, live)
    patch = drift.patch_body(DESIRED, live)
    assert [r["uid"] for r in patch["metadata"]["ownerReferences"]] == ["someone-else", "u1"]
    assert patch["metadata"]["labels"] == {"app": "x"}
    assert "status" not in patch and "apiVersion" not in patch


def test_immutable_and_create_only_fields_are_neither_compared_nor_patched() -> None:
    live = _live()
    live["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    live["spec"]["replicas"] = 7  # an HPA's choice
    ignore = [("spec", "replicas")]
    assert not drift.differs(DESIRED, live, ignore=ignore)
    patch = drift.patch_body(DESIRED, live, ignore=ignore)
    assert "selector" not in patch["spec"] and "replicas" not in patch["spec"]


def test_quantities_compare_by_value_only_under_resources() -> None:
    assert drift.contains({"requests": {"cpu": "1"}}, {"requests": {"cpu": "1000m"}})
    assert drift.contains({"limits": {"memory": "1Gi"}}, {"limits": {"memory": "1024Mi"}})
    assert not drift.contains({"requests": {"cpu": "1"}}, {"requests": {"cpu": "2"}})
    assert not drift.contains({"image": "1"}, {"image": "1.0"})
    assert not drift.contains({"port": 1}, {"port": True})


def test_a_stale_controller_reference_is_replaced_not_doubled() -> None:
    live = _live()
    live["metadata"]["ownerReferences"] = [
        {"uid": "old-incarnation", "controller": True, "kind": "CachedApi", "name": "x"}
    ]
    assert drift.differs(DESIRED, live)
    refs = drift.patch_body(DESIRED, live)["metadata"]["ownerReferences"]
    assert [(r["uid"], r["controller"]) for r in refs] == [("u1", True)]
