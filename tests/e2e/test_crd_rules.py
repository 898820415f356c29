"""The CRD's schema and CEL rules as a real API server applies them, and the model agrees.

What one refuses, so does the other: the API server refuses at admission (with the
rule's message), the operator's model refuses what reaches it anyway. Transition
rules (``oldSelf``) are checked on real updates. Server-side dry runs leave nothing
behind, except the stored "old" objects of the transition cases, in the test's own
namespace. No operator runs in this module.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cachedapi import model
from tests.e2e import cluster as control_plane

from .harness import EXAMPLES

SECRET = {"name": "s", "key": "k"}
IMAGE = "ghcr.io/example/catalog:1.4"


def _api(namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "cachedapi.dev/v1alpha1",
        "kind": "CachedApi",
        "metadata": {"name": "shop", "namespace": namespace},
        "spec": {"resources": [{"name": "books"}], **spec},
    }


def admit(cluster: control_plane.Cluster, body: dict[str, Any], *, update: bool = False) -> str:
    """What the API server says of ``body`` (a dry run): "" when admitted, else its message."""
    verb = ["replace"] if update else ["create"]
    done = cluster.kubectl(*verb, "--dry-run=server", "-f", "-", stdin=json.dumps(body), check=False)
    return "" if done.returncode == 0 else done.stderr.strip()


REFUSED = {
    "redis both managed and external": {"cache": {"redis": {"managed": {}, "external": {"urlSecretRef": SECRET}}}},
    "database both managed and external": {"database": {"managed": {}, "external": {"urlSecretRef": SECRET}}},
    "jwt mode without jwt": {"gateway": {"auth": {"mode": "jwt"}}},
    "jwt with both key sources": {
        "gateway": {"auth": {"mode": "jwt", "jwt": {"jwksUrl": "https://idp/jwks", "secretRef": SECRET}}}
    },
    "jwt with no key source": {"gateway": {"auth": {"mode": "jwt", "jwt": {"issuer": "me"}}}},
    "autoscaling min above max": {"api": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}},
    "autoscaling max below the default min": {"gateway": {"autoscaling": {"maxReplicas": 1}}},
    "negative replicas": {"gateway": {"replicas": -1}},
    "unknown auth mode": {"gateway": {"auth": {"mode": "basic"}}},
    "zero requests per second": {"gateway": {"rateLimit": {"requestsPerSecond": 0}}},
    "port out of range": {"gateway": {"service": {"port": 70000}}},
    "ttl above a day": {"cache": {"defaultTtlSeconds": 100_000}},
    "storage not a quantity": {"database": {"managed": {"storage": "lots"}}},
    "resource name with capitals": {"resources": [{"name": "Books"}]},
    "no resources": {"resources": []},
    # The bundled api role (no api.image) needs a database and takes no caching routes.
    "no database with the bundled api role": {"database": {"none": {}}},
    "routes with the bundled api role": {"cache": {"routes": [{"path": "/v1/*"}]}},
    # The user's own API.
    "no database and a managed one": {"api": {"image": IMAGE}, "database": {"none": {}, "managed": {}}},
    "env value and valueFrom": {
        "api": {"image": IMAGE, "env": [{"name": "A", "value": "x", "valueFrom": {"secretKeyRef": SECRET}}]}
    },
    "env from nowhere": {"api": {"image": IMAGE, "env": [{"name": "A", "valueFrom": {}}]}},
    "env name twice": {"api": {"image": IMAGE, "env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}},
    "route path twice": {"api": {"image": IMAGE}, "cache": {"routes": [{"path": "/a"}, {"path": "/a"}]}},
    "route path with a star inside": {"api": {"image": IMAGE}, "cache": {"routes": [{"path": "/v1/*/x"}]}},
    "api port out of range": {"api": {"image": IMAGE, "port": 0}},
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_what_the_api_server_refuses_the_model_refuses_too(deployed: control_plane.Cluster, case: str) -> None:
    body = _api("default", **REFUSED[case])
    assert admit(deployed, body), f"the API server admits {case}"
    with pytest.raises(model.ManifestError):
        model.parse(body)


ACCEPTED = {
    "external redis": {"cache": {"redis": {"external": {"urlSecretRef": SECRET}}}},
    "empty redis means managed": {"cache": {"redis": {}}},
    "jwt from a jwks url": {"gateway": {"auth": {"mode": "jwt", "jwt": {"jwksUrl": "https://idp/jwks"}}}},
    "jwt from a secret": {"gateway": {"auth": {"mode": "jwt", "jwt": {"secretRef": SECRET}}}},
    "autoscaling with defaults": {"api": {"autoscaling": {}}},
    "auth left out": {"gateway": {"replicas": 1}},
    "own api without resources": {"api": {"image": IMAGE}, "resources": []},
    "own api without a database": {"api": {"image": IMAGE}, "database": {"none": {}}},
    "own api with routes and env": {
        "api": {
            "image": IMAGE,
            "port": 9000,
            "databaseUrlEnv": "DATABASE_URL",
            "env": [{"name": "A", "value": "1"}, {"name": "T", "valueFrom": {"secretKeyRef": SECRET}}],
            "probes": {"readinessPath": "/ready"},
        },
        "cache": {"routes": [{"path": "/v1/*", "ttlSeconds": 60, "varyHeaders": ["Accept"], "byCaller": True}]},
    },
}


@pytest.mark.parametrize("case", ACCEPTED, ids=list(ACCEPTED))
def test_valid_variants_are_admitted_by_the_api_server_and_the_model(
    deployed: control_plane.Cluster, case: str
) -> None:
    body = _api("default", **ACCEPTED[case])
    assert admit(deployed, body) == ""
    model.parse(body)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_admitted(deployed: control_plane.Cluster, path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if doc:
            doc["metadata"]["namespace"] = "default"
            assert admit(deployed, doc) == ""


def test_defaults_fill_what_the_user_left_out(deployed: control_plane.Cluster) -> None:
    done = deployed.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(_api("default")))
    stored = json.loads(done.stdout)
    spec = stored["spec"]
    assert spec["gateway"]["replicas"] == 2 and spec["gateway"]["auth"]["mode"] == "apiKey"
    assert spec["database"] == {
        "managed": {"storage": "1Gi", "storageClassName": "", "resources": {"requests": {}, "limits": {}}}
    }
    # And the model reads the stored object exactly as it reads the manifest.
    assert model.parse(stored).spec == model.parse(_api("default")).spec


def _transition(
    cluster: control_plane.Cluster, namespace: str, old: dict[str, Any], change: dict[str, Any]
) -> tuple[str, str]:
    """Store ``old``; what the server says of an update to ``old`` with ``change`` merged in, and
    of an update that changes nothing."""
    cluster.kubectl("create", "-f", "-", stdin=json.dumps(old))
    new = copy.deepcopy(old)
    new["spec"].update(change)
    said = admit(cluster, new, update=True), admit(cluster, old, update=True)
    cluster.kubectl("delete", "cachedapi", old["metadata"]["name"], "-n", namespace)
    return said


def test_storage_class_cannot_change_after_creation(deployed: control_plane.Cluster, namespace: str) -> None:
    old = _api(namespace, database={"managed": {"storageClassName": "fast"}})
    changed, same = _transition(deployed, namespace, old, {"database": {"managed": {"storageClassName": "slow"}}})
    assert "storageClassName is immutable" in changed and same == ""


def test_database_storage_cannot_change_silently(deployed: control_plane.Cluster, namespace: str) -> None:
    old = _api(namespace, database={"managed": {"storage": "1Gi"}})
    changed, same = _transition(deployed, namespace, old, {"database": {"managed": {"storage": "5Gi"}}})
    assert "expand its PersistentVolumeClaim" in changed and same == ""


def test_database_cannot_switch_between_managed_and_external(deployed: control_plane.Cluster, namespace: str) -> None:
    external = {"database": {"external": {"urlSecretRef": SECRET}}}
    to_external, _ = _transition(deployed, namespace, _api(namespace), external)
    to_managed, _ = _transition(deployed, namespace, _api(namespace, **external), {"database": {"managed": {}}})
    assert "switching the database" in to_external and "switching the database" in to_managed


def test_a_managed_database_cannot_be_dropped_but_one_may_be_added(
    deployed: control_plane.Cluster, namespace: str
) -> None:
    own = {"image": IMAGE}
    dropped, same = _transition(deployed, namespace, _api(namespace, api=own), {"database": {"none": {}}})
    assert "the managed database cannot be removed" in dropped and same == ""
    none = {"database": {"none": {}}}
    to_managed, _ = _transition(deployed, namespace, _api(namespace, api=own, **none), {"database": {"managed": {}}})
    external = {"database": {"external": {"urlSecretRef": SECRET}}}
    to_external, _ = _transition(deployed, namespace, _api(namespace, api=own, **none), external)
    back_to_none, _ = _transition(deployed, namespace, _api(namespace, api=own, **external), none)
    assert (to_managed, to_external, back_to_none) == ("", "", "")


def test_what_the_bundled_role_needs_is_refused_naming_the_field(deployed: control_plane.Cluster) -> None:
    """The rules on spec name their field (fieldPath), as the model's messages do."""
    for spec, field in (
        ({"resources": []}, "spec.resources"),
        ({"database": {"none": {}}}, "spec.database.none"),
        ({"cache": {"routes": [{"path": "/x"}]}}, "spec.cache.routes"),
    ):
        said = admit(deployed, _api("default", **spec))
        assert field in said, said
        with pytest.raises(model.ManifestError, match=field.replace(".", r"\.")):
            model.parse(_api("default", **spec))


def test_redis_may_switch_from_managed_to_external(deployed: control_plane.Cluster, namespace: str) -> None:
    changed, _ = _transition(
        deployed, namespace, _api(namespace), {"cache": {"redis": {"external": {"urlSecretRef": SECRET}}}}
    )
    assert changed == ""
