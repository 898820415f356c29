"""Malformed CachedApis: each is refused by the CRD, or reported by the running operator.

On a cluster, the API server applies the CRD's structural schema and CEL rules first
(``admission`` plays that part here): most of this corpus never reaches the operator, and
an unknown field is pruned (or refused by ``kubectl --validate=strict``). The emulator
enforces no schema at all, so every object here does reach the operator, which is the
second line: it must report ``SpecValid=False`` with a message naming the field, stay up,
and go on serving the good objects applied alongside (one of them big, and some whose status
someone else wrote wrong, which the operator must rewrite, not choke on).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kmock
import pytest

from . import admission
from . import emulator as em

NS = "corpus"
GOOD = "good"
#: How the API server takes each case: "refuses" (schema or CEL), "prunes" (unknown fields
#: dropped), "admits" (nothing in the CRD can say it: only the operator catches it).
CORPUS: dict[str, tuple[str, dict[str, Any], str]] = {
    # id: (what the API server does, spec fields over the minimal spec, the field the message names)
    "replicas-not-a-number": ("refuses", {"gateway": {"replicas": "two"}}, "spec.gateway.replicas"),
    "negative-replicas": ("refuses", {"api": {"replicas": -1}}, "spec.api.replicas"),
    "no-resources": ("refuses", {"resources": None}, "spec.resources"),
    "empty-resources": ("refuses", {"resources": []}, "spec.resources"),
    "too-many-resources": ("refuses", {"resources": [{"name": f"r{i}"} for i in range(101)]}, "spec.resources"),
    "unknown-field": ("prunes", {"gatway": {"replicas": 3}}, "spec.gatway"),
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
#: Statuses someone else wrote wrong (a real API server's schema refuses most of these; anyone
#: allowed to patch the status subresource can still write an unreadable one to the emulator).
#: A status that is not an object at all is not here: kmock cannot merge-patch an object into a
#: string (RFC 7396 says replace), and the CRD's schema refuses such a status anyway.
BAD_STATUSES: dict[str, Any] = {
    "conditions-not-objects": {"conditions": ["x", {"type": 5}, {"status": "True"}]},
    "conditions-not-a-list": {"conditions": "x", "phase": 3, "observedGeneration": "seven"},
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


@pytest.mark.parametrize("case", list(_cases()))
def test_the_crd_refuses_what_its_schema_can_say(case: str) -> None:
    crd, body, _ = _cases()[case]
    errors = admission.admit(copy.deepcopy(body))
    if crd == "refuses":
        assert errors, f"the CRD admits {case}"
    else:
        assert errors == [], f"{case}: expected the CRD to {crd} it, it refuses: {errors}"


def _stored(cluster: em.Cluster, name: str) -> dict[str, Any] | None:
    """A CachedApi as stored, read from the emulator's memory: polling ~1 MB objects over HTTP
    would keep the emulator (on the test's own event loop) too busy to serve the operator."""
    key = (kmock.resource("cachedapi.dev", "v1alpha1", "cachedapis"), NS, name)
    if key not in cluster.emulator.objects or cluster.emulator.objects[key].deleted:
        return None
    return dict(cluster.emulator.objects[key].raw)


async def test_the_operator_reports_each_malformed_object_by_field_and_keeps_serving_the_good_ones(
    tmp_path: Path,
) -> None:
    cases = _cases()
    async with em.emulated_cluster() as cluster:
        with em.operator_process(server=cluster.url, workdir=tmp_path, resync_seconds=2.0) as proc:
            for _, body, _ in cases.values():
                await cluster.apply_cachedapi(copy.deepcopy(body))
            await cluster.apply_cachedapi(_body(GOOD, {}))
            for name, bad_status in BAD_STATUSES.items():
                await cluster.apply_cachedapi({**_body(name, {}), "status": bad_status})
            await cluster.apply_cachedapi(_huge(count=10))  # big (~90 kB), and within every bound

            async def reported() -> dict[str, str] | None:
                found = {}
                for case, (_, body, _) in cases.items():
                    obj = _stored(cluster, body["metadata"]["name"])
                    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
                    spec_valid = next((c for c in conditions if c["type"] == "SpecValid"), None)
                    if spec_valid is None:
                        return None
                    assert spec_valid["status"] == "False", case
                    found[case] = spec_valid["message"]
                return found

            messages = await em.eventually(reported, timeout=60, interval=0.3)
            for case, (_, _, field) in cases.items():
                assert field in messages[case], f"{case}: {messages[case]!r} does not name {field}"
                built = [k for k in cluster.children(NS, cases[case][1]["metadata"]["name"]) if k[0] != "Secret"]
                assert built == [], f"{case}: children built from an invalid spec"

            for good in (GOOD, "huge-10", *BAD_STATUSES):
                await em.eventually(lambda g=good: ("Deployment", f"{g}-gateway") in cluster.children(NS, g))

                def status_rewritten(g: str = good) -> bool:
                    st = (_stored(cluster, g) or {}).get("status") or {}
                    return isinstance(st, dict) and st.get("phase") in {"Pending", "Provisioning"}

                await em.eventually(status_rewritten)
                conditions = (_stored(cluster, good) or {})["status"]["conditions"]
                assert {c["type"] for c in conditions} >= {"Ready", "SpecValid"}, good
                assert all(isinstance(c, dict) and isinstance(c["type"], str) for c in conditions), good
            assert proc.poll() is None, "the operator exited"
    log = (tmp_path / "operator.log").read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 200 :][:3000]
    assert [line for line in log.splitlines() if " ERROR " in line] == []
