"""The CRD: generated from the model, committed, and as strict as the model where a schema can be."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cachedapi import model
from cachedapi.operator import crd

from ..conftest import EXAMPLES

REGENERATE = "regenerate with: python -m cachedapi.operator.crd --write"


def _committed(path: Any) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd.build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _validator() -> jsonschema.Draft4Validator:
    # OpenAPI v3.0 schemas use draft-4 semantics (exclusiveMinimum is a boolean);
    # the x-kubernetes-* keywords are the API server's and are ignored here.
    return jsonschema.Draft4Validator(_schema())


@pytest.mark.parametrize("path", crd.CRD_PATHS, ids=lambda p: str(p.relative_to(crd.ROOT)))
def test_committed_crd_is_what_the_model_generates(path: Any) -> None:
    assert path.exists(), f"{path} is missing; {REGENERATE}"
    assert path.read_text(encoding="utf-8") == crd.dump(), f"{path} drifted from cachedapi/model.py; {REGENERATE}"


def test_crd_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate.validate(crd.build(), kubernetes_validate.latest_version(), strict=True)


def test_kubectl_get_shows_phase_ready_endpoint_and_age() -> None:
    version = crd.build()["spec"]["versions"][0]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Ready": ".status.ready",
        "Endpoint": ".status.endpoint",
        "Age": ".metadata.creationTimestamp",
    }
    names = crd.build()["spec"]["names"]
    assert names["shortNames"] == ["capi"] and names["categories"] == ["all"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.gateway.replicas"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_validates_against_the_crd_schema(path: Any) -> None:
    validator = _validator()
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if doc and doc.get("kind") == model.KIND:
            errors = [e.message for e in validator.iter_errors(doc)]
            assert not errors, errors


def _bookstore() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((EXAMPLES / "bookstore.yaml").read_text(encoding="utf-8"))
    return loaded


BAD = {
    "negative replicas": (("spec", "gateway", "replicas"), -1),
    "unknown auth mode": (("spec", "gateway", "auth", "mode"), "basic"),
    "zero requests per second": (("spec", "gateway", "rateLimit", "requestsPerSecond"), 0),
    "port out of range": (("spec", "gateway", "service", "port"), 70000),
    "ttl above a day": (("spec", "cache", "defaultTtlSeconds"), 100_000),
    "storage not a quantity": (("spec", "database", "managed", "storage"), "lots"),
    "resource name with capitals": (("spec", "resources", 0, "name"), "Books"),
    "custom api image with a space": (("spec", "api", "image"), "ghcr.io/x/y 1.0"),
    "route path not absolute": (("spec", "cache", "routes"), [{"path": "v1/*"}]),
    "route path with a star inside": (("spec", "cache", "routes"), [{"path": "/v1/*/x"}]),
    "probe path with a query": (("spec", "api", "probes"), {"readinessPath": "/ready?x=1"}),
    # "no resources" (none, with the bundled api role) is a CEL rule now, since api.image lifts it:
    # see test_rules_across_fields_are_cel_validations_naming_the_field, and the real API server
    # in tests/e2e/test_crd_rules.py.
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_objects_are_rejected_by_the_schema_and_by_the_model(case: str) -> None:
    path, value = BAD[case]
    body = copy.deepcopy(_bookstore())
    node: Any = body
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    assert list(_validator().iter_errors(body)), f"the CRD schema accepts {case}"
    with pytest.raises(model.ManifestError):
        model.parse(body)


def _node(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = schema["properties"]["spec"]
    for part in filter(None, dotted.split(".")):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


@pytest.mark.parametrize(
    ("where", "needle"),
    [
        ("cache.redis", "has(self.managed) && has(self.external)"),
        ("database", "has(self.managed) && has(self.external)"),
        ("database", "oldSelf.external"),
        ("database.managed.storageClassName", "self == oldSelf"),
        ("gateway.auth", "self.mode != 'jwt' || has(self.jwt)"),
        ("gateway.auth.jwt", "has(self.jwksUrl) != has(self.secretRef)"),
        ("gateway.autoscaling", "self.minReplicas <= self.maxReplicas"),
        ("api.autoscaling", "self.minReplicas <= self.maxReplicas"),
        ("database", "!has(self.none) || !(has(self.managed) || has(self.external))"),
        ("database", "!has(oldSelf.managed) || has(self.managed)"),
        ("api.env.[]", "!(has(self.value) && has(self.valueFrom))"),
        ("api.env.[].valueFrom", "has(self.secretKeyRef) != has(self.configMapKeyRef)"),
    ],
)
def test_one_of_and_immutability_rules_are_cel_validations(where: str, needle: str) -> None:
    rules = [r["rule"] for r in _node(_schema(), where).get("x-kubernetes-validations", [])]
    assert any(needle in rule for rule in rules), rules


def test_rules_across_fields_are_cel_validations_naming_the_field() -> None:
    """The bundled api role and the user's own API (api.image) need different things; the rules
    sit on spec and say which field the API server's message names (fieldPath)."""
    rules = {r["fieldPath"]: r for r in _node(_schema(), "").get("x-kubernetes-validations", [])}
    assert set(rules) == {".resources", ".database.none", ".cache.routes"}
    assert "size(self.resources) > 0" in rules[".resources"]["rule"]
    for rule in rules.values():
        assert "has(self.api.image)" in rule["rule"]
    # Not required by the schema any more (api.image lifts it); still at most 100.
    assert "resources" not in _node(_schema(), "").get("required", [])
    assert _node(_schema(), "resources")["maxItems"] == 100


def test_env_and_routes_are_keyed_lists_so_the_api_server_refuses_a_name_twice() -> None:
    env, routes = _node(_schema(), "api.env"), _node(_schema(), "cache.routes")
    assert (env["x-kubernetes-list-type"], env["x-kubernetes-list-map-keys"]) == ("map", ["name"])
    assert (routes["x-kubernetes-list-type"], routes["x-kubernetes-list-map-keys"]) == ("map", ["path"])


def test_schema_is_structural_with_the_users_json_schema_preserved() -> None:
    text = yaml.safe_dump(_schema())
    assert "$ref" not in text and "anyOf" not in text and "null" not in text
    resources = _node(_schema(), "resources")
    assert resources["x-kubernetes-list-map-keys"] == ["name"]
    assert resources["items"]["properties"]["schema"]["x-kubernetes-preserve-unknown-fields"] is True


def test_defaults_match_the_model() -> None:
    assert _node(_schema(), "gateway.replicas")["default"] == 2
    assert _node(_schema(), "api.replicas")["default"] == 3
    assert _node(_schema(), "cache.redis")["default"] == {"managed": {}}
    assert _node(_schema(), "database")["default"] == {"managed": {}}
    assert _node(_schema(), "gateway.auth.mode")["enum"] == ["apiKey", "jwt", "none"]
