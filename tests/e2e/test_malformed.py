"""Malformed CachedApis on a real API server: each is refused at admission, naming the field,
or admitted and then reported by the running operator as ``SpecValid=False``, naming the field.

The API server applies the CRD's structural schema and CEL rules first, so most of this
corpus never reaches the operator; ``kubectl apply`` asks for strict field validation by
default, so an unknown field is refused too (a client that does not ask gets it pruned).
What the CRD cannot say (a resource's JSON Schema that is not one, a configuration too big
for a ConfigMap) reaches the operator, which must report it, build nothing for it, stay up,
and go on serving the good objects applied alongside (one of them big).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.e2e import cluster as control_plane

from .harness import condition, eventually, restricted_namespace

pytestmark = pytest.mark.usefixtures("operator")

NS = "corpus"
GOOD = "good"
#: How the API server takes each case (``kubectl apply``, strict field validation): "refuses"
#: (schema, CEL or unknown field), "admits" (nothing in the CRD can say it: only the operator can).
CORPUS: dict[str, tuple[str, dict[str, Any], str]] = {
    # id: (what the API server does, spec fields over the minimal spec, the field the message names)
    "replicas-not-a-number": ("refuses", {"gateway": {"replicas": "two"}}, "spec.gateway.replicas"),
    "negative-replicas": ("refuses", {"api": {"replicas": -1}}, "spec.api.replicas"),
    "no-resources": ("refuses", {"resources": None}, "spec.resources"),
    "empty-resources": ("refuses", {"resources": []}, "spec.resources"),
    "too-many-resources": ("refuses", {"resources": [{"name": f"r{i}"} for i in range(101)]}, "spec.resources"),
    "unknown-field": ("refuses", {"gatway": {"replicas": 3}}, "spec.gatway"),
    "bad-enum": ("refuses", {"gateway": {"auth": {"mode": "oauth"}}}, "spec.gateway.auth.mode"),
    "redis-managed-and-external": (
        "refuses",
        {"cache": {"redis": {"managed": {}, "external": {"urlSecretRef": {"name": "r", "key": "url"}}}}},
        "spec.cache.redis",
    ),
    "jwt-mode-without-jwt": ("refuses", {"gateway": {"auth": {"mode": "jwt"}}}, "spec.gateway.auth"),
    "schema-not-json-schema": (
        "admits",
        {"resources": [{"name": "notes", "schema": {"type": "object", "properties": {"a": {"type": "strin"}}}}]},
        "spec.resources[0]",
    ),
    "schema-not-an-object": ("admits", {"resources": [{"name": "notes", "schema": {"type": "array"}}]}, "[0]"),
    "duplicate-resource-names": ("refuses", {"resources": [{"name": "notes"}, {"name": "notes"}]}, "notes"),
    "resource-name-not-a-table-name": ("refuses", {"resources": [{"name": "Notes-1"}]}, "spec.resources[0].name"),
    "ttl-over-a-day": ("refuses", {"cache": {"defaultTtlSeconds": 10**9}}, "spec.cache.defaultTtlSeconds"),
    "zero-rate": ("refuses", {"gateway": {"rateLimit": {"requestsPerSecond": 0}}}, "requestsPerSecond"),
    "quantity-not-a-quantity": (
        "refuses",
        {"cache": {"redis": {"managed": {"maxMemory": "lots"}}}},
        "spec.cache.redis.managed.maxMemory",
    ),
    "limits-a-list": ("refuses", {"gateway": {"resources": {"limits": ["1Gi"]}}}, "spec.gateway.resources.limits"),
    "autoscaling-upside-down": (
        "refuses",
        {"api": {"autoscaling": {"minReplicas": 9, "maxReplicas": 2}}},
        "spec.api.autoscaling",
    ),
    "port-out-of-range": ("refuses", {"gateway": {"service": {"port": 70000}}}, "spec.gateway.service.port"),
    "spec-not-an-object": ("refuses", {"__spec__": "everything please"}, "spec"),
}
LONG_NAME = "a" * 41  # child names append "-db-credentials"; 63 is the limit of a label value


def _body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    full: Any = {"resources": [{"name": "notes"}]}
    if "__spec__" in spec:
        full = spec["__spec__"]
    else:
        for key, value in spec.items():
            if value is None:
                full.pop(key, None)
            else:
                full[key] = value
    return {
        "apiVersion": "cachedapi.dev/v1alpha1",
        "kind": "CachedApi",
        "metadata": {"name": name, "namespace": NS},
        "spec": full,
    }


def _huge(*, count: int = 100) -> dict[str, Any]:
    """Resources (100: the most there may be) each with a JSON Schema of 80 properties: ~0.9 MB,
    which the API server stores, but whose configuration would be over a ConfigMap's 1 MiB."""
    properties = {f"field_{i:03d}": {"type": "string", "maxLength": 200, "description": "x" * 40} for i in range(80)}
    resources = [{"name": f"r{i:03d}", "schema": {"type": "object", "properties": properties}} for i in range(count)]
    return _body(f"huge-{count}", {"resources": resources})


def _cases() -> dict[str, tuple[str, dict[str, Any], str]]:
    """Every case as (how the API server takes it, the object, the field named)."""
    out = {case: (crd, _body(case, spec), field) for case, (crd, spec, field) in CORPUS.items()}
    out["name-too-long"] = ("refuses", _body(LONG_NAME, {}), "metadata.name")
    out["configuration-over-a-configmap"] = ("admits", _huge(), "spec.resources")
    return out


def _apply(cluster: control_plane.Cluster, body: dict[str, Any]) -> str:
    """``kubectl apply --server-side``; "" when stored, else what the server said. (Client-side
    apply keeps a copy of the object in an annotation, which may not exceed 256 KiB, so it cannot
    apply the biggest CachedApis at all; server-side apply can.)"""
    done = cluster.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(body), check=False)
    return "" if done.returncode == 0 else done.stderr.strip()


def test_each_malformed_object_is_refused_naming_the_field_or_reported_by_the_operator(
    deployed: control_plane.Cluster,
) -> None:
    restricted_namespace(deployed, NS)
    cases = _cases()
    said = {case: _apply(deployed, copy.deepcopy(body)) for case, (_, body, _) in cases.items()}
    assert _apply(deployed, _body(GOOD, {})) == ""
    assert _apply(deployed, _huge(count=10)) == ""  # big (~90 kB), and within every bound

    summary = []
    for case, (expected, _, field) in cases.items():
        outcome = "refuses" if said[case] else "admits"
        summary.append(f"{case}: {outcome}: {said[case] or '-'}")
        assert outcome == expected, f"{case}: the API server {outcome} it: {said[case]}"
        if said[case]:
            assert field in said[case], f"{case}: {said[case]!r} does not name {field}"
    print("\n".join(summary))

    admitted = {case: body["metadata"]["name"] for case, (expected, body, _) in cases.items() if expected == "admits"}

    def reported() -> dict[str, str] | None:
        found = {}
        for case, name in admitted.items():
            obj = json.loads(deployed.kubectl("get", "cachedapi", name, "-n", NS, "-o", "json").stdout)
            if condition(obj, "SpecValid").get("status") != "False":
                return None
            found[case] = condition(obj, "SpecValid")["message"]
            assert obj["status"]["phase"] == "Failed", case
        return found

    messages = eventually(reported, what="SpecValid=False on every admitted case")
    for case, name in admitted.items():
        field = cases[case][2]
        assert field in messages[case], f"{case}: {messages[case]!r} does not name {field}"
        built = deployed.get_json("deployments,configmaps", "-n", NS, "-l", f"app.kubernetes.io/instance={name}")
        assert built["items"] == [], f"{case}: children built from an invalid spec"
    for good in (GOOD, "huge-10"):
        eventually(lambda g=good: _ready(deployed, g), what=f"{good} Ready")  # type: ignore[misc]


def _ready(cluster: control_plane.Cluster, name: str) -> bool:
    obj = json.loads(cluster.kubectl("get", "cachedapi", name, "-n", NS, "-o", "json").stdout)
    return condition(obj, "Ready").get("status") == "True"


def test_a_client_that_does_not_ask_for_strict_validation_gets_unknown_fields_pruned(
    deployed: control_plane.Cluster, namespace: str
) -> None:
    body = _body("pruned", {"gatway": {"replicas": 3}})
    body["metadata"]["namespace"] = namespace
    deployed.kubectl("apply", "--validate=false", "-f", "-", stdin=json.dumps(body))
    stored = deployed.get_json("cachedapi", "pruned", "-n", namespace)
    assert "gatway" not in stored["spec"] and stored["spec"]["gateway"]["replicas"] == 2
